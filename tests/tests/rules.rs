//! DBA routing rules (`[[databases.app.rules]]`) through pgtier on a primary + 2 replicas:
//! rules by table, by pattern, by user and by application_name, a rule's lag limit (tighter
//! and looser than the database's) with a replica whose replay is paused, read-your-writes under a `replica` rule, and `pgtier check`
//! on a bad regex. Where a statement ran is read from `pg_is_in_recovery()` and
//! `inet_server_port()`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::{connect, dsn, scram_role, ConfigBuilder};
use pgtier_kit::proxy::Pgtier;
use pgtier_kit::Cluster;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const USER: &str = "ruler";
const PW: &str = "ruler-pw";
const ANALYST: &str = "analyst";
const ANALYST_PW: &str = "analyst-pw";

const WHERE: &str = "pg_is_in_recovery(), inet_server_port()";

/// (in recovery, server port) of the node that ran `sql` (its first two columns).
async fn where_ran(c: &Client, sql: &str) -> Result<(bool, u16)> {
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            let rec = r.get(0).unwrap_or("") == "t";
            let port = r.get(1).unwrap_or("0").parse()?;
            return Ok((rec, port));
        }
    }
    anyhow::bail!("no row from {sql}")
}

/// Connects with a startup `application_name`.
async fn connect_as_app(px: &Pgtier, user: &str, pw: &str, app: &str) -> Result<Client> {
    let conninfo = format!("{} application_name={app}", dsn(px, user, pw));
    let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs `sql` until it runs on a replica (pgtier reads `pg_proc` shortly after it starts:
/// until then calls of user functions go to the primary), for up to 10 s.
async fn until_on_replica(c: &Client, sql: &str) -> Result<(bool, u16)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = where_ran(c, sql).await?;
        if r.0 || Instant::now() > deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_route_by_table_pattern_user_and_application_name() -> Result<()> {
    let cluster = Cluster::start(2)?;
    scram_role(&cluster, USER, PW)?;
    scram_role(&cluster, ANALYST, ANALYST_PW)?;
    // Functions that only read, but VOLATILE: the classifier cannot prove their calls
    // read-only, so by default they go to the primary.
    for f in ["report_total", "batch_total", "unlisted_total"] {
        cluster.ddl(
            "app",
            &format!(
                "CREATE FUNCTION {f}(int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT $1 + 1'"
            ),
        )?;
    }
    cluster.ddl(
        "app",
        "CREATE TABLE payments (id int PRIMARY KEY); INSERT INTO payments VALUES (1); \
         CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1); \
         GRANT SELECT ON payments, items TO ruler, analyst",
    )?;
    cluster.wait_replicas_caught_up()?;
    let px = ConfigBuilder::new(&cluster)
        .global("lag_check_interval = \"50ms\"")
        .with_replicas(&cluster)
        .user(USER, &format!("password = \"{PW}\""))
        .user(ANALYST, &format!("password = \"{ANALYST_PW}\""))
        .database(
            r#"
[[databases.app.rules]]
tables = ["payments"]
action = "primary"

[[databases.app.rules]]
pattern = '(?i)\breport_total\('
action = "replica"

[[databases.app.rules]]
users = ["analyst"]
action = "primary"

[[databases.app.rules]]
application_names = ["batch"]
action = "replica"

[[databases.app.rules]]
application_names = ["spread"]
action = "any"
"#,
        )
        .start()?;
    let primary = cluster.primary().port();
    let c = connect(&px, USER, PW).await?;

    // tables: reads of payments on the primary (qualified or not), other reads on replicas.
    for sql in [
        format!("SELECT {WHERE} FROM payments"),
        format!("SELECT {WHERE} FROM public.payments p JOIN items i ON i.id = p.id"),
    ] {
        for _ in 0..5 {
            assert_eq!(where_ran(&c, &sql).await?, (false, primary), "{sql}");
        }
    }
    // (Reads go to the primary until the monitors have admitted a replica.)
    let items = format!("SELECT {WHERE} FROM items");
    assert!(until_on_replica(&c, &items).await?.0, "{items}");
    for _ in 0..5 {
        assert!(where_ran(&c, &items).await?.0);
    }

    // pattern: a call the classifier cannot prove read-only, on a replica by the rule.
    let report = format!("SELECT {WHERE}, report_total(1)");
    assert!(until_on_replica(&c, &report).await?.0, "{report}");
    for _ in 0..5 {
        assert!(where_ran(&c, &report).await?.0, "{report}");
    }
    // The same kind of call that no rule matches stays on the primary.
    let unlisted = format!("SELECT {WHERE}, unlisted_total(1)");
    assert_eq!(where_ran(&c, &unlisted).await?, (false, primary));
    // Extended protocol (a prepared statement) is matched too.
    let stmt = c
        .prepare(&format!("SELECT {WHERE}, report_total($1)"))
        .await?;
    let row = c.query_one(&stmt, &[&1i32]).await?;
    assert!(row.get::<_, bool>(0), "prepared report_total call");
    // A hint comes before the rules.
    let hinted = format!("/* pgtier:primary */ SELECT {WHERE}, report_total(1)");
    assert_eq!(where_ran(&c, &hinted).await?, (false, primary));

    // users: everything the analyst runs is on the primary.
    let analyst = connect(&px, ANALYST, ANALYST_PW).await?;
    for _ in 0..5 {
        assert_eq!(
            where_ran(&analyst, &format!("SELECT {WHERE} FROM items")).await?,
            (false, primary)
        );
    }

    // application_name from the startup packet.
    let batch = connect_as_app(&px, USER, PW, "batch").await?;
    let batch_call = format!("SELECT {WHERE}, batch_total(1)");
    assert!(until_on_replica(&batch, &batch_call).await?.0);
    assert_eq!(where_ran(&c, &batch_call).await?, (false, primary));
    // ... and its current value after SET.
    c.batch_execute("SET application_name = 'batch'").await?;
    assert!(
        where_ran(&c, &batch_call).await?.0,
        "after SET application_name"
    );
    c.batch_execute("SET application_name = 'web'").await?;
    assert_eq!(where_ran(&c, &batch_call).await?, (false, primary));
    // A certain write is never sent to a replica by a rule.
    batch
        .batch_execute("CREATE TABLE IF NOT EXISTS batch_out (id int)")
        .await?;
    let (rec, port) = where_ran(
        &batch,
        &format!("INSERT INTO batch_out VALUES (1) RETURNING {WHERE}"),
    )
    .await?;
    assert_eq!((rec, port), (false, primary));

    // any: the primary and the replicas share the reads.
    let spread = connect_as_app(&px, USER, PW, "spread").await?;
    let mut ports = std::collections::HashSet::new();
    for _ in 0..30 {
        ports.insert(where_ran(&spread, &format!("SELECT {WHERE}")).await?.1);
    }
    assert!(ports.contains(&primary), "any: {ports:?}");
    assert!(ports.len() >= 2, "any: {ports:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_lag_limit_and_read_your_writes() -> Result<()> {
    let cluster = Cluster::start(2)?;
    // Production default: commits reach the replicas at once.
    cluster
        .primary()
        .psql("ALTER SYSTEM SET synchronous_commit = on")?;
    cluster.primary().psql("SELECT pg_reload_conf()")?;
    scram_role(&cluster, USER, PW)?;
    let px = ConfigBuilder::new(&cluster)
        .global("lag_check_interval = \"50ms\"")
        // The reader is the writer's user: a shared causal scope would keep its reads off
        // the paused replica, which this test needs them to reach.
        .global("causal_scope = \"connection\"")
        // No database-wide limits: only the rule keeps the paused replica out.
        .global("max_replica_lag = 0")
        .global("max_replica_lag_bytes = 0")
        .with_replicas(&cluster)
        .user(USER, &format!("password = \"{PW}\""))
        .database(
            r#"
[[databases.app.rules]]
pattern = 'fresh_enough'
action = "replica"
max_lag_bytes = 65536

[[databases.app.rules]]
tables = ["ryw"]
action = "replica"
"#,
        )
        .start()?;
    let writer = connect(&px, USER, PW).await?;
    writer
        .batch_execute("CREATE TABLE big (id int, pad text); CREATE TABLE ryw (id int PRIMARY KEY)")
        .await?;
    cluster.wait_replicas_caught_up()?;
    let paused = cluster.replica(0).port();
    let healthy = cluster.replica(1).port();
    cluster.replica(0).pause_replay()?;
    // About 2 MB of WAL that replica 0 does not replay.
    writer
        .batch_execute(
            "INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g",
        )
        .await?;
    // Let the monitors measure it (and replica 1 replay it).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A client without a causal token: default reads still use the paused replica...
    let reader = connect(&px, USER, PW).await?;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(where_ran(&reader, &format!("SELECT {WHERE}")).await?.1);
    }
    assert!(
        seen.contains(&paused),
        "without limits the paused replica stays in rotation: {seen:?}"
    );
    // ... but the rule's reads never do.
    for _ in 0..20 {
        let (rec, port) = where_ran(&reader, &format!("SELECT {WHERE} /* fresh_enough */")).await?;
        assert!(rec, "a replica is within the rule's limit");
        assert_eq!(
            port, healthy,
            "the rule's max_lag_bytes excludes the paused replica"
        );
    }

    // Read-your-writes under a `replica` rule: never a stale read of the client's own write.
    let insert = writer.prepare("INSERT INTO ryw VALUES ($1)").await?;
    let select = writer
        .prepare("SELECT count(*), pg_is_in_recovery() FROM ryw WHERE id = $1")
        .await?;
    let (mut stale, mut on_replica) = (0, 0);
    for i in 0..200 {
        writer.execute(&insert, &[&i]).await?;
        let row = writer.query_one(&select, &[&i]).await?;
        if row.get::<_, i64>(0) != 1 {
            stale += 1;
        }
        if row.get::<_, bool>(1) {
            on_replica += 1;
        }
    }
    cluster.replica(0).resume_replay()?;
    assert_eq!(
        stale, 0,
        "reads under a replica rule missed their own writes"
    );
    assert!(
        on_replica > 0,
        "the healthy replica should serve some of them"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_may_loosen_the_databases_lag_limit() -> Result<()> {
    let cluster = Cluster::start(2)?;
    scram_role(&cluster, USER, PW)?;
    let px = ConfigBuilder::new(&cluster)
        .global("lag_check_interval = \"50ms\"")
        // The reader is the writer's user: a shared causal scope would keep its reads off
        // the lagging replica, which this test needs them to reach.
        .global("causal_scope = \"connection\"")
        // One reader must reach both replicas: ties take turns with every read.
        .global("replica_round_robin = true")
        .global("max_replica_lag = 0")
        .global("max_replica_lag_bytes = 65536")
        .with_replicas(&cluster)
        .user(USER, &format!("password = \"{PW}\""))
        .database(
            r#"
[[databases.app.rules]]
pattern = 'stale_ok'
action = "replica"
max_lag_bytes = 1073741824
"#,
        )
        .start()?;
    let writer = connect(&px, USER, PW).await?;
    writer
        .batch_execute("CREATE TABLE big (id int, pad text)")
        .await?;
    cluster.wait_replicas_caught_up()?;
    let paused = cluster.replica(0).port();
    cluster.replica(0).pause_replay()?;
    // About 2 MB of WAL that replica 0 does not replay: over the database's limit.
    writer
        .batch_execute(
            "INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g",
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let reader = connect(&px, USER, PW).await?;
    // (Separate loops: the replicas take turns per read, whatever the read.)
    let mut default_seen = Vec::new();
    for _ in 0..20 {
        default_seen.push(where_ran(&reader, &format!("SELECT {WHERE}")).await?.1);
    }
    let mut rule_seen = Vec::new();
    for _ in 0..20 {
        let sql = format!("SELECT {WHERE} /* stale_ok */");
        rule_seen.push(where_ran(&reader, &sql).await?.1);
    }
    cluster.replica(0).resume_replay()?;
    assert!(
        !default_seen.contains(&paused),
        "the lagging replica is out of the default rotation: {default_seen:?}"
    );
    assert!(
        rule_seen.contains(&paused),
        "the rule's looser max_lag_bytes lets the lagging replica serve its reads: {rule_seen:?}"
    );
    Ok(())
}

#[test]
fn check_rejects_a_bad_regex_with_line_and_column() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("pgtier-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("bad-regex.toml");
    std::fs::write(
        &file,
        "[users.app]\npassword = \"app\"\n[databases.app]\nprimary = \"127.0.0.1:5432\"\n\n[[databases.app.rules]]\naction = \"replica\"\npattern = \"report_(\"\n",
    )?;
    let out = Command::new(pgtier_kit::pgtier_bin()?)
        .arg("check")
        .arg(&file)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(&file.display().to_string(), "FILE");
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FILE:8:11: databases.app.rules.0.pattern: invalid regex: "),
        "{text}"
    );
    Ok(())
}
