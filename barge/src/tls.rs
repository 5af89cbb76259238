//! TLS 1.3 for barge's protocol (rustls, ring as the one crypto provider): the server's identity
//! (a self-signed certificate made on first start, or one the user supplies) and the client's ways
//! to trust it — a pinned fingerprint, trust on first use with a known-hosts file, or a CA.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tracing::{info, warn};

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

/// Loads `cert`+`key` when given, else the self-signed pair in `state_dir` (made on first use:
/// `cert.pem`, and `key.pem` readable by the owner only).
pub fn server_identity(
    state_dir: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<ServerIdentity, TlsError> {
    let (cert_path, key_path) = match cert_key {
        Some((c, k)) => (c.to_owned(), k.to_owned()),
        None => {
            let cert = state_dir.join("cert.pem");
            let key = state_dir.join("key.pem");
            if !cert.exists() || !key.exists() {
                make_self_signed(state_dir, &cert, &key)?;
            }
            (cert, key)
        }
    };
    let chain = read_certs(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Pem {
        path: key_path.display().to_string(),
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

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::File {
        path: path.display().to_string(),
        source,
    }
}

fn make_self_signed(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names)?;
    // The key first, owner-only, never replacing a file: a half-made pair is made again next time.
    let _ = std::fs::remove_file(key_path);
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_path)
        .map_err(file_error(key_path))?;
    key.write_all(made.signing_key.serialize_pem().as_bytes())
        .and_then(|()| key.sync_all())
        .map_err(file_error(key_path))?;
    std::fs::write(cert_path, made.cert.pem()).map_err(file_error(cert_path))?;
    info!(cert = %cert_path.display(), "made a self-signed TLS certificate");
    Ok(())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |message: String| TlsError::Pem {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
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
    /// Certificates issued by the CAs in this PEM file, for the name dialled.
    Ca(PathBuf),
}

/// The default known-hosts file: `$BARGE_KNOWN_HOSTS`, else `$XDG_CONFIG_HOME/barge/known_hosts`,
/// else `~/.config/barge/known_hosts`.
pub fn default_known_hosts() -> PathBuf {
    if let Some(p) = std::env::var_os("BARGE_KNOWN_HOSTS") {
        return p.into();
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("barge").join("known_hosts")
}

/// A client configuration for dialling `addr` (`host:port`) under `trust`.
pub fn client_config(trust: &Trust, addr: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let config = match trust {
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert)?;
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
            Check::KnownHosts { file, host } => {
                known_host(file, host, seen).map(|()| ServerCertVerified::assertion())
            }
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

/// Checks `seen` against the known-hosts entry of `host`, recording it when there is none.
fn known_host(file: &Path, host: &str, seen: Fingerprint) -> Result<(), rustls::Error> {
    let io_err = |e: std::io::Error| {
        rustls::Error::General(format!("known-hosts file {}: {e}", file.display()))
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(e)),
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some(host) {
            continue;
        }
        let recorded = fields.next().and_then(|f| Fingerprint::parse(f).ok());
        return match recorded {
            Some(fp) if fp == seen => Ok(()),
            Some(fp) => Err(rustls::Error::General(format!(
                "WARNING: THE CERTIFICATE OF {host} HAS CHANGED: it is now {seen}, but {} records \
                 {fp}. Someone may be intercepting the connection; if the server's certificate \
                 was really replaced, remove its line from that file",
                file.display()
            ))),
            None => Err(rustls::Error::General(format!(
                "known-hosts file {} has a bad line for {host}",
                file.display()
            ))),
        };
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(io_err)?;
    writeln!(out, "{host} {seen}").map_err(io_err)?;
    warn!(host, fingerprint = %seen, file = %file.display(), "first connection to this server: its certificate is now trusted");
    Ok(())
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
    fn self_signed_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = server_identity(dir.path(), None).unwrap();
        let again = server_identity(dir.path(), None).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others");
    }

    #[test]
    fn known_hosts_records_then_refuses_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/known_hosts");
        let a = Fingerprint::of(b"a");
        let b = Fingerprint::of(b"b");
        known_host(&file, "h:1", a).unwrap();
        known_host(&file, "h:1", a).unwrap();
        known_host(&file, "other:1", b).unwrap();
        let err = known_host(&file, "h:1", b).unwrap_err().to_string();
        assert!(err.contains("HAS CHANGED"), "{err}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
