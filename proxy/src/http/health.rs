//! Readiness for load balancers and orchestrators: whether this process should get new
//! clients. The endpoint starts after the client listener is bound and the config is loaded,
//! so what remains to check is the shutdown phase and that every database has a primary.

use crate::runtime::Proxy;
use crate::shutdown::Phase;

/// Databases named in a reason before "and N more" (keeps the answer short).
const NAMED: usize = 5;

/// Why pgtier should not get new clients now (None: ready): it is draining (SIGTERM, admin
/// SHUTDOWN), or a database has no known primary (writes would wait, then fail).
pub fn not_ready(proxy: &Proxy) -> Option<String> {
    if proxy.phase() != Phase::Running {
        return Some("draining: shutting down".into());
    }
    let snapshot = proxy.snapshot();
    let mut missing: Vec<&str> = snapshot
        .databases
        .iter()
        .filter(|(_, rt)| rt.router.topology().view().primary.is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    if missing.is_empty() {
        return None;
    }
    missing.sort_unstable();
    let more = missing.len().saturating_sub(NAMED);
    missing.truncate(NAMED);
    let mut why = format!("no primary known for database {}", missing.join(", "));
    if more > 0 {
        why.push_str(&format!(" and {more} more"));
    }
    Some(why)
}
