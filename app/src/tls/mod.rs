//! TLS towards pgtier, driven by libpq's connection parameters in `DATABASE_URL`:
//! `sslmode` (disable | prefer | require | verify-ca | verify-full), `sslrootcert`, and
//! `sslcert` / `sslkey` (a client certificate). tokio-postgres itself knows only
//! disable/prefer/require and no file parameters, so these are taken out of the connection
//! string here and turned into a rustls connector (ring provider, tokio-postgres-rustls).
//!
//! What each mode checks (as libpq):
//! - `disable`: plain text, no SSLRequest.
//! - `prefer` (the default, as libpq's): TLS when pgtier answers the SSLRequest with `S`, plain
//!   text when it answers `N` (tokio-postgres does not retry in plain text when a handshake
//!   fails). The certificate is not checked, unless `sslrootcert` is given: then its chain is.
//! - `require`: TLS or no connection; certificate checked as under `prefer`.
//! - `verify-ca`: TLS, and the certificate must chain to `sslrootcert` (host name not checked).
//! - `verify-full`: as verify-ca, and the certificate must be valid for the host name (or IP
//!   address) the app connects to.
//!
//! `sslmode=allow` (plain text first, TLS on failure) is refused: tokio-postgres cannot do it.
//! `sslrootcert=system` is refused too (no system roots are bundled; give a PEM file).

mod conn_string;
mod connector;
mod error;
mod params;
mod pem;
#[cfg(test)]
mod test_pki;
mod verify;

pub use conn_string::split;
pub use connector::Connector;
pub use error::TlsError;
pub use params::{Plan, SslMode, TlsParams, Verify};

/// Parses a connection string with TLS parameters: the tokio-postgres config (its sslmode set
/// from the plan) and the connector to use with it.
pub fn parse(conn: &str) -> anyhow::Result<(tokio_postgres::Config, Connector)> {
    let (rest, params) = split(conn)?;
    // tokio-postgres' message names the problem, never the password.
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(
            |e: tokio_postgres::Error| match std::error::Error::source(&e) {
                Some(why) => anyhow::anyhow!("not a valid connection string: {why}"),
                None => anyhow::anyhow!("not a valid connection string: {e}"),
            },
        )?;
    let (mode, connector) = Connector::new(&params)?;
    config.ssl_mode(mode);
    Ok((config, connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_are_refused_without_echoing_the_password() {
        for (s, want) in [
            ("postgres://u:s3cret@h/db?sslmode=allow", "sslmode=allow"),
            ("postgres://u:s3cret@h/db?sslmode=verify", "\"verify\""),
            (
                "postgres://u:s3cret@h/db?sslmode=verify-full",
                "needs sslrootcert",
            ),
            ("postgres://u:s3cret@h/db?sslcert=/c", "together"),
            ("postgres://u:s3cret@h/db?sslmode=%ZZ", "sslmode"),
            ("host=h password=s3cret sslmode=bogus", "\"bogus\""),
            ("postgres://u:s3cret@h/db?nonsense=1", "nonsense"),
            (
                "postgres://u:s3cret@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt",
                "sslrootcert=/nonexistent/ca.crt",
            ),
        ] {
            let e = format!("{:#}", parse(s).unwrap_err());
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains("s3cret"), "{s}: {e}");
        }
    }
}
