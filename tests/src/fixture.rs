//! Shared set-up for pgtier's integration tests: roles on the kit cluster and pgtier configs.

use std::fmt::Write as _;

use anyhow::Result;

use crate::{free_port, Cluster, Pgtier};

/// A pgtier user entry and, optionally, the server role behind it.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Name clients log in with (and the server role, unless `server_user` says otherwise).
    pub name: String,
    /// Extra TOML lines for `[users.NAME]` (e.g. `password = "x"`, `auth = "trust"`).
    pub toml: String,
}

/// Builds a pgtier config against a kit cluster's primary and starts pgtier.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    primary: String,
    global: Vec<String>,
    database: Vec<String>,
    users: Vec<TestUser>,
}

impl ConfigBuilder {
    /// A config with database `app` on the cluster's primary and no users yet.
    pub fn new(cluster: &Cluster) -> ConfigBuilder {
        ConfigBuilder {
            primary: cluster.primary().addr(),
            global: Vec::new(),
            database: Vec::new(),
            users: Vec::new(),
        }
    }

    /// Points `[databases.app]` at `addr` as its primary (e.g. a [`crate::FaultProxy`]).
    pub fn primary(mut self, addr: &str) -> Self {
        addr.clone_into(&mut self.primary);
        self
    }

    /// Adds a top-level setting line, e.g. `pool_size = 5`.
    pub fn global(mut self, line: &str) -> Self {
        self.global.push(line.to_owned());
        self
    }

    /// Adds a line to `[databases.app]`.
    pub fn database(mut self, line: &str) -> Self {
        self.database.push(line.to_owned());
        self
    }

    /// Lists the cluster's replicas under `[databases.app]` (reads are routed to them).
    pub fn with_replicas(self, cluster: &Cluster) -> Self {
        let list: Vec<String> = cluster
            .replicas()
            .iter()
            .map(|r| format!("\"{}\"", r.addr()))
            .collect();
        self.database(&format!("replicas = [{}]", list.join(", ")))
    }

    /// Adds `[users.NAME]` with these TOML lines.
    pub fn user(mut self, name: &str, toml: &str) -> Self {
        self.users.push(TestUser {
            name: name.to_owned(),
            toml: toml.to_owned(),
        });
        self
    }

    /// The TOML text, listening on `port`.
    pub fn render(&self, port: u16) -> String {
        let mut t = format!("listen = \"127.0.0.1:{port}\"\n");
        for g in &self.global {
            writeln!(t, "{g}").unwrap();
        }
        // PGTIER_TEST_TLS=1: existing tests run over TLS (unless the test sets TLS itself).
        if crate::tls::test_tls() && !self.global.iter().any(|g| g.starts_with("client_tls_")) {
            t.push_str(&crate::tls::kit_client_tls_lines());
        }
        for u in &self.users {
            writeln!(t, "[users.{}]\n{}", u.name, u.toml).unwrap();
        }
        writeln!(t, "[databases.app]\nprimary = \"{}\"", self.primary).unwrap();
        for d in &self.database {
            writeln!(t, "{d}").unwrap();
        }
        t
    }

    /// Starts pgtier with this config on a free port.
    pub fn start(&self) -> Result<Pgtier> {
        self.start_with_env(&[])
    }

    /// [`ConfigBuilder::start`] with extra environment variables for pgtier.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Result<Pgtier> {
        let port = free_port()?;
        Pgtier::start_with_env(port, &self.render(port), env)
    }
}

/// Creates a SCRAM login role `name` with password `pw` that may create tables in `app`.
pub fn scram_role(cluster: &Cluster, name: &str, pw: &str) -> Result<()> {
    ensure_app_db(cluster)?;
    cluster.create_role(name, pw)?;
    cluster.ddl("app", &format!("GRANT ALL ON SCHEMA public TO {name}"))?;
    Ok(())
}

/// Creates database `app` (owned by role `app`, password `app`) once per cluster.
pub fn ensure_app_db(cluster: &Cluster) -> Result<()> {
    static DONE: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if !done.iter().any(|d| d == cluster.dir()) {
        cluster.create_role_and_db("app", "app", "app")?;
        done.push(cluster.dir().to_path_buf());
    }
    Ok(())
}

/// A tokio-postgres connection string for pgtier.
pub fn dsn(px: &Pgtier, user: &str, pw: &str) -> String {
    let pw = if pw.is_empty() {
        String::new()
    } else {
        format!(" password={pw}")
    };
    format!(
        "host=127.0.0.1 port={} user={user}{pw} dbname=app connect_timeout=10",
        px.port()
    )
}

/// Connects through pgtier with tokio-postgres (the connection task is spawned); over TLS
/// when `PGTIER_TEST_TLS=1` (see [`crate::tls::test_tls`]).
pub async fn connect(px: &Pgtier, user: &str, pw: &str) -> Result<tokio_postgres::Client> {
    crate::tls::connect(&dsn(px, user, pw)).await
}

/// The port of the node that served a plain read on `c`, and whether it is in recovery.
pub async fn read_node(c: &tokio_postgres::Client) -> Result<(u16, bool)> {
    for m in c
        .simple_query("SELECT inet_server_port(), pg_is_in_recovery()")
        .await?
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok((r.get(0).unwrap_or("0").parse()?, r.get(1) == Some("t")));
        }
    }
    anyhow::bail!("no row")
}

/// Connects to pgtier's admin console as `user` (the connection task is spawned).
pub async fn admin_console(px: &Pgtier, user: &str, pw: &str) -> tokio_postgres::Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} password={pw} dbname=pgtier",
        px.port()
    );
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .expect("admin console login");
    tokio::spawn(conn);
    c
}

/// Server connections the pool holds for `user` right now, counted by Postgres itself.
pub fn server_connections(cluster: &Cluster, user: &str) -> Result<i64> {
    let n = cluster.primary().psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' AND backend_type = 'client backend'"
    ))?;
    Ok(n.trim().parse()?)
}

/// Starts pgtier routing to the cluster's replicas (lag checks every 50 ms, `extra` global
/// lines) for SCRAM user `user`, and waits until a replica is in the read rotation.
pub async fn start_routing(
    cluster: &Cluster,
    user: &str,
    pw: &str,
    extra: &[&str],
) -> Result<Pgtier> {
    scram_role(cluster, user, pw)?;
    let mut b = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
        .with_replicas(cluster)
        .user(user, &format!("password = \"{pw}\""));
    for line in extra {
        b = b.global(line);
    }
    let px = b.start()?;
    replica_in_rotation(&px, user, pw).await?;
    Ok(px)
}

/// Waits until the monitors have admitted a replica (reads go to the primary until then).
pub async fn replica_in_rotation(px: &Pgtier, user: &str, pw: &str) -> Result<()> {
    let c = connect(px, user, pw).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no replica entered the read rotation within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The rows of a simple query (panics naming the statement if it fails).
pub async fn simple_rows(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Vec<tokio_postgres::SimpleQueryRow> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Clients waiting for a server in the pools of database `app` (admin console SHOW POOLS).
pub async fn cl_waiting(admin: &tokio_postgres::Client) -> u32 {
    simple_rows(admin, "SHOW POOLS")
        .await
        .iter()
        .filter(|r| r.get("database") == Some("app"))
        .map(|r| r.get("cl_waiting").unwrap_or("0").parse::<u32>().unwrap())
        .sum()
}
