//! Server-side names and bounds of named prepared statements in transaction mode: a name is
//! decided by the statement's full text (two texts never share one, even where a 64-bit hash
//! of them collides; the same text is shared across clients), and statement bytes are bounded
//! per client and in total with an error that leaves the client usable.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgtier_kit::fixture::{ensure_app_db, ConfigBuilder};
use pgtier_kit::wire::{bind, close_statement, execute, first_value, parse, query, sync, tags};
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);
const USER: &str = "pgtier_trust";

fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<()> = OnceLock::new();
    let c = Cluster::shared();
    SETUP.get_or_init(|| {
        ensure_app_db(c).unwrap();
        c.create_trust_role(USER).unwrap();
    });
    c
}

fn start(pool_size: u32, global: &[&str]) -> Pgtier {
    let mut b = ConfigBuilder::new(cluster())
        .user(USER, "auth = \"trust\"")
        .database(&format!("pool_size = {pool_size}"));
    for line in global {
        b = b.global(line);
    }
    b.start().unwrap()
}

async fn login(px: &Pgtier) -> TcpStream {
    wire::login_trust(&px.addr(), USER, "app").await.unwrap().0
}

async fn send(s: &mut TcpStream, parts: &[Vec<u8>]) -> Vec<wire::Msg> {
    wire::send_all(s, parts, LIMIT).await.unwrap()
}

/// Reply tags and error codes, e.g. "EZ 54000".
fn summary(r: &[wire::Msg]) -> String {
    let codes: Vec<String> = r.iter().filter_map(|m| m.field(b'C')).collect();
    format!("{} {}", tags(r), codes.join(","))
}

/// Prepares, binds and runs `sql` as `name`; its first value.
async fn run_prepared(s: &mut TcpStream, name: &str, sql: &str) -> String {
    let r = send(s, &[parse(name, sql), bind(name), execute(), sync()]).await;
    assert_eq!(tags(&r), "12DCZ");
    first_value(&r)
}

/// Two statements whose Parse bodies (text + no parameter types) have the same length and the
/// same fixed-key `DefaultHasher` hash: both were `pgtier_1e9808fd5e7c5f99_28` under the old
/// naming scheme (found offline by cycle finding on that hash, about 1e10 evaluations).
const COLLIDING: [&str; 2] = ["SELECT '6076cfddba5d6719'", "SELECT 'c880b7583b731de4'"];

#[tokio::test(flavor = "multi_thread")]
async fn different_texts_never_share_a_server_statement() {
    // One server connection: every client's statements meet there.
    let px = start(1, &[]);
    let (mut a, mut b, mut c) = (login(&px).await, login(&px).await, login(&px).await);
    let value = |sql: &str| {
        sql.trim_start_matches("SELECT '")
            .trim_end_matches('\'')
            .to_owned()
    };
    assert_eq!(
        run_prepared(&mut a, "s", COLLIDING[0]).await,
        value(COLLIDING[0])
    );
    // Another text whose old hash name was the same: it must run its own statement.
    assert_eq!(
        run_prepared(&mut b, "s", COLLIDING[1]).await,
        value(COLLIDING[1])
    );
    assert_eq!(
        run_prepared(&mut a, "t", COLLIDING[1]).await,
        value(COLLIDING[1])
    );
    // The same text from other clients shares the server's statement.
    assert_eq!(
        run_prepared(&mut c, "x", COLLIDING[0]).await,
        value(COLLIDING[0])
    );
    assert_eq!(run_prepared(&mut c, "y", "SELECT 'other'").await, "other");
    assert_eq!(run_prepared(&mut b, "z", "SELECT 'other'").await, "other");
    let r = send(
        &mut c,
        &[query(
            "SELECT count(*) || ' ' || count(DISTINCT name) || ' ' || count(DISTINCT statement) \
             FROM pg_prepared_statements WHERE name LIKE 'pgtier%'",
        )],
    )
    .await;
    assert_eq!(
        first_value(&r),
        "3 3 3",
        "one server statement per distinct text, each under its own name"
    );
}

/// `SELECT 'tag' AS v, 'xxx...' AS pad` with `pad` bytes of padding.
fn big(tag: &str, pad: usize) -> String {
    format!("SELECT '{tag}' AS v, '{}' AS pad", "x".repeat(pad))
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_bytes_are_bounded_per_client() {
    let px = start(
        2,
        &[
            "max_prepared_statement_bytes_per_client = 4096",
            "max_prepared_statement_bytes_total = 1048576",
        ],
    );
    let mut a = login(&px).await;
    assert_eq!(run_prepared(&mut a, "s1", &big("one", 3000)).await, "one");
    // Over the client's bound: the Parse fails, the rest of the unit is skipped to Sync (as
    // Postgres does after an error), and the client goes on.
    let unit = [
        parse("s2", &big("two", 2000)),
        bind("s2"),
        execute(),
        sync(),
    ];
    let r = send(&mut a, &unit).await;
    assert_eq!(summary(&r), "EZ 54000");
    let message = r[0].field(b'M').unwrap();
    assert!(
        message.contains("max_prepared_statement_bytes_per_client"),
        "{message}"
    );
    // The same when pgtier answers a Parse-only batch itself.
    let r = send(&mut a, &[parse("s2", &big("two", 2000)), sync()]).await;
    assert_eq!(summary(&r), "EZ 54000");
    // Inside a transaction block the failed Parse aborts it, as any error does in Postgres.
    assert_eq!(tags(&send(&mut a, &[query("BEGIN")]).await), "CZ");
    let r = send(&mut a, &unit).await;
    assert_eq!(summary(&r), "EZ 54000");
    assert_eq!(r[1].body, b"E", "transaction status after the error");
    let r = send(&mut a, &[query("SELECT 1")]).await;
    assert_eq!(summary(&r), "EZ 25P02");
    assert_eq!(tags(&send(&mut a, &[query("ROLLBACK")]).await), "CZ");
    // Still usable: s1 runs, s2 does not exist (Postgres' 26000).
    let r = send(&mut a, &[bind("s1"), execute(), sync()]).await;
    assert_eq!(first_value(&r), "one");
    let r = send(&mut a, &[bind("s2"), execute(), sync()]).await;
    assert_eq!(summary(&r), "EZ 26000");
    // Closing s1 makes room.
    let r = send(&mut a, &[close_statement("s1"), sync()]).await;
    assert_eq!(tags(&r), "3Z");
    assert_eq!(run_prepared(&mut a, "s2", &big("two", 2000)).await, "two");
    // Another client has its own allowance.
    let mut b = login(&px).await;
    assert_eq!(run_prepared(&mut b, "s1", &big("b", 3000)).await, "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_bytes_are_bounded_in_total() {
    let px = start(
        2,
        &[
            "max_prepared_statement_bytes_per_client = 4096",
            "max_prepared_statement_bytes_total = 8192",
        ],
    );
    let (mut a, mut b, mut c) = (login(&px).await, login(&px).await, login(&px).await);
    assert_eq!(run_prepared(&mut a, "s", &big("a", 3500)).await, "a");
    assert_eq!(run_prepared(&mut b, "s", &big("b", 3500)).await, "b");
    // Within c's own bound, but not in the total left.
    let unit = [parse("s", &big("c", 3500)), bind("s"), execute(), sync()];
    let r = send(&mut c, &unit).await;
    assert_eq!(summary(&r), "EZ 53200");
    let message = r[0].field(b'M').unwrap();
    assert!(
        message.contains("max_prepared_statement_bytes_total"),
        "{message}"
    );
    let r = send(&mut c, &[parse("s", &big("c", 3500)), sync()]).await;
    assert_eq!(summary(&r), "EZ 53200");
    let r = send(&mut c, &[query("SELECT 'usable'")]).await;
    assert_eq!(first_value(&r), "usable");
    // Another client's Close frees room at once.
    let r = send(&mut a, &[close_statement("s"), sync()]).await;
    assert_eq!(tags(&r), "3Z");
    assert_eq!(run_prepared(&mut c, "s", &big("c", 3500)).await, "c");
    // A client that leaves frees its share (seen once pgtier noticed the disconnect).
    drop(b);
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = send(&mut a, &[parse("s", &big("a", 3500)), sync()]).await;
        if summary(&r) == "1Z " {
            break;
        }
        assert_eq!(summary(&r), "EZ 53200");
        assert!(
            Instant::now() < deadline,
            "a disconnected client's statements still count after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        first_value(&send(&mut a, &[bind("s"), execute(), sync()]).await),
        "a"
    );
}
