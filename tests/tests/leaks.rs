//! Session state never leaks between clients in transaction mode: 200 concurrent clients on a
//! pool of 10, each doing a deterministic random mix of reported-parameter SETs, unreported
//! SETs, SQL PREPARE, LISTEN/NOTIFY, temp tables and protocol-level prepared statements, and
//! checking after every step that what it sees is its own state and nothing else.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::StreamExt;
use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{Cluster, Pgtier};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage, Statement};

const CLIENTS: u32 = 200;
const POOL: u32 = 10;

fn start() -> Pgtier {
    let c = Cluster::shared();
    scram_role(c, "leaks", "leaks").unwrap();
    ConfigBuilder::new(c)
        .global("pool_mode = \"transaction\"")
        .global("query_wait_timeout = \"30s\"")
        .user("leaks", "auth = \"trust\"\nserver_password = \"leaks\"")
        .database(&format!("pool_size = {POOL}"))
        .start()
        .unwrap()
}

/// A tiny deterministic generator (64-bit LCG, high bits out).
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Lcg {
        let mut r = Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
        r.next();
        r
    }

    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

/// What one client may see: everything `check` reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    time_zone: String,
    utc_offset_s: i32,
    application_name: String,
    work_mem: String,
    temp_tables: String,
    sql_statements: String,
    channels: String,
}

/// Reads the session's state and the server's pid; also checks that another client's temp
/// table is invisible.
async fn check(c: &Client, other: u32) -> Result<(State, i32)> {
    let row = c
        .query_one(
            "SELECT current_setting('TimeZone'), extract(timezone FROM now())::int4,
                    current_setting('application_name'), current_setting('work_mem'),
                    coalesce((SELECT string_agg(relname::text, ',' ORDER BY relname) FROM pg_class
                              WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r'), ''),
                    coalesce((SELECT string_agg(name, ',' ORDER BY name)
                              FROM pg_prepared_statements WHERE from_sql), ''),
                    coalesce((SELECT string_agg(ch, ',' ORDER BY ch)
                              FROM pg_listening_channels() ch), ''),
                    to_regclass($1::text) IS NULL, pg_backend_pid()",
            &[&format!("t_{other}")],
        )
        .await
        .context("state query")?;
    ensure!(
        row.get::<_, bool>(7),
        "another client's temp table t_{other} is visible"
    );
    let state = State {
        time_zone: row.get(0),
        utc_offset_s: row.get(1),
        application_name: row.get(2),
        work_mem: row.get(3),
        temp_tables: row.get(4),
        sql_statements: row.get(5),
        channels: row.get(6),
    };
    Ok((state, row.get(8)))
}

async fn simple_value(c: &Client, sql: &str) -> Result<String> {
    let msgs = c.simple_query(sql).await?;
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .with_context(|| format!("no row from {sql}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    SetTimeZone,
    SetApplicationName,
    SetWorkMem,
    SqlPrepare,
    Listen,
    TempTable,
    ProtocolStatements,
    RolledBackSet,
    Transaction,
}

impl Step {
    /// Whether the step pins a client that is (`pinner`) or is not a pinner: a pinner's LISTEN
    /// runs on its server (in a multi-statement query); another client's plain LISTEN is
    /// answered by pgtier, which listens for it on a shared connection (no pin).
    fn pins(self, pinner: bool) -> bool {
        match self {
            Step::SetWorkMem | Step::SqlPrepare | Step::TempTable => true,
            Step::Listen => pinner,
            _ => false,
        }
    }
}

const ALL_STEPS: [Step; 9] = [
    Step::SetTimeZone,
    Step::SetApplicationName,
    Step::SetWorkMem,
    Step::SqlPrepare,
    Step::Listen,
    Step::TempTable,
    Step::ProtocolStatements,
    Step::RolledBackSet,
    Step::Transaction,
];

/// The client's plan: whether it uses state that pins it, an application_name at startup, and
/// its steps.
struct Plan {
    pinner: bool,
    startup_name: bool,
    steps: Vec<Step>,
}

fn plan(id: u32) -> Plan {
    let mut rng = Lcg::new(id as u64);
    let pinner = rng.below(2) == 0;
    let startup_name = rng.below(2) == 0;
    let n = 10 + rng.below(11);
    let steps = (0..n)
        .map(|_| loop {
            let s = ALL_STEPS[rng.below(ALL_STEPS.len() as u32) as usize];
            if pinner || !s.pins(false) {
                break s;
            }
        })
        .collect();
    Plan {
        pinner,
        startup_name,
        steps,
    }
}

fn own_time_zone(id: u32) -> (String, i32) {
    let (h, m) = (id % 13, (id / 13) * 3);
    (
        format!("<+{h:02}{m:02}>-{h:02}:{m:02}"),
        (h * 3600 + m * 60) as i32,
    )
}

struct Outcome {
    pinner: bool,
    steps: usize,
    /// Distinct server connections its checks ran on.
    servers: usize,
}

async fn connect(
    port: u16,
    id: u32,
    startup_name: bool,
) -> Result<(Client, UnboundedReceiver<(String, String)>)> {
    let mut dsn = format!("host=127.0.0.1 port={port} user=leaks dbname=app connect_timeout=30");
    if startup_name {
        dsn.push_str(&format!(" application_name=start_{id}"));
    }
    let (client, mut conn) = tokio_postgres::connect(&dsn, NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    Ok((client, rx))
}

async fn run_client(
    port: u16,
    id: u32,
    defaults: State,
    start: std::sync::Arc<tokio::sync::Barrier>,
) -> Result<Outcome> {
    let plan = plan(id);
    let mut rng = Lcg::new(1_000_000 + id as u64);
    let (c, mut notifications) = connect(port, id, plan.startup_name).await?;
    start.wait().await;

    let mut want = defaults;
    if plan.startup_name {
        want.application_name = format!("start_{id}");
    }
    let other = |rng: &mut Lcg| (id + 1 + rng.below(CLIENTS - 1)) % CLIENTS;
    let (got, pid) = check(&c, other(&mut rng)).await.context("first check")?;
    let mut servers = HashSet::from([pid]);
    // Once it has pinning state, the client stays on this server.
    let mut pinned_to: Option<i32> = None;
    ensure!(got == want, "at start:\n got  {got:?}\n want {want:?}");

    let mut statements: Vec<(Statement, i32)> = Vec::new();
    let (mut prepared_sql, mut listening, mut temp) = (false, false, false);
    for (k, &step) in plan.steps.iter().enumerate() {
        let ctx = || format!("step {k} ({step:?})");
        let extended = rng.below(2) == 0;
        let run_set = |sql: String| {
            let c = &c;
            async move {
                if extended {
                    c.execute(sql.as_str(), &[]).await.map(|_| ())
                } else {
                    c.batch_execute(&sql).await
                }
            }
        };
        match step {
            Step::SetTimeZone => {
                let (tz, offset) = own_time_zone(id);
                run_set(format!("SET TimeZone = '{tz}'"))
                    .await
                    .with_context(ctx)?;
                want.time_zone = tz;
                want.utc_offset_s = offset;
            }
            Step::SetApplicationName => {
                let name = format!("leak_{id}");
                run_set(format!("SET application_name = '{name}'"))
                    .await
                    .with_context(ctx)?;
                want.application_name = name;
            }
            Step::SetWorkMem => {
                let v = format!("{}kB", 64 + id);
                run_set(format!("SET work_mem = '{v}'"))
                    .await
                    .with_context(ctx)?;
                want.work_mem = v;
            }
            Step::SqlPrepare => {
                if !prepared_sql {
                    c.batch_execute(&format!("PREPARE p_{id} AS SELECT {id}::int4"))
                        .await
                        .with_context(ctx)?;
                    prepared_sql = true;
                    want.sql_statements = format!("p_{id}");
                }
                let v = simple_value(&c, &format!("EXECUTE p_{id}"))
                    .await
                    .with_context(ctx)?;
                ensure!(v == id.to_string(), "{}: EXECUTE p_{id} gave {v}", ctx());
            }
            Step::Listen => {
                if !listening {
                    if plan.pinner {
                        c.batch_execute(&format!("LISTEN ch_{id}; SELECT 1"))
                            .await
                            .with_context(ctx)?;
                        want.channels = format!("ch_{id}");
                    } else {
                        // Listened for by pgtier: the pooled servers listen on nothing (also
                        // when the driver sends it behind the Close of a dropped statement).
                        c.batch_execute(&format!("LISTEN ch_{id}"))
                            .await
                            .with_context(ctx)?;
                    }
                    listening = true;
                }
                let payload = format!("{id}-{k}");
                c.batch_execute(&format!("NOTIFY ch_{id}, '{payload}'"))
                    .await
                    .with_context(ctx)?;
                let got = tokio::time::timeout(Duration::from_secs(20), notifications.recv())
                    .await
                    .with_context(|| format!("{}: no notification", ctx()))?
                    .context("connection closed")?;
                ensure!(
                    got == (format!("ch_{id}"), payload.clone()),
                    "{}: got notification {got:?}, want ch_{id} {payload}",
                    ctx()
                );
            }
            Step::TempTable => {
                if !temp {
                    c.batch_execute(&format!(
                        "CREATE TEMP TABLE t_{id} (v int4); INSERT INTO t_{id} VALUES ({id})"
                    ))
                    .await
                    .with_context(ctx)?;
                    temp = true;
                    want.temp_tables = format!("t_{id}");
                }
                let v: i32 = c
                    .query_one(&format!("SELECT v FROM t_{id}"), &[])
                    .await
                    .with_context(ctx)?
                    .get(0);
                ensure!(v == id as i32, "{}: t_{id} holds {v}", ctx());
            }
            Step::ProtocolStatements => {
                // One statement text of its own, one shared by every client; earlier ones
                // run again (maybe on another server).
                let own = c
                    .prepare(&format!("SELECT $1::int4 + {id}"))
                    .await
                    .with_context(ctx)?;
                statements.push((own, id as i32));
                let shared = c
                    .prepare("SELECT $1::int4 * 0 + $1::int4")
                    .await
                    .with_context(ctx)?;
                statements.push((shared, 0));
                for (st, add) in &statements {
                    let arg = rng.below(1000) as i32;
                    let v: i32 = c.query_one(st, &[&arg]).await.with_context(ctx)?.get(0);
                    ensure!(v == arg + add, "{}: {arg} + {add} gave {v}", ctx());
                }
            }
            Step::RolledBackSet => {
                c.batch_execute(
                    "BEGIN; SET TimeZone = '<+1400>-14:00'; SET application_name = 'rolled_back'",
                )
                .await
                .with_context(ctx)?;
                let (inside, _) = check(&c, other(&mut rng)).await.with_context(ctx)?;
                ensure!(
                    (inside.time_zone.as_str(), inside.application_name.as_str())
                        == ("<+1400>-14:00", "rolled_back"),
                    "{}: inside the transaction {inside:?}",
                    ctx()
                );
                c.batch_execute("ROLLBACK").await.with_context(ctx)?;
            }
            Step::Transaction => {
                c.batch_execute("BEGIN").await.with_context(ctx)?;
                let (inside, _) = check(&c, other(&mut rng)).await.with_context(ctx)?;
                ensure!(
                    inside == want,
                    "{}: in a transaction:\n got  {inside:?}\n want {want:?}",
                    ctx()
                );
                c.batch_execute("COMMIT").await.with_context(ctx)?;
            }
        }
        let (got, pid) = check(&c, other(&mut rng)).await.with_context(ctx)?;
        servers.insert(pid);
        if step.pins(plan.pinner) {
            pinned_to.get_or_insert(pid);
        }
        if let Some(p) = pinned_to {
            ensure!(
                p == pid,
                "{}: pinned to server {p}, but ran on {pid}",
                ctx()
            );
        }
        ensure!(
            got == want,
            "after {}:\n got  {got:?}\n want {want:?}",
            ctx()
        );
    }
    // Nothing but its own notifications arrived.
    if let Ok(n) = notifications.try_recv() {
        anyhow::bail!("unexpected notification {n:?}");
    }
    Ok(Outcome {
        pinner: plan.pinner && plan.steps.iter().any(|s| s.pins(true)),
        steps: plan.steps.len(),
        servers: servers.len(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_see_only_their_own_session_state() {
    let px = start();
    let port = px.port();
    let (c, _) = connect(port, 0, false).await.unwrap();
    let (defaults, _) = check(&c, 1).await.unwrap();
    drop(c);
    eprintln!("defaults: {defaults:?}");
    assert_eq!(defaults.temp_tables, "");
    assert_eq!(defaults.sql_statements, "");
    assert_eq!(defaults.channels, "");

    let t0 = Instant::now();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS as usize));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (d, b) = (defaults.clone(), barrier.clone());
            tokio::spawn(tokio::time::timeout(
                Duration::from_secs(120),
                run_client(port, id, d, b),
            ))
        })
        .collect();
    let mut failures = Vec::new();
    let (mut pinners, mut steps, mut moved) = (0, 0, 0);
    for (id, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(Ok(o)) => {
                pinners += o.pinner as u32;
                steps += o.steps;
                moved += (!o.pinner && o.servers > 1) as u32;
            }
            Ok(Err(e)) => failures.push(format!("client {id}: {e:#}")),
            Err(_) => failures.push(format!("client {id}: timed out")),
        }
    }
    let log = px.log();
    let pinned_in_log = log.lines().filter(|l| l.contains("pinned")).count();
    eprintln!(
        "{CLIENTS} clients, {steps} steps in {:.1} s; {pinners} clients used pinning state, \
         pgtier logged {pinned_in_log} pins; {moved} of {} others ran on several servers; \
         {} failures",
        t0.elapsed().as_secs_f64(),
        CLIENTS - pinners,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    // Reported parameters, rolled-back SETs and protocol statements do not pin: clients that
    // never used pinning state moved between servers, so the checks above covered sharing.
    assert!(moved > 0, "no unpinned client ever changed server");

    // Every server went back reset: all of the pool at once, each at the defaults.
    let mut held = Vec::new();
    let mut pids = HashSet::new();
    for i in 0..POOL {
        let (c, _) = connect(port, 10_000 + i, false).await.unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        let pid = simple_value(&c, "SELECT pg_backend_pid()").await.unwrap();
        let (state, _) = check(&c, 0).await.unwrap();
        assert_eq!(state, defaults, "server {pid} was not reset");
        pids.insert(pid);
        held.push(c);
    }
    assert_eq!(pids.len(), POOL as usize);
}
