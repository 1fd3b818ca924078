//! `compare`'s command line, and the kinds of pgbench run it makes.

use anyhow::{bail, Result};

use crate::args::Args;

/// pgbench query modes compared.
pub(crate) const MODES: [&str; 3] = ["simple", "extended", "prepared"];

/// What to run, from the command line.
pub(crate) struct Options {
    /// Interleaved rounds of pgbench runs.
    pub(crate) rounds: usize,
    /// Replicas in the kit cluster (0 or 2): with 2, pgtier splits reads and writes over the
    /// primary and both replicas (`pool` connections per node) while PgBouncer serves the
    /// primary alone (`pool` connections).
    pub(crate) replicas: usize,
    /// Seconds per pgbench run.
    pub(crate) duration: u64,
    /// pgbench clients.
    pub(crate) clients: u32,
    /// Server connections per node (pgtier) and on the primary (PgBouncer).
    pub(crate) pool: u32,
    /// PgBouncer's pool (`--bouncer-pool`; `pool` by default).
    pub(crate) bouncer_pool: u32,
    /// Idle clients opened per proxy and client kind for the RSS measurement (0: none).
    pub(crate) idle: usize,
    /// pgbench scale factor.
    pub(crate) scale: u32,
    /// pgtier's `workers` setting.
    pub(crate) workers: u32,
    /// Targets to run (direct, pgtier, pgbouncer by default; also `replica`, one replica
    /// straight, and `replicas`, both replicas straight with half the clients each).
    pub(crate) targets: Vec<String>,
    /// pgbench modes to run (all by default).
    pub(crate) modes: Vec<String>,
    /// The proxies' `client_tls_sslmode`: `off` (no certificate, plain clients), `prefer` or
    /// `require` (clients use TLS).
    pub(crate) tls: String,
    /// Seconds of each `pgbench -C` run measuring new connections per second (0: none).
    pub(crate) handshakes: u64,
    /// Clients of those runs.
    pub(crate) handshake_clients: u32,
    /// Interleaved rounds of those runs.
    pub(crate) handshake_rounds: usize,
    /// Clients opening connections in those runs: pgbench (`-C`, libpq with OpenSSL) and
    /// rust (tokio-postgres with rustls, no session resumption).
    pub(crate) openers: Vec<String>,
    /// PBKDF2 iterations of bench's SCRAM verifier (Postgres' default 4096): what every login
    /// costs the client (and Postgres, PgBouncer and pgtier nothing beyond a few hashes).
    pub(crate) scram_iterations: u32,
}

impl Options {
    /// Reads the process arguments.
    pub(crate) fn parse() -> Result<Options> {
        let a = Args::parse(
            "compare [--replicas 0|2] [--rounds 3] [--duration 10] [--clients 32] \
             [--pool 20, or 10 with replicas (per node)] [--bouncer-pool POOL] [--idle 1000] \
             [--scale 10] [--workers 1] [--targets direct,pgtier,pgbouncer] \
             [--modes simple,extended,prepared] [--tls off|prefer|require] [--handshakes 5] \
             [--handshake-clients 4] [--handshake-rounds 3] [--scram-iterations 4096] \
             [--handshake-with pgbench,rust]",
            &[
                "replicas",
                "rounds",
                "duration",
                "clients",
                "pool",
                "bouncer-pool",
                "idle",
                "scale",
                "workers",
                "targets",
                "modes",
                "tls",
                "handshakes",
                "handshake-clients",
                "handshake-rounds",
                "scram-iterations",
                "handshake-with",
            ],
        )?;
        let targets = ["direct", "replica", "replicas", "pgtier", "pgbouncer"];
        let default_targets = ["direct", "pgtier", "pgbouncer"];
        let replicas = a.number("replicas", 0)?;
        if replicas != 0 && replicas != 2 {
            bail!("--replicas: 0 or 2, not {replicas}");
        }
        let pool = a.number("pool", if replicas > 0 { 10 } else { 20 })?;
        Ok(Options {
            replicas,
            rounds: a.number("rounds", 3)?,
            duration: a.number("duration", 10)?,
            clients: a.number("clients", 32)?,
            // The same total of server connections either way: 20 on the primary, or 10 on
            // each of three nodes (PgBouncer then has 10 on the primary).
            pool,
            bouncer_pool: a.number("bouncer-pool", pool)?,
            idle: a.number("idle", 1000)?,
            scale: a.number("scale", 10)?,
            workers: a.number("workers", 1)?,
            targets: a.list("targets", &default_targets, &targets)?,
            modes: a.list("modes", &MODES, &MODES)?,
            tls: a.one_of("tls", "off", &["off", "prefer", "require"])?,
            handshakes: a.number("handshakes", 5)?,
            handshake_clients: a.number("handshake-clients", 4)?,
            handshake_rounds: a.number("handshake-rounds", 3)?,
            scram_iterations: a.number("scram-iterations", 4096)?,
            openers: a.list("handshake-with", &OPENERS, &OPENERS)?,
        })
    }
}

impl Options {
    /// Whether the proxies serve TLS.
    pub(crate) fn tls(&self) -> bool {
        self.tls != "off"
    }

    /// libpq's sslmode for pgbench: `require` in TLS mode, else `disable`.
    pub(crate) fn sslmode(&self) -> &'static str {
        if self.tls() {
            "require"
        } else {
            "disable"
        }
    }

    /// Client kinds measured for idle memory and connection rate: plain when the proxies
    /// accept it, TLS when they serve it.
    pub(crate) fn client_kinds(&self) -> Vec<&'static str> {
        match self.tls.as_str() {
            "off" => vec!["disable"],
            "prefer" => vec!["disable", "require"],
            _ => vec!["require"],
        }
    }
}

/// The clients opening connections in the connection-rate runs.
pub(crate) const OPENERS: [&str; 2] = ["pgbench", "rust"];

/// "plain" or "TLS" for an sslmode.
pub(crate) fn kind_name(sslmode: &str) -> &'static str {
    if sslmode == "disable" {
        "plain"
    } else {
        "TLS"
    }
}

/// One kind of pgbench run: a query mode with plain or TLS clients.
pub(crate) struct RunKind {
    /// The mode, with " TLS" or " plain" when both kinds run (`--tls prefer`).
    pub(crate) label: String,
    /// pgbench's `-M`: simple, extended or prepared.
    pub(crate) mode: String,
    /// libpq's sslmode for the clients.
    pub(crate) sslmode: &'static str,
}

impl Options {
    /// The pgbench runs of a round: each mode, with TLS clients (`--tls require`), plain ones
    /// (`--tls off`) or both, plain first (`--tls prefer`: TLS's cost per transaction, same run).
    pub(crate) fn run_kinds(&self) -> Vec<RunKind> {
        let kinds = self.client_kinds();
        let mut runs = Vec::new();
        for mode in &self.modes {
            for &sslmode in &kinds {
                runs.push(RunKind {
                    label: if kinds.len() > 1 {
                        format!("{mode} {}", kind_name(sslmode))
                    } else {
                        mode.clone()
                    },
                    mode: mode.clone(),
                    sslmode,
                });
            }
        }
        runs
    }
}
