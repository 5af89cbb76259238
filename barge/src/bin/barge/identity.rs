//! The server's TLS identity on disk: the user's certificate and key, or a self-signed pair made
//! on first start in the state folder (`cert.pem`, and `key.pem` readable by the owner only) and
//! kept, so that clients that pinned or recorded it keep trusting it.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use barge::tls::{ServerIdentity, generate_self_signed, identity_from_pem};

/// Loads `cert`+`key` when given, else the self-signed pair in `state_dir` (made on first use).
pub fn server_identity(
    state_dir: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<ServerIdentity> {
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
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let what = format!("{} and {}", cert_path.display(), key_path.display());
    Ok(identity_from_pem(
        &read(&cert_path)?,
        &read(&key_path)?,
        &what,
    )?)
}

fn make_self_signed(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (cert, key_pem) = generate_self_signed()?;
    // The key first, owner-only, never replacing a file: a half-made pair is made again next time.
    let _ = std::fs::remove_file(key_path);
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_path)
        .with_context(|| format!("cannot create {}", key_path.display()))?;
    key.write_all(key_pem.as_bytes())
        .and_then(|()| key.sync_all())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    std::fs::write(cert_path, cert)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed TLS certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_identity_is_made_once_and_kept() {
        barge::tls::install_crypto_provider();
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
}
