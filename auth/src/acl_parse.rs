//! Reading the mosquitto ACL file format into an [`Acl`].
//!
//! ```text
//! # comment
//! topic [read|write|readwrite|deny] <topic filter>     (anonymous clients, until the first `user`)
//! user <username>
//! topic [read|write|readwrite|deny] <topic filter>     (that user)
//! pattern [read|write|readwrite|deny] <filter with %c / %u levels>   (every client)
//! ```
//!
//! As in mosquitto: fields are separated by blanks, the username and the topic are the rest of
//! the line (so they may contain spaces; a topic with a space needs the access keyword), omitted
//! access means `readwrite`, an unknown first word is an error. Where this parser is stricter:
//! `topic read` (an access keyword and nothing else) is "missing topic" rather than a topic
//! literally named `read`; `%c`/`%u` inside a longer level of a `pattern` is an error rather than
//! substituted; a non-UTF-8 line is an error. Loading is all-or-nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::acl::{Access, Acl, AclWarning, PatternLevel, PatternRule, RuleSet};
use crate::text::{is_blank_or_comment, numbered_lines};
use crate::topic::{check_length_and_nul, parse_level, Filter, FilterError};

/// What is wrong with one line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclLineProblem {
    /// The line is not valid UTF-8.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The first word is not `topic`, `pattern` or `user`.
    #[error("unknown keyword {0:?} (expected topic, pattern or user)")]
    UnknownKeyword(String),
    /// The word after `topic`/`pattern` is followed by more text but is not an access keyword.
    #[error("unknown access type {0:?} (expected read, write, readwrite or deny)")]
    UnknownAccess(String),
    /// `topic`/`pattern` with no topic filter.
    #[error("missing topic")]
    MissingTopic,
    /// `user` with no name.
    #[error("missing username")]
    MissingUsername,
    /// The topic filter is not a valid MQTT filter.
    #[error("invalid topic filter {filter:?}: {reason}")]
    InvalidFilter {
        /// The filter as written.
        filter: String,
        /// Why it is invalid.
        reason: FilterError,
    },
    /// `%c` or `%u` is part of a longer level in a `pattern` line.
    #[error("in pattern {0:?}, %c and %u must each be a whole topic level")]
    MisplacedSubstitution(String),
}

/// Why an ACL file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read ACL file {}: {source}", path.display())]
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
        problem: AclLineProblem,
    },
}

fn file_prefix(path: Option<&Path>) -> String {
    path.map(|p| format!("ACL file {}: ", p.display())).unwrap_or_default()
}

impl Acl {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        parse_bytes(text.as_bytes(), None)
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let bytes = std::fs::read(path).map_err(|source| AclError::Io { path: path.to_path_buf(), source })?;
        parse_bytes(&bytes, Some(path))
    }
}

fn parse_bytes(bytes: &[u8], path: Option<&Path>) -> Result<Acl, AclError> {
    let mut anonymous = RuleSet::default();
    let mut users: HashMap<String, RuleSet> = HashMap::new();
    let mut current_user: Option<String> = None;
    let mut patterns = Vec::new();
    let mut warnings = Vec::new();

    for line in numbered_lines(bytes) {
        let fail = |problem| AclError::Line { path: path.map(Path::to_path_buf), line: line.number, problem };
        let text = line.text.ok_or_else(|| fail(AclLineProblem::NotUtf8))?;
        if is_blank_or_comment(text) {
            continue;
        }
        let (keyword, rest) = split_word(text.trim());
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(fail(AclLineProblem::MissingUsername));
                }
                current_user = Some(rest.to_owned());
            }
            "topic" => {
                let (access, topic) = access_and_topic(rest).map_err(fail)?;
                let filter = Filter::parse(topic).map_err(|reason| fail(invalid_filter(topic, reason)))?;
                match &current_user {
                    None => anonymous.add(access, filter),
                    Some(user) => users.entry(user.clone()).or_default().add(access, filter),
                }
            }
            "pattern" => {
                let (access, topic) = access_and_topic(rest).map_err(fail)?;
                let levels = parse_pattern(topic).map_err(fail)?;
                if !levels.iter().any(|l| matches!(l, PatternLevel::ClientId | PatternLevel::Username)) {
                    warnings.push(AclWarning::PatternWithoutSubstitution { line: line.number });
                }
                patterns.push(PatternRule { access, levels });
            }
            other => return Err(fail(AclLineProblem::UnknownKeyword(other.to_owned()))),
        }
    }

    Ok(Acl {
        anonymous: Arc::new(anonymous),
        users: users.into_iter().map(|(name, set)| (name, Arc::new(set))).collect(),
        patterns,
        warnings,
    })
}

/// First blank-separated word and the trimmed rest of the line.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

fn access_and_topic(rest: &str) -> Result<(Access, &str), AclLineProblem> {
    if rest.is_empty() {
        return Err(AclLineProblem::MissingTopic);
    }
    let (first, topic) = split_word(rest);
    let access = match first {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    };
    match (access, topic.is_empty()) {
        (Some(_), true) => Err(AclLineProblem::MissingTopic),
        (Some(access), false) => Ok((access, topic)),
        (None, true) => Ok((Access::ReadWrite, first)),
        (None, false) => Err(AclLineProblem::UnknownAccess(first.to_owned())),
    }
}

fn parse_pattern(topic: &str) -> Result<Vec<PatternLevel>, AclLineProblem> {
    check_length_and_nul(topic).map_err(|reason| invalid_filter(topic, reason))?;
    let parts: Vec<&str> = topic.split('/').collect();
    let last = parts.len() - 1;
    let mut levels = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        levels.push(match part {
            "%c" => PatternLevel::ClientId,
            "%u" => PatternLevel::Username,
            _ if part.contains("%c") || part.contains("%u") => {
                return Err(AclLineProblem::MisplacedSubstitution(topic.to_owned()))
            }
            _ => PatternLevel::Fixed(parse_level(part, i == last).map_err(|reason| invalid_filter(topic, reason))?),
        });
    }
    Ok(levels)
}

fn invalid_filter(topic: &str, reason: FilterError) -> AclLineProblem {
    AclLineProblem::InvalidFilter { filter: topic.to_owned(), reason }
}
