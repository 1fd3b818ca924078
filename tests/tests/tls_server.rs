//! TLS from pgtier to the servers (`server_tls_*`) against nodes with `ssl = on`: every sslmode
//! on the primary and the replicas (pgtier's backend connections and, through the rotation,
//! its lag monitors), SCRAM over TLS, a certificate that does not verify (08001 naming the node,
//! SHOW REPLICAS down with the reason), host names under verify-full, pgtier's client
//! certificate (mTLS), `allow`'s retry with TLS, and reloads of the files.

use std::time::{Duration, Instant};

use pgtier_kit::fixture::{
    admin_console, connect, ensure_app_db, replica_in_rotation, scram_role, simple_rows,
    ConfigBuilder,
};
use pgtier_kit::{Cluster, Pgtier, TestCa};
use tokio_postgres::{Client, SimpleQueryRow};

/// What the node serving `sql`'s route says of the connection: (ssl, in recovery, port).
const WHERE: &str = "SELECT ssl, pg_is_in_recovery(), inet_server_port() \
                     FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

async fn served(c: &Client, hint: &str) -> (bool, bool, u16) {
    let rows = simple_rows(c, &format!("{hint} {WHERE}")).await;
    let r = &rows[0];
    (
        r.get(0) == Some("t"),
        r.get(1) == Some("t"),
        r.get(2).and_then(|p| p.parse().ok()).unwrap_or(0),
    )
}

fn col<'a>(r: &'a SimpleQueryRow, name: &str) -> &'a str {
    r.get(name)
        .unwrap_or_else(|| panic!("column {name} missing or NULL"))
}

/// A config for SCRAM user `appuser` with the cluster's replicas, an admin user and `lines`.
fn builder(cluster: &Cluster, lines: &[String]) -> ConfigBuilder {
    let mut b = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
        .global("admin_users = [\"admin\"]")
        .with_replicas(cluster)
        .user("admin", "password = \"admin-pw\"")
        .user("appuser", "password = \"app-pw\"");
    for l in lines {
        b = b.global(l);
    }
    b
}

/// Every mode, on the primary (hinted) and on a replica (a plain read once a replica is in the
/// rotation: its monitor logged in with the same settings). SCRAM (with channel binding where
/// TLS is on) is how `appuser` logs in to the servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_reaches_the_primary_and_the_replicas_as_configured() {
    let ca = TestCa::new("tls_server modes CA").unwrap();
    let cluster = Cluster::start_tls(1, &ca).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let ca_file = ca.ca_file().display().to_string();
    for (mode, ssl) in [
        ("disable", false),
        ("allow", false),
        ("prefer", true),
        ("require", true),
        ("verify-ca", true),
        ("verify-full", true),
    ] {
        let px = builder(
            &cluster,
            &[
                format!("server_tls_sslmode = \"{mode}\""),
                format!("server_tls_ca_file = \"{ca_file}\""),
                "log_level = \"info,pgtier::backend=debug\"".into(),
            ],
        )
        .start()
        .unwrap();
        replica_in_rotation(&px, "appuser", "app-pw").await.unwrap();
        let c = connect(&px, "appuser", "app-pw").await.unwrap();
        let primary = served(&c, "/* pgtier:primary */").await;
        assert_eq!(
            primary,
            (ssl, false, cluster.primary().port()),
            "{mode} on the primary"
        );
        let replica = served(&c, "").await;
        assert_eq!(
            replica,
            (ssl, true, cluster.replica(0).port()),
            "{mode} on the replica"
        );
        // Over TLS the SCRAM login is bound to the server's certificate.
        let log = px.log();
        assert_eq!(
            log.contains("mechanism=\"SCRAM-SHA-256-PLUS\""),
            ssl,
            "{mode}:\n{log}"
        );
        assert!(log.contains("SCRAM login"), "{mode}:\n{log}");
    }
}

/// verify-full checks the host name when the nodes are configured by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_accepts_nodes_addressed_by_host_name() {
    let ca = TestCa::new("tls_server names CA").unwrap();
    let cluster = Cluster::start_tls(1, &ca).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    // The database's own keys override the global disable.
    let px = ConfigBuilder::new(&cluster)
        .primary(&format!("localhost:{}", cluster.primary().port()))
        .database(&format!(
            "replicas = [\"localhost:{}\"]",
            cluster.replica(0).port()
        ))
        .database("server_tls_sslmode = \"verify-full\"")
        .database(&format!(
            "server_tls_ca_file = \"{}\"",
            ca.ca_file().display()
        ))
        .global("lag_check_interval = \"50ms\"")
        .global("server_tls_sslmode = \"disable\"")
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    replica_in_rotation(&px, "appuser", "app-pw").await.unwrap();
    let c = connect(&px, "appuser", "app-pw").await.unwrap();
    assert_eq!(
        served(&c, "/* pgtier:primary */").await,
        (true, false, cluster.primary().port())
    );
    assert_eq!(
        served(&c, "").await,
        (true, true, cluster.replica(0).port())
    );
    let (ok, out) = check_connect(&px);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "localhost:{}: Primary Healthy",
            cluster.primary().port()
        )),
        "{out}"
    );
}

/// `pgtier check --connect` on a running pgtier's config: (exit success, stdout + stderr).
fn check_connect(px: &Pgtier) -> (bool, String) {
    let out = std::process::Command::new(pgtier_kit::pgtier_bin().unwrap())
        .args(["check", "--connect"])
        .arg(px.config_path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits until SHOW REPLICAS shows every node down with `reason` in its last error.
async fn wait_all_down(adm: &Client, cluster: &Cluster, reason: &str) -> Vec<SimpleQueryRow> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = simple_rows(adm, "SHOW REPLICAS").await;
        let all = std::iter::once(cluster.primary())
            .chain(cluster.replicas())
            .all(|n| {
                rows.iter().any(|r| {
                    col(r, "node") == n.addr()
                        && col(r, "state") == "down"
                        && col(r, "last_error").contains(reason)
                })
            });
        if all {
            return rows;
        }
        let shown: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    col(r, "node"),
                    col(r, "state"),
                    col(r, "last_error")
                )
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "nodes not down with \"{reason}\" within 10 s: {shown:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CA that did not sign the servers' certificates: the client gets 08001 naming the node and
/// the reason, and SHOW REPLICAS shows every node down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_is_08001_and_shows_in_show_replicas() {
    let ca = TestCa::new("tls_server real CA").unwrap();
    let other = TestCa::new("tls_server other CA").unwrap();
    let cluster = Cluster::start_tls(1, &ca).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let px = builder(
        &cluster,
        &[
            "server_tls_sslmode = \"verify-full\"".into(),
            format!("server_tls_ca_file = \"{}\"", other.ca_file().display()),
        ],
    )
    .start()
    .unwrap();
    let reason = "TLS: certificate verify failed: UnknownIssuer";
    let err = match connect(&px, "appuser", "app-pw").await {
        Ok(c) => c
            .simple_query("/* pgtier:primary */ SELECT 1")
            .await
            .expect_err("a server whose certificate does not verify must not serve"),
        Err(e) => e
            .downcast::<tokio_postgres::Error>()
            .expect("a server error"),
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08001", "{}", db.message());
    // Whichever node the login or the statement reached first.
    let named = std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .any(|n| db.message() == format!("pgtier: cannot connect to {}: {reason}", n.addr()));
    assert!(named, "{}", db.message());

    let adm = admin_console(&px, "admin", "admin-pw").await;
    wait_all_down(&adm, &cluster, &format!("connect failed: {reason}")).await;

    // `pgtier check --connect` uses the same settings and says why.
    let (ok, out) = check_connect(&px);
    assert!(!ok, "{out}");
    for n in std::iter::once(cluster.primary()).chain(cluster.replicas()) {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{}:", n.addr())))
            .unwrap_or_else(|| panic!("no line for {}: {out}", n.addr()));
        assert!(
            line.contains("Down") && line.contains(&format!("connect failed: {reason}")),
            "{out}"
        );
    }
}

/// An idle pooled TLS connection whose backend was terminated is noticed at checkout (read
/// through rustls without blocking) and replaced, without an error for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_idle_tls_connection_is_not_reused() {
    let ca = TestCa::new("tls_server idle CA").unwrap();
    let cluster = Cluster::start_tls(0, &ca).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let px = ConfigBuilder::new(&cluster)
        .global("pool_size = 1")
        .global("server_tls_sslmode = \"require\"")
        .global("log_level = \"info,pgtier::backend=debug\"")
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    let c = connect(&px, "appuser", "app-pw").await.unwrap();
    let sql = "SELECT pg_backend_pid(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let pid_ssl = |rows: Vec<SimpleQueryRow>| {
        (
            rows[0].get(0).unwrap().parse::<i32>().unwrap(),
            rows[0].get(1) == Some("t"),
        )
    };
    let (pid, ssl) = pid_ssl(simple_rows(&c, sql).await);
    assert!(ssl);
    cluster
        .primary()
        .psql(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    // Gone as a process: its socket is closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: kill with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "backend {pid} still running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (again, ssl) = pid_ssl(simple_rows(&c, sql).await);
    assert!(ssl);
    assert_ne!(again, pid);
    let log = px.log();
    assert!(
        log.contains("idle server connection was closed by the server"),
        "{log}"
    );
}

/// Rewrites a node's pg_hba.conf with `first` ahead of the kit's lines, and reloads it.
fn prepend_hba(cluster: &Cluster, first: &str) {
    let path = cluster.primary().data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{first}\n{old}")).unwrap();
    let r = cluster.primary().psql("SELECT pg_reload_conf()").unwrap();
    assert_eq!(r.trim(), "t");
}

/// pgtier's client certificate logs it in where pg_hba says `cert`; `allow` starts in plain
/// text and retries with TLS only where the server refuses plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_certificate_and_allow_retry() {
    let ca = TestCa::new("tls_server mtls CA").unwrap();
    let cluster = Cluster::start_tls(0, &ca).unwrap();
    ensure_app_db(&cluster).unwrap();
    cluster.create_trust_role("pgtier_cert").unwrap();
    scram_role(&cluster, "allow_tls", "allow-pw").unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    prepend_hba(
        &cluster,
        "hostssl all pgtier_cert 127.0.0.1/32 cert\n\
         hostnossl all pgtier_cert 127.0.0.1/32 reject\n\
         hostnossl all allow_tls 127.0.0.1/32 reject",
    );
    let client = ca.client("pgtier-client", "pgtier_cert").unwrap();
    let ca_file = ca.ca_file().display().to_string();

    // With the certificate: logged in as pgtier_cert, no password anywhere.
    let with_cert = ConfigBuilder::new(&cluster)
        .global("server_tls_sslmode = \"verify-full\"")
        .global(&format!("server_tls_ca_file = \"{ca_file}\""))
        .global(&format!(
            "server_tls_cert_file = \"{}\"",
            client.cert.display()
        ))
        .global(&format!(
            "server_tls_key_file = \"{}\"",
            client.key.display()
        ))
        .user("pgtier_cert", "auth = \"trust\"")
        .start()
        .unwrap();
    let c = connect(&with_cert, "pgtier_cert", "").await.unwrap();
    let rows = simple_rows(
        &c,
        "SELECT current_user, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(rows[0].get(0), Some("pgtier_cert"));
    assert_eq!(rows[0].get(1), Some("t"));
    assert_eq!(rows[0].get(2), Some("/CN=pgtier_cert"));

    // Without it, the server's refusal reaches the client unchanged (28000).
    let without = ConfigBuilder::new(&cluster)
        .global("server_tls_sslmode = \"verify-full\"")
        .global(&format!("server_tls_ca_file = \"{ca_file}\""))
        .user("pgtier_cert", "auth = \"trust\"")
        .start()
        .unwrap();
    let err = match connect(&without, "pgtier_cert", "").await {
        Ok(c) => c.simple_query("SELECT 1").await.unwrap_err(),
        Err(e) => e.downcast::<tokio_postgres::Error>().unwrap(),
    };
    let db = err.as_db_error().expect("the server's ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{}", db.message());

    // allow: plain text where plain text is accepted, TLS after the server refused it.
    let allow = ConfigBuilder::new(&cluster)
        .global("server_tls_sslmode = \"allow\"")
        .user("allow_tls", "password = \"allow-pw\"")
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    let ssl_of = |c: Client| async move {
        simple_rows(
            &c,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await[0]
            .get(0)
            .map(str::to_owned)
    };
    let retried = connect(&allow, "allow_tls", "allow-pw").await.unwrap();
    assert_eq!(ssl_of(retried).await.as_deref(), Some("t"));
    let plain = connect(&allow, "appuser", "app-pw").await.unwrap();
    assert_eq!(ssl_of(plain).await.as_deref(), Some("f"));
}

async fn reload(adm: &Client) -> Result<(), tokio_postgres::Error> {
    adm.simple_query("RELOAD").await.map(|_| ())
}

/// The CA file is read at start and at every RELOAD: an unreadable one refuses the reload and
/// the old settings keep serving new server connections; a rotated one applies to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_the_ca_file_and_refuses_an_unusable_one() {
    let ca = TestCa::new("tls_server reload CA").unwrap();
    let other = TestCa::new("tls_server reload other CA").unwrap();
    let cluster = Cluster::start_tls(0, &ca).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let ca_copy = ca.dir().join("pgtier-ca.pem");
    let b = ConfigBuilder::new(&cluster)
        .global("admin_users = [\"admin\"]")
        .global("server_tls_sslmode = \"verify-full\"")
        .global(&format!("server_tls_ca_file = \"{}\"", ca_copy.display()))
        .user("admin", "password = \"admin-pw\"")
        .user("appuser", "password = \"app-pw\"");
    // At start, a missing file is a startup error naming it (before pgtier listens).
    let err = b.start().expect_err("no CA file yet").to_string();
    assert!(
        err.contains(&format!(
            "database \"app\": server_tls_ca_file {}: No such file",
            ca_copy.display()
        )),
        "{err}"
    );
    std::fs::copy(ca.ca_file(), &ca_copy).unwrap();
    let px: Pgtier = b.start().unwrap();
    let adm = admin_console(&px, "admin", "admin-pw").await;
    let c = connect(&px, "appuser", "app-pw").await.unwrap();
    assert!(served(&c, "").await.0);

    // A CA file that does not exist: refused, named; the running settings stay.
    let config = std::fs::read_to_string(px.config_path()).unwrap();
    let missing = ca.dir().join("missing.pem").display().to_string();
    std::fs::write(
        px.config_path(),
        config.replace(&ca_copy.display().to_string(), &missing),
    )
    .unwrap();
    let err = reload(&adm).await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "F0000", "{}", db.message());
    assert!(
        db.message()
            .contains(&format!("server_tls_ca_file {missing}")),
        "{}",
        db.message()
    );
    simple_rows(&adm, "RECONNECT app").await;
    assert!(
        served(&c, "").await.0,
        "new server connections use the old CA"
    );

    // A file that is not PEM: refused too.
    std::fs::write(&ca_copy, "not a certificate\n").unwrap();
    std::fs::write(px.config_path(), &config).unwrap();
    let err = reload(&adm).await.unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("no PEM"), "{msg}");
    simple_rows(&adm, "RECONNECT app").await;
    assert!(
        served(&c, "").await.0,
        "new server connections use the old CA"
    );

    // Rotated to a CA that did not sign the server: the reload applies, the next server
    // connection fails to verify.
    std::fs::copy(other.ca_file(), &ca_copy).unwrap();
    reload(&adm).await.unwrap();
    simple_rows(&adm, "RECONNECT app").await;
    let err = c.simple_query(WHERE).await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08001", "{}", db.message());
    assert!(db.message().contains("UnknownIssuer"), "{}", db.message());
}

/// Messages far larger than a TLS record (16 KiB) and than the socket buffers cross intact in
/// both directions: the statement pgtier writes to the server and the rows it reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_statements_and_results_cross_tls_intact() {
    let ca = TestCa::new("tls_server large CA").unwrap();
    let cluster = Cluster::start_tls(0, &ca).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let px = ConfigBuilder::new(&cluster)
        .global("server_tls_sslmode = \"verify-full\"")
        .global(&format!(
            "server_tls_ca_file = \"{}\"",
            ca.ca_file().display()
        ))
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    let c = connect(&px, "appuser", "app-pw").await.unwrap();
    let big = "x".repeat(4 << 20);
    for _ in 0..3 {
        let rows = simple_rows(
            &c,
            &format!(
                "SELECT length('{big}'), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
            ),
        )
        .await;
        assert_eq!(rows[0].get(0), Some("4194304"));
        assert_eq!(rows[0].get(1), Some("t"));
        let rows = simple_rows(&c, "SELECT repeat('y', 8000000) FROM generate_series(1, 2)").await;
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r
            .get(0)
            .is_some_and(|v| v.len() == 8_000_000 && v.bytes().all(|b| b == b'y'))));
    }
}

/// A server without TLS answers SSLRequest with `N`: plain text under prefer, 08001 under
/// require.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_is_plain_under_prefer_and_refused_under_require() {
    let cluster = Cluster::start(0).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let start = |mode: &str| {
        ConfigBuilder::new(&cluster)
            .global(&format!("server_tls_sslmode = \"{mode}\""))
            .user("appuser", "password = \"app-pw\"")
            .start()
            .unwrap()
    };
    let prefer = start("prefer");
    let c = connect(&prefer, "appuser", "app-pw").await.unwrap();
    assert_eq!(
        served(&c, "").await,
        (false, false, cluster.primary().port())
    );

    let require = start("require");
    let err = match connect(&require, "appuser", "app-pw").await {
        Ok(c) => c.simple_query("SELECT 1").await.unwrap_err(),
        Err(e) => e.downcast::<tokio_postgres::Error>().unwrap(),
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08001", "{}", db.message());
    assert_eq!(
        db.message(),
        format!(
            "pgtier: cannot connect to {}: TLS: the server does not accept TLS \
             (server_tls_sslmode = require)",
            cluster.primary().addr()
        )
    );
}
