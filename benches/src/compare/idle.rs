//! Memory per idle client: each proxy's RSS growth while many logged-in clients sit idle.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

use crate::measure::Target;
use crate::options::{kind_name, Options};
use crate::procstat;

/// Idle logged-in clients of one target; dropping them closes them.
struct IdleClients {
    clients: Vec<tokio_postgres::Client>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        self.clients.clear();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens `n` clients with `sslmode` (`disable` with `NoTls`, `require` with a rustls
/// connector), each logged in (`connect` returns after ReadyForQuery; with `require` the TLS
/// handshake has completed), and leaves them idle. Returns them and the proxy's RSS growth per
/// client, in KiB. Clients opened earlier stay open, so freed memory is not reused.
async fn open_idle_clients<T>(
    pid: u32,
    port: u16,
    n: usize,
    sslmode: &str,
    tls: T,
    idle: &mut Vec<IdleClients>,
) -> Result<f64>
where
    T: MakeTlsConnect<Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let dsn = format!(
        "host=127.0.0.1 port={port} user=bench password=bench dbname=bench sslmode={sslmode}"
    );
    let mut set = IdleClients {
        clients: Vec::with_capacity(n + 1),
        tasks: Vec::with_capacity(n + 1),
    };
    // Warm the pool, the TLS context and the allocator first.
    let (warm, conn) = tokio_postgres::connect(&dsn, tls.clone()).await?;
    set.tasks.push(tokio::spawn(async move {
        let _ = conn.await;
    }));
    warm.simple_query("SELECT 1").await?;
    set.clients.push(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::rss_kib(pid)?;
    for chunk in 0..n.div_ceil(50) {
        let mut batch = Vec::new();
        for _ in 0..50.min(n - chunk * 50) {
            let (dsn, tls) = (dsn.clone(), tls.clone());
            batch.push(tokio::spawn(async move {
                tokio_postgres::connect(&dsn, tls).await
            }));
        }
        for b in batch {
            let (c, conn) = b
                .await?
                .with_context(|| format!("{sslmode} client login"))?;
            set.clients.push(c);
            set.tasks.push(tokio::spawn(async move {
                let _ = conn.await;
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procstat::rss_kib(pid)?;
    idle.push(set);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Opens `o.idle` clients of each kind on each proxy and prints the RSS per idle client.
pub(crate) fn idle_rss(
    o: &Options,
    targets: &[Target],
    rt: &tokio::runtime::Runtime,
    connector: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<()> {
    // Per proxy and client kind: KiB per idle client. Each proxy's plain clients stay open
    // while its TLS clients are opened.
    let mut kib: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for t in targets.iter().filter(|t| t.pid.is_some()) {
        let mut idle = Vec::new();
        for kind in o.client_kinds() {
            let pid = t.pid.unwrap();
            let k = rt.block_on(async {
                match (kind, connector) {
                    ("disable", _) | (_, None) => {
                        let tls = tokio_postgres::NoTls;
                        open_idle_clients(pid, t.port, o.idle, kind, tls, &mut idle).await
                    }
                    (_, Some(tls)) => {
                        open_idle_clients(pid, t.port, o.idle, kind, tls.clone(), &mut idle).await
                    }
                }
            })?;
            eprintln!(
                "idle {:5} {:9} {k:.2} KiB per client",
                kind_name(kind),
                t.name
            );
            kib.insert((kind, t.name), k);
        }
        rt.block_on(async { drop(idle) });
    }
    println!(
        "\n## RSS per idle client ({} idle logged-in clients of each kind)\n",
        o.idle
    );
    println!("| client | proxy | KiB per idle client | vs PgBouncer |");
    println!("|---|---|---|---|");
    for kind in o.client_kinds() {
        for t in targets.iter().filter(|t| t.pid.is_some()) {
            let Some(k) = kib.get(&(kind, t.name)) else {
                continue;
            };
            let vs = kib
                .get(&(kind, "pgbouncer"))
                .filter(|p| **p > 0.0)
                .map_or("-".into(), |p| format!("{:.2}x", k / p));
            println!("| {} | {} | {k:.2} | {vs} |", kind_name(kind), t.name);
        }
    }
    Ok(())
}
