//! The server-certificate verifiers: none, the chain only, or the chain and the host name.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::error::TlsError;
use super::params::Verify;
use super::pem::{file_error, load_roots};

/// The certificate verifier for `verify` (`root`: the `sslrootcert` file, required for
/// `Chain` and `ChainAndHost`).
pub(super) fn verifier(
    verify: Verify,
    root: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    Ok(match (verify, root) {
        (Verify::ChainAndHost, Some(path)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(load_roots(path)?), provider)
                .build()
                .map_err(|e| file_error("sslrootcert", path, e))?
        }
        (Verify::Chain, Some(path)) => Arc::new(ChainOnly {
            roots: load_roots(path)?,
            provider,
        }),
        (Verify::Nothing, _) => Arc::new(NoVerify { provider }),
        (_, None) => return Err(TlsError::NoRootCert("verify-ca")),
    })
}

/// `require`/`prefer` without `sslrootcert`: any certificate; the handshake signature is still
/// verified (so the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerify {
    provider: Arc<CryptoProvider>,
}

/// `verify-ca` (and require/prefer with `sslrootcert`): the chain to the roots, not the name.
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
}

/// The handshake-signature checks both verifiers share: with the provider's algorithms (the
/// peer must hold the key of the certificate it sent, whatever is checked of the certificate).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::test_pki::{provider, Pki};

    fn check(v: &Arc<dyn ServerCertVerifier>, pki: &Pki, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        v.verify_server_cert(&pki.server, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    #[test]
    fn verifiers_check_what_their_mode_promises() {
        let pki = Pki::new("verifiers");
        let other = Pki::new("other");
        let root = pki.ca_file();
        let wrong_root = other.ca_file();
        assert_ne!(pki.ca, other.ca);

        let full = verifier(Verify::ChainAndHost, Some(&root), provider()).unwrap();
        check(&full, &pki, "localhost").unwrap();
        check(&full, &pki, "127.0.0.1").unwrap();
        let e = check(&full, &pki, "pgtier.example").unwrap_err();
        assert!(e.to_string().contains("not valid for name"), "{e}");

        let chain = verifier(Verify::Chain, Some(&root), provider()).unwrap();
        check(&chain, &pki, "localhost").unwrap();
        check(&chain, &pki, "pgtier.example").unwrap();

        for v in [Verify::ChainAndHost, Verify::Chain] {
            let wrong = verifier(v, Some(&wrong_root), provider()).unwrap();
            let e = check(&wrong, &pki, "localhost").unwrap_err();
            assert!(e.to_string().contains("UnknownIssuer"), "{v:?}: {e}");
        }

        let nothing = verifier(Verify::Nothing, None, provider()).unwrap();
        check(&nothing, &pki, "pgtier.example").unwrap();
        check(&nothing, &other, "localhost").unwrap();
    }
}
