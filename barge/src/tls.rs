//! TLS 1.3 for barge's protocol (rustls, ring as the one crypto provider): the server's identity
//! (a self-signed certificate, or one the user supplies, from PEM) and the client's ways to trust
//! it — a pinned fingerprint, trust on first use with a known-hosts file
//! ([`crate::client::known_hosts`]), or a CA. No files here: the binary keeps the server's
//! certificate in its state folder, the client its known hosts.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or known-hosts file cannot be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A fingerprint given by the user is not `SHA256:` and 64 hex digits.
    #[error("bad fingerprint {0:?}: expected SHA256: followed by 64 hex digits")]
    BadFingerprint(String),
}

/// Installs ring as the process's rustls crypto provider. Call once at start; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The SHA-256 of a certificate (DER), shown and compared as `SHA256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert);
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Parses `SHA256:` and 64 hex digits (colons between bytes and either case are accepted).
    pub fn parse(s: &str) -> Result<Self, TlsError> {
        let bad = || TlsError::BadFingerprint(s.to_owned());
        let hex = s
            .trim()
            .strip_prefix("SHA256:")
            .or_else(|| s.trim().strip_prefix("sha256:"))
            .ok_or_else(bad)?
            .replace(':', "");
        barge_proto::tree::parse_hex(&hex.to_ascii_lowercase())
            .map(Self)
            .ok_or_else(bad)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", barge_proto::tree::hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A server's TLS configuration and the fingerprint of its certificate.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// Ready for a `tokio_rustls::TlsAcceptor`.
    pub config: Arc<rustls::ServerConfig>,
    /// Of the leaf certificate: what clients pin.
    pub fingerprint: Fingerprint,
}

/// Names the self-signed certificate is made for; clients that pin or trust on first use do not
/// check names, so these only matter to tools that inspect the certificate.
const SELF_SIGNED_NAMES: [&str; 2] = ["localhost", "barge"];

/// A server identity from a PEM certificate chain and a PEM private key (`what` names them in
/// errors). Files are the caller's business (the binary keeps them in the state folder).
pub fn identity_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<ServerIdentity, TlsError> {
    let chain = certs_from_pem(cert_pem, what)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: what.to_owned(),
        message: format!("no usable private key: {e}"),
    })?;
    let fingerprint = Fingerprint::of(&chain[0]);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(ServerIdentity {
        config: Arc::new(config),
        fingerprint,
    })
}

/// A new self-signed certificate and its key, as PEM: `(certificate, key)`.
pub fn generate_self_signed() -> Result<(String, String), TlsError> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names)?;
    Ok((made.cert.pem(), made.signing_key.serialize_pem()))
}

/// A fresh self-signed identity held in memory only (tests, embedders).
pub fn self_signed() -> Result<ServerIdentity, TlsError> {
    let (cert, key) = generate_self_signed()?;
    identity_from_pem(cert.as_bytes(), key.as_bytes(), "self-signed certificate")
}

/// The certificates in PEM text (`what` names it in errors); at least one.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |message: String| TlsError::Pem {
        path: what.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate in the file".into()));
    }
    Ok(certs)
}

/// How a client decides to trust a server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly this certificate.
    Pinned(Fingerprint),
    /// The certificate recorded for this `host:port` in a known-hosts file; the first one seen is
    /// recorded, and a different one later is refused loudly.
    KnownHosts {
        /// The known-hosts file (`host:port SHA256:...` per line).
        file: PathBuf,
    },
    /// Certificates issued by these CAs (see [`certs_from_pem`]), for the name dialled.
    Ca(Vec<CertificateDer<'static>>),
}

/// A client configuration for dialling `addr` (`host:port`) under `trust`.
pub fn client_config(trust: &Trust, addr: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let config = match trust {
        Trust::Ca(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                check: Check::Pinned(*fp),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::KnownHosts { file } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                check: Check::KnownHosts {
                    file: file.clone(),
                    host: addr.to_owned(),
                },
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name to present for `host:port`: the host (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_owned()).map_err(|e| TlsError::Pem {
        path: addr.to_owned(),
        message: format!("not a host name: {e}"),
    })
}

#[derive(Debug)]
enum Check {
    Pinned(Fingerprint),
    KnownHosts { file: PathBuf, host: String },
}

/// Trusts one certificate by its fingerprint instead of by a CA; the handshake signatures are still
/// verified, so only the holder of that certificate's key passes.
#[derive(Debug)]
struct PinVerifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = Fingerprint::of(end_entity);
        match &self.check {
            Check::Pinned(expected) if *expected == seen => Ok(ServerCertVerified::assertion()),
            Check::Pinned(expected) => Err(rustls::Error::General(format!(
                "the server's certificate is {seen}, not the pinned {expected}"
            ))),
            Check::KnownHosts { file, host } => crate::client::known_hosts::check(file, host, seen)
                .map(|()| ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_and_is_lenient_about_format() {
        let fp = Fingerprint::of(b"certificate");
        let shown = fp.to_string();
        assert!(shown.starts_with("SHA256:") && shown.len() == 7 + 64);
        assert_eq!(Fingerprint::parse(&shown).unwrap(), fp);
        let hex = &shown[7..];
        let colons: Vec<&str> = (0..32).map(|i| &hex[i * 2..i * 2 + 2]).collect();
        let upper = format!("SHA256:{}", colons.join(":").to_uppercase());
        assert_eq!(Fingerprint::parse(&upper).unwrap(), fp);
        assert!(Fingerprint::parse(hex).is_err());
        assert!(Fingerprint::parse("SHA256:abcd").is_err());
    }

    #[test]
    fn an_identity_round_trips_through_pem() {
        let (cert, key) = generate_self_signed().unwrap();
        let a = identity_from_pem(cert.as_bytes(), key.as_bytes(), "t").unwrap();
        let b = identity_from_pem(cert.as_bytes(), key.as_bytes(), "t").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert!(identity_from_pem(b"", key.as_bytes(), "t").is_err());
        assert!(identity_from_pem(cert.as_bytes(), b"junk", "t").is_err());
    }
}
