//! The floor of a tokio relay: a byte pipe, one server connection per client, no parsing, no
//! pooling, on a current-thread runtime as pgtier's default `workers = 1` uses. Run under
//! callgrind with pgbench through it (benches/README.md "Where a tokio relay's floor is"), it
//! gives the instructions per transaction that any design on tokio's readiness and task
//! machinery pays before it looks at a byte. A measuring tool, not a proxy.
//!
//!   bare_relay LISTEN_ADDR SERVER_ADDR

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (listen, server) = match (args.next(), args.next()) {
        (Some(l), Some(s)) => (l, s),
        _ => anyhow::bail!("usage: bare_relay LISTEN_ADDR SERVER_ADDR"),
    };
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
