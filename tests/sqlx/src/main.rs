//! sqlx (Rust: runtime API, and with the `checked` feature the `query!` macros) through
//! pgtier in transaction mode; run by tests/tests/drivers_more.rs.
//!
//! sqlx prepares every `sqlx::query` as a named statement (`sqlx_s_1`, `sqlx_s_2`, ... in the
//! order a connection first runs them) and keeps it in a per-connection cache: connections that
//! run their queries in different orders use the same names for different texts, which a pooler
//! sharing server connections must keep apart. The `query!` macros (src/checked.rs) need a
//! database at compile time: the test builds them with the `checked` feature once its cluster
//! is up.
//!
//! Usage: sqlx_driver HOST PORT USER DB PASSWORD [WORKERS] [OPS]
//! Prints "sqlx OK ..." and exits 0 when every check passed.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, Executor, Row};

#[cfg(feature = "checked")]
mod checked;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[macro_export]
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+).into());
        }
    };
}

fn code(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code().map(|c| c.into_owned()))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: sqlx_driver HOST PORT USER DB PASSWORD [WORKERS] [OPS]");
        std::process::exit(2);
    }
    let opts = PgConnectOptions::new()
        .host(&args[1])
        .port(args[2].parse().expect("port"))
        .username(&args[3])
        .database(&args[4])
        .password(&args[5]);
    let workers: usize = args.get(6).map_or(20, |s| s.parse().expect("workers"));
    let ops: usize = args.get(7).map_or(200, |s| s.parse().expect("ops"));
    let t0 = Instant::now();
    if let Err(e) = run(opts, workers, ops).await {
        eprintln!("sqlx FAILED: {e}");
        std::process::exit(1);
    }
    println!(
        "sqlx OK: {workers} workers x {ops} operations in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

async fn run(opts: PgConnectOptions, workers: usize, ops: usize) -> Res<()> {
    // Password (SCRAM) login, simple-protocol and parameterized queries.
    let mut c = PgConnection::connect_with(&opts).await?;
    c.execute("DROP TABLE IF EXISTS sqlx_items; CREATE TABLE sqlx_items (id int PRIMARY KEY, v text NOT NULL)")
        .await?;
    let rows = sqlx::raw_sql("SELECT 1 AS a; SELECT 2 AS b")
        .fetch_all(&mut c)
        .await?;
    check!(
        rows.len() == 2,
        "two simple-protocol results, got {}",
        rows.len()
    );
    let v: i32 = sqlx::query_scalar("SELECT $1::int + 1")
        .bind(41)
        .fetch_one(&mut c)
        .await?;
    check!(v == 42, "parameterized query: {v}");
    let s: String = sqlx::query_scalar("SELECT $1::text || $2::text")
        .bind("pg")
        .bind("tier")
        .fetch_one(&mut c)
        .await?;
    check!(s == "pgtier", "text binds: {s}");
    println!("simple and parameterized queries: ok");

    routing(&opts, &mut c).await?;
    transactions(&mut c).await?;
    copy(&mut c).await?;
    c.close().await?;

    statement_cache(&opts).await?;
    #[cfg(feature = "checked")]
    checked::run(&opts).await?;
    concurrency(&opts, workers, ops).await?;
    Ok(())
}

/// Writes on the primary, read-your-writes on the same connection, autocommit reads on a
/// replica from a connection that has not written.
async fn routing(opts: &PgConnectOptions, c: &mut PgConnection) -> Res<()> {
    let in_recovery: bool =
        sqlx::query_scalar("INSERT INTO sqlx_items VALUES ($1, $2) RETURNING pg_is_in_recovery()")
            .bind(1)
            .bind("first")
            .fetch_one(&mut *c)
            .await?;
    check!(!in_recovery, "an INSERT ran on a replica");
    let v: Option<String> = sqlx::query_scalar("SELECT v FROM sqlx_items WHERE id = $1")
        .bind(1)
        .fetch_optional(&mut *c)
        .await?;
    check!(v.as_deref() == Some("first"), "read-your-writes: {v:?}");
    // A read from a connection that has not written goes to a replica (the scope's token may
    // send it to the primary until the replica replays the INSERT above: poll with a deadline).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut r = PgConnection::connect_with(opts).await?;
    loop {
        let on_replica: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut r)
            .await?;
        if on_replica {
            break;
        }
        check!(
            Instant::now() < deadline,
            "no autocommit read went to a replica in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.close().await?;
    println!("routing (primary writes, replica reads, read-your-writes): ok");
    Ok(())
}

async fn transactions(c: &mut PgConnection) -> Res<()> {
    // Explicit transaction rolled back.
    let mut tx = c.begin().await?;
    let prim: bool =
        sqlx::query_scalar("INSERT INTO sqlx_items VALUES ($1, $2) RETURNING pg_is_in_recovery()")
            .bind(2)
            .bind("rolled back")
            .fetch_one(&mut *tx)
            .await?;
    check!(!prim, "a transaction's INSERT ran on a replica");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlx_items WHERE id = $1")
        .bind(2)
        .fetch_one(&mut *tx)
        .await?;
    check!(n == 1, "the transaction sees its own row: {n}");
    tx.rollback().await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlx_items WHERE id = $1")
        .bind(2)
        .fetch_one(&mut *c)
        .await?;
    check!(n == 0, "rolled back row still there: {n}");
    // An error inside a transaction, 25P02 after it, the rollback, and the connection works.
    let mut tx = c.begin().await?;
    sqlx::query("INSERT INTO sqlx_items VALUES ($1, $2)")
        .bind(3)
        .bind("lost")
        .execute(&mut *tx)
        .await?;
    let e = sqlx::query_scalar::<_, i32>("SELECT 10 / $1::int")
        .bind(0)
        .fetch_one(&mut *tx)
        .await
        .expect_err("division by zero");
    check!(code(&e) == "22012", "expected 22012, got {e}");
    let e = sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .expect_err("aborted transaction");
    check!(code(&e) == "25P02", "expected 25P02, got {e}");
    tx.rollback().await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlx_items WHERE id = 3")
        .fetch_one(&mut *c)
        .await?;
    check!(n == 0, "the failed transaction's row is there");
    // A committed transaction.
    let mut tx = c.begin().await?;
    sqlx::query("INSERT INTO sqlx_items VALUES ($1, $2)")
        .bind(4)
        .bind("committed")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let v: String = sqlx::query_scalar("SELECT v FROM sqlx_items WHERE id = 4")
        .fetch_one(&mut *c)
        .await?;
    check!(v == "committed", "committed row: {v}");
    println!("transactions (rollback, error and recovery, commit): ok");
    Ok(())
}

async fn copy(c: &mut PgConnection) -> Res<()> {
    let mut cin = c
        .copy_in_raw("COPY sqlx_items (id, v) FROM STDIN WITH (FORMAT csv)")
        .await?;
    let mut data = String::new();
    for i in 1000..1500 {
        data.push_str(&format!("{i},copied {i}\n"));
    }
    cin.send(data.into_bytes()).await?;
    let n = cin.finish().await?;
    check!(n == 500, "COPY FROM STDIN rows: {n}");
    let chunks: Vec<_> = c
        .copy_out_raw("COPY (SELECT id, v FROM sqlx_items WHERE id >= 1000 ORDER BY id) TO STDOUT WITH (FORMAT csv)")
        .await?
        .try_collect()
        .await?;
    let text: String = chunks.iter().map(|b| String::from_utf8_lossy(b)).collect();
    check!(
        text.lines().count() == 500,
        "COPY TO STDOUT lines: {}",
        text.lines().count()
    );
    check!(
        text.starts_with("1000,copied 1000\n"),
        "COPY TO STDOUT: {:?}",
        &text[..40.min(text.len())]
    );
    // A COPY that fails mid-way, and the connection is usable after it.
    let mut cin = c
        .copy_in_raw("COPY sqlx_items (id, v) FROM STDIN WITH (FORMAT csv)")
        .await?;
    cin.send(b"1000,duplicate\n".to_vec()).await?;
    let e = cin.finish().await.expect_err("duplicate key in COPY");
    check!(code(&e) == "23505", "expected 23505, got {e}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlx_items WHERE id >= 1000")
        .fetch_one(&mut *c)
        .await?;
    check!(n == 500, "rows after the failed COPY: {n}");
    println!("COPY in and out (and a failing COPY): ok");
    Ok(())
}

/// 30 connections (sqlx's per-connection statement cache) on pgtier's small pool: each runs its
/// queries in its own order, so its `sqlx_s_N` names mean other texts on other connections, and
/// reuses them across many transactions.
async fn statement_cache(opts: &PgConnectOptions) -> Res<()> {
    const CONNS: usize = 30;
    const ROUNDS: i32 = 20;
    let mut tasks = Vec::new();
    for k in 0..CONNS {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = PgConnection::connect_with(&opts).await?;
            for round in 0..ROUNDS {
                for q in 0..3 {
                    match (q + k) % 3 {
                        0 => {
                            let v: i32 = sqlx::query_scalar("SELECT $1::int * 2")
                                .bind(round)
                                .fetch_one(&mut c)
                                .await?;
                            check!(v == round * 2, "conn {k}: {v}");
                        }
                        1 => {
                            let v: String = sqlx::query_scalar("SELECT $1::text || '-x'")
                                .bind(format!("{k}"))
                                .fetch_one(&mut c)
                                .await?;
                            check!(v == format!("{k}-x"), "conn {k}: {v}");
                        }
                        _ => {
                            let mut tx = c.begin().await?;
                            let r = sqlx::query("SELECT $1::int AS a, $2::bigint AS b")
                                .bind(k as i32)
                                .bind(i64::from(round))
                                .fetch_one(&mut *tx)
                                .await?;
                            let (a, b): (i32, i64) = (r.try_get(0)?, r.try_get(1)?);
                            check!(a == k as i32 && b == i64::from(round), "conn {k}: {a} {b}");
                            tx.commit().await?;
                        }
                    }
                }
            }
            // The cache did hold them: the statements are prepared once per connection.
            let cached = c.cached_statements_size();
            check!(cached >= 3, "conn {k}: {cached} cached statements");
            c.close().await?;
            Res::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("statement cache: {CONNS} connections x {ROUNDS} rounds: ok");
    Ok(())
}

/// WORKERS tasks on a sqlx pool of WORKERS connections, OPS operations each: reads, writes,
/// read-your-writes and transactions, 0 errors.
async fn concurrency(opts: &PgConnectOptions, workers: usize, ops: usize) -> Res<()> {
    let pool = PgPoolOptions::new()
        .max_connections(workers as u32)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(opts.clone())
        .await?;
    pool.execute("DROP TABLE IF EXISTS sqlx_load; CREATE TABLE sqlx_load (w int, i int, v text, PRIMARY KEY (w, i))")
        .await?;
    let mut tasks = Vec::new();
    for w in 0..workers as i32 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut replica_reads = 0usize;
            for i in 0..ops as i32 {
                match i % 4 {
                    0 => {
                        // Write then read it back on the same connection.
                        let mut c = pool.acquire().await?;
                        sqlx::query("INSERT INTO sqlx_load VALUES ($1, $2, $3)")
                            .bind(w)
                            .bind(i)
                            .bind(format!("{w}/{i}"))
                            .execute(&mut *c)
                            .await?;
                        let v: Option<String> =
                            sqlx::query_scalar("SELECT v FROM sqlx_load WHERE w = $1 AND i = $2")
                                .bind(w)
                                .bind(i)
                                .fetch_optional(&mut *c)
                                .await?;
                        check!(
                            v == Some(format!("{w}/{i}")),
                            "worker {w} op {i}: stale {v:?}"
                        );
                    }
                    1 => {
                        let r: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                            .fetch_one(&pool)
                            .await?;
                        replica_reads += usize::from(r);
                    }
                    2 => {
                        let mut tx = pool.begin().await?;
                        sqlx::query("UPDATE sqlx_load SET v = v || '+' WHERE w = $1 AND i = $2")
                            .bind(w)
                            .bind(i - 2)
                            .execute(&mut *tx)
                            .await?;
                        let v: String =
                            sqlx::query_scalar("SELECT v FROM sqlx_load WHERE w = $1 AND i = $2")
                                .bind(w)
                                .bind(i - 2)
                                .fetch_one(&mut *tx)
                                .await?;
                        check!(v.ends_with('+'), "worker {w} op {i}: {v}");
                        tx.commit().await?;
                    }
                    _ => {
                        let n: i64 =
                            sqlx::query_scalar("SELECT count(*) FROM generate_series(1, $1::int)")
                                .bind(i)
                                .fetch_one(&pool)
                                .await?;
                        check!(n == i64::from(i), "worker {w} op {i}: {n}");
                    }
                }
            }
            Res::Ok(replica_reads)
        }));
    }
    let mut replica_reads = 0;
    for t in tasks {
        replica_reads += t.await??;
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlx_load")
        .fetch_one(&pool)
        .await?;
    let expect = (0..ops).filter(|i| i % 4 == 0).count() * workers;
    check!(rows == expect as i64, "rows {rows}, expected {expect}");
    pool.close().await;
    println!(
        "concurrency: {workers} workers x {ops} operations, 0 errors, {replica_reads} of {} autocommit reads on replicas",
        (0..ops).filter(|i| i % 4 == 1).count() * workers
    );
    Ok(())
}
