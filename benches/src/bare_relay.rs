//! The floor of a tokio relay: a byte pipe, one server connection per client, no parsing, no
//! pooling, on a current-thread runtime as pgtier's default `workers = 1` uses. Run under
//! callgrind with pgbench through it (benches/README.md "Where a tokio relay's floor is"), it
//! gives the instructions per transaction that any design on tokio's readiness and task
//! machinery pays before it looks at a byte. `--mio` runs the same pipe as a hand-written
//! loop over mio's epoll registration (no tasks, no wakers): what leaving tokio's task
//! machinery on the hot path would save. A measuring tool, not a proxy: a write that would
//! block is retried at once (pgbench's small messages never fill a socket buffer).
//!
//!   bare_relay [--mio] LISTEN_ADDR SERVER_ADDR

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let with_mio = args.first().is_some_and(|a| a == "--mio");
    if with_mio {
        args.remove(0);
    }
    let (listen, server) = match &args[..] {
        [l, s] => (l.clone(), s.clone()),
        _ => anyhow::bail!("usage: bare_relay [--mio] LISTEN_ADDR SERVER_ADDR"),
    };
    if with_mio {
        return mio_pipe::run(listen.parse()?, server.parse()?);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            loop {
                let (client, _) = listener.accept().await?;
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&server))
                            .await
                    {
                        let _ = pipe(client, s).await;
                    }
                });
            }
        })
}

/// Relays both ways in one task, as pgtier's relay does: wait for either side, read what is
/// there, write it to the other.
async fn pipe(mut c: TcpStream, mut s: TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    s.set_nodelay(true)?;
    let (mut cb, mut sb) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            n = c.read(&mut cb) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&cb[..n]).await?;
            }
            n = s.read(&mut sb) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                c.write_all(&sb[..n]).await?;
            }
        }
    }
}

/// The pipe as one epoll loop: token 0 the listener, 2k+1 / 2k+2 client k and its server.
mod mio_pipe {
    use std::collections::HashMap;
    use std::io::{ErrorKind, Read, Write};
    use std::net::SocketAddr;

    use mio::net::{TcpListener, TcpStream};
    use mio::{Events, Interest, Poll, Token};

    /// Serves until the process is killed.
    pub fn run(listen: SocketAddr, server: SocketAddr) -> anyhow::Result<()> {
        let mut poll = Poll::new()?;
        let mut listener = TcpListener::bind(listen)?;
        poll.registry()
            .register(&mut listener, Token(0), Interest::READABLE)?;
        let mut socks: HashMap<usize, TcpStream> = HashMap::new();
        let mut next = 1;
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // A 10 ms bound: valgrind's callgrind_control is served only when a syscall
            // returns (about 15 instructions per transaction in the bench).
            match poll.poll(&mut events, Some(std::time::Duration::from_millis(10))) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => r?,
            }
            for ev in events.iter() {
                let t = ev.token().0;
                if t == 0 {
                    while let Ok((mut c, _)) = listener.accept() {
                        // A blocking connect: the pipe's set-up is not what is measured.
                        let s = std::net::TcpStream::connect(server)?;
                        s.set_nonblocking(true)?;
                        let mut s = TcpStream::from_std(s);
                        c.set_nodelay(true)?;
                        s.set_nodelay(true)?;
                        poll.registry()
                            .register(&mut c, Token(next), Interest::READABLE)?;
                        poll.registry()
                            .register(&mut s, Token(next + 1), Interest::READABLE)?;
                        socks.insert(next, c);
                        socks.insert(next + 1, s);
                        next += 2;
                    }
                    continue;
                }
                let peer = if t % 2 == 1 { t + 1 } else { t - 1 };
                if !relay(&mut socks, t, peer, &mut buf) {
                    socks.remove(&t);
                    socks.remove(&peer);
                }
            }
        }
    }

    /// Reads `from` until it would block and writes each chunk to `to`; false once either
    /// side closed or failed.
    fn relay(
        socks: &mut HashMap<usize, TcpStream>,
        from: usize,
        to: usize,
        buf: &mut [u8],
    ) -> bool {
        loop {
            let n = match socks.get_mut(&from).map(|s| s.read(buf)) {
                Some(Ok(0)) | None => return false,
                Some(Ok(n)) => n,
                Some(Err(e)) if e.kind() == ErrorKind::WouldBlock => return true,
                Some(Err(_)) => return false,
            };
            let Some(dst) = socks.get_mut(&to) else {
                return false;
            };
            let mut done = 0;
            while done < n {
                match dst.write(&buf[done..n]) {
                    Ok(k) => done += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(_) => return false,
                }
            }
        }
    }
}
