//! Taking the TLS parameters out of a connection string (URL or key=value form).

use super::error::TlsError;
use super::params::{SslMode, TlsParams};

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits a connection string (URL or key=value form) into the part tokio-postgres parses and
/// the TLS parameters. The first part keeps every other parameter as written.
pub fn split(conn: &str) -> Result<(String, TlsParams), TlsError> {
    let mut params = TlsParams::default();
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        split_url(conn, &mut params)?
    } else {
        split_kv(conn, &mut params)?
    };
    Ok((rest, params))
}

fn set(params: &mut TlsParams, key: &str, value: String) -> Result<(), TlsError> {
    match key {
        "sslmode" => params.mode = SslMode::parse(&value)?,
        // libpq treats an empty value as unset.
        "sslrootcert" => params.root_cert = Some(value).filter(|v| !v.is_empty()).map(Into::into),
        "sslcert" => params.cert = Some(value).filter(|v| !v.is_empty()).map(Into::into),
        "sslkey" => params.key = Some(value).filter(|v| !v.is_empty()).map(Into::into),
        _ => unreachable!("not a TLS key: {key}"),
    }
    Ok(())
}

/// `postgres://...?a=b&sslmode=...`: the query parameters are `&`-separated, percent-encoded
/// `key=value` pairs after the first `?` that follows the credentials (as tokio-postgres reads
/// them).
fn split_url(conn: &str, params: &mut TlsParams) -> Result<String, TlsError> {
    let after_creds = conn.find('@').map_or(0, |i| i + 1);
    let Some(q) = conn[after_creds..].find('?').map(|i| after_creds + i) else {
        return Ok(conn.to_owned());
    };
    let mut kept = Vec::new();
    for seg in conn[q + 1..].split('&') {
        let tls_key = seg.split_once('=').and_then(|(k, v)| {
            let k = percent_decode(k).ok()?;
            TLS_KEYS.contains(&k.as_str()).then_some((k, v))
        });
        match tls_key {
            Some((k, v)) => {
                let v = percent_decode(v).map_err(|_| TlsError::Encoding(k.clone()))?;
                set(params, &k, v)?;
            }
            None => kept.push(seg),
        }
    }
    let mut out = conn[..q].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// `host=h sslmode=verify-full sslrootcert='/a b/ca.crt'`: whitespace-separated `key=value`,
/// values optionally single-quoted, backslash escapes (tokio-postgres' and libpq's syntax).
/// The other parameters are written back quoted.
fn split_kv(conn: &str, params: &mut TlsParams) -> Result<String, TlsError> {
    let mut it = conn.chars().peekable();
    let mut kept = Vec::new();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if it.peek().is_some() {
                return Err(TlsError::Syntax("expected a keyword"));
            }
            break;
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(TlsError::Syntax("expected `=` after a keyword"));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => return Err(TlsError::Syntax("unterminated quoted value")),
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(TlsError::Syntax("a keyword without a value"));
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            set(params, &key, value)?;
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok(kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn split_ok(s: &str) -> (String, TlsParams) {
        split(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_tls_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, p) = split_ok(
            "postgres://app:pw@pgtier:6432/app?connect_timeout=5&sslmode=verify-full\
             &sslrootcert=%2Fcerts%2Fca.crt&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://app:pw@pgtier:6432/app?connect_timeout=5&application_name=x"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/certs/ca.crt")));
        assert_eq!((p.cert, p.key), (None, None));

        // Only TLS parameters: no `?` left; the last value of a repeated key wins (libpq).
        let (rest, p) = split_ok(
            "postgresql://h/db?sslmode=require&sslcert=/c.crt&sslkey=/c.key&sslmode=verify-ca&sslrootcert=/ca",
        );
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.cert.as_deref(), Some(Path::new("/c.crt")));
        assert_eq!(p.key.as_deref(), Some(Path::new("/c.key")));

        // No query, or none of ours: unchanged; a `?` in the credentials is not the query.
        for s in [
            "postgres://u:p@h:1/db",
            "postgres://u:p@h:1/db?connect_timeout=5",
            "postgres://u:p?x@h:1/db",
        ] {
            let (rest, p) = split_ok(s);
            assert_eq!(rest, s);
            assert_eq!(p, TlsParams::default());
        }
        let (rest, p) = split_ok("postgres://u:p?x@h:1/db?sslmode=disable");
        assert_eq!(rest, "postgres://u:p?x@h:1/db");
        assert_eq!(p.mode, SslMode::Disable);
    }

    #[test]
    fn key_value_tls_parameters_are_taken_out_and_the_rest_requoted() {
        let s = r"host=pgtier port = 6432 password='it\'s a \\ secret' sslmode=verify-full sslrootcert='/my certs/ca.crt' dbname=app";
        let (rest, p) = split_ok(s);
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/my certs/ca.crt")));
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&br"it's a \ secret"[..]));
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_ports(), &[6432]);
        assert_eq!(split_ok("").0, "");
        assert!(matches!(
            split("host=h sslrootcert='/x"),
            Err(TlsError::Syntax(_))
        ));
        assert!(matches!(split("host"), Err(TlsError::Syntax(_))));
    }
}
