//! Editing password files, for a `passwd` subcommand modelled on `mosquitto_passwd`.
//!
//! The text-level functions ([`set_entry`], [`remove_entry`]) keep every other line byte for
//! byte (comments, blank lines, other users, line endings). The file-level functions
//! ([`set_entry_in_file`], [`remove_entry_from_file`]) read, edit and replace the file atomically
//! via [`crate::write_atomically`], so the broker never sees a half-written file on reload.
//!
//! | mosquitto_passwd            | here                                                         |
//! |-----------------------------|--------------------------------------------------------------|
//! | `-c file user` (create)     | `set_entry_in_file(path, user, &hash, FileMode::Create)`     |
//! | `file user` (add/update)    | `set_entry_in_file(path, user, &hash, FileMode::MustExist)`  |
//! | `-b`                        | the caller takes the password from the command line          |
//! | `-D file user`              | `remove_entry_from_file(path, user)`                         |

use std::path::{Path, PathBuf};

use crate::atomic::write_atomically;
use crate::hash::PasswordHash;
use crate::passwd::{split_entry, PasswdLineProblem};
use crate::text::is_blank_or_comment;

/// Whether an edit starts a new file or changes an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Start from an empty file, replacing any existing one (mosquitto_passwd 2.0's `-c`).
    Create,
    /// The file must already exist; its other lines are kept.
    MustExist,
}

/// What [`set_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryChange {
    /// The user was not in the file and was appended.
    Added,
    /// The user's existing line was replaced in place.
    Updated,
}

/// Why an edit failed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The username cannot be stored in a password file.
    #[error("invalid username: {0}")]
    InvalidUsername(&'static str),
    /// [`remove_entry`] was asked to delete a user the file does not have.
    #[error("user {0:?} not found in password file")]
    UserNotFound(String),
    /// An existing line is not `username:hash`; the file is left untouched.
    #[error("corrupt password file at line {line}: {problem}")]
    Corrupt {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: PasswdLineProblem,
    },
    /// Reading or writing the file failed.
    #[error("password file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Checks that `username` can be stored and read back unchanged: not empty, no `:`, no control
/// characters (mosquitto_passwd's rules), at most 65535 bytes (MQTT's limit), and, because the
/// loader trims blanks and skips `#` lines, no leading/trailing whitespace and no leading `#`.
pub fn validate_username(username: &str) -> Result<(), EditError> {
    let problem = if username.is_empty() {
        "must not be empty"
    } else if username.len() > 65535 {
        "must be at most 65535 bytes"
    } else if username.contains(':') {
        "must not contain ':'"
    } else if username.chars().any(char::is_control) {
        "must not contain control characters"
    } else if username.trim() != username {
        "must not start or end with whitespace"
    } else if username.starts_with('#') {
        "must not start with '#'"
    } else {
        return Ok(());
    };
    Err(EditError::InvalidUsername(problem))
}

/// The line `username:hash` (without newline).
pub fn format_entry(username: &str, hash: &PasswordHash) -> Result<String, EditError> {
    validate_username(username)?;
    Ok(format!("{username}:{}", hash.encode()))
}

/// Adds `username` with `hash` to the file text, or replaces its existing line in place. Other
/// lines are kept as they are, except that any further lines for the same user are dropped (the
/// loader rejects duplicates). A new entry is appended at the end.
pub fn set_entry(text: &str, username: &str, hash: &PasswordHash) -> Result<(String, EntryChange), EditError> {
    let entry = format_entry(username, hash)?;
    let mut out = String::with_capacity(text.len() + entry.len() + 1);
    let mut change = EntryChange::Added;
    for line in entry_lines(text) {
        let line = line?;
        if line.username != Some(username) {
            out.push_str(line.raw);
        } else if change == EntryChange::Added {
            out.push_str(&entry);
            out.push_str(line.ending());
            change = EntryChange::Updated;
        }
    }
    if change == EntryChange::Added {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&entry);
        out.push('\n');
    }
    Ok((out, change))
}

/// Removes every line for `username` from the file text, keeping all other lines.
pub fn remove_entry(text: &str, username: &str) -> Result<String, EditError> {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in entry_lines(text) {
        let line = line?;
        if line.username == Some(username) {
            found = true;
        } else {
            out.push_str(line.raw);
        }
    }
    if found {
        Ok(out)
    } else {
        Err(EditError::UserNotFound(username.to_owned()))
    }
}

/// [`set_entry`] on a file, replacing it atomically.
pub fn set_entry_in_file(
    path: &Path,
    username: &str,
    hash: &PasswordHash,
    mode: FileMode,
) -> Result<EntryChange, EditError> {
    let text = match mode {
        FileMode::Create => String::new(),
        FileMode::MustExist => read_text(path)?,
    };
    let (new_text, change) = set_entry(&text, username, hash)?;
    write_atomically(path, new_text.as_bytes()).map_err(|source| EditError::Io { path: path.to_path_buf(), source })?;
    Ok(change)
}

/// [`remove_entry`] on a file, replacing it atomically.
pub fn remove_entry_from_file(path: &Path, username: &str) -> Result<(), EditError> {
    let text = read_text(path)?;
    let new_text = remove_entry(&text, username)?;
    write_atomically(path, new_text.as_bytes()).map_err(|source| EditError::Io { path: path.to_path_buf(), source })
}

fn read_text(path: &Path) -> Result<String, EditError> {
    let bytes = std::fs::read(path).map_err(|source| EditError::Io { path: path.to_path_buf(), source })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        EditError::Corrupt { line, problem: PasswdLineProblem::NotUtf8 }
    })
}

struct EntryLine<'a> {
    /// The line including its line ending, if any.
    raw: &'a str,
    /// `None` for blank and comment lines.
    username: Option<&'a str>,
}

impl EntryLine<'_> {
    fn ending(&self) -> &'static str {
        if self.raw.ends_with("\r\n") {
            "\r\n"
        } else if self.raw.ends_with('\n') {
            "\n"
        } else {
            ""
        }
    }
}

/// Lines of `text` with their endings, each entry checked for the `username:hash` shape. Only the
/// shape: an edit should not fail because another user's hash uses a scheme this crate lacks.
fn entry_lines(text: &str) -> impl Iterator<Item = Result<EntryLine<'_>, EditError>> {
    text.split_inclusive('\n').enumerate().map(|(index, raw)| {
        let content = raw.trim_end_matches(['\n', '\r']);
        if is_blank_or_comment(content) {
            return Ok(EntryLine { raw, username: None });
        }
        match split_entry(content) {
            Ok((username, _)) => Ok(EntryLine { raw, username: Some(username) }),
            Err(problem) => Err(EditError::Corrupt { line: index + 1, problem }),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::passwd::PasswordFile;

    fn hash(password: &str) -> PasswordHash {
        PasswordHash::new_pbkdf2_sha512(password.as_bytes(), 101).unwrap()
    }

    #[test]
    fn adds_to_empty_and_existing_text() {
        let a = hash("a");
        let (text, change) = set_entry("", "alice", &a).unwrap();
        assert_eq!(change, EntryChange::Added);
        assert_eq!(text, format!("alice:{}\n", a.encode()));

        let b = hash("b");
        let (text2, change) = set_entry(&text, "bob", &b).unwrap();
        assert_eq!(change, EntryChange::Added);
        assert_eq!(text2, format!("alice:{}\nbob:{}\n", a.encode(), b.encode()));

        // A last line without newline gets one before the appended entry.
        let (text3, _) = set_entry("# header", "bob", &b).unwrap();
        assert_eq!(text3, format!("# header\nbob:{}\n", b.encode()));
    }

    #[test]
    fn replaces_in_place_and_preserves_other_lines() {
        let original = "# users\r\nalice:$7$old\r\n\n  # keep me\nbob:$6$whatever\ncarol:plaintext-not-ours-to-judge";
        let new_bob = hash("new");
        let (text, change) = set_entry(original, "bob", &new_bob).unwrap();
        assert_eq!(change, EntryChange::Updated);
        assert_eq!(
            text,
            format!(
                "# users\r\nalice:$7$old\r\n\n  # keep me\nbob:{}\ncarol:plaintext-not-ours-to-judge",
                new_bob.encode()
            )
        );
        let new_alice = hash("x");
        let (text, _) = set_entry(original, "alice", &new_alice).unwrap();
        assert!(text.starts_with(&format!("# users\r\nalice:{}\r\n\n", new_alice.encode())));
    }

    #[test]
    fn update_drops_later_duplicates() {
        let h = hash("p");
        let (text, change) = set_entry("a:$7$1\nb:$7$2\na:$7$3\n", "a", &h).unwrap();
        assert_eq!(change, EntryChange::Updated);
        assert_eq!(text, format!("a:{}\nb:$7$2\n", h.encode()));
    }

    #[test]
    fn removes_users_and_reports_missing_ones() {
        let text = "# c\nalice:$7$a\nbob:$7$b\n  alice : $7$c\n";
        assert_eq!(remove_entry(text, "alice").unwrap(), "# c\nbob:$7$b\n");
        assert_eq!(remove_entry(text, "bob").unwrap(), "# c\nalice:$7$a\n  alice : $7$c\n");
        assert!(matches!(remove_entry(text, "carol"), Err(EditError::UserNotFound(u)) if u == "carol"));
    }

    #[test]
    fn refuses_to_edit_corrupt_files() {
        let err = set_entry("alice:$7$a\ngarbage\n", "bob", &hash("b")).unwrap_err();
        assert!(matches!(err, EditError::Corrupt { line: 2, problem: PasswdLineProblem::MissingColon }));
        let err = remove_entry("alice:\n", "alice").unwrap_err();
        assert!(matches!(err, EditError::Corrupt { line: 1, problem: PasswdLineProblem::EmptyHash }));
    }

    #[test]
    fn validates_usernames() {
        for ok in ["alice", "dave smith", "ünï", "a#b", "user@example.com"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65536);
        for bad in ["", "a:b", "tab\there", "nl\n", " lead", "trail ", "#hash", long.as_str()] {
            assert!(matches!(validate_username(bad), Err(EditError::InvalidUsername(_))), "{bad:?}");
            assert!(set_entry("", bad, &hash("x")).is_err());
        }
    }

    #[test]
    fn edited_text_loads_and_verifies() {
        let (text, _) = set_entry("# managed by promptmq passwd\n", "alice", &hash("one")).unwrap();
        let (text, _) = set_entry(&text, "bob", &hash("two")).unwrap();
        let (text, _) = set_entry(&text, "alice", &hash("three")).unwrap();
        let file = PasswordFile::parse(&text).unwrap();
        assert!(file.verify("alice", Some(b"three")));
        assert!(!file.verify("alice", Some(b"one")));
        assert!(file.verify("bob", Some(b"two")));
        let text = remove_entry(&text, "bob").unwrap();
        let file = PasswordFile::parse(&text).unwrap();
        assert!(!file.contains_user("bob"));
        assert_eq!(file.len(), 1);
    }

    #[test]
    fn file_level_create_update_delete() {
        let dir = std::env::temp_dir().join(format!("promptmq-auth-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        let _ = std::fs::remove_file(&path);

        let missing = set_entry_in_file(&path, "alice", &hash("a"), FileMode::MustExist).unwrap_err();
        assert!(matches!(missing, EditError::Io { .. }));

        assert_eq!(set_entry_in_file(&path, "alice", &hash("a"), FileMode::Create).unwrap(), EntryChange::Added);
        assert_eq!(set_entry_in_file(&path, "bob", &hash("b"), FileMode::MustExist).unwrap(), EntryChange::Added);
        assert_eq!(set_entry_in_file(&path, "alice", &hash("a2"), FileMode::MustExist).unwrap(), EntryChange::Updated);
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("alice", Some(b"a2")) && file.verify("bob", Some(b"b")));

        remove_entry_from_file(&path, "alice").unwrap();
        assert!(matches!(remove_entry_from_file(&path, "alice"), Err(EditError::UserNotFound(_))));
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.usernames().collect::<Vec<_>>(), vec!["bob"]);

        // -c replaces whatever was there.
        set_entry_in_file(&path, "carol", &hash("c"), FileMode::Create).unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.usernames().collect::<Vec<_>>(), vec!["carol"]);

        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("passwd")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
