//! Several pgtier processes on one host (issue 21): with `so_reuseport = true` they share the
//! client port and the kernel spreads clients between them.

use std::time::Duration;

use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
use pgtier_kit::{free_port, Cluster, Pgtier};

const LIMIT: Duration = Duration::from_secs(20);

fn cluster() -> &'static Cluster {
    let c = Cluster::shared();
    scram_role(c, "multi", "multi-pw").unwrap();
    c
}

fn builder() -> ConfigBuilder {
    ConfigBuilder::new(cluster())
        .global("so_reuseport = true")
        .global("shutdown_timeout = \"20s\"")
        .user("multi", "password = \"multi-pw\"")
        .database("pool_size = 4")
}

/// Starts a pgtier on `port` (maybe shared) with its own HTTP endpoint `mport`, and waits
/// until this very process listens (another may already answer on the port).
fn start_on(b: &ConfigBuilder, port: u16, mport: u16) -> Pgtier {
    let b = b
        .clone()
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""));
    let px = Pgtier::start(port, &b.render(port)).unwrap();
    let log = px.wait_for_log("HTTP endpoint listening", LIMIT);
    assert!(log.contains("HTTP endpoint listening"), "{log}");
    px
}

/// Client connections this process has now (its `/metrics`).
fn clients_of(mport: u16) -> u64 {
    let (status, body) = pgtier_kit::http::get(mport, "/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("pgtier_client_connections{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_port_and_both_serve_clients() {
    let port = free_port().unwrap();
    let (ma, mb) = (free_port().unwrap(), free_port().unwrap());
    let b = builder();
    let _a = start_on(&b, port, ma);
    let _bb = start_on(&b, port, mb);
    // 40 clients: each process gets some (all on one: probability 2^-39).
    let mut clients = Vec::new();
    for _ in 0..40 {
        let c = connect(&_a, "multi", "multi-pw").await.unwrap();
        let row = c.query_one("SELECT 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
        clients.push(c);
    }
    let (na, nb) = (clients_of(ma), clients_of(mb));
    assert_eq!(na + nb, 40, "a {na}, b {nb}");
    assert!(na > 0 && nb > 0, "a {na}, b {nb}");

    // Without so_reuseport the address is taken: a third process cannot start.
    let mport = free_port().unwrap();
    let text = builder()
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .render(port)
        .replace("so_reuseport = true", "so_reuseport = false");
    let err = Pgtier::start(port, &text).map(|mut px| {
        let exited = px.wait_exit(LIMIT);
        (exited, px.log())
    });
    let (exited, log) = err.unwrap();
    assert!(exited.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("Address already in use"), "{log}");
}
