//! The process's serving loop: binds the client listener and the HTTP endpoint, serves until a
//! signal or admin SHUTDOWN, reloads on SIGHUP, then drains.

use std::path::PathBuf;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

use crate::config::Settings;
use crate::runtime::{LogLevelHook, Proxy};

/// Binds the listener (and the metrics endpoint, if configured) and serves until SIGTERM,
/// SIGINT or admin SHUTDOWN, then shuts down gracefully (a second signal skips the wait for
/// running transactions). SIGHUP reloads `config_path`; `log_level` applies a changed `log_level` (None: it needs a restart).
pub async fn run(
    settings: Settings,
    config_path: Option<PathBuf>,
    log_level: Option<LogLevelHook>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // First: a certificate or CA file that cannot be used stops pgtier before it listens.
    let listen = settings.listen;
    let metrics_listen = settings.metrics_listen;
    let reuseport = settings.raw.so_reuseport;
    let lane_loop = settings.raw.lane_loop;
    let peer_listen = settings.peering.listen;
    let proxy = Proxy::new(settings, config_path).map_err(std::io::Error::other)?;
    let listener = bind(listen, reuseport)?;
    // Only this process listens here: peers forward cancels to it (clients may log in too).
    let peer_listener = match peer_listen {
        Some(addr) => {
            let l = bind(addr, false)?;
            info!(listen = %addr, peer_id = ?proxy.client_registry().peer_id(), "peer address listening");
            Some(l)
        }
        None => None,
    };
    let metrics_listener = match metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await?;
            info!(listen = %addr, "HTTP endpoint listening (GET /metrics, /health, /ready)");
            Some(l)
        }
        None => None,
    };
    // Last: tests and operators take this line to mean that every address is bound.
    info!(listen = %listen, so_reuseport = reuseport, "pgtier listening");
    if let Some(hook) = log_level {
        proxy.set_log_level_hook(hook);
    }
    if lane_loop && crate::frontend::session::start_lane_loop() {
        info!("lane loop running (lane_loop = true, one thread)");
    }
    tokio::spawn(crate::frontend::listener::serve(proxy.clone(), listener));
    if let Some(l) = peer_listener {
        tokio::spawn(crate::frontend::listener::serve_peers(proxy.clone(), l));
    }
    if let Some(l) = metrics_listener {
        tokio::spawn(crate::http::serve(proxy.clone(), l));
    }
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { info!("SIGINT: shutting down"); break }
            _ = proxy.control().shutdown_requested() => { info!("admin SHUTDOWN: shutting down"); break }
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                // Errors are logged (with line and column) by reload itself.
                let _ = proxy.reload();
            }
        }
    }
    let again = async {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    };
    proxy.drain(again).await;
    Ok(())
}

/// Accept queue length (what `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

/// Binds the client listener; with `reuseport`, other processes that set SO_REUSEPORT too
/// (other pgtier processes) can bind the same address, and the kernel spreads new connections
/// between them.
pub fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As TcpListener::bind: a restarted pgtier can bind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
