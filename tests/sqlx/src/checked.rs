//! sqlx's compile-time checked macros (`query!`, `query_as!`, `query_scalar!`) through pgtier.
//! Built only with the `checked` feature, by tests/tests/drivers_more.rs, with DATABASE_URL
//! naming the kit's primary (where the macros describe their statements at compile time, as a
//! developer's database would); the program then runs against pgtier. Each macro's statement
//! is prepared once per connection and kept in sqlx's statement cache, like `sqlx::query`.

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use crate::{check, Res};

/// A row of `sqlx_checked`, mapped by `query_as!`.
struct Item {
    id: i32,
    name: String,
    score: Option<i32>,
}

/// Writes, read-your-writes, replica reads, a rolled-back transaction and a concurrent run on
/// a small pool, all through the macros.
pub async fn run(opts: &PgConnectOptions) -> Res<()> {
    let mut c = PgConnection::connect_with(opts).await?;
    sqlx::query!("DELETE FROM sqlx_checked")
        .execute(&mut c)
        .await?;
    let on_replica = sqlx::query_scalar!(
        r#"INSERT INTO sqlx_checked (id, name, score) VALUES ($1, $2, $3)
           RETURNING pg_is_in_recovery() AS "r!""#,
        1,
        "one",
        Some(10)
    )
    .fetch_one(&mut c)
    .await?;
    check!(!on_replica, "query!: an INSERT ran on a replica");
    let item = sqlx::query_as!(
        Item,
        "SELECT id, name, score FROM sqlx_checked WHERE id = $1",
        1
    )
    .fetch_one(&mut c)
    .await?;
    check!(
        item.id == 1 && item.name == "one" && item.score == Some(10),
        "query_as!: read-your-writes: ({}, {}, {:?})",
        item.id,
        item.name,
        item.score
    );
    // A rolled-back transaction leaves nothing.
    let mut tx = c.begin().await?;
    sqlx::query!(
        "INSERT INTO sqlx_checked (id, name) VALUES ($1, $2)",
        2,
        "rolled back"
    )
    .execute(&mut *tx)
    .await?;
    tx.rollback().await?;
    let n = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM sqlx_checked WHERE id = 2"#)
        .fetch_one(&mut c)
        .await?;
    check!(n == 0, "query!: the rolled-back row is there ({n})");
    // An autocommit read from a connection that has not written reaches a replica (once the
    // scope's token is replayed there: poll with a deadline).
    let mut r = PgConnection::connect_with(opts).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = sqlx::query!(
            r#"SELECT pg_is_in_recovery() AS "r!", count(*) AS "n!" FROM sqlx_checked"#
        )
        .fetch_one(&mut r)
        .await?;
        if row.r {
            check!(row.n == 1, "query!: the replica read saw {} rows", row.n);
            break;
        }
        check!(
            Instant::now() < deadline,
            "query!: no autocommit read went to a replica in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.close().await?;
    c.close().await?;
    // 10 tasks on a pool of 3 client connections, each running the same macro statements many
    // times: every connection's cached statement stays right on pgtier's shared servers.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(opts.clone())
        .await?;
    let mut tasks = Vec::new();
    for t in 0..10i32 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30i32 {
                let id = 100 + t * 100 + i;
                sqlx::query!(
                    "INSERT INTO sqlx_checked (id, name, score) VALUES ($1, $2, $3)",
                    id,
                    format!("task {t}"),
                    Some(i)
                )
                .execute(&pool)
                .await
                .map_err(|e| e.to_string())?;
                let score = sqlx::query_scalar!("SELECT score FROM sqlx_checked WHERE id = $1", id)
                    .fetch_optional(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                // A pooled connection may read on a replica that has not replayed the insert
                // yet (no causal scope across the pool's connections): absent, never wrong.
                if let Some(score) = score {
                    if score != Some(i) {
                        return Err(format!("query_scalar!: row {id} has score {score:?}"));
                    }
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // On the primary (a hint in the macro's text): the replicas may still be replaying.
    let n = sqlx::query_scalar!(
        r#"/* pgtier:primary */ SELECT count(*) AS "n!" FROM sqlx_checked WHERE id >= 100"#
    )
    .fetch_one(&pool)
    .await?;
    check!(n == 300, "query!: 300 rows written by the tasks, found {n}");
    pool.close().await;
    println!("query! macros (checked at compile time): ok");
    Ok(())
}
