//! Reading the PEM files named by `sslrootcert`, `sslcert` and `sslkey`.

use std::fmt;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::error::TlsError;

pub(super) fn file_error(param: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        param,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

pub(super) fn load_certs(
    param: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(param, path, e))?;
    if certs.is_empty() {
        return Err(file_error(param, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

pub(super) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("sslrootcert", path)? {
        roots
            .add(cert)
            .map_err(|e| file_error("sslrootcert", path, e))?;
    }
    Ok(roots)
}

pub(super) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("sslkey", path, e))
}
