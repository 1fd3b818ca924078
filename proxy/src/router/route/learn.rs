//! Learning function volatility from the primary's `pg_proc`, in the background, so that the
//! classifier knows which calls may run on a replica.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use super::Router;
use crate::cluster::catalog::read_functions;
use crate::router::classify::PG_PROC_QUERY;

/// Limit on reading `pg_proc`.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between attempts to read `pg_proc`.
const CATALOG_RETRY_MAX: Duration = Duration::from_secs(30);

impl Router {
    /// Learns function volatility from the primary's `pg_proc` in the background, retrying
    /// until it succeeds (until then, unknown functions count as writes).
    pub fn learn_functions(self: &Arc<Self>) {
        if !self.splits {
            return;
        }
        let router = Arc::downgrade(self);
        tokio::spawn(learn_loop(router));
    }

    /// Takes function volatility from `pg_proc` rows (schema, name, provolatile).
    pub fn learn_pg_proc(&self, rows: Vec<(String, String, char)>) {
        let mut table = self.base_functions.clone();
        table.learn_pg_proc(rows);
        self.classifier().set_functions(table);
    }
}

async fn learn_loop(router: Weak<Router>) {
    let mut pause = Duration::from_secs(1);
    loop {
        let Some(r) = router.upgrade() else { return };
        let login = r.topology.settings().login.clone();
        let primary = r.topology.wait_for_primary(CATALOG_TIMEOUT).await;
        if let Some(p) = primary {
            let addr = r.topology.settings().nodes[p].addr.clone();
            match read_functions(&addr, &login, PG_PROC_QUERY, CATALOG_TIMEOUT).await {
                Ok(rows) => {
                    let n = rows.len();
                    r.learn_pg_proc(rows);
                    info!(node = %addr, functions = n, "learned function volatility from pg_proc");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?pause, "cannot read pg_proc: calls of functions outside the built-in lists go to the primary until it is read")
                }
            }
        }
        drop(r);
        crate::timers::sleep(pause).await;
        pause = (pause * 2).min(CATALOG_RETRY_MAX);
    }
}
