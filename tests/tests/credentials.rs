//! Credentials (issue 15): users from an `auth_file` (PgBouncer's userlist.txt), re-read on
//! RELOAD; a secret never reaches the log.

use pgtier_kit::fixture::{admin_console, connect, scram_role, ConfigBuilder};
use pgtier_kit::Cluster;

fn code(e: &anyhow::Error) -> Option<String> {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .map(|e| e.code().code().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_file_users_log_in_and_a_reload_picks_up_new_ones() {
    let cluster = Cluster::shared();
    scram_role(cluster, "filed", "filed-pw").unwrap();
    scram_role(cluster, "late", "late-pw").unwrap();
    let dir = pgtier_kit::make_temp_dir("pgtier-authfile").unwrap();
    let list = dir.join("userlist.txt");
    std::fs::write(
        &list,
        "; pgbouncer style\n\"filed\" \"filed-pw\"\n\"admin\" \"admin-pw\"\n",
    )
    .unwrap();
    let px = ConfigBuilder::new(cluster)
        .global(&format!("auth_file = \"{}\"", list.display()))
        .global("admin_users = [\"admin\"]")
        .global("log_level = \"debug\"")
        .user("app", "password = \"app\"")
        .start()
        .unwrap();
    let c = connect(&px, "filed", "filed-pw").await.unwrap();
    let rows = c.simple_query("SELECT current_user").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("filed"))
    );
    assert_eq!(
        code(&connect(&px, "filed", "wrong").await.unwrap_err()).as_deref(),
        Some("28P01")
    );
    assert_eq!(
        code(&connect(&px, "late", "late-pw").await.unwrap_err()).as_deref(),
        Some("28P01")
    );
    // A new line in the file, then RELOAD (as the admin from the same file).
    std::fs::write(
        &list,
        "\"filed\" \"filed-pw\"\n\"admin\" \"admin-pw\"\n\"late\" \"late-pw\"\n",
    )
    .unwrap();
    let admin = admin_console(&px, "admin", "admin-pw").await;
    admin.simple_query("RELOAD").await.unwrap();
    let late = connect(&px, "late", "late-pw").await.unwrap();
    late.simple_query("SELECT 1").await.unwrap();
    // A broken file: RELOAD refused with the line, the users stay.
    std::fs::write(&list, "\"late\n").unwrap();
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "F0000");
    assert!(
        db.message().contains("userlist.txt line 1"),
        "{}",
        db.message()
    );
    connect(&px, "late", "late-pw").await.unwrap();
    // No secret in the log, at debug level.
    let log = px.log();
    for secret in ["filed-pw", "late-pw", "admin-pw"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The role's secret as Postgres stores it (SCRAM verifier or md5 hash).
fn stored_secret(cluster: &Cluster, role: &str) -> String {
    cluster
        .primary()
        .psql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"
        ))
        .unwrap()
}

async fn where_read(c: &tokio_postgres::Client) -> (String, String) {
    let rows = c
        .simple_query("SELECT pg_is_in_recovery()::text, current_user::text")
        .await
        .unwrap();
    match &rows[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            (r.get(0).unwrap().to_owned(), r.get(1).unwrap().to_owned())
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_and_md5_pass_through_log_in_to_every_node_without_a_password_in_pgtier() {
    let cluster = Cluster::shared();
    scram_role(cluster, "passthru", "pt-secret").unwrap();
    cluster.create_md5_role("passmd5", "md5-secret").unwrap();
    cluster
        .ddl("app", "GRANT ALL ON SCHEMA public TO passmd5")
        .unwrap();
    let verifier = stored_secret(cluster, "passthru");
    let md5 = stored_secret(cluster, "passmd5");
    assert!(verifier.starts_with("SCRAM-SHA-256$") && md5.starts_with("md5"));
    // Another verifier of the same password: its keys cannot answer the server's.
    let foreign = {
        use std::io::Write;
        let mut child = std::process::Command::new(pgtier_kit::pgtier_bin().unwrap())
            .arg("verifier")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "pt-secret").unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    let px = ConfigBuilder::new(cluster)
        .with_replicas(cluster)
        .global("log_level = \"debug\"")
        .user("passthru", &format!("password = \"{verifier}\""))
        .user("passmd5", &format!("password = \"{md5}\"\nauth = \"md5\""))
        .user(
            "otherver",
            &format!("password = \"{foreign}\"\nserver_user = \"otherver\""),
        )
        .user("app", "password = \"app\"")
        .start()
        .unwrap();
    for (user, pw) in [("passthru", "pt-secret"), ("passmd5", "md5-secret")] {
        let c = connect(&px, user, pw).await.unwrap();
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS pt_{user}; CREATE TABLE pt_{user} (v int); INSERT INTO pt_{user} VALUES (1)"
        ))
        .await
        .unwrap();
        // A read served by a replica: a server login there too, by pass-through.
        pgtier_kit::fixture::replica_in_rotation(&px, user, pw)
            .await
            .unwrap();
        let (_, current) = where_read(&c).await;
        assert_eq!(current, user);
        assert_eq!(
            code(&connect(&px, user, "wrong").await.unwrap_err()).as_deref(),
            Some("28P01")
        );
    }
    // psql (libpq), psycopg and asyncpg log in through pass-through too.
    let port = px.port();
    let script = format!(
        "import asyncio, asyncpg, psycopg\n\
         c = psycopg.connect('host=127.0.0.1 port={port} user=passthru password=pt-secret dbname=app')\n\
         assert c.execute('SELECT current_user').fetchone()[0] == 'passthru'\n\
         async def main():\n\
         \x20   a = await asyncpg.connect(host='127.0.0.1', port={port}, user='passthru', password='pt-secret', database='app')\n\
         \x20   assert await a.fetchval('SELECT current_user') == 'passthru'\n\
         \x20   await a.close()\n\
         asyncio.run(main())\n\
         print('drivers OK')\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("drivers OK"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(pgtier_kit::bin_path("psql").unwrap())
        .args(["-X", "-A", "-t", "-c", "SELECT current_user"])
        .arg(format!(
            "host=127.0.0.1 port={port} user=passthru password=pt-secret dbname=app"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "passthru");
    // A role whose verifier in pgtier is not the database's: the client's login succeeds, the
    // server login cannot, with a message that says why.
    cluster.create_role("otherver", "pt-secret").unwrap();
    let err = connect(&px, "otherver", "pt-secret").await.unwrap_err();
    let db = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "08001");
    assert!(
        db.message().contains("verifier differs"),
        "{}",
        db.message()
    );
    let log = px.log();
    for secret in ["pt-secret", "md5-secret"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    assert!(!log.contains(&md5), "the md5 hash in the log");
    assert!(!log.contains(&verifier), "the verifier in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_pass_through_binds_to_the_server_certificate_over_tls() {
    let ca = pgtier_kit::TestCa::new("pass-through CA").unwrap();
    let cluster = Cluster::start_tls(0, &ca).unwrap();
    scram_role(&cluster, "ptls", "ptls-secret").unwrap();
    let verifier = stored_secret(&cluster, "ptls");
    let px = ConfigBuilder::new(&cluster)
        .global("log_level = \"debug\"")
        .global("server_tls_sslmode = \"require\"")
        .user("ptls", &format!("password = \"{verifier}\""))
        .user("app", "password = \"app\"")
        .start()
        .unwrap();
    let c = connect(&px, "ptls", "ptls-secret").await.unwrap();
    let rows = c
        .simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("true")),
        "{rows:?}"
    );
    let log = px.log();
    assert!(
        log.contains("SCRAM-SHA-256-PLUS"),
        "no channel-bound login in the log"
    );
    assert!(!log.contains("ptls-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_user_gets_a_scram_challenge_like_a_known_one_then_28p01() {
    use pgtier_kit::wire;
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::shared();
    scram_role(cluster, "known", "known-pw").unwrap();
    let px = ConfigBuilder::new(cluster)
        .user("known", "password = \"known-pw\"")
        .start()
        .unwrap();
    let limit = std::time::Duration::from_secs(10);
    let mut salts = Vec::new();
    for user in ["known", "nobody", "nobody"] {
        let mut s = tokio::net::TcpStream::connect(px.addr()).await.unwrap();
        s.write_all(&wire::startup_packet(
            0,
            &[("user", user), ("database", "app")],
        ))
        .await
        .unwrap();
        let m = wire::read_msg(&mut s, limit).await.unwrap();
        // AuthenticationSASL (10) offering SCRAM-SHA-256, for both.
        assert_eq!(m.tag, b'R', "{user}");
        assert_eq!(&m.body[..4], &10i32.to_be_bytes(), "{user}");
        assert!(m.body.windows(13).any(|w| w == b"SCRAM-SHA-256"));
        // The client-first message, then the server-first carries the salt.
        let first = b"n,,n=,r=abcdefghijklmnop";
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first);
        s.write_all(&wire::message(b'p', &body)).await.unwrap();
        let m = wire::read_msg(&mut s, limit).await.unwrap();
        assert_eq!(&m.body[..4], &11i32.to_be_bytes(), "{user}: SASLContinue");
        let text = String::from_utf8_lossy(&m.body[4..]).into_owned();
        let salt = text
            .split(',')
            .find_map(|a| a.strip_prefix("s="))
            .unwrap()
            .to_owned();
        salts.push(salt);
        // A wrong proof: 28P01 for both.
        let nonce = text.split(',').find_map(|a| a.strip_prefix("r=")).unwrap();
        let proof = "A".repeat(43) + "=";
        let last = format!("c=biws,r={nonce},p={proof}");
        s.write_all(&wire::message(b'p', last.as_bytes()))
            .await
            .unwrap();
        let (code, _) = wire::expect_fatal(&mut s, limit).await.unwrap();
        assert_eq!(code, "28P01", "{user}");
    }
    // The mock salt is stable per name, like a real verifier's.
    assert_eq!(salts[1], salts[2]);
    assert_ne!(salts[0], salts[1]);
}

/// The SECURITY DEFINER function the README recommends instead of reading pg_shadow as a
/// superuser.
const AUTH_FUNCTION: &str = "CREATE OR REPLACE FUNCTION public.pgtier_auth(u text) \
    RETURNS TABLE (usename name, passwd text) LANGUAGE sql SECURITY DEFINER \
    SET search_path = pg_catalog AS \
    $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = u AND rolcanlogin $$; \
    REVOKE ALL ON FUNCTION public.pgtier_auth(text) FROM PUBLIC; \
    GRANT EXECUTE ON FUNCTION public.pgtier_auth(text) TO app";

#[tokio::test(flavor = "multi_thread")]
async fn auth_query_logs_in_roles_that_exist_only_in_postgres_and_follows_password_changes() {
    let cluster = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(cluster).unwrap();
    cluster.ddl("app", AUTH_FUNCTION).unwrap();
    scram_role(cluster, "dbonly", "db-pw").unwrap();
    cluster.create_md5_role("dbmd5", "md5-pw").unwrap();
    let px = ConfigBuilder::new(cluster)
        .with_replicas(cluster)
        .global("log_level = \"debug\"")
        .global("auth_user = \"app\"")
        .global("auth_query = \"SELECT usename, passwd FROM public.pgtier_auth($1)\"")
        .global("auth_type = \"md5\"")
        .global("auth_cache_ttl = \"1s\"")
        .global("auth_cache_negative_ttl = \"1s\"")
        .global("admin_users = [\"app\"]")
        .user("app", "password = \"app\"")
        .start()
        .unwrap();
    // A SCRAM role: writes on the primary, reads on a replica (pass-through on both).
    let c = connect(&px, "dbonly", "db-pw").await.unwrap();
    c.batch_execute(
        "DROP TABLE IF EXISTS aq_t; CREATE TABLE aq_t (v int); INSERT INTO aq_t VALUES (1)",
    )
    .await
    .unwrap();
    pgtier_kit::fixture::replica_in_rotation(&px, "dbonly", "db-pw")
        .await
        .unwrap();
    // An md5 role.
    let m = connect(&px, "dbmd5", "md5-pw").await.unwrap();
    m.simple_query("SELECT 1").await.unwrap();
    for (user, pw) in [("dbonly", "wrong"), ("nosuchrole", "x"), ("dbmd5", "wrong")] {
        assert_eq!(
            code(&connect(&px, user, pw).await.unwrap_err()).as_deref(),
            Some("28P01"),
            "{user}"
        );
    }
    // The DBA changes the password in Postgres: after the TTL the new one works, the old not.
    cluster
        .primary()
        .psql("ALTER ROLE dbonly PASSWORD 'db-pw-2'")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if connect(&px, "dbonly", "db-pw-2").await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new password never worked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        code(&connect(&px, "dbonly", "db-pw").await.unwrap_err()).as_deref(),
        Some("28P01")
    );
    // The established session survives a RELOAD (its user is not in the file).
    let admin = admin_console(&px, "app", "app").await;
    admin.simple_query("RELOAD").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let c2 = connect(&px, "dbonly", "db-pw-2").await.unwrap();
    c2.simple_query("SELECT 1").await.unwrap();
    let log = px.log();
    assert!(!log.contains("db-pw"), "a password in the log");
    assert!(!log.contains("SCRAM-SHA-256$"), "a verifier in the log");
    assert!(!log.contains("md5-pw"), "a password in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_query_with_the_primary_down_fails_with_08001_in_bounded_time() {
    let cluster = Cluster::shared();
    let dead = format!("127.0.0.1:{}", pgtier_kit::free_port().unwrap());
    let px = ConfigBuilder::new(cluster)
        .primary(&dead)
        .global("auth_user = \"app\"")
        .global("server_connect_timeout = \"1s\"")
        .user("app", "password = \"app\"")
        .start()
        .unwrap();
    let t0 = std::time::Instant::now();
    let err = connect(&px, "someone", "pw").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("08001"), "{err:?}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_user_per_database_and_a_malformed_secret_fails_with_28p01_naming_only_the_user() {
    let cluster = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(cluster).unwrap();
    cluster.ddl("app", AUTH_FUNCTION).unwrap();
    scram_role(cluster, "perdb", "perdb-pw").unwrap();
    let primary = cluster.primary().addr();
    // No global auth_user: app looks users up, app2 gets a malformed secret, app3 none.
    let px = ConfigBuilder::new(cluster)
        .global("log_level = \"debug\"")
        .user("app", "password = \"app\"")
        .database("auth_user = \"app\"")
        .database("auth_query = \"SELECT usename, passwd FROM public.pgtier_auth($1)\"")
        .database(&format!(
            "[databases.app2]\nprimary = \"{primary}\"\ndbname = \"app\"\nauth_user = \"app\"\n\
             auth_query = \"SELECT $1::text, 'bogus-secret-xyz'::text\""
        ))
        .database(&format!(
            "[databases.app3]\nprimary = \"{primary}\"\ndbname = \"app\""
        ))
        .start()
        .unwrap();
    let c = connect(&px, "perdb", "perdb-pw").await.unwrap();
    let rows = c.simple_query("SELECT current_user").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("perdb"))
    );
    for db in ["app2", "app3"] {
        let dsn = format!(
            "host=127.0.0.1 port={} user=perdb password=perdb-pw dbname={db} connect_timeout=10",
            px.port()
        );
        let err = pgtier_kit::tls::connect(&dsn).await.unwrap_err();
        assert_eq!(code(&err).as_deref(), Some("28P01"), "{db}: {err:?}");
    }
    const NEEDLE: &str = "auth_query returned a secret that cannot check this login";
    let log = px.wait_for_log(NEEDLE, std::time::Duration::from_secs(5));
    let line = log
        .lines()
        .find(|l| l.contains(NEEDLE))
        .expect("error line");
    assert!(line.contains("perdb"), "{line}");
    let log = px.log();
    assert!(!log.contains("bogus-secret-xyz"), "the secret in the log");
    assert!(!log.contains("perdb-pw"), "a password in the log");
}
