//! Valid client message streams for the fuzzer: startup packets, the messages of a logged-in
//! session (simple and extended protocol, COPY FROM STDIN), and the pre-startup requests
//! (SSLRequest, GSSENCRequest, CancelRequest), built from a seeded generator.

/// xorshift64* seeded through splitmix64: reproducible without a dependency's API.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The table the statements below use (created by the fuzz set-up).
pub const TABLE: &str = "fuzz_t";

/// Statements valid against the fuzz database, with their parameter count for the extended
/// protocol (each parameter is sent as text).
const SQL: &[(&str, usize)] = &[
    ("SELECT 1", 0),
    ("SELECT $1::int + 1", 1),
    ("SELECT $1::text || $2::text", 2),
    ("SELECT a, b FROM fuzz_t ORDER BY a LIMIT 5", 0),
    ("INSERT INTO fuzz_t (a, b) VALUES (1, 'x')", 0),
    ("INSERT INTO fuzz_t (a, b) VALUES ($1::int, $2)", 2),
    ("UPDATE fuzz_t SET b = 'y' WHERE a = $1::int", 1),
    (
        "WITH w AS (DELETE FROM fuzz_t WHERE a < 0 RETURNING *) SELECT count(*) FROM w",
        0,
    ),
    ("SELECT * FROM generate_series(1, 3000) g", 0),
    ("SELECT repeat('x', 200000)", 0),
    ("SELECT pg_sleep(0.005)", 0),
    ("SELECT 1/0", 0),
    ("SELEC broken syntax", 0),
    ("BEGIN", 0),
    ("BEGIN READ ONLY", 0),
    ("COMMIT", 0),
    ("ROLLBACK", 0),
    ("SAVEPOINT s1", 0),
    ("ROLLBACK TO SAVEPOINT s1", 0),
    ("SET application_name = 'fuzz'", 0),
    ("SET statement_timeout = 200", 0),
    ("SET work_mem = '4MB'", 0),
    ("RESET ALL", 0),
    ("SHOW work_mem", 0),
    ("DISCARD ALL", 0),
    ("DEALLOCATE ALL", 0),
    ("PREPARE p1 AS SELECT $1::int", 0),
    ("EXECUTE p1(5)", 0),
    ("DEALLOCATE p1", 0),
    ("LISTEN fuzz_chan", 0),
    ("NOTIFY fuzz_chan, 'x'", 0),
    ("CREATE TEMP TABLE fuzz_tmp (a int)", 0),
    ("SELECT pg_advisory_xact_lock(7)", 0),
    ("DO $$ BEGIN PERFORM 1; END $$", 0),
    ("/* pgtier:replica */ SELECT 1", 0),
    ("/* pgtier:primary */ SELECT $1::int", 1),
    ("SET pgtier.route = 'replica'", 0),
    ("SHOW pgtier.causal_lsn", 0),
    ("SET pgtier.min_lsn = '0/1'", 0),
    (
        "SELECT 'a'; SELECT 'b'; INSERT INTO fuzz_t VALUES (2, 'z')",
        0,
    ),
    (
        "SELECT E'\\\\x', $a$ $$ $a$, \"a\" FROM (SELECT 1 AS a) s -- c",
        0,
    ),
    ("COPY (SELECT generate_series(1, 500)) TO STDOUT", 0),
    ("SELECT pg_backend_pid()", 0),
    ("", 0),
    (";", 0),
];

/// COPY FROM STDIN statements and one valid data line for each.
const COPY_IN: &[(&str, &str)] = &[
    ("COPY fuzz_t (a, b) FROM STDIN", "1\tcopied\n"),
    ("COPY fuzz_t (a, b) FROM STDIN (FORMAT csv)", "2,\"c,sv\"\n"),
    ("COPY fuzz_t FROM STDIN", "3\t\\N\n"),
];

/// Admin console commands (read-only: nothing that pauses, stops or kills).
const ADMIN_SQL: &[&str] = &[
    "SHOW POOLS",
    "SHOW STATS",
    "SHOW SERVERS",
    "SHOW CLIENTS",
    "SHOW REPLICAS",
    "SHOW CONFIG",
    "SHOW VERSION",
    "SHOW ROUTE SELECT 1",
    "SHOW NOSUCH",
];

/// Encodes a regular frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A StartupMessage (protocol 3.`minor`) with these parameters.
pub fn startup(minor: u16, params: &[(String, String)]) -> Vec<u8> {
    let mut body = ((3u32 << 16) | u32::from(minor)).to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// An 8-byte request with this code (SSLRequest 80877103, GSSENCRequest 80877104).
pub fn request(code: u32) -> Vec<u8> {
    let mut p = 8u32.to_be_bytes().to_vec();
    p.extend(code.to_be_bytes());
    p
}

/// A CancelRequest for backend `pid` with secret `key`.
pub fn cancel(pid: u32, key: &[u8]) -> Vec<u8> {
    let mut p = ((12 + key.len()) as u32).to_be_bytes().to_vec();
    p.extend(80_877_102u32.to_be_bytes());
    p.extend(pid.to_be_bytes());
    p.extend_from_slice(key);
    p
}

/// Startup parameters for `user` on `database`, sometimes with extras.
pub fn startup_params(rng: &mut Rng, user: &str, database: &str) -> Vec<(String, String)> {
    let mut p = vec![
        ("user".to_owned(), user.to_owned()),
        ("database".to_owned(), database.to_owned()),
    ];
    let extras: &[(&str, &str)] = &[
        ("application_name", "fuzz"),
        ("client_encoding", "UTF8"),
        ("options", "-c work_mem=8MB"),
        ("options", "-c statement_timeout=100 --search_path=public"),
        ("DateStyle", "ISO, MDY"),
        ("search_path", "public"),
        ("_pq_.protocol_managed_params", "x"),
        ("replication", "database"),
        ("pgtier.min_lsn", "0/0"),
        ("TimeZone", "UTC"),
    ];
    for _ in 0..rng.below(4) {
        let (k, v) = rng.pick(extras);
        p.push(((*k).to_owned(), (*v).to_owned()));
    }
    p
}

fn parse(name: &str, sql: &str, n_params: usize, typed: bool) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    let n = if typed { n_params } else { 0 };
    b.extend((n as i16).to_be_bytes());
    for _ in 0..n {
        b.extend(25u32.to_be_bytes()); // text
    }
    message(b'P', &b)
}

fn bind(rng: &mut Rng, portal: &str, statement: &str, n_params: usize) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, statement);
    b.extend(1i16.to_be_bytes()); // one format code for all parameters
    b.extend(0i16.to_be_bytes()); // text
    b.extend((n_params as i16).to_be_bytes());
    for i in 0..n_params {
        if rng.chance(10) {
            b.extend((-1i32).to_be_bytes()); // NULL
        } else {
            let v = (i as u64 + rng.next_u64() % 1000).to_string();
            b.extend((v.len() as i32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
    }
    let results = rng.below(2) as i16;
    b.extend(results.to_be_bytes());
    for _ in 0..results {
        b.extend(0i16.to_be_bytes());
    }
    message(b'B', &b)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    message(b'D', &b)
}

fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend(max_rows.to_be_bytes());
    message(b'E', &b)
}

fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    message(b'C', &b)
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(sql.len() + 1);
    cstr(&mut b, sql);
    message(b'Q', &b)
}

/// A Sync.
pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// One unit of work (messages that end in a reply the client waits for: a Query, an extended
/// batch ending in Sync, a COPY FROM STDIN with its data), as separate messages.
pub fn unit(rng: &mut Rng, admin: bool) -> Vec<Vec<u8>> {
    if admin {
        let sql: &str = ADMIN_SQL[rng.below(ADMIN_SQL.len())];
        return vec![query(sql)];
    }
    match rng.below(10) {
        0..=3 => vec![query(rng.pick(SQL).0)],
        4..=7 => extended(rng),
        8 => copy_in(rng),
        _ => {
            // A pipeline of several units before anything is read.
            let mut out = Vec::new();
            for _ in 0..2 + rng.below(4) {
                out.extend(unit(rng, false));
            }
            out
        }
    }
}

fn extended(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let (sql, n) = *rng.pick(SQL);
        let named = rng.chance(50);
        let name = if named {
            format!("fz{}", rng.below(4))
        } else {
            String::new()
        };
        let portal = if rng.chance(20) { "pt" } else { "" };
        out.push(parse(&name, sql, n, rng.chance(50)));
        if rng.chance(30) {
            out.push(describe(b'S', &name));
        }
        out.push(bind(rng, portal, &name, n));
        if rng.chance(40) {
            out.push(describe(b'P', portal));
        }
        let max_rows = if rng.chance(20) { 2 } else { 0 };
        out.push(execute(portal, max_rows));
        if max_rows > 0 && rng.chance(50) {
            out.push(execute(portal, 0));
        }
        if rng.chance(15) {
            out.push(message(b'H', b"")); // Flush
        }
        if named && rng.chance(30) {
            out.push(close(b'S', &name));
        }
        if !portal.is_empty() && rng.chance(50) {
            out.push(close(b'P', portal));
        }
    }
    out.push(sync());
    out
}

fn copy_in(rng: &mut Rng) -> Vec<Vec<u8>> {
    let (sql, line) = *rng.pick(COPY_IN);
    let mut out = Vec::new();
    if rng.chance(30) {
        // COPY FROM STDIN over the extended protocol.
        out.push(parse("", sql, 0, false));
        out.push(bind(rng, "", "", 0));
        out.push(execute("", 0));
    } else {
        out.push(query(sql));
    }
    for _ in 0..rng.below(6) {
        let n = 1 + rng.below(50);
        out.push(message(b'd', line.repeat(n).as_bytes()));
    }
    match rng.below(10) {
        0 => out.push(message(b'f', b"fuzz gave up\0")),
        1 => {} // neither CopyDone nor CopyFail
        _ => out.push(message(b'c', b"")),
    }
    if out[0][0] == b'P' {
        out.push(sync());
    }
    out
}

/// Messages that are valid somewhere but rarely where the mutator puts them.
pub fn stray(rng: &mut Rng) -> Vec<u8> {
    match rng.below(9) {
        0 => message(b'd', b"5\tstray\n"),
        1 => message(b'c', b""),
        2 => message(b'f', b"stray\0"),
        3 => sync(),
        4 => message(b'H', b""),
        5 => message(b'X', b""),
        6 => message(b'p', b"password\0"),
        // FunctionCall: oid 1 (no such function), no arguments, text result.
        7 => message(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
        _ => describe(b'S', "nosuch"),
    }
}
