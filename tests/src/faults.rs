//! A TCP fault proxy for tests: sits between pgtier and a node and injects network faults
//! (latency, a bandwidth limit, a silent peer, a peer that closes its side, resets, refused
//! connections), switchable while traffic runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything as it comes.
    Pass,
    /// Forward, delaying every chunk by this much (each direction).
    Latency(Duration),
    /// Accept new connections and never answer; existing ones stop forwarding but stay open.
    Blackhole,
    /// Reset (RST) every connection, the current ones at once and new ones as they come.
    Reset,
    /// Close new connections at once; existing ones keep forwarding.
    Refuse,
    /// Forward at most this many bytes per second in each direction of each connection.
    Bandwidth(u32),
    /// The node closes its side: every connection gets a FIN towards the client (pgtier sees
    /// the end of the stream) while what the client sends still reaches the node; new
    /// connections get the same right after they open.
    HalfClose,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    // Counts switches to Reset, so a connection resets even if Reset was left again before it
    // looked (a watch channel only keeps the latest value).
    resets: u64,
}

/// A TCP forwarder on a free 127.0.0.1 port whose [`Mode`] can change while traffic runs;
/// dropping it stops it and closes every socket it holds.
pub struct FaultProxy {
    addr: String,
    state: watch::Sender<State>,
    open: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding to `target` ("host:port") in [`Mode::Pass`].
    pub async fn start(target: &str) -> Result<FaultProxy> {
        // Port 0: the kernel picks one that is free (a port picked first and bound later
        // could be taken in between by another connection's ephemeral port).
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?.to_string();
        let (state, rx) = watch::channel(State {
            mode: Mode::Pass,
            resets: 0,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let target = target.to_owned();
        let counter = open.clone();
        // The connection tasks live in a JoinSet owned by the accept task: aborting that task
        // (on drop) drops the set, which aborts them all and closes their sockets.
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let guard = OpenGuard::new(counter.clone());
                        conns.spawn(serve(client, target.clone(), rx.clone(), guard));
                    }
                    // Reap finished connections so the set does not grow.
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(FaultProxy {
            addr,
            state,
            open,
            accept,
        })
    }

    /// The address to give pgtier instead of the node's, "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    /// Switches to `mode`; takes effect on running connections at once.
    pub fn set(&self, mode: Mode) {
        self.state.send_modify(|s| {
            if mode == Mode::Reset {
                s.resets += 1;
            }
            s.mode = mode;
        });
    }

    /// [`Mode::Pass`].
    pub fn pass(&self) {
        self.set(Mode::Pass)
    }

    /// [`Mode::Latency`].
    pub fn latency(&self, delay: Duration) {
        self.set(Mode::Latency(delay))
    }

    /// [`Mode::Blackhole`].
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole)
    }

    /// [`Mode::Reset`].
    pub fn reset(&self) {
        self.set(Mode::Reset)
    }

    /// [`Mode::Refuse`].
    pub fn refuse(&self) {
        self.set(Mode::Refuse)
    }

    /// [`Mode::Bandwidth`].
    pub fn bandwidth(&self, bytes_per_second: u32) {
        self.set(Mode::Bandwidth(bytes_per_second))
    }

    /// [`Mode::HalfClose`].
    pub fn half_close(&self) {
        self.set(Mode::HalfClose)
    }

    /// Client connections the proxy holds open right now (forwarding, held or stalled).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Counts a connection as open for as long as its task lives (also when it is aborted).
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(n: Arc<AtomicUsize>) -> OpenGuard {
        n.fetch_add(1, Ordering::SeqCst);
        OpenGuard(n)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes with RST instead of FIN, as a crashed peer or a middlebox dropping state would.
fn rst(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn serve(
    mut client: TcpStream,
    target: String,
    mut state: watch::Receiver<State>,
    _guard: OpenGuard,
) {
    let resets_at_start = state.borrow().resets;
    let mut server: Option<TcpStream> = None;
    let mut watch_reset = state.clone();
    let reset = tokio::select! {
        r = forward(&mut client, &mut server, &target, &mut state) => r,
        _ = watch_reset.wait_for(|s| s.resets > resets_at_start) => true,
    };
    if reset {
        rst(client);
        if let Some(s) = server {
            rst(s);
        }
    }
}

/// Forwards until either side closes; true if the connection is to be reset.
async fn forward(
    client: &mut TcpStream,
    server: &mut Option<TcpStream>,
    target: &str,
    state: &mut watch::Receiver<State>,
) -> bool {
    // A new connection in Blackhole mode is held unanswered until the mode changes.
    let Ok(mode) = state
        .wait_for(|s| s.mode != Mode::Blackhole)
        .await
        .map(|s| s.mode)
    else {
        return false;
    };
    match mode {
        Mode::Reset => return true,
        Mode::Refuse => return false,
        _ => {}
    }
    let Ok(s) = TcpStream::connect(target).await else {
        return false;
    };
    let s = server.insert(s);
    let (cr, cw) = client.split();
    let (sr, sw) = s.split();
    // The first error (a reset by either peer) ends both directions.
    let _ = tokio::try_join!(
        pump(cr, sw, state.clone(), false),
        pump(sr, cw, state.clone(), true)
    );
    false
}

/// One direction: read a chunk, apply the mode, write it on. `to_client`: the node-to-client
/// direction, the one [`Mode::HalfClose`] ends.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut state: watch::Receiver<State>,
    to_client: bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if to_client && state.borrow_and_update().mode == Mode::HalfClose {
            return to.shutdown().await;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            // A switch to HalfClose acts on an idle connection too.
            changed = state.changed(), if to_client => {
                if changed.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            // Pass the half-close on, as the peer did.
            return to.shutdown().await;
        }
        let mode = state.borrow().mode;
        if to_client && mode == Mode::HalfClose {
            return to.shutdown().await;
        }
        match mode {
            Mode::Latency(d) => tokio::time::sleep(d).await,
            // Paced: a chunk of n bytes leaves n / rate seconds after it was read.
            Mode::Bandwidth(rate) => {
                let secs = n as f64 / f64::from(rate.max(1));
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
            _ => {}
        }
        // A blackholed connection keeps what it read and forwards nothing until the mode
        // changes. A Reset is handled by the connection's task: what was held is dropped,
        // never delivered (waiting here lets the reset win).
        let Ok(mode) = state
            .wait_for(|s| s.mode != Mode::Blackhole)
            .await
            .map(|s| s.mode)
        else {
            return Ok(());
        };
        if mode == Mode::Reset {
            std::future::pending::<()>().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}
