//! The lesson's menu: list a folder's entries numbered from 1 and turn the user's answer into a
//! choice, with the lesson's own answers to bad input ("must be a number", "not in range").

use std::io;
use std::path::{Path, PathBuf};

/// One file or folder offered in the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full path of the file.
    pub path: PathBuf,
    /// Its name as shown.
    pub name: String,
    /// Its size in bytes (0 for a folder).
    pub size: u64,
    /// A folder: choosing it alone enters it.
    pub dir: bool,
}

/// The folders, then the regular files, directly in `dir`, each sorted by name (the lesson used
/// `os.listdir`, whose order is arbitrary; a stable order lets a user pick the same number
/// twice). Hidden entries are skipped, and entries that cannot be read.
pub fn list_entries(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinks here: the user chose this folder, and sends what a link points to.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if meta.is_file() || meta.is_dir() {
            entries.push(Entry {
                path: entry.path(),
                name,
                size: if meta.is_file() { meta.len() } else { 0 },
                dir: meta.is_dir(),
            });
        }
    }
    entries.sort_by(|a, b| (!a.dir, &a.name).cmp(&(!b.dir, &b.name)));
    Ok(entries)
}

/// What the user answered at the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Upload the entry at this index (0-based).
    Index(usize),
    /// Leave the menu.
    Quit,
}

/// Why an answer is not a choice; the messages are the lesson's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    /// Not digits.
    #[error("must be a number")]
    NotANumber,
    /// A number outside 1..=count (the lesson's words, then the range).
    #[error("not in range (1 to {0})")]
    NotInRange(usize),
}

/// Parses an answer that may choose several entries: numbers and ranges separated by spaces or
/// commas (`1 3-5`), each checked like [`parse_choice`]; `q` quits. Indices are 0-based, in the
/// order given, without repeats.
pub fn parse_choices(answer: &str, count: usize) -> Result<Option<Vec<usize>>, ChoiceError> {
    let answer = answer.trim();
    if answer.eq_ignore_ascii_case("q") {
        return Ok(None);
    }
    let mut chosen = Vec::new();
    for token in answer.split([' ', ',']).filter(|t| !t.is_empty()) {
        let (a, b) = token.split_once('-').unwrap_or((token, token));
        let pick = |t: &str| match parse_choice(t, count)? {
            Choice::Index(i) => Ok(i),
            Choice::Quit => Err(ChoiceError::NotANumber),
        };
        let (a, b) = (pick(a)?, pick(b)?);
        if b < a {
            return Err(ChoiceError::NotInRange(count));
        }
        for i in a..=b {
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
    }
    if chosen.is_empty() {
        return Err(ChoiceError::NotANumber);
    }
    Ok(Some(chosen))
}

/// Parses one answer for a menu of `count` entries numbered from 1.
pub fn parse_choice(answer: &str, count: usize) -> Result<Choice, ChoiceError> {
    let answer = answer.trim();
    if answer.eq_ignore_ascii_case("q") {
        return Ok(Choice::Quit);
    }
    // Like Python's str.isdigit() in the lesson: digits only, no sign.
    if answer.is_empty() || !answer.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ChoiceError::NotANumber);
    }
    match answer.parse::<usize>() {
        Ok(n) if (1..=count).contains(&n) => Ok(Choice::Index(n - 1)),
        _ => Err(ChoiceError::NotInRange(count)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choice_follows_the_lesson() {
        assert_eq!(parse_choice("1", 3), Ok(Choice::Index(0)));
        assert_eq!(parse_choice(" 3\n", 3), Ok(Choice::Index(2)));
        assert_eq!(parse_choice("q", 3), Ok(Choice::Quit));
        assert_eq!(parse_choice("Q\n", 3), Ok(Choice::Quit));
        for bad in ["", "abc", "-1", "+1", "1.5", "一"] {
            assert_eq!(
                parse_choice(bad, 3),
                Err(ChoiceError::NotANumber),
                "{bad:?}"
            );
        }
        for out in ["0", "4", "99999999999999999999999"] {
            assert_eq!(
                parse_choice(out, 3),
                Err(ChoiceError::NotInRange(3)),
                "{out:?}"
            );
        }
        assert_eq!(ChoiceError::NotANumber.to_string(), "must be a number");
        assert_eq!(parse_choices("1 3-4", 5), Ok(Some(vec![0, 2, 3])));
        assert_eq!(parse_choices("2,2 1", 5), Ok(Some(vec![1, 0])));
        assert_eq!(parse_choices(" q ", 5), Ok(None));
        assert_eq!(parse_choices("1 x", 5), Err(ChoiceError::NotANumber));
        assert_eq!(parse_choices("4-2", 5), Err(ChoiceError::NotInRange(5)));
        assert_eq!(parse_choices("1-9", 5), Err(ChoiceError::NotInRange(5)));
        assert_eq!(parse_choices("", 5), Err(ChoiceError::NotANumber));
        assert_eq!(
            ChoiceError::NotInRange(7).to_string(),
            "not in range (1 to 7)"
        );
    }

    #[test]
    fn list_entries_puts_folders_first_sorted_and_skips_hidden() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.mp4"), b"bb").unwrap();
        std::fs::write(d.path().join("a.mp4"), b"a").unwrap();
        std::fs::write(d.path().join(".hidden"), b"").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::create_dir(d.path().join(".git")).unwrap();
        let got: Vec<_> = list_entries(d.path())
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.size, e.dir))
            .collect();
        assert_eq!(
            got,
            vec![
                ("sub".into(), 0, true),
                ("a.mp4".into(), 1, false),
                ("b.mp4".into(), 2, false)
            ]
        );
    }
}
