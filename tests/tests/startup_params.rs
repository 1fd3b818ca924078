//! Startup parameters beyond the usual ones (`options` with `-c name=value` as PGOPTIONS and
//! JDBC send it, asyncpg's `server_settings`, JDBC's `extra_float_digits`) are the client's
//! session values on whichever server serves it, in both pool modes, never another client's;
//! RESET, RESET ALL and DISCARD ALL bring them back, as on Postgres; what pgtier cannot apply
//! is refused with a FATAL naming it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const LIMIT: Duration = Duration::from_secs(10);

/// What the issue's PGOPTIONS sets.
const OPTIONS: &str =
    "-c statement_timeout=1234 -c search_path=myschema -c intervalstyle=postgres_verbose";
/// The values it gives on Postgres.
const OPTION_VALUES: &str = "myschema|1234ms|postgres_verbose";
/// Reads them back.
const SHOW: &str = "SELECT current_setting('search_path') || '|' || current_setting('statement_timeout') || '|' || current_setting('intervalstyle')";

/// One pgtier per name (its pool mode: "session..." or "transaction..."), each with one server
/// connection, so that every client of it shares that connection (in session mode one after
/// the other). Tests that end server connections (refusals) have their own, so that "one
/// server connection serves both" holds for the others.
fn pgtier(name: &str) -> &'static Pgtier {
    static ALL: OnceLock<Mutex<HashMap<String, &'static Pgtier>>> = OnceLock::new();
    let mut all = ALL.get_or_init(Mutex::default).lock().unwrap();
    all.entry(name.to_owned()).or_insert_with(|| {
        let c = Cluster::shared();
        let user = user(name);
        let mode = if name.starts_with("session") {
            "session"
        } else {
            "transaction"
        };
        scram_role(c, &user, &user).unwrap();
        let px = ConfigBuilder::new(c)
            .global(&format!("pool_mode = \"{mode}\""))
            // Tests of one binary run at once: a client waits while another (pinned) holds
            // the only server, never for ever.
            .global("query_wait_timeout = \"60s\"")
            .user(
                &user,
                &format!("auth = \"trust\"\nserver_password = \"{user}\""),
            )
            .database("pool_size = 1")
            .start()
            .unwrap();
        Box::leak(Box::new(px))
    })
}

fn user(mode: &str) -> String {
    format!("startup_{mode}")
}

/// psql through pgtier with `env` set, running each of `commands` (one `-c` each, in one
/// session); (success, stdout, stderr).
fn psql(mode: &str, env: &[(&str, &str)], commands: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(pgtier_kit::bin_path("psql").unwrap());
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(format!(
        "postgres://{}@127.0.0.1:{}/app",
        user(mode),
        pgtier(mode).port()
    ));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn client(mode: &str, extra: &str) -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user={} dbname=app {extra}",
        pgtier(mode).port(),
        user(mode)
    );
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// The first value of the first row of `sql`.
async fn value(c: &Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .expect("a row")
}

/// psql with the issue's PGOPTIONS reads its values, then psql without reads the defaults
/// on the same (only) server connection; a client with the same options next to a plain
/// one on that connection (transaction mode: interleaved) sees only its own.
async fn options_apply_and_never_reach_another_client(mode: &str) {
    let (ok, out, err) = psql(mode, &[("PGOPTIONS", OPTIONS)], &[SHOW]);
    assert!(ok, "{err}");
    assert_eq!(out, OPTION_VALUES);
    let (ok, defaults, err) = psql(mode, &[], &[SHOW]);
    assert!(ok, "{err}");
    assert_ne!(defaults, OPTION_VALUES);
    assert!(
        !defaults.contains("myschema") && !defaults.contains("1234ms"),
        "{defaults}"
    );
    if mode == "session" {
        return; // one server connection: the next client waits for this one to leave
    }
    let a = client(mode, &format!("options='{OPTIONS}'")).await;
    let b = client(mode, "").await;
    for _ in 0..5 {
        assert_eq!(value(&a, SHOW).await, OPTION_VALUES);
        assert_eq!(value(&b, SHOW).await, defaults);
    }
    assert_eq!(
        value(&a, "SELECT pg_backend_pid()::text").await,
        value(&b, "SELECT pg_backend_pid()::text").await,
        "one server connection serves both"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pgoptions_apply_in_transaction_mode_and_never_reach_another_client() {
    options_apply_and_never_reach_another_client("transaction").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgoptions_apply_in_session_mode_and_never_reach_the_next_client() {
    options_apply_and_never_reach_another_client("session").await;
}

/// Startup parameters other than the reported ones and `track_extra_params` (asyncpg's
/// `server_settings`, JDBC's `extra_float_digits`) over the raw protocol: applied, and the
/// reported one among them shows in the welcome ParameterStatus.
async fn raw_startup_parameters_apply(mode: &str) {
    let mut s = TcpStream::connect(pgtier(mode).addr()).await.unwrap();
    let u = user(mode);
    let startup = wire::startup_packet(
        0,
        &[
            ("user", &u),
            ("database", "app"),
            ("extra_float_digits", "3"),
            ("lock_timeout", "4321"),
            ("IntervalStyle", "iso_8601"),
            // Not reported before Postgres 18: set like the others, never left to the next.
            ("search_path", "startup_schema"),
            ("options", "-c myapp.tenant=42"),
        ],
    );
    s.write_all(&startup).await.unwrap();
    let welcome = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert!(
        welcome
            .iter()
            .any(|m| m.tag == b'S' && m.body == b"IntervalStyle\0iso_8601\0"),
        "{welcome:?}"
    );
    let sql = "SELECT current_setting('extra_float_digits') || '|' || current_setting('lock_timeout') || '|' || current_setting('intervalstyle') || '|' || 0.1::float8 || '|' || current_setting('search_path') || '|' || current_setting('myapp.tenant')";
    s.write_all(&wire::query(sql)).await.unwrap();
    let reply = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert_eq!(
        wire::first_value(&reply),
        "3|4321ms|iso_8601|0.1|startup_schema|42"
    );
}

/// What a client that gave none of those startup parameters sees on the one server
/// connection the client above used.
const PLAIN: &str = "SELECT current_setting('extra_float_digits') || '|' || current_setting('lock_timeout') || '|' || current_setting('search_path') || '|' || coalesce(current_setting('myapp.tenant', true), '')";

fn plain_values() -> &'static str {
    "1|0|\"$user\", public|"
}

#[tokio::test(flavor = "multi_thread")]
async fn other_startup_parameters_apply_in_transaction_mode() {
    let c = client("transaction", "").await;
    raw_startup_parameters_apply("transaction").await;
    // And not to another client of the one server connection.
    assert_eq!(value(&c, PLAIN).await, plain_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn other_startup_parameters_apply_in_session_mode() {
    raw_startup_parameters_apply("session").await;
    let c = client("session", "").await;
    assert_eq!(value(&c, PLAIN).await, plain_values());
}

/// Logs in with `params`; the FATAL pgtier answers at login or at the first query.
async fn refused(mode: &str, params: &[(&str, &str)]) -> (String, String) {
    let mut s = TcpStream::connect(pgtier(mode).addr()).await.unwrap();
    let u = user(mode);
    let mut all = vec![("user", u.as_str()), ("database", "app")];
    all.extend_from_slice(params);
    s.write_all(&wire::startup_packet(0, &all)).await.unwrap();
    // Refused at login (an ErrorResponse instead of the welcome), or at the first query.
    let (code, message) = loop {
        let m = wire::read_msg(&mut s, LIMIT).await.unwrap();
        match m.tag {
            b'E' => break (m.field(b'C').unwrap(), m.field(b'M').unwrap()),
            b'Z' => {
                s.write_all(&wire::query("SELECT 1")).await.unwrap();
                break wire::expect_fatal(&mut s, LIMIT).await.unwrap();
            }
            _ => {}
        }
    };
    assert!(wire::closed_within(&mut s, LIMIT).await);
    (code, message)
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_applied_is_refused_with_a_fatal_naming_it() {
    for mode in ["transaction_refusals", "session_refusals"] {
        // A parameter Postgres takes only at backend start.
        let (code, message) = refused(mode, &[("options", "-c log_connections=on")]).await;
        assert_eq!(code, "55P02", "{message}");
        assert!(message.contains("log_connections"), "{message}");
        // An unknown parameter, and a bad value.
        let (code, message) = refused(mode, &[("no_such_setting", "1")]).await;
        assert_eq!(code, "42704", "{message}");
        assert!(message.contains("no_such_setting"), "{message}");
        let (code, message) = refused(mode, &[("options", "--statement-timeout=soon")]).await;
        assert_eq!(code, "22023", "{message}");
        assert!(message.contains("statement_timeout"), "{message}");
        // Switches other than -c and --name=value, refused at login.
        let (code, message) = refused(mode, &[("options", "-d 5")]).await;
        assert_eq!(code, "0A000", "{message}");
        assert!(message.contains("\"-d\""), "{message}");
        let (code, message) = refused(mode, &[("options", "-c work_mem")]).await;
        assert_eq!(code, "42601", "{message}");
        assert!(message.contains("work_mem"), "{message}");
        // The one server connection still serves others.
        let c = client(mode, "").await;
        assert_eq!(value(&c, "SELECT 1").await, "1");
    }
    // psql shows the FATAL.
    let (ok, _, err) = psql(
        "transaction_refusals",
        &[("PGOPTIONS", "-c log_connections=on")],
        &["SELECT 1"],
    );
    assert!(
        !ok && err.contains("FATAL") && err.contains("log_connections"),
        "{err}"
    );
}

/// RESET, SET ... TO DEFAULT, RESET ALL and DISCARD ALL go back to the client's startup
/// values (PGDATESTYLE, PGOPTIONS), as on Postgres, not to the server's defaults.
fn reset_restores_startup_values(mode: &str) {
    let env = [
        ("PGDATESTYLE", "SQL, DMY"),
        ("PGOPTIONS", "-c statement_timeout=1234 -c work_mem=3MB"),
    ];
    let show = "SELECT current_setting('DateStyle') || '|' || current_setting('statement_timeout') || '|' || current_setting('work_mem')";
    let startup = "SQL, DMY|1234ms|3MB";
    // PGDATESTYLE alone (a startup parameter pgtier already applied): RESET goes back to it.
    let (ok, out, err) = psql(
        mode,
        &env[..1],
        &[
            "SET DateStyle = 'German'",
            "RESET DateStyle",
            "SHOW DateStyle",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out, "SQL, DMY",
        "RESET DateStyle after PGDATESTYLE in {mode} mode"
    );
    let set = "SET DateStyle = 'German'";
    let set2 = "SET statement_timeout = 5000";
    for (resets, what) in [
        (&["RESET DateStyle", "RESET statement_timeout"][..], "RESET"),
        (
            &[
                "SET DateStyle TO DEFAULT",
                "SET statement_timeout TO DEFAULT",
            ][..],
            "TO DEFAULT",
        ),
        (&["RESET ALL"][..], "RESET ALL"),
        (&["DISCARD ALL"][..], "DISCARD ALL"),
    ] {
        let mut commands = vec![set, set2, show];
        commands.extend_from_slice(resets);
        commands.push(show);
        let (ok, out, err) = psql(mode, &env, &commands);
        assert!(ok, "{what}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            ["German, DMY|5s|3MB", startup],
            "{what} in {mode} mode"
        );
    }
}

#[test]
fn reset_restores_startup_values_in_transaction_mode() {
    reset_restores_startup_values("transaction");
}

#[test]
fn reset_restores_startup_values_in_session_mode() {
    reset_restores_startup_values("session");
}

/// In transaction mode a RESET ALL of a client with startup values is followed (no pinning):
/// the client gets its startup values back and a client sharing its one server connection
/// keeps the defaults.
#[tokio::test(flavor = "multi_thread")]
async fn reset_all_with_startup_values_is_followed_without_leaking() {
    let mode = "transaction";
    let a = client(mode, &format!("options='{OPTIONS}'")).await;
    let b = client(mode, "").await;
    let defaults = value(&b, SHOW).await;
    // (A RESET by name of a parameter outside track_extra_params pins, as its SET does.)
    for reset in ["RESET ALL", "DISCARD ALL"] {
        a.simple_query(reset).await.unwrap();
        assert_eq!(value(&a, SHOW).await, OPTION_VALUES, "after {reset}");
        assert_eq!(value(&b, SHOW).await, defaults, "after {reset}");
    }
    // RESET of a reported parameter: the ParameterStatus the client last got is its value.
    a.simple_query("SET intervalstyle = 'sql_standard'")
        .await
        .unwrap();
    a.simple_query("RESET intervalstyle").await.unwrap();
    assert_eq!(value(&a, SHOW).await, OPTION_VALUES);
    assert_eq!(value(&b, SHOW).await, defaults);
}

/// asyncpg's `server_settings` (startup parameters) in transaction mode on one server
/// connection shared with a plain connection.
#[test]
fn asyncpg_server_settings_follow_the_connection() {
    let out = Command::new("python3")
        .args(["-c", "import asyncpg"])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "Python module asyncpg is missing: python3 -m pip install -r tests/python/requirements.txt"
    );
    let px = pgtier("transaction");
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python/asyncpg_server_settings.py");
    let out = Command::new("timeout")
        .args(["-s", "KILL", "120", "python3"])
        .arg(script)
        .args([
            "127.0.0.1",
            &px.port().to_string(),
            &user("transaction"),
            "app",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("asyncpg server_settings OK"),
        "{stdout}\n{stderr}\n{}",
        px.log()
    );
}

/// A RESET ALL over the extended protocol (JDBC's and psycopg's plain statement), with a query
/// pipelined right after it: that query already sees the startup values, in both modes, and
/// a named statement that resets does so at each execution.
#[tokio::test(flavor = "multi_thread")]
async fn an_extended_protocol_reset_restores_startup_values_before_what_follows() {
    for mode in ["transaction", "session"] {
        let mut s = TcpStream::connect(pgtier(mode).addr()).await.unwrap();
        let u = user(mode);
        let startup = [
            ("user", u.as_str()),
            ("database", "app"),
            ("options", OPTIONS),
        ];
        s.write_all(&wire::startup_packet(0, &startup))
            .await
            .unwrap();
        wire::read_until_ready(&mut s, LIMIT).await.unwrap();
        let unit = |name: &str, sql: &str| {
            [
                wire::parse(name, sql),
                wire::bind(name),
                wire::execute(),
                wire::sync(),
            ]
            .concat()
        };
        for reset in [
            unit("", "RESET ALL"),
            unit("r", "RESET ALL"),
            [wire::bind("r"), wire::execute(), wire::sync()].concat(),
        ] {
            s.write_all(&[reset, wire::query(SHOW)].concat())
                .await
                .unwrap();
            let reply = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
            assert!(!reply.iter().any(|m| m.tag == b'E'), "{reply:?}");
            let reply = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
            assert_eq!(wire::first_value(&reply), OPTION_VALUES, "{mode} mode");
        }
        drop(s);
        // The next client of the one server connection has the defaults.
        let c = client(mode, "").await;
        assert!(!value(&c, SHOW).await.contains("1234ms"));
    }
}

/// A startup `search_path` (JDBC's `currentSchema`) on Postgres < 18, which does not report
/// it: it used to be treated as reported, so it was set for the client but never reset for
/// the next client of the server connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_startup_search_path_never_reaches_another_client() {
    let mode = "transaction";
    let mut s = TcpStream::connect(pgtier(mode).addr()).await.unwrap();
    let u = user(mode);
    let startup = [
        ("user", u.as_str()),
        ("database", "app"),
        ("search_path", "leaky_schema"),
    ];
    s.write_all(&wire::startup_packet(0, &startup))
        .await
        .unwrap();
    wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    let b = client(mode, "").await;
    for _ in 0..3 {
        s.write_all(&wire::query("SHOW search_path")).await.unwrap();
        let reply = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
        assert_eq!(wire::first_value(&reply), "leaky_schema");
        assert_eq!(value(&b, "SHOW search_path").await, "\"$user\", public");
    }
}
