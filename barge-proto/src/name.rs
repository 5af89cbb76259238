//! The rule for peer-supplied file names: one safe path component, or a typed reason why not.
//!
//! A name arrives from the network and is hostile until it passes [`validate_file_name`]. The rule
//! is deliberately narrow (reject, never rewrite): silently "fixing" `../x` into `x` would store a
//! file under a name the sender did not ask for.

/// Longest accepted name in bytes: the usual `NAME_MAX` of Linux file systems.
pub const MAX_NAME_BYTES: usize = 255;

/// Names the receiver keeps for itself inside its storage directory.
pub const RESERVED_NAMES: &[&str] = &[".barge"];
/// Names starting with this are the receiver's too: files being received, in their folder.
pub const RESERVED_PREFIX: &str = ".barge-";

/// Why a name is not one safe path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("file name is empty")]
    Empty,
    /// The name is `.` or `..`.
    #[error("file name {0:?} refers to a directory")]
    DotName(String),
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("file name is {0} bytes long, over the limit of {MAX_NAME_BYTES}")]
    TooLong(usize),
    /// The name contains `/` or `\`, so it would be a path, not a name.
    #[error("file name {0:?} contains a path separator")]
    Separator(String),
    /// The name contains NUL or another control character.
    #[error("file name {0:?} contains a control character")]
    Control(String),
    /// The name is one the receiver reserves for its own state.
    #[error("file name {0:?} is reserved")]
    Reserved(String),
}

/// Accepts `name` only if it is one safe path component, and returns it unchanged (Unicode is kept
/// exactly as given, with no normalisation).
pub fn validate_file_name(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName(name.to_owned()));
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Separator(name.to_owned()));
    }
    // char::is_control covers NUL, the rest of C0, DEL and C1 (which includes terminal escapes).
    if name.chars().any(char::is_control) {
        return Err(NameError::Control(name.to_owned()));
    }
    if RESERVED_NAMES.contains(&name) || name.starts_with(RESERVED_PREFIX) {
        return Err(NameError::Reserved(name.to_owned()));
    }
    Ok(name)
}

/// Text from a peer made safe to print on a terminal: control characters (which start escape
/// sequences) and the invisible direction overrides that make text display other than it reads
/// are shown as escapes; anything else is printed as is.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_terminal_controls_and_direction_overrides() {
        assert!(matches!(
            printable("movie (1).mp4"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("电影.mp4"), "电影.mp4");
        let evil = "a\x1b]0;pwned\x07b\u{9b}31mc\u{202e}fdp.exe\r\n";
        let shown = printable(evil);
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown:?}"
        );
        assert_eq!(
            shown,
            "a\\u{1b}]0;pwned\\u{7}b\\u{9b}31mc\\u{202e}fdp.exe\\u{d}\\u{a}"
        );
    }

    #[test]
    fn validate_accepts_ordinary_and_unicode_names() {
        for ok in [
            "movie.mp4",
            "性感荷官在线发牌.,mp4",
            ".hidden",
            "...",
            "a b (1).txt",
            "é",
            &"x".repeat(255),
        ] {
            assert_eq!(validate_file_name(ok), Ok(ok));
        }
    }

    #[test]
    fn validate_rejects_every_unsafe_form() {
        assert_eq!(validate_file_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_file_name("."),
            Err(NameError::DotName(_))
        ));
        assert!(matches!(
            validate_file_name(".."),
            Err(NameError::DotName(_))
        ));
        for sep in ["a/b", "/etc/passwd", "../x", "a\\b", "..\\..\\x", "x/"] {
            assert!(
                matches!(validate_file_name(sep), Err(NameError::Separator(_))),
                "{sep}"
            );
        }
        for ctl in [
            "a\0b",
            "a\nb",
            "\x1b[31mred",
            "tab\there",
            "del\x7f",
            "c1\u{9b}",
        ] {
            assert!(
                matches!(validate_file_name(ctl), Err(NameError::Control(_))),
                "{ctl:?}"
            );
        }
        assert_eq!(
            validate_file_name(&"x".repeat(256)),
            Err(NameError::TooLong(256))
        );
        // 86 three-byte characters: 258 bytes though only 86 characters.
        assert!(matches!(
            validate_file_name(&"荷".repeat(86)),
            Err(NameError::TooLong(258))
        ));
        assert!(matches!(
            validate_file_name(".barge-1f2e.part"),
            Err(NameError::Reserved(_))
        ));
        assert!(matches!(
            validate_file_name(".barge"),
            Err(NameError::Reserved(_))
        ));
    }
}
