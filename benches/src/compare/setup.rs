//! Setting up what `compare` measures: the kit cluster (a primary, and two replicas with
//! `--replicas 2`), pgtier (and an optional baseline build), PgBouncer, and the list of
//! targets.

use anyhow::{bail, Context, Result};
use pgtier_kit::{free_port, CertFiles, Cluster, Pgtier, TestCa};

use crate::connections::tls_info;
use crate::measure::Target;
use crate::options::Options;
use crate::pgbench::pgbench;
use crate::pgbouncer::{self, PgBouncer};

/// Everything that runs during a comparison; dropping it stops it all.
pub(crate) struct Bench {
    // Field order is drop order: the proxies stop before the cluster.
    bouncer: PgBouncer,
    baseline: Option<Pgtier>,
    pgtier: Pgtier,
    /// The kit cluster.
    pub(crate) cluster: Cluster,
    _proxy_cert: Option<CertFiles>,
    /// The test CA (in TLS mode).
    pub(crate) ca: Option<TestCa>,
}

/// A SCRAM-SHA-256 verifier as Postgres stores it:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802, fixed salt).
fn scram_verifier(password: &str, iterations: u32) -> Result<String> {
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    if iterations == 0 {
        bail!("--scram-iterations must be at least 1");
    }
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(data);
        mac.finalize().into_bytes().into()
    };
    let salt = b"pgtier-bench-salt";
    // Hi(password, salt, i): PBKDF2 with HMAC-SHA-256, one block.
    let mut u = hmac(password.as_bytes(), &[&salt[..], &[0, 0, 0, 1]].concat());
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let stored_key: [u8; 32] = Sha256::digest(hmac(&salted, b"Client Key")).into();
    let server_key = hmac(&salted, b"Server Key");
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    ))
}

/// pgtier's config: transaction pooling, `o.pool` server connections per node, the kit's
/// replicas (if any) for read/write splitting, client TLS as PgBouncer's and plain text to
/// Postgres (PgBouncer's default).
fn pgtier_config(
    o: &Options,
    port: u16,
    cluster: &Cluster,
    verifier: &str,
    cert: Option<&CertFiles>,
) -> String {
    let tls_config = cert.map_or(String::new(), |c| {
        format!(
            "client_tls_sslmode = \"{}\"\nclient_tls_cert_file = \"{}\"\n\
             client_tls_key_file = \"{}\"\nserver_tls_sslmode = \"disable\"\n",
            o.tls,
            c.cert.display(),
            c.key.display()
        )
    });
    let replicas: Vec<String> = cluster
        .replicas()
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    format!(
        "listen = \"127.0.0.1:{port}\"\nlog_level = \"warn\"\npool_mode = \"transaction\"\n\
         max_client_conn = 5000\nworkers = {}\n{tls_config}[users.bench]\npassword = \"{verifier}\"\n\
         server_password = \"bench\"\n\
         [databases.bench]\nprimary = \"127.0.0.1:{}\"\nreplicas = [{}]\npool_size = {}\n",
        o.workers,
        cluster.primary().port(),
        replicas.join(", "),
        o.pool
    )
}

impl Bench {
    /// Starts the cluster, loads pgbench's tables, starts pgtier (and `PGTIER_BASELINE_BIN` as
    /// the target `baseline`) and PgBouncer.
    pub(crate) fn start(o: &Options) -> Result<Bench> {
        // TLS mode: one CA; Postgres serves TLS too (for the direct target), the proxies serve
        // a certificate of their own.
        let ca = o
            .tls()
            .then(|| TestCa::new("pgtier bench CA"))
            .transpose()?;
        let proxy_cert = ca
            .as_ref()
            .map(|ca| ca.server("proxy", &["localhost", "127.0.0.1"]))
            .transpose()?;
        eprintln!(
            "starting the kit cluster (primary{}{})",
            match o.replicas {
                0 => " only".to_owned(),
                n => format!(" + {n} replicas"),
            },
            if o.tls() { ", ssl = on" } else { "" }
        );
        let cluster = match &ca {
            Some(ca) => Cluster::start_tls(o.replicas, ca)?,
            None => Cluster::start(o.replicas)?,
        };
        cluster.create_role_and_db("bench", "bench", "bench")?;
        let primary = cluster.primary().port();
        pgbench(primary, &["-i", "-q", "-s", &o.scale.to_string()])?;
        // Postgres and both proxies authenticate clients with the same SCRAM verifier, as a
        // production userlist or auth_query would: with a plaintext password PgBouncer derives
        // a salted password (4096 PBKDF2 iterations) for every login, which would swamp the
        // TLS handshake in the connection-rate runs. The client derives it in any case, so
        // `--scram-iterations` sets how much a login costs pgbench.
        let verifier = scram_verifier("bench", o.scram_iterations)?;
        cluster
            .primary()
            .psql(&format!("ALTER ROLE bench PASSWORD '{verifier}'"))?;
        // The replicas must have the tables and the password before pgtier sends them reads.
        cluster.wait_replicas_caught_up()?;

        let pgtier_port = free_port()?;
        let config = pgtier_config(o, pgtier_port, &cluster, &verifier, proxy_cert.as_ref());
        let pgtier = Pgtier::start(pgtier_port, &config)?;
        // Another build of pgtier, run as the target "baseline" (A/B of two builds in one run).
        let baseline = match std::env::var_os("PGTIER_BASELINE_BIN") {
            Some(bin) => {
                let port = free_port()?;
                let config = config.replace(&format!(":{pgtier_port}\""), &format!(":{port}\""));
                Some(Pgtier::start_bin(bin.into(), port, &config)?)
            }
            None => None,
        };
        let bouncer_dir =
            std::env::temp_dir().join(format!("pgtier-bench-pgbouncer-{}", std::process::id()));
        let bouncer = PgBouncer::start(
            &bouncer_dir,
            free_port()?,
            primary,
            "bench",
            "bench",
            &verifier,
            o.bouncer_pool,
            proxy_cert.as_ref().map(|c| pgbouncer::ClientTls {
                sslmode: &o.tls,
                cert: &c.cert,
                key: &c.key,
            }),
        )?;
        Ok(Bench {
            bouncer,
            baseline,
            pgtier,
            cluster,
            _proxy_cert: proxy_cert,
            ca,
        })
    }

    /// The targets `--targets` asks for (and `baseline` when it runs), in run order; in TLS
    /// mode, each one checked to speak TLS.
    pub(crate) fn targets(&self, o: &Options) -> Result<Vec<Target>> {
        if o.replicas == 0 && o.targets.iter().any(|t| t.starts_with("replica")) {
            bail!("the replica and replicas targets need --replicas 2");
        }
        let replica_port = |i: usize| {
            self.cluster
                .replicas()
                .get(i)
                .map_or(self.cluster.primary().port(), |r| r.port())
        };
        let targets = [
            Target {
                name: "direct",
                port: self.cluster.primary().port(),
                also: None,
                pid: None,
            },
            // One replica straight (`--replicas 2`): what Postgres itself serves there.
            Target {
                name: "replica",
                port: replica_port(0),
                also: None,
                pid: None,
            },
            // Both replicas straight, half the clients on each: what serving the reads from
            // two instances costs Postgres on this machine, without any proxy.
            Target {
                name: "replicas",
                port: replica_port(0),
                also: Some(replica_port(1)),
                pid: None,
            },
            Target {
                name: "pgtier",
                port: self.pgtier.port(),
                also: None,
                pid: Some(self.pgtier.pid()),
            },
            Target {
                name: "pgbouncer",
                port: self.bouncer.port,
                also: None,
                pid: Some(self.bouncer.pid()),
            },
        ]
        .into_iter()
        .chain(self.baseline.as_ref().map(|b| Target {
            name: "baseline",
            port: b.port(),
            also: None,
            pid: Some(b.pid()),
        }))
        .filter(|t| t.name == "baseline" || o.targets.iter().any(|n| n == t.name))
        .collect::<Vec<_>>();
        if o.tls() {
            for t in &targets {
                let info = tls_info(t.port).with_context(|| format!("TLS check of {}", t.name))?;
                eprintln!("TLS to {:9} {info}", t.name);
            }
        }
        Ok(targets)
    }
}
