//! Running the pgtier binary for a test: config in a temp file, log captured, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bins::pgtier_bin;

/// A pgtier process.
#[derive(Debug)]
pub struct Pgtier {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Pgtier {
    /// Writes `config` (which must listen on 127.0.0.1:`port`), starts pgtier and waits until
    /// it accepts connections.
    pub fn start(port: u16, config: &str) -> Result<Pgtier> {
        let dir = std::env::temp_dir().join(format!("pgtier-run-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("pgtier.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("pgtier.log"))?;
        let child = Command::new(pgtier_bin()?)
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pgtier")?;
        let mut px = Pgtier { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = px.child.try_wait() {
                bail!("pgtier exited ({status}) before listening:\n{}", px.log());
            }
            if Instant::now() > deadline {
                bail!("pgtier did not listen on {port} within 20 s:\n{}", px.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(px)
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Listen port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("pgtier.toml")
    }

    /// Path of the log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgtier.log")
    }

    /// Everything pgtier logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pgtier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
