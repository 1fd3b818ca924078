//! Connection-rate runs (`pgbench -C` and tokio-postgres clients opening a connection per
//! transaction) and the TLS helpers they and the idle-client runs use.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

use crate::measure::Target;
use crate::options::{kind_name, Options};
use crate::pgbench::{field, pgbench_ssl};
use crate::procstat;
use crate::report::median;

/// A rustls connector trusting `ca_file` (ring provider, TLS 1.2 and 1.3, no resumption).
pub(crate) fn tls_connector(ca_file: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    // ring, as pgtier uses (it has no post-quantum key exchange, hence the deprecation).
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // ring's default order puts P-384 first, so its only key share would be P-384, which
    // OpenSSL 3.0 (PgBouncer) computes with generic bignum code: about 2 ms of PgBouncer's CPU
    // per handshake. libpq, browsers and rustls with aws-lc-rs lead with X25519; so does this
    // client.
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    let mut config = rustls::ClientConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection makes a full handshake (the connection-rate runs measure handshakes).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The TLS line of psql's `\conninfo` through `port` (protocol and cipher), or an error when
/// the target does not speak TLS.
pub(crate) fn tls_info(port: u16) -> Result<String> {
    let out = std::process::Command::new(pgtier_kit::bin_path("psql")?)
        .args(["-X", "-c", "\\conninfo"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "bench",
            "bench",
        ])
        .env("PGPASSWORD", "bench")
        .env("PGSSLMODE", "require")
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.starts_with("SSL connection"))
        .map(|l| l.trim_start_matches("SSL connection").trim().to_owned())
        .with_context(|| format!("no TLS on port {port}: {}", text.trim()))
}

/// One connection-rate run: a new connection (TLS handshake, login, `SELECT 1`, close) per
/// transaction.
#[derive(Clone, Copy)]
struct Handshakes {
    per_sec: f64,
    proxy_us_per_conn: Option<f64>,
    machine_us_per_conn: f64,
}

fn opener_name(opener: &str) -> &'static str {
    if opener == "pgbench" {
        "pgbench -C (libpq, OpenSSL)"
    } else {
        "tokio-postgres (rustls)"
    }
}

/// `tasks` tasks each connect, log in, run `SELECT 1` and close, over and over for `secs`
/// seconds. Returns the connections made and the seconds taken.
async fn connect_loop<T>(
    port: u16,
    sslmode: &str,
    tls: T,
    tasks: u32,
    secs: u64,
) -> Result<(f64, f64)>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let dsn = format!(
        "host=127.0.0.1 port={port} user=bench password=bench dbname=bench sslmode={sslmode}"
    );
    let start = std::time::Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (dsn, tls) = (dsn.clone(), tls.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while std::time::Instant::now() < deadline {
                let (client, conn) = tokio_postgres::connect(&dsn, tls.clone()).await?;
                let conn = tokio::spawn(conn);
                client.simple_query("SELECT 1").await?;
                // Dropping the client sends Terminate; the connection task then ends.
                drop(client);
                conn.await??;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok((total as f64, start.elapsed().as_secs_f64()))
}

fn handshake_run(
    t: &Target,
    sslmode: &str,
    opener: &str,
    o: &Options,
    rt: &tokio::runtime::Runtime,
    connector: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<Handshakes> {
    let cpu0 = t.pid.map(procstat::cpu).transpose()?;
    let machine0 = procstat::machine_busy_us()?;
    let (conns, per_sec) = if opener == "pgbench" {
        let out = pgbench_ssl(
            t.port,
            Some(sslmode),
            &[
                "-n",
                "-C",
                "-S",
                "-c",
                &o.handshake_clients.to_string(),
                "-j",
                &o.handshake_clients.clamp(1, 2).to_string(),
                "-T",
                &o.handshakes.to_string(),
            ],
        )?;
        let failed = field(&out, "number of failed transactions:").unwrap_or(0.0);
        if failed > 0.0 {
            bail!("pgbench -C via {}: {failed} failed:\n{out}", t.name);
        }
        (
            field(&out, "number of transactions actually processed:").context("no count")?,
            field(&out, "tps =").context("no tps")?,
        )
    } else {
        let (tasks, secs) = (o.handshake_clients, o.handshakes);
        let (n, took) = rt.block_on(async {
            match (sslmode, connector) {
                ("disable", _) | (_, None) => {
                    connect_loop(t.port, sslmode, tokio_postgres::NoTls, tasks, secs).await
                }
                (_, Some(tls)) => connect_loop(t.port, sslmode, tls.clone(), tasks, secs).await,
            }
        })?;
        (n, n / took)
    };
    let cpu1 = t.pid.map(procstat::cpu).transpose()?;
    let machine1 = procstat::machine_busy_us()?;
    if conns == 0.0 {
        bail!("no connection through {}", t.name);
    }
    Ok(Handshakes {
        per_sec,
        proxy_us_per_conn: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b.total_us() - a.total_us()) as f64 / conns),
        machine_us_per_conn: machine1.saturating_sub(machine0) as f64 / conns,
    })
}

/// New connections per second through each target, with each opener and client kind,
/// interleaved rounds.
pub(crate) fn handshake_rates(
    o: &Options,
    targets: &[Target],
    rt: &tokio::runtime::Runtime,
    connector: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<()> {
    let mut by: BTreeMap<(&str, &str, &str), Vec<Handshakes>> = BTreeMap::new();
    for round in 1..=o.handshake_rounds {
        for opener in o.openers.iter().map(String::as_str) {
            for kind in o.client_kinds() {
                for t in targets {
                    let h = handshake_run(t, kind, opener, o, rt, connector)?;
                    eprintln!(
                        "connections round {round} {opener:7} {:5} {:9} {:7.0} conn/s  proxy {}  machine {:.0} us/conn",
                        kind_name(kind),
                        t.name,
                        h.per_sec,
                        h.proxy_us_per_conn
                            .map_or("-".into(), |c| format!("{c:.0} us/conn")),
                        h.machine_us_per_conn
                    );
                    by.entry((opener, kind, t.name)).or_default().push(h);
                }
            }
        }
    }
    println!(
        "\n## New connections per second ({} concurrent clients each connecting, logging in \
         (SCRAM, {} iterations), running SELECT 1 and closing; medians of {} runs of {} s)\n",
        o.handshake_clients, o.scram_iterations, o.handshake_rounds, o.handshakes
    );
    println!("| opened by | client | target | connections/s | vs PgBouncer | proxy CPU us/conn | machine CPU us/conn |");
    println!("|---|---|---|---|---|---|---|");
    for opener in o.openers.iter().map(String::as_str) {
        for kind in o.client_kinds() {
            let med = |name: &str, f: fn(&Handshakes) -> Option<f64>| -> Option<f64> {
                let v: Vec<f64> = by
                    .get(&(opener, kind, name))?
                    .iter()
                    .filter_map(f)
                    .collect();
                (!v.is_empty()).then(|| median(v))
            };
            let pgb = med("pgbouncer", |h| Some(h.per_sec));
            for t in targets {
                let rate = med(t.name, |h| Some(h.per_sec)).unwrap_or(0.0);
                println!(
                    "| {} | {} | {} | {rate:.0} | {} | {} | {:.0} |",
                    opener_name(opener),
                    kind_name(kind),
                    t.name,
                    pgb.map_or("-".into(), |p| format!("{:.2}x", rate / p)),
                    med(t.name, |h| h.proxy_us_per_conn).map_or("-".into(), |c| format!("{c:.0}")),
                    med(t.name, |h| Some(h.machine_us_per_conn)).unwrap_or(0.0),
                );
            }
        }
    }
    Ok(())
}
