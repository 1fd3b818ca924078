//! Limits per user and per database (issue 15): client limits (FATAL 53300 naming the limit),
//! server limits shared between pools (a wait like a full pool, idle connections of other pools
//! closed for it), per-user pool_size and pool_mode, query_timeout and transaction_timeout.

use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::{
    admin_console, connect, scram_role, server_connections, simple_rows, ConfigBuilder,
};
use pgtier_kit::{Cluster, FaultProxy, Pgtier};
use tokio_postgres::Client;

const PW: &str = "limits-pw";

fn db_error(e: &anyhow::Error) -> (String, String) {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .map(|e| (e.code().code().to_owned(), e.message().to_owned()))
        .unwrap_or_else(|| ("none".into(), e.to_string()))
}

fn pg_error(e: &tokio_postgres::Error) -> (String, String) {
    e.as_db_error()
        .map(|e| (e.code().code().to_owned(), e.message().to_owned()))
        .unwrap_or_else(|| ("none".into(), e.to_string()))
}

/// The admin console's rows of `sql` as (column name → value) lookups.
async fn admin_rows(admin: &Client, sql: &str) -> Vec<std::collections::HashMap<String, String>> {
    simple_rows(admin, sql)
        .await
        .iter()
        .map(|r| {
            r.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                .collect()
        })
        .collect()
}

/// Waits until `check` holds (re-run every 20 ms), up to 10 s.
async fn until<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SHOW USERS / SHOW DATABASES row whose `name` is `name`.
async fn row_of(
    admin: &Client,
    sql: &str,
    name: &str,
) -> Result<std::collections::HashMap<String, String>> {
    admin_rows(admin, sql)
        .await
        .into_iter()
        .find(|r| r["name"] == name)
        .ok_or_else(|| anyhow::anyhow!("no {name} row in {sql}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn client_limits_per_user_and_per_database_refuse_with_53300_naming_the_limit() -> Result<()>
{
    let cluster = Cluster::shared();
    for u in ["lim_cu1", "lim_cu2"] {
        scram_role(cluster, u, PW)?;
    }
    let px = ConfigBuilder::new(cluster)
        .global("max_db_client_connections = 3")
        .global("admin_users = [\"lim_admin\"]")
        .user("lim_admin", "password = \"admin-pw\"")
        .user(
            "lim_cu1",
            &format!("password = \"{PW}\"\nmax_user_client_connections = 2"),
        )
        .user("lim_cu2", &format!("password = \"{PW}\""))
        .start()?;
    let a1 = connect(&px, "lim_cu1", PW).await?;
    let a2 = connect(&px, "lim_cu1", PW).await?;
    let (code, message) = db_error(&connect(&px, "lim_cu1", PW).await.unwrap_err());
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("max_user_client_connections = 2") && message.contains("lim_cu1"),
        "{message}"
    );
    let b1 = connect(&px, "lim_cu2", PW).await?;
    let (code, message) = db_error(&connect(&px, "lim_cu2", PW).await.unwrap_err());
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("max_db_client_connections = 3") && message.contains("\"app\""),
        "{message}"
    );
    // The admin console reports the limits and the counts.
    let admin = admin_console(&px, "lim_admin", "admin-pw").await;
    let u = row_of(&admin, "SHOW USERS", "lim_cu1").await?;
    assert_eq!(u["max_user_client_connections"], "2");
    assert_eq!(u["current_client_connections"], "2");
    let d = row_of(&admin, "SHOW DATABASES", "app").await?;
    assert_eq!(d["max_client_connections"], "3");
    assert_eq!(d["current_client_connections"], "3");
    // The refused logins cost nothing: the clients in are served, and one leaving makes room.
    a1.simple_query("SELECT 1").await?;
    drop(a1);
    until("the user's client count drops", || async {
        let u = row_of(&admin, "SHOW USERS", "lim_cu1").await?;
        Ok(u["current_client_connections"] == "1")
    })
    .await?;
    let a3 = connect(&px, "lim_cu1", PW).await?;
    a3.simple_query("SELECT 1").await?;
    drop((a2, b1));
    Ok(())
}

/// Starts a transaction on `c` that holds a server connection.
async fn hold(c: &Client) -> Result<()> {
    c.batch_execute("BEGIN; SELECT 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_db_connections_is_shared_by_users_waits_fifo_and_closes_idle_connections_of_others(
) -> Result<()> {
    let cluster = Cluster::shared();
    for u in ["lim_db1", "lim_db2"] {
        scram_role(cluster, u, PW)?;
    }
    let px = ConfigBuilder::new(cluster)
        .global("query_wait_timeout = \"1s\"")
        .global("admin_users = [\"lim_admin\"]")
        .user("lim_admin", "password = \"admin-pw\"")
        .user("lim_db1", &format!("password = \"{PW}\""))
        .user("lim_db2", &format!("password = \"{PW}\""))
        .database("pool_size = 5")
        .database("max_db_connections = 2")
        .start()?;
    let both = || -> Result<i64> {
        Ok(server_connections(cluster, "lim_db1")? + server_connections(cluster, "lim_db2")?)
    };
    let (x1, x2) = (
        connect(&px, "lim_db1", PW).await?,
        connect(&px, "lim_db1", PW).await?,
    );
    // Logged in first: a login needs a server connection for the welcome while its pool has
    // none yet, and would wait like a query.
    let (y, y2) = (
        connect(&px, "lim_db2", PW).await?,
        connect(&px, "lim_db2", PW).await?,
    );
    hold(&x1).await?;
    hold(&x2).await?;
    // The database's two connections are busy: lim_db2 waits, then gets 53300 naming the limit.
    let (code, message) = pg_error(&y.simple_query("SELECT 1").await.unwrap_err());
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("max_db_connections = 2") && message.contains("database \"app\""),
        "{message}"
    );
    // A waiter gets the slot of the next connection released (closed, not pooled).
    let waiter = tokio::spawn(async move {
        let r = y2.simple_query("SELECT current_user").await;
        (y2, r)
    });
    let admin = admin_console(&px, "lim_admin", "admin-pw").await;
    until("lim_db2 waits in SHOW POOLS", || async {
        Ok(admin_rows(&admin, "SHOW POOLS")
            .await
            .iter()
            .any(|r| r["user"] == "lim_db2" && r["cl_waiting"] == "1"))
    })
    .await?;
    x1.batch_execute("COMMIT").await?;
    let (y2, served) = tokio::time::timeout(Duration::from_secs(5), waiter).await??;
    let rows = served?;
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("lim_db2"))
    );
    assert!(both()? <= 2, "more than max_db_connections open");
    // With both idle, the other user's idle connections are closed to make room.
    x2.batch_execute("COMMIT").await?;
    y2.batch_execute("BEGIN; SELECT 1").await?;
    let y3 = connect(&px, "lim_db2", PW).await?;
    y3.batch_execute("BEGIN; SELECT 1").await?;
    assert_eq!(server_connections(cluster, "lim_db2")?, 2);
    assert_eq!(server_connections(cluster, "lim_db1")?, 0);
    let d = row_of(&admin, "SHOW DATABASES", "app").await?;
    assert_eq!(d["max_connections"], "2");
    assert_eq!(d["current_connections"], "2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_user_connections_counts_one_user_across_databases() -> Result<()> {
    let cluster = Cluster::shared();
    scram_role(cluster, "lim_usr", PW)?;
    let px = ConfigBuilder::new(cluster)
        .global("query_wait_timeout = \"1s\"")
        .user(
            "lim_usr",
            &format!("password = \"{PW}\"\nmax_user_connections = 1"),
        )
        .database(&format!(
            "[databases.app2]\nprimary = \"{}\"\ndbname = \"app\"",
            cluster.primary().addr()
        ))
        .start()?;
    let a = connect(&px, "lim_usr", PW).await?;
    let dsn = format!(
        "host=127.0.0.1 port={} user=lim_usr password={PW} dbname=app2 connect_timeout=10",
        px.port()
    );
    // Logged in to both first (a login needs a connection while its pool has none).
    let b = pgtier_kit::tls::connect(&dsn).await?;
    let b2 = pgtier_kit::tls::connect(&dsn).await?;
    hold(&a).await?;
    let (code, message) = pg_error(&b.simple_query("SELECT 1").await.unwrap_err());
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("max_user_connections = 1") && message.contains("user \"lim_usr\""),
        "{message}"
    );
    // Like a full pool, the wait ends the client.
    assert!(b.is_closed() || b.simple_query("SELECT 1").await.is_err());
    a.batch_execute("COMMIT").await?;
    // The idle connection of database app is closed for app2.
    let rows = simple_rows(&b2, "SELECT current_database()").await;
    assert_eq!(rows[0].get(0), Some("app"));
    assert_eq!(server_connections(cluster, "lim_usr")?, 1);
    Ok(())
}

async fn backend_pid(c: &Client) -> Result<i32> {
    Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_overrides_pool_size_and_pool_mode() -> Result<()> {
    let cluster = Cluster::shared();
    for u in ["lim_small", "lim_sess"] {
        scram_role(cluster, u, PW)?;
    }
    let px = ConfigBuilder::new(cluster)
        .global("admin_users = [\"lim_admin\"]")
        .user("lim_admin", "password = \"admin-pw\"")
        .user("lim_small", &format!("password = \"{PW}\"\npool_size = 1"))
        .user(
            "lim_sess",
            &format!("password = \"{PW}\"\npool_mode = \"session\""),
        )
        .database("pool_size = 4")
        .start()?;
    // pool_size 1: a second transaction waits for the first.
    let (s1, s2) = (
        connect(&px, "lim_small", PW).await?,
        connect(&px, "lim_small", PW).await?,
    );
    hold(&s1).await?;
    let second = tokio::spawn(async move { (s2.simple_query("SELECT 1").await.is_ok(), s2) });
    let admin = admin_console(&px, "lim_admin", "admin-pw").await;
    until("lim_small's second client waits", || async {
        Ok(admin_rows(&admin, "SHOW POOLS")
            .await
            .iter()
            .any(|r| r["user"] == "lim_small" && r["cl_waiting"] == "1" && r["pool_size"] == "1"))
    })
    .await?;
    s1.batch_execute("COMMIT").await?;
    assert!(
        tokio::time::timeout(Duration::from_secs(5), second)
            .await??
            .0
    );
    assert_eq!(server_connections(cluster, "lim_small")?, 1);
    // Session mode: each client keeps its own server for its whole session.
    let (a, b) = (
        connect(&px, "lim_sess", PW).await?,
        connect(&px, "lim_sess", PW).await?,
    );
    let pa = backend_pid(&a).await?;
    assert_ne!(pa, backend_pid(&b).await?);
    for _ in 0..3 {
        assert_eq!(backend_pid(&a).await?, pa);
    }
    let u = row_of(&admin, "SHOW USERS", "lim_sess").await?;
    assert_eq!(u["pool_mode"], "session");
    let u = row_of(&admin, "SHOW USERS", "lim_small").await?;
    assert_eq!(u["pool_size"], "1");
    Ok(())
}

fn count_rows(cluster: &Cluster, table: &str) -> Result<i64> {
    Ok(cluster
        .primary()
        .psql_db("app", &format!("SELECT count(*) FROM {table}"))?
        .trim()
        .parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_cancels_with_57014_and_transaction_timeout_ends_the_client_with_25p04(
) -> Result<()> {
    const TABLE: &str = "lim_tx_rows";
    let cluster = Cluster::shared();
    for u in ["lim_qt", "lim_tt"] {
        scram_role(cluster, u, PW)?;
    }
    let px = ConfigBuilder::new(cluster)
        .global("query_timeout = \"300ms\"")
        .user("lim_qt", &format!("password = \"{PW}\""))
        .user(
            "lim_tt",
            &format!("password = \"{PW}\"\nquery_timeout = 0\ntransaction_timeout = \"1s\""),
        )
        .start()?;
    let q = connect(&px, "lim_qt", PW).await?;
    let started = Instant::now();
    let (code, message) = pg_error(&q.simple_query("SELECT pg_sleep(10)").await.unwrap_err());
    assert_eq!(code, "57014", "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The connection goes on: the server was canceled, not closed.
    assert_eq!(simple_rows(&q, "SELECT 7").await[0].get(0), Some("7"));
    // A user's own setting wins: query_timeout = 0 for lim_tt.
    let t = connect(&px, "lim_tt", PW).await?;
    t.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int)"
    ))
    .await?;
    t.simple_query("SELECT pg_sleep(0.5)").await?;
    // A transaction open past 1 s ends the client; nothing of it commits.
    t.batch_execute(&format!("BEGIN; INSERT INTO {TABLE} VALUES (1)"))
        .await?;
    let (code, message) = pg_error(&t.simple_query("SELECT pg_sleep(5)").await.unwrap_err());
    assert_eq!(code, "25P04", "{message}");
    assert!(message.contains("transaction_timeout"), "{message}");
    assert!(t.simple_query("SELECT 1").await.is_err());
    assert_eq!(count_rows(cluster, TABLE)?, 0);
    drop(px);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn query_timeout_closes_a_server_that_ignores_the_cancel() -> Result<()> {
    let cluster = Cluster::shared();
    scram_role(cluster, "lim_silent", PW)?;
    let primary = FaultProxy::start(&cluster.primary().addr()).await?;
    let px: Pgtier = ConfigBuilder::new(cluster)
        .primary(&primary.addr())
        .global("query_timeout = \"300ms\"")
        .user("lim_silent", &format!("password = \"{PW}\""))
        .start()?;
    let c = connect(&px, "lim_silent", PW).await?;
    c.simple_query("SELECT 1").await?;
    // The node goes silent: the query's replies and the cancel (a new connection through the
    // same address) are both swallowed.
    primary.blackhole();
    let started = Instant::now();
    let (code, message) = pg_error(&c.simple_query("SELECT 1").await.unwrap_err());
    let waited = started.elapsed();
    assert_eq!(code, "57014", "{message}");
    assert!(message.contains("did not answer the cancel"), "{message}");
    // query_timeout plus the 5 s grace, not a hang.
    assert!(waited < Duration::from_secs(9), "{waited:?}");
    Ok(())
}
