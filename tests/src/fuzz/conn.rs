//! One fuzz connection: a generated (and maybe mutated) conversation with pgtier, from the
//! pre-startup requests through authentication to a session of simple, extended and COPY
//! units, written in one of several ways (interactive, all at once then half-closed, cut off).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::gen::{self, Rng};
use super::mutate;

/// How a user logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No password asked.
    Trust,
    /// md5 challenge.
    Md5,
    /// SCRAM-SHA-256.
    Scram,
    /// An admin console user (trust, database `pgtier`).
    Admin,
}

/// A user pgtier knows.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Its password (empty for trust).
    pub password: String,
    /// How it authenticates.
    pub auth: Auth,
}

/// What the fuzz connections share: cancel keys seen, for CancelRequests that hit real
/// sessions.
#[derive(Debug, Default)]
pub struct Shared {
    keys: Mutex<Vec<(u32, Vec<u8>)>>,
}

impl Shared {
    fn remember(&self, body: &[u8]) {
        if body.len() < 8 {
            return;
        }
        let pid = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= 64 {
            keys.remove(0);
        }
        keys.push((pid, body[4..].to_vec()));
    }

    fn any(&self, rng: &mut Rng) -> Option<(u32, Vec<u8>)> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        (!keys.is_empty()).then(|| keys[rng.below(keys.len())].clone())
    }
}

/// What one connection did and saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages (or packets) written.
    pub messages: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Whether the login reached ReadyForQuery.
    pub logged_in: bool,
    /// ErrorResponses received, by SQLSTATE.
    pub sqlstates: HashMap<String, u64>,
    /// A reply pgtier framed wrongly (length below 4 or above 1 GiB), with its first bytes.
    pub bad_frame: Option<String>,
    /// The messages of pgtier's own XX000 (internal error) replies (Postgres has its XX000s
    /// too, e.g. "cache lookup failed for type 9" for a Parse with a made-up type OID).
    pub internal: Vec<String>,
    /// pgtier kept the connection open for [`REPLY`] twice over after the client's end.
    pub not_closed: bool,
}

/// Longest wait for any one reply; a fuzz conversation that stalls longer just ends (the
/// health check after each batch decides whether pgtier still serves).
const REPLY: Duration = Duration::from_secs(1);

/// Runs the conversation that `seed` generates against `addr`.
pub async fn run(addr: &str, users: &[User], shared: &Shared, seed: u64) -> Outcome {
    let mut out = Outcome::default();
    let mut rng = Rng::new(seed);
    let Ok(s) = TcpStream::connect(addr).await else {
        return out;
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        converse(s, &mut rng, users, shared, &mut out),
    )
    .await;
    out
}

async fn converse(
    mut s: TcpStream,
    rng: &mut Rng,
    users: &[User],
    shared: &Shared,
    out: &mut Outcome,
) -> std::io::Result<()> {
    let kind = rng.below(100);
    if kind < 6 {
        // A CancelRequest, for a session seen earlier or a made-up one.
        let (pid, key) = shared.any(rng).unwrap_or_else(|| {
            (
                rng.next_u64() as u32,
                (rng.next_u64() as u32).to_be_bytes().to_vec(),
            )
        });
        let mut p = gen::cancel(pid, &key);
        if rng.chance(30) {
            mutate::packet(rng, &mut p);
        }
        return send_and_drain(&mut s, &p, rng, out).await;
    }
    if kind < 10 {
        // Junk instead of a startup packet.
        let p: Vec<u8> = (0..1 + rng.below(300))
            .map(|_| rng.next_u64() as u8)
            .collect();
        return send_and_drain(&mut s, &p, rng, out).await;
    }
    // SSLRequest / GSSENCRequest first: pgtier (no client TLS configured) answers 'N'.
    if rng.chance(12) {
        let code = if rng.chance(70) {
            80_877_103
        } else {
            80_877_104
        };
        write(&mut s, &gen::request(code), out).await?;
        let b = tokio::time::timeout(REPLY, s.read_u8()).await??;
        if b != b'N' {
            return Ok(());
        }
    }
    let user = if rng.chance(5) {
        users.iter().find(|u| u.auth == Auth::Admin)
    } else {
        None
    }
    .unwrap_or_else(|| {
        let plain: Vec<&User> = users.iter().filter(|u| u.auth != Auth::Admin).collect();
        plain[rng.below(plain.len())]
    });
    let database = match (user.auth, rng.below(40)) {
        (_, 0) => "nosuchdb",
        (Auth::Admin, _) => "pgtier",
        _ => "app",
    };
    let minor = if rng.chance(5) { 2 } else { 0 };
    let mut p = gen::startup(minor, &gen::startup_params(rng, &user.name, database));
    if rng.chance(10) {
        mutate::packet(rng, &mut p);
        return send_and_drain(&mut s, &p, rng, out).await;
    }
    write(&mut s, &p, out).await?;
    let password = if rng.chance(8) {
        "wrong".to_owned()
    } else {
        user.password.clone()
    };
    let mangle_auth = rng.chance(5);
    if !login(&mut s, user, &password, mangle_auth, rng, shared, out).await? {
        return Ok(());
    }
    out.logged_in = true;
    session(s, rng, user.auth == Auth::Admin, out).await
}

async fn write(s: &mut TcpStream, bytes: &[u8], out: &mut Outcome) -> std::io::Result<()> {
    out.messages += 1;
    out.bytes += bytes.len() as u64;
    s.write_all(bytes).await
}

/// Writes `bytes`, sometimes half-closes, and reads until pgtier closes (or [`REPLY`]).
async fn send_and_drain(
    s: &mut TcpStream,
    bytes: &[u8],
    rng: &mut Rng,
    out: &mut Outcome,
) -> std::io::Result<()> {
    write(s, bytes, out).await?;
    if rng.chance(50) {
        s.shutdown().await?;
    }
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(REPLY, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

async fn read_msg(s: &mut TcpStream, out: &mut Outcome) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match tokio::time::timeout(REPLY, s.read_exact(&mut head)).await {
        Ok(Ok(_)) => {}
        _ => return Ok(None),
    }
    let len = u32::from_be_bytes(head[1..5].try_into().expect("4 bytes"));
    if !(4..=1 << 30).contains(&len) {
        out.bad_frame = Some(format!("{head:?} during login"));
        return Ok(None);
    }
    let mut body = vec![0; len as usize - 4];
    match tokio::time::timeout(REPLY, s.read_exact(&mut body)).await {
        Ok(Ok(_)) => Ok(Some((head[0], body))),
        _ => Ok(None),
    }
}

/// Answers pgtier's authentication requests; true once ReadyForQuery arrives.
async fn login(
    s: &mut TcpStream,
    user: &User,
    password: &str,
    mangle: bool,
    rng: &mut Rng,
    shared: &Shared,
    out: &mut Outcome,
) -> std::io::Result<bool> {
    let mut scram: Option<ScramSha256> = None;
    while let Some((tag, body)) = read_msg(s, out).await? {
        let mut reply = match tag {
            b'R' if body.len() >= 4 => {
                let code = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
                match code {
                    0 => continue,
                    3 => gen::message(b'p', format!("{password}\0").as_bytes()),
                    5 if body.len() >= 8 => {
                        let salt = body[4..8].try_into().expect("4 bytes");
                        let h = md5_hash(user.name.as_bytes(), password.as_bytes(), salt);
                        gen::message(b'p', format!("{h}\0").as_bytes())
                    }
                    10 => {
                        let sc =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        let mut b = b"SCRAM-SHA-256\0".to_vec();
                        b.extend((sc.message().len() as i32).to_be_bytes());
                        b.extend_from_slice(sc.message());
                        scram = Some(sc);
                        gen::message(b'p', &b)
                    }
                    11 => {
                        let Some(sc) = scram.as_mut() else {
                            return Ok(false);
                        };
                        if sc.update(&body[4..]).is_err() {
                            return Ok(false);
                        }
                        gen::message(b'p', sc.message())
                    }
                    12 => {
                        let Some(sc) = scram.as_mut() else {
                            return Ok(false);
                        };
                        let _ = sc.finish(&body[4..]);
                        continue;
                    }
                    _ => return Ok(false),
                }
            }
            b'K' => {
                shared.remember(&body);
                continue;
            }
            b'Z' => return Ok(true),
            b'E' => {
                count_error(&body, out);
                return Ok(false);
            }
            _ => continue,
        };
        if mangle {
            mutate::message(rng, &mut reply);
        }
        write(s, &reply, out).await?;
    }
    Ok(false)
}

fn count_error(body: &[u8], out: &mut Outcome) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&f, tail)) = rest.split_first() {
        let Some(nul) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        let value = String::from_utf8_lossy(&tail[..nul]).into_owned();
        match f {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = &tail[nul + 1..];
    }
    if code == "XX000" && message.starts_with("pgtier") {
        out.internal.push(message);
    }
    *out.sqlstates.entry(code).or_default() += 1;
}

/// What the reader task reports.
enum Seen {
    Ready,
    Closed,
}

/// Reads pgtier's replies until it closes: ReadyForQuery and the end go to `tx`; errors are
/// counted. Returns the outcome's reply-side part.
async fn reader(mut r: OwnedReadHalf, tx: mpsc::UnboundedSender<Seen>) -> Outcome {
    let mut out = Outcome::default();
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() - at >= 5 {
            let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().expect("4 bytes"));
            if !(4..=1 << 30).contains(&len) {
                out.bad_frame = Some(format!("{:?}", &buf[at..(at + 16).min(buf.len())]));
                let _ = tx.send(Seen::Closed);
                return out;
            }
            let end = at + 1 + len as usize;
            if buf.len() < end {
                break;
            }
            match buf[at] {
                b'Z' => {
                    let _ = tx.send(Seen::Ready);
                }
                b'E' => count_error(&buf[at + 5..end], &mut out),
                _ => {}
            }
            at = end;
        }
        buf.drain(..at);
    }
    let _ = tx.send(Seen::Closed);
    out
}

/// Waits for `n` ReadyForQuery (or the end, or [`REPLY`]); false if pgtier is done with us.
async fn ready(rx: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> bool {
    for _ in 0..n {
        match tokio::time::timeout(REPLY, rx.recv()).await {
            Ok(Some(Seen::Ready)) => {}
            _ => return false,
        }
    }
    true
}

async fn session(
    s: TcpStream,
    rng: &mut Rng,
    admin: bool,
    out: &mut Outcome,
) -> std::io::Result<()> {
    let mut units: Vec<Vec<Vec<u8>>> = (0..1 + rng.below(12))
        .map(|_| gen::unit(rng, admin))
        .collect();
    let rate = match rng.below(10) {
        0..=3 => 0,
        4..=7 => 20,
        _ => 80,
    };
    for u in units.iter_mut() {
        if rng.chance(rate) {
            mutate::messages(rng, u, 3);
        }
    }
    let linger_rst = rng.chance(30);
    if linger_rst {
        s.set_zero_linger()?;
    }
    let (r, mut w) = s.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reading = tokio::spawn(reader(r, tx));
    let mode = rng.below(100);
    let result = async {
        if mode < 50 {
            // Interactive: each unit, then its replies.
            for u in &units {
                let syncs = u
                    .iter()
                    .filter(|m| matches!(m.first(), Some(b'S' | b'Q')))
                    .count();
                for c in mutate::chunks(rng, u.concat()) {
                    out.messages += 1;
                    out.bytes += c.len() as u64;
                    w.write_all(&c).await?;
                }
                if !ready(&mut rx, syncs.max(1)).await {
                    break;
                }
            }
            if rng.chance(50) {
                w.write_all(&gen::message(b'X', b"")).await?;
            }
        } else if mode < 85 {
            // Everything at once, then a half-close: pgtier sees the end after the last byte.
            let all: Vec<u8> = units.concat().concat();
            for c in mutate::chunks(rng, all) {
                out.messages += 1;
                out.bytes += c.len() as u64;
                w.write_all(&c).await?;
            }
            w.shutdown().await?;
            while let Ok(Some(Seen::Ready)) = tokio::time::timeout(REPLY, rx.recv()).await {}
        } else {
            // Cut off mid-stream (with a reset when linger is 0).
            let all: Vec<u8> = units.concat().concat();
            let cut = rng.below(all.len() + 1);
            out.messages += 1;
            out.bytes += cut as u64;
            w.write_all(&all[..cut]).await?;
            if rng.chance(50) {
                let _ = tokio::time::timeout(REPLY, rx.recv()).await;
            }
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    drop(w);
    if mode >= 85 || result.is_err() {
        reading.abort();
    }
    let mut reading = reading;
    let r = match tokio::time::timeout(2 * REPLY, &mut reading).await {
        Ok(r) => r.ok(),
        Err(_) => {
            out.not_closed = true;
            reading.abort();
            None
        }
    };
    if let Some(r) = r {
        for (k, v) in r.sqlstates {
            *out.sqlstates.entry(k).or_default() += v;
        }
        out.bad_frame = out.bad_frame.take().or(r.bad_frame);
        out.internal.extend(r.internal);
    }
    result
}
