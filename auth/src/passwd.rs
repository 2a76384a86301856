//! Loading a mosquitto password file and checking CONNECT credentials against it.
//!
//! Format: one `username:hash` per line; blank lines and lines whose first non-blank character is
//! `#` are ignored; blanks around the username and the hash are trimmed (as mosquitto does).
//! Loading is all-or-nothing: any malformed line fails the whole load, so a SIGHUP reload either
//! yields a complete new [`PasswordFile`] or an error and the broker keeps the old one. (mosquitto
//! 2.0 instead logs and drops bad entries; failing loudly is safer for a reload.)

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::hash::{HashFormatError, PasswordHash};
use crate::text::{is_blank_or_comment, numbered_lines};

/// The users of a password file and their hashes.
#[derive(Clone)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
    /// Verified against when the username is unknown, so that costs as much as a wrong password.
    decoy: PasswordHash,
}

/// What is wrong with one line of a password file. Never includes the hash or the line's text
/// (a line without `:` may well be a password pasted by mistake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswdLineProblem {
    /// The line is not valid UTF-8.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// No `:` separates username and hash.
    #[error("expected username:hash, found no ':'")]
    MissingColon,
    /// Nothing before the `:`.
    #[error("empty username")]
    EmptyUsername,
    /// Nothing after the `:`.
    #[error("empty password hash")]
    EmptyHash,
    /// The same username appears twice; which hash should win is ambiguous.
    #[error("user {username:?} already defined on line {first_line}")]
    DuplicateUser {
        /// The repeated username.
        username: String,
        /// Where it was first defined.
        first_line: usize,
    },
    /// The hash is not in a supported format.
    #[error(transparent)]
    Hash(#[from] HashFormatError),
}

/// Why a password file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The file could not be read.
    #[error("cannot read password file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}line {line}: {problem}", file_prefix(path.as_deref()))]
    Line {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: PasswdLineProblem,
    },
}

fn file_prefix(path: Option<&Path>) -> String {
    path.map(|p| format!("password file {}: ", p.display())).unwrap_or_default()
}

impl PasswordFile {
    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<Self, PasswdError> {
        Self::parse_bytes(text.as_bytes(), None)
    }

    /// Reads and parses a password file.
    pub fn load(path: &Path) -> Result<Self, PasswdError> {
        let bytes = std::fs::read(path).map_err(|source| PasswdError::Io { path: path.to_path_buf(), source })?;
        Self::parse_bytes(&bytes, Some(path))
    }

    fn parse_bytes(bytes: &[u8], path: Option<&Path>) -> Result<Self, PasswdError> {
        let line_error = |line, problem| PasswdError::Line { path: path.map(Path::to_path_buf), line, problem };
        let mut users = HashMap::new();
        let mut first_lines: HashMap<String, usize> = HashMap::new();
        for line in numbered_lines(bytes) {
            let text = line.text.ok_or_else(|| line_error(line.number, PasswdLineProblem::NotUtf8))?;
            if is_blank_or_comment(text) {
                continue;
            }
            let (username, hash) = split_entry(text).map_err(|problem| line_error(line.number, problem))?;
            let hash = PasswordHash::parse(hash).map_err(|e| line_error(line.number, e.into()))?;
            if let Some(&first_line) = first_lines.get(username) {
                let problem = PasswdLineProblem::DuplicateUser { username: username.to_owned(), first_line };
                return Err(line_error(line.number, problem));
            }
            first_lines.insert(username.to_owned(), line.number);
            users.insert(username.to_owned(), hash);
        }
        let decoy = most_common_cost(&users).map_or_else(PasswordHash::default_decoy, PasswordHash::decoy);
        Ok(PasswordFile { users, decoy })
    }

    /// Checks CONNECT credentials. `password` is `None` when the client sent none, which never
    /// authenticates. An unknown username costs a full hash verification (against a decoy with
    /// the file's most common scheme and cost) so timing does not reveal which usernames exist.
    pub fn verify(&self, username: &str, password: Option<&[u8]>) -> bool {
        // Decided before the lookup so the no-password case takes the same path for every user.
        let Some(password) = password else { return false };
        match self.users.get(username) {
            Some(hash) => hash.verify(password),
            None => {
                std::hint::black_box(self.decoy.verify(password));
                false
            }
        }
    }

    /// Whether the file has an entry for `username`.
    pub fn contains_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The hash stored for `username`.
    pub fn hash_for(&self, username: &str) -> Option<&PasswordHash> {
        self.users.get(username)
    }

    /// Usernames in the file, in no particular order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file defines no users (then every login fails).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile").field("users", &self.users.len()).finish_non_exhaustive()
    }
}

/// Splits a non-comment line into trimmed username and hash. Splits at the first `:`, since
/// usernames cannot contain one and none of the hash formats does.
pub(crate) fn split_entry(line: &str) -> Result<(&str, &str), PasswdLineProblem> {
    let (username, hash) = line.split_once(':').ok_or(PasswdLineProblem::MissingColon)?;
    let (username, hash) = (username.trim(), hash.trim());
    if username.is_empty() {
        return Err(PasswdLineProblem::EmptyUsername);
    }
    if hash.is_empty() {
        return Err(PasswdLineProblem::EmptyHash);
    }
    Ok((username, hash))
}

fn most_common_cost(users: &HashMap<String, PasswordHash>) -> Option<&PasswordHash> {
    let mut counts: HashMap<_, (usize, &PasswordHash)> = HashMap::new();
    for hash in users.values() {
        counts.entry(hash.cost_class()).or_insert((0, hash)).0 += 1;
    }
    // Ties broken by the cost class itself so the choice does not depend on hash-map order.
    counts.into_iter().max_by(|a, b| (a.1 .0, a.0).cmp(&(b.1 .0, b.0))).map(|(_, (_, hash))| hash)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hash::HashScheme;

    /// Written by Debian's mosquitto_passwd 2.0.11 (`-b`, plus `-H sha512` for carol and
    /// `-I 1000` for frank). Passwords: alice "correct horse", bob "s3cr3t:with:colons",
    /// carol "sha512pass", "dave smith" "ünïcødé 密码", erin "" (empty), frank "thousand".
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$hLr6TAWF8RZq+om9$nHvP+OVx0wWcF3fhuqdkmnikffKbcXv1eF96mnll8LE0WrM9N0frMrSXnBgHfAzuYjp0PhNQsIeZRdcCbgl7UQ==
bob:$7$101$9wmk02CohKv0wkkT$B4l14peU4NYCMnWLh+LVFy964eImnFM572L4JLmgdcultzkZfvIX1AbaBG1ctSGNlt1xeZZJrxxnMxpHBONPmw==
carol:$6$giRJzSNkwdNFRUTU$OjbwObV88nn/n9yRhnPbe+Cr6VraOk+N3ZvldzGHgkVB4WQ80d0J+lIcRFUi1msVNbI78IjkHpvViA+RYh8sRQ==
dave smith:$7$101$2F6DT8ZyOAIzjE49$XvbxrkpvzwWBl/dSrBy3ybiaop0oNUEvHRkP+fj8BJo++1dwX1GaLynRqy1xIzyRXe9K778Y5Yr2ItgJXC9WWQ==
erin:$7$101$DXG+TokJ5gXRJRpA$/jB4TTH+CkNcCctESH5R4uhZKYC7lUimif+UYscxNvyDvW+o8hBw9qvsocowBhL8IxYBn8TmOOzSf1BBdEgFSA==
frank:$7$1000$ABt8AG6kDul7A4EP$MVKipRLkZ97RP4D/H3jKpjZXHA3CT4PStY4y2oZbP58Sj6+1DHpqwcFZP5OG526wUsL7mhClDta2uide6xVU6w==
";

    #[test]
    fn verifies_every_user_of_a_mosquitto_passwd_file() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        assert_eq!(file.len(), 6);
        let cases: &[(&str, &[u8], bool)] = &[
            ("alice", b"correct horse", true),
            ("alice", b"correct  horse", false),
            ("bob", b"s3cr3t:with:colons", true),
            ("bob", b"s3cr3t", false),
            ("carol", b"sha512pass", true),
            ("carol", b"correct horse", false),
            ("dave smith", "ünïcødé 密码".as_bytes(), true),
            ("dave", "ünïcødé 密码".as_bytes(), false),
            ("erin", b"", true),
            ("erin", b" ", false),
            ("frank", b"thousand", true),
            ("mallory", b"correct horse", false),
            ("", b"", false),
            ("ALICE", b"correct horse", false),
        ];
        for &(user, password, expected) in cases {
            assert_eq!(file.verify(user, Some(password)), expected, "{user} / {password:?}");
        }
    }

    #[test]
    fn missing_password_never_authenticates() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        assert!(!file.verify("erin", None));
        assert!(!file.verify("alice", None));
        assert!(!file.verify("nobody", None));
    }

    #[test]
    fn skips_comments_blank_lines_and_trims_blanks() {
        let text = "# users\n\n   \n  # indented comment\r\n  alice : $7$101$hLr6TAWF8RZq+om9$nHvP+OVx0wWcF3fhuqdkmnikffKbcXv1eF96mnll8LE0WrM9N0frMrSXnBgHfAzuYjp0PhNQsIeZRdcCbgl7UQ==  \r\n";
        let file = PasswordFile::parse(text).unwrap();
        assert_eq!(file.usernames().collect::<Vec<_>>(), vec!["alice"]);
        assert!(file.verify("alice", Some(b"correct horse")));
    }

    #[test]
    fn empty_file_rejects_everyone() {
        let file = PasswordFile::parse("# nobody yet\n").unwrap();
        assert!(file.is_empty());
        assert!(!file.verify("alice", Some(b"")));
    }

    #[test]
    fn writer_output_round_trips_through_the_loader() {
        let alice = PasswordHash::new_pbkdf2_sha512(b"pw-a", 101).unwrap();
        let bob =
            PasswordHash::new_argon2id(b"pw-b", crate::Argon2Params { m_cost: 64, t_cost: 1, p_cost: 1 }).unwrap();
        let text = format!("alice:{}\nbob:{}\n", alice.encode(), bob.encode());
        let file = PasswordFile::parse(&text).unwrap();
        assert!(file.verify("alice", Some(b"pw-a")));
        assert!(!file.verify("alice", Some(b"pw-b")));
        assert!(file.verify("bob", Some(b"pw-b")));
        assert!(!file.verify("bob", Some(b"pw-a")));
    }

    #[test]
    fn malformed_lines_name_the_line_and_problem() {
        let good = "alice:$7$101$hLr6TAWF8RZq+om9$nHvP+OVx0wWcF3fhuqdkmnikffKbcXv1eF96mnll8LE0WrM9N0frMrSXnBgHfAzuYjp0PhNQsIeZRdcCbgl7UQ==";
        let cases: Vec<(String, usize, PasswdLineProblem)> = vec![
            (format!("{good}\nhunter2\n"), 2, PasswdLineProblem::MissingColon),
            (format!("# c\n\n:{}", &good[6..]), 3, PasswdLineProblem::EmptyUsername),
            ("bob:\n".into(), 1, PasswdLineProblem::EmptyHash),
            ("bob:   \n".into(), 1, PasswdLineProblem::EmptyHash),
            ("bob:hunter2\n".into(), 1, PasswdLineProblem::Hash(HashFormatError::UnknownScheme)),
            (
                format!("{good}\n#\n{good}\n"),
                3,
                PasswdLineProblem::DuplicateUser { username: "alice".into(), first_line: 1 },
            ),
            ("$7$101$x:y".into(), 1, PasswdLineProblem::Hash(HashFormatError::UnknownScheme)),
        ];
        for (text, line, problem) in cases {
            match PasswordFile::parse(&text) {
                Err(PasswdError::Line { line: l, problem: p, path: None }) => {
                    assert_eq!((l, &p), (line, &problem), "text {text:?}");
                }
                other => panic!("expected line error for {text:?}, got {other:?}"),
            }
        }
        let not_utf8 = PasswordFile::parse_bytes(b"alice:\xff\n", None).unwrap_err();
        assert!(matches!(not_utf8, PasswdError::Line { line: 1, problem: PasswdLineProblem::NotUtf8, .. }));
    }

    #[test]
    fn error_messages_do_not_leak_secrets() {
        let err = PasswordFile::parse("alice:hunter2\n").unwrap_err().to_string();
        assert_eq!(err, "line 1: unsupported password hash format (expected $6$, $7$ or $argon2id$)");
        let err = PasswordFile::parse("hunter2\n").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn load_reads_files_and_reports_path() {
        let dir = std::env::temp_dir().join(format!("promptmq-auth-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        std::fs::write(&path, MOSQUITTO_FILE).unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("frank", Some(b"thousand")));

        std::fs::write(&path, "x\n").unwrap();
        let err = PasswordFile::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("password file {}: line 1:", path.display())), "{err}");

        let missing = PasswordFile::load(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, PasswdError::Io { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decoy_follows_the_most_common_cost() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        assert_eq!(file.decoy.cost_class(), (HashScheme::Pbkdf2Sha512, 101, 0, 0, 12));
        assert!(!file.verify("nobody", Some(b"correct horse")));
    }

    #[test]
    fn unknown_user_costs_as_much_as_a_wrong_password() {
        // Without the decoy an unknown user would be rejected in nanoseconds, against
        // milliseconds for a real hash; the bounds only need to tell those apart. Minimum of
        // several runs, so a busy machine does not make the test flaky.
        let hash = PasswordHash::new_pbkdf2_sha512(b"right", 5000).unwrap();
        let file = PasswordFile::parse(&format!("alice:{}\n", hash.encode())).unwrap();
        let fastest = |user: &str| {
            (0..5)
                .map(|_| {
                    let start = std::time::Instant::now();
                    assert!(!file.verify(user, Some(b"wrong")));
                    start.elapsed()
                })
                .min()
                .unwrap()
        };
        let (known, unknown) = (fastest("alice"), fastest("mallory"));
        let ratio = unknown.as_secs_f64() / known.as_secs_f64();
        assert!((0.33..3.0).contains(&ratio), "known {known:?}, unknown {unknown:?}");
    }

    #[test]
    fn debug_shows_no_users_or_hashes() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).unwrap();
        assert_eq!(format!("{file:?}"), "PasswordFile { users: 6, .. }");
    }
}
