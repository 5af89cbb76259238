//! LocalSend protocol v2 messages (github.com/localsend/protocol): the device info multicast on
//! 224.0.0.167:53317 and sent to `/register`, and the upload API's `prepare-upload` request and
//! answer — parsed with bounds, since every field comes from an unauthenticated peer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// LocalSend's default multicast group.
pub const GROUP: [u8; 4] = [224, 0, 0, 167];
/// LocalSend's default port (UDP multicast and HTTPS).
pub const PORT: u16 = 53317;
/// The protocol version barge speaks.
pub const VERSION: &str = "2.1";
/// Largest device info or multicast datagram accepted.
pub const MAX_INFO: usize = 4096;
/// Largest `prepare-upload` body accepted.
pub const MAX_PREPARE: usize = 4 << 20;
/// Most files in one session.
pub const MAX_FILES: usize = 10_000;
/// Longest alias, file id or file name (bytes).
pub const MAX_FIELD: usize = 1024;

/// Why a LocalSend message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalSendError {
    #[error("{0} bytes is too long (at most {1})")]
    TooLong(usize, usize),
    #[error("bad JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

/// A device: in multicast datagrams, `/register` bodies and answers, and `prepare-upload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInfo {
    pub alias: String,
    pub version: String,
    #[serde(default)]
    pub device_model: Option<String>,
    #[serde(default)]
    pub device_type: Option<String>,
    /// SHA-256 of the certificate (HTTPS) or a random string (HTTP): avoids self-discovery.
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub download: bool,
    /// Multicast only: `true` asks others to answer, `false` is an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<bool>,
}

/// One file offered in `prepare-upload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub id: String,
    /// A name, or a relative path (`folder/name`) when the sender shares a folder.
    pub file_name: String,
    pub size: u64,
    #[serde(default)]
    pub file_type: Option<String>,
    /// Lower-case hex SHA-256 of the content, if the sender computed it.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The body of `POST /api/localsend/v2/prepare-upload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareUpload {
    pub info: DeviceInfo,
    pub files: BTreeMap<String, FileInfo>,
}

/// The answer to `prepare-upload`: the session and a token per accepted file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareAnswer {
    pub session_id: String,
    pub files: BTreeMap<String, String>,
}

fn field(what: &str, s: &str) -> Result<(), LocalSendError> {
    if s.len() > MAX_FIELD {
        return Err(LocalSendError::Invalid(format!(
            "{what} of {} bytes (at most {MAX_FIELD})",
            s.len()
        )));
    }
    Ok(())
}

fn check_info(info: &DeviceInfo) -> Result<(), LocalSendError> {
    field("alias", &info.alias)?;
    field("fingerprint", &info.fingerprint)?;
    for s in [&info.device_model, &info.device_type, &info.protocol]
        .into_iter()
        .flatten()
    {
        field("device field", s)?;
    }
    field("version", &info.version)
}

/// Parses a device info (a multicast datagram or a `/register` body).
pub fn parse_info(bytes: &[u8]) -> Result<DeviceInfo, LocalSendError> {
    if bytes.len() > MAX_INFO {
        return Err(LocalSendError::TooLong(bytes.len(), MAX_INFO));
    }
    let info: DeviceInfo =
        serde_json::from_slice(bytes).map_err(|e| LocalSendError::Json(e.to_string()))?;
    check_info(&info)?;
    Ok(info)
}

/// Parses a `prepare-upload` body: at most [`MAX_FILES`] files, each keyed by its own id, every
/// string bounded, a `sha256` of 64 hex digits if present. Names are checked by the receiver's
/// name rule, not here.
pub fn parse_prepare(bytes: &[u8]) -> Result<PrepareUpload, LocalSendError> {
    if bytes.len() > MAX_PREPARE {
        return Err(LocalSendError::TooLong(bytes.len(), MAX_PREPARE));
    }
    let p: PrepareUpload =
        serde_json::from_slice(bytes).map_err(|e| LocalSendError::Json(e.to_string()))?;
    check_info(&p.info)?;
    if p.files.is_empty() || p.files.len() > MAX_FILES {
        return Err(LocalSendError::Invalid(format!(
            "{} files (1 to {MAX_FILES})",
            p.files.len()
        )));
    }
    for (key, f) in &p.files {
        field("file id", key)?;
        field("file name", &f.file_name)?;
        if *key != f.id {
            return Err(LocalSendError::Invalid(format!(
                "file {key:?} carries id {:?}",
                f.id
            )));
        }
        if let Some(h) = &f.sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(LocalSendError::Invalid(format!(
                "file {key:?}: sha256 is not 64 hex digits"
            )));
        }
        if let Some(t) = &f.file_type {
            field("file type", t)?;
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PREPARE: &str = r#"{"info":{"alias":"Nice Orange","version":"2.0",
        "deviceModel":"Samsung","deviceType":"mobile","fingerprint":"abc","port":53317,
        "protocol":"https","download":true},
        "files":{"f1":{"id":"f1","fileName":"my image.png","size":324242,"fileType":"image/jpeg",
        "sha256":null,"preview":null,"metadata":{"modified":"2021-01-01T12:34:56Z"}}}}"#;

    #[test]
    fn the_protocols_own_example_parses() {
        let p = parse_prepare(PREPARE.as_bytes()).unwrap();
        assert_eq!(p.info.alias, "Nice Orange");
        assert_eq!(p.files["f1"].file_name, "my image.png");
        assert_eq!(p.files["f1"].size, 324242);
        let multicast = br#"{"alias":"Nice Orange","version":"2.0","deviceModel":"Samsung",
            "deviceType":"mobile","fingerprint":"random string","port":53317,"protocol":"https",
            "download":true,"announce":true}"#;
        let info = parse_info(multicast).unwrap();
        assert_eq!(info.announce, Some(true));
        assert_eq!(info.port, Some(53317));
    }

    #[test]
    fn hostile_bodies_are_refused() {
        assert!(matches!(parse_prepare(b"{"), Err(LocalSendError::Json(_))));
        let mismatched = PREPARE.replace(r#""id":"f1""#, r#""id":"f2""#);
        assert!(parse_prepare(mismatched.as_bytes()).is_err());
        let negative = PREPARE.replace("324242", "-1");
        assert!(parse_prepare(negative.as_bytes()).is_err());
        let bad_hash = PREPARE.replace(r#""sha256":null"#, r#""sha256":"zz""#);
        assert!(parse_prepare(bad_hash.as_bytes()).is_err());
        let none = PREPARE.replace(
            &PREPARE[PREPARE.find(r#""files""#).unwrap()..],
            r#""files":{}}"#,
        );
        assert!(parse_prepare(none.as_bytes()).is_err());
        let long_alias = PREPARE.replace("Nice Orange", &"x".repeat(MAX_FIELD + 1));
        assert!(parse_prepare(long_alias.as_bytes()).is_err());
        assert!(matches!(
            parse_info(&vec![b' '; MAX_INFO + 1]),
            Err(LocalSendError::TooLong(..))
        ));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_prepare(&bytes);
            let _ = parse_info(&bytes);
        }
    }
}
