//! The kit itself: a real primary + 2 streaming replicas, replay control, restart, cleanup on
//! drop, and cleanup by the reaper when the test process is SIGKILLed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgtier_kit::pids::alive;
use pgtier_kit::{free_port, pgtier_bin, Cluster, Pgtier};

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(node: &pgtier_kit::Node) -> String {
    node.psql("SELECT count(*) FROM kit_t").unwrap()
}

#[test]
fn cluster_streams_pauses_restarts_and_cleans_up() {
    let t0 = Instant::now();
    let cluster = Cluster::start(2).unwrap();
    eprintln!("kit: cluster start took {:?}", t0.elapsed());
    let p = cluster.primary();
    assert_eq!(p.name(), "primary");
    assert_eq!(p.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    assert_eq!(cluster.replicas().len(), 2);
    for (i, r) in cluster.replicas().iter().enumerate() {
        assert_eq!(r.name(), format!("replica{}", i + 1));
        assert_eq!(r.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
        assert_eq!(
            r.psql("SELECT inet_server_port()").unwrap(),
            r.port().to_string()
        );
    }
    assert_eq!(
        p.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            .unwrap(),
        "2"
    );

    p.psql("CREATE TABLE kit_t (v int)").unwrap();
    p.psql("INSERT INTO kit_t VALUES (1)").unwrap();
    cluster.wait_replicas_caught_up().unwrap();
    for r in cluster.replicas() {
        assert_eq!(count(r), "1");
    }

    // Paused replay: replica1 stays behind, replica2 follows.
    let t = Instant::now();
    let (r1, r2) = (cluster.replica(0), cluster.replica(1));
    r1.pause_replay().unwrap();
    wait_for("replay paused", || {
        r1.psql("SELECT pg_get_wal_replay_pause_state()").unwrap() == "paused"
    });
    p.psql("INSERT INTO kit_t VALUES (2)").unwrap();
    wait_for("replica2 to replay", || count(r2) == "2");
    // Paused replicas are skipped, not waited for.
    cluster.wait_replicas_caught_up().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(r1), "1", "paused replica1 replayed a new row");
    r1.resume_replay().unwrap();
    wait_for("replica1 to catch up", || count(r1) == "2");
    eprintln!("kit: pause/resume checks took {:?}", t.elapsed());

    // Immediate stop and restart of a replica: it streams again.
    let t = Instant::now();
    let old_pid = r2.postmaster_pid().unwrap();
    r2.stop_immediate().unwrap();
    assert!(!alive(old_pid));
    assert!(!r2.is_running());
    assert!(r2.psql("SELECT 1").is_err());
    r2.start().unwrap();
    assert!(r2.is_running());
    p.psql("INSERT INTO kit_t VALUES (3)").unwrap();
    wait_for("restarted replica2 to replay", || {
        r2.psql("SELECT count(*) FROM kit_t").ok().as_deref() == Some("3")
    });
    wait_for("restarted replica2 to stream", || {
        p.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            .unwrap()
            == "2"
    });
    eprintln!("kit: stop/start of a replica took {:?}", t.elapsed());

    // Drop stops every postmaster and removes the directory.
    let t = Instant::now();
    let pids: Vec<i32> = std::iter::once(p)
        .chain(cluster.replicas())
        .map(|n| n.postmaster_pid().unwrap())
        .collect();
    let dir = cluster.dir().to_owned();
    assert!(dir.exists());
    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "postmaster {pid} survived the cluster's drop");
    }
    assert!(
        !dir.exists(),
        "{} survived the cluster's drop",
        dir.display()
    );
    eprintln!("kit: drop took {:?}", t.elapsed());
}

#[test]
fn roles_and_databases_reach_the_replicas() {
    let cluster = Cluster::shared();
    cluster
        .create_role_and_db("kit_app", "pw1", "kit_app")
        .unwrap();
    cluster
        .create_role_and_db("kit_app", "pw1", "kit_app")
        .unwrap(); // idempotent
    cluster.create_md5_role("kit_md5", "pw2").unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    let pw =
        |role: &str| format!("SELECT left(rolpassword, 6) FROM pg_authid WHERE rolname = '{role}'");
    for node in std::iter::once(cluster.primary()).chain(cluster.replicas()) {
        assert_eq!(node.psql(&pw("kit_app")).unwrap(), "SCRAM-");
        assert_eq!(node.psql(&pw("kit_md5")).unwrap()[..3], *"md5");
        assert_eq!(node.psql(&pw("pgtier_trust")).unwrap(), "");
        assert_eq!(
            node.psql_db("kit_app", "SELECT current_database()")
                .unwrap(),
            "kit_app"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_as_superuser() {
    let cluster = Cluster::shared();
    let r = cluster.replica(1);
    let client = r.connect("postgres").await.unwrap();
    let row = client
        .query_one("SELECT pg_is_in_recovery(), current_user::text", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "postgres");
}

/// Run by `reaper_cleans_up_after_sigkill` in a child process: starts a cluster (and pgtier,
/// when built), reports them on stdout, then waits to be killed.
#[test]
#[ignore = "helper process for reaper_cleans_up_after_sigkill"]
fn reaper_child() {
    if std::env::var_os("PGTIER_KIT_CHILD").is_none() {
        return;
    }
    let cluster = Cluster::start(0).unwrap();
    let pid = cluster.primary().postmaster_pid().unwrap();
    let mut line = format!("KIT-CHILD {pid} {}", cluster.dir().display());
    let mut _px = None;
    if pgtier_bin().is_ok() {
        let port = free_port().unwrap();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\n[users.app]\npassword = \"app\"\n\
             [databases.app]\nprimary = \"{}\"\n",
            cluster.primary().addr()
        );
        match Pgtier::start(port, &config) {
            Ok(px) => {
                line += &format!(
                    " {} {}",
                    px.pid(),
                    px.log_path().parent().unwrap().display()
                );
                _px = Some(px);
            }
            Err(e) => {
                eprintln!("kit: pgtier did not start, testing the cluster reaper only: {e:#}")
            }
        }
    }
    println!("{line}");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn reaper_cleans_up_after_sigkill() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reaper_child", "--ignored", "--nocapture"])
        .env("PGTIER_KIT_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with("KIT-CHILD "))
        .expect("the child reported no cluster");
    let f: Vec<&str> = line.split(' ').collect();
    let pid: i32 = f[1].parse().unwrap();
    let dir = PathBuf::from(f[2]);
    assert!(alive(pid) && dir.exists());
    child.kill().unwrap(); // SIGKILL: no destructor runs.
    child.wait().unwrap();
    wait_for("the reaper to stop the postmaster", || !alive(pid));
    wait_for("the reaper to remove the cluster dir", || !dir.exists());
    if f.len() == 5 {
        let (px_pid, px_dir): (i32, PathBuf) = (f[3].parse().unwrap(), PathBuf::from(f[4]));
        wait_for("the watchdog to kill pgtier", || !alive(px_pid));
        wait_for("the watchdog to remove pgtier's dir", || !px_dir.exists());
        eprintln!("kit: the reaper and pgtier's watchdog cleaned up after SIGKILL");
    } else {
        eprintln!("kit: pgtier binary not built; its watchdog was not tested");
    }
}

#[test]
fn a_tls_cluster_serves_verified_ssl_and_still_takes_plain_text() {
    let ca = pgtier_kit::TestCa::new("kit TLS test CA").unwrap();
    let cluster = Cluster::start_tls(1, &ca).unwrap();
    for node in std::iter::once(cluster.primary()).chain(cluster.replicas()) {
        let psql = |sslmode: &str| {
            let out = Command::new(pgtier_kit::bin_path("psql").unwrap())
                .args(["-X", "-A", "-t", "-c"])
                .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .arg(format!(
                    "host=localhost port={} user={} password={} dbname=postgres \
                     sslmode={sslmode} sslrootcert={}",
                    node.port(),
                    pgtier_kit::SUPERUSER,
                    pgtier_kit::SUPERUSER_PASSWORD,
                    ca.ca_file().display()
                ))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                node.name(),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(psql("verify-full"), "t", "{}", node.name());
        assert_eq!(psql("disable"), "f", "{}", node.name());
    }
}
