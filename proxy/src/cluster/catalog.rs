//! Reading the primary's catalog for routing: which functions exist and how volatile they are
//! (`pg_proc`), on a connection of its own with the monitors' credentials.

use std::time::Duration;

use thiserror::Error;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use super::topology::MonitorLogin;
use crate::config::NodeAddr;

/// The catalog could not be read.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// Connecting, logging in or querying failed.
    #[error("reading pg_proc on {node}: {error}")]
    Query {
        /// The node.
        node: NodeAddr,
        /// Cause.
        error: tokio_postgres::Error,
    },
    /// It took longer than the limit.
    #[error("reading pg_proc on {node}: timed out after {limit:?}")]
    Timeout {
        /// The node.
        node: NodeAddr,
        /// The limit.
        limit: Duration,
    },
}

/// Runs `query` (rows of schema, name, provolatile) on `node` and returns the rows.
pub async fn read_functions(
    node: &NodeAddr,
    login: &MonitorLogin,
    query: &str,
    limit: Duration,
) -> Result<Vec<(String, String, char)>, CatalogError> {
    let work = async {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&node.host)
            .port(node.port)
            .user(&login.user)
            .dbname(&login.dbname)
            .application_name("pgtier-catalog")
            .ssl_mode(SslMode::Disable);
        if let Some(pw) = &login.password {
            pg.password(pw.as_bytes());
        }
        let (client, connection) = pg.connect(NoTls).await?;
        let task = tokio::spawn(connection);
        let rows = client.query(query, &[]).await;
        drop(client);
        task.abort();
        // try_get: a NULL or a type other than text is an error, never a panic.
        rows?
            .iter()
            .map(|r| {
                let vol: String = r.try_get(2)?;
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    vol.chars().next().unwrap_or('v'),
                ))
            })
            .collect()
    };
    match crate::timers::timeout(limit, work).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(error)) => Err(CatalogError::Query {
            node: node.clone(),
            error,
        }),
        Err(_) => Err(CatalogError::Timeout {
            node: node.clone(),
            limit,
        }),
    }
}
