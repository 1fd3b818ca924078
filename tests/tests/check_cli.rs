//! `pgtier check FILE`: exit status and line/column reporting.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("pgtier-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.toml", text.len()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(pgtier_kit::pgtier_bin().unwrap())
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text.replace(&file.display().to_string(), "FILE"),
    )
}

#[test]
fn documented_example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/pgtier.toml"
    ))
    .unwrap();
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
}

#[test]
fn problems_are_reported_with_line_and_column_and_exit_1() {
    let (ok, out) = check(
        "listen = \"127.0.0.1:6432\"\npool_mode = \"transactional\"\n[databases.app]\nprimary = \"x\"\n",
    );
    assert!(!ok);
    assert!(out.contains("FILE:2:13"), "{out}");

    let (ok, out) =
        check("listen = \"nowhere\"\n[databases.app]\nprimary = \"db:5432\"\npool_size = 0\n");
    assert!(!ok);
    assert!(out.contains("FILE:1:10: listen:"), "{out}");
    assert!(
        out.contains("FILE:4:13: databases.app.pool_size: must be at least 1"),
        "{out}"
    );

    let (ok, out) = check(
        "metrics_listen = \"localhost\"\nlog_format = \"yaml\"\n[databases.app]\nprimary = \"db:5432\"\n",
    );
    assert!(!ok);
    assert!(out.contains("FILE:2:14"), "{out}");
    let (ok, out) = check(
        "metrics_listen = \"localhost\"\nslow_query_threshold = \"2s\"\n[users.app]\npassword = \"x\"\n[databases.app]\nprimary = \"db:5432\"\n",
    );
    assert!(!ok);
    assert!(out.contains("FILE:1:18: metrics_listen:"), "{out}");

    let status = Command::new(pgtier_kit::pgtier_bin().unwrap())
        .args(["check", "/nonexistent/pgtier.toml"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

/// `pgtier check --connect` logs in to every node and reports role, state and lag; a node that
/// does not answer makes it exit 1.
#[test]
fn check_connect_reports_every_node() {
    let cluster = pgtier_kit::Cluster::start(1).unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    pgtier_kit::fixture::ensure_app_db(&cluster).unwrap();
    let text = format!(
        "[users.pgtier_trust]\nauth = \"trust\"\n[databases.app]\nprimary = \"{}\"\nreplicas = [\"{}\"]\n",
        cluster.primary().addr(),
        cluster.replica(0).addr()
    );
    let dir = std::env::temp_dir().join(format!("pgtier-check-connect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgtier.toml");
    std::fs::write(&file, text).unwrap();
    let run = || {
        let out = Command::new(pgtier_kit::pgtier_bin().unwrap())
            .args(["check", "--connect"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run();
    assert!(ok, "{out}");
    let primary = format!(
        "{}: Primary Healthy (takes writes)",
        cluster.primary().addr()
    );
    let replica = format!("{}: Replica Healthy", cluster.replica(0).addr());
    assert!(out.contains(&primary), "{out}");
    assert!(out.contains(&replica), "{out}");
    cluster.replica(0).stop_immediate().unwrap();
    let (ok, out) = run();
    assert!(!ok, "{out}");
    assert!(out.contains("Down"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pgtier verifier` reads a password from stdin and prints what goes in `password`.
fn verifier(args: &[&str], password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(pgtier_kit::pgtier_bin().unwrap())
        .arg("verifier")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verifier_from_pgtier_verifier_logs_clients_in_with_their_password() {
    use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
    let scram = verifier(&[], "v3rifier-pw");
    assert!(scram.starts_with("SCRAM-SHA-256$4096:"), "{scram}");
    assert!(!scram.contains("v3rifier"), "{scram}");
    let md5 = verifier(&["--md5", "md5user"], "v3rifier-pw");
    assert!(md5.starts_with("md5") && md5.len() == 35, "{md5}");
    let cluster = pgtier_kit::Cluster::shared();
    scram_role(cluster, "veruser", "server-side").unwrap();
    let px = ConfigBuilder::new(cluster)
        .user(
            "veruser",
            &format!("password = \"{scram}\"\nserver_password = \"server-side\""),
        )
        .user(
            "md5user",
            &format!(
                "password = \"{md5}\"\nauth = \"md5\"\nserver_user = \"veruser\"\nserver_password = \"server-side\""
            ),
        )
        .start()
        .unwrap();
    for user in ["veruser", "md5user"] {
        let c = connect(&px, user, "v3rifier-pw").await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
        let err = connect(&px, user, "wrong").await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<tokio_postgres::Error>()
                .and_then(|e| e.as_db_error())
                .map(|e| e.code().code()),
            Some("28P01"),
            "{err}"
        );
    }
}

/// `pgtier check --instances N --connect`: per node, N processes' connections at full load
/// against the node's own max_connections (read from it): a warning above 80%, exit 1 above
/// 100%.
#[test]
fn instances_budget_is_checked_against_max_connections() {
    let cluster = pgtier_kit::Cluster::shared();
    pgtier_kit::fixture::scram_role(cluster, "budget", "budget-pw").unwrap();
    let read = |sql: &str| -> u32 { cluster.primary().psql(sql).unwrap().trim().parse().unwrap() };
    let max = read("SHOW max_connections");
    let reserved = read(
        "SELECT current_setting('superuser_reserved_connections')::int \
         + coalesce(current_setting('reserved_connections', true), '0')::int",
    );
    let usable = max - reserved;
    let config = pgtier_kit::fixture::ConfigBuilder::new(cluster)
        .user("budget", "password = \"budget-pw\"")
        .database("pool_size = 10")
        .render(6432);
    let dir = pgtier_kit::make_temp_dir("pgtier-budget").unwrap();
    let file = dir.join("pgtier.toml");
    std::fs::write(&file, config).unwrap();
    let run = |n: u32| {
        let out = Command::new(pgtier_kit::pgtier_bin().unwrap())
            .args(["check", "--connect", "--instances", &n.to_string()])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text)
    };
    // Per instance: pool 10 + 1 monitor + 1 pg_proc read on the primary.
    let per = 12;
    let node = cluster.primary().addr();
    let (ok, out) = run(1);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{node}: 1 x {per} = {per} of {usable} usable (max_connections {max}, {reserved} reserved)")),
        "{out}"
    );
    assert!(!out.contains("WARNING"), "{out}");
    // Just above 80%: a warning, still exit 0.
    let tight = (usable * 4 / 5) / per + 1;
    assert!(
        tight * per <= usable,
        "max_connections {max} too small for this test"
    );
    let (ok, out) = run(tight);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("WARNING {node}: {tight} instance(s) may use")),
        "{out}"
    );
    // Above 100%: exit 1, naming the node.
    let over = usable / per + 1;
    let (ok, out) = run(over);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "ERROR {node}: {over} instance(s) may open {}",
            over * per
        )),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
