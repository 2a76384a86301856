//! MQTT topic filters as ACL rules use them: validation, matching a topic name, and comparing two
//! filters (does one cover the other, can they both match some topic).
//!
//! Matching follows MQTT 3.1.1 §4.7 / MQTT 5 §4.7: `+` is one whole level, `#` is the last level
//! and also matches the parent (`a/#` matches `a`), and a wildcard in the first level never
//! matches a topic starting with `$` (so `#` does not grant `$SYS/...`; mosquitto's ACL check
//! applies the same rule).

use std::fmt;

/// Longest topic or filter MQTT can carry (a two-byte length prefix).
const MAX_LEN: usize = 65535;

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Level {
    Literal(Box<str>),
    /// `+`
    One,
    /// `#` (always the last level)
    Rest,
}

/// A validated topic filter, stored as levels so matching never re-parses the rule.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    levels: Box<[Level]>,
}

/// Why a topic filter is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter is empty.
    #[error("empty topic filter")]
    Empty,
    /// Longer than 65535 bytes.
    #[error("topic filter longer than 65535 bytes")]
    TooLong,
    /// Contains U+0000, which MQTT forbids in strings.
    #[error("topic filter contains a NUL character")]
    Nul,
    /// `#` is not alone in the last level (e.g. `a/#/b`, `a#`).
    #[error("'#' must be the whole last level of a topic filter")]
    MisplacedMultiLevel,
    /// `+` shares a level with other characters (e.g. `a+/b`).
    #[error("'+' must be a whole level of a topic filter")]
    MisplacedSingleLevel,
}

impl Filter {
    /// Parses and validates a topic filter.
    pub(crate) fn parse(filter: &str) -> Result<Filter, FilterError> {
        check_length_and_nul(filter)?;
        let parts: Vec<&str> = filter.split('/').collect();
        let last = parts.len() - 1;
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            levels.push(parse_level(part, i == last)?);
        }
        Ok(Filter::from_levels(levels))
    }

    pub(crate) fn from_levels(mut levels: Vec<Level>) -> Filter {
        // `#` also matches its parent, and the one parent that is not a valid topic name is the
        // empty topic. So `/#` matches exactly what `/+/#` does, and `+/#` exactly what `#` does.
        // Storing those canonical forms keeps `covers` and `overlaps` exact without special
        // cases for the empty topic.
        match levels.as_slice() {
            [Level::Literal(first), Level::Rest] if first.is_empty() => levels.insert(1, Level::One),
            [Level::One, Level::Rest] => levels = vec![Level::Rest],
            _ => {}
        }
        Filter { levels: levels.into_boxed_slice() }
    }

    /// Does this filter match the topic name? `topic` must be a valid topic name (see
    /// [`is_valid_topic_name`]); callers check that once per operation.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let dollar = topic.starts_with('$');
        let mut topic_levels = topic.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Rest => return !(i == 0 && dollar),
                Level::One => {
                    if (i == 0 && dollar) || topic_levels.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(expected) => match topic_levels.next() {
                    Some(actual) if actual == &**expected => {}
                    _ => return false,
                },
            }
        }
        topic_levels.next().is_none()
    }

    /// Is every topic matched by `other` also matched by `self`?
    pub(crate) fn covers(&self, other: &Filter) -> bool {
        let mut i = 0;
        loop {
            match (self.levels.get(i), other.levels.get(i)) {
                (Some(Level::Rest), theirs) => return !(i == 0 && is_dollar_literal(theirs)),
                (None, None) => return true,
                // One side ends while the other still needs levels; and `other`'s `#` reaches
                // deeper (and to the parent) than anything but our own `#`.
                (Some(_), None) | (None, Some(_)) | (Some(_), Some(Level::Rest)) => return false,
                (Some(Level::One), Some(Level::One)) => {}
                (Some(Level::One), Some(theirs @ Level::Literal(_))) => {
                    if i == 0 && is_dollar_literal(Some(theirs)) {
                        return false;
                    }
                }
                (Some(Level::Literal(ours)), Some(Level::Literal(theirs))) => {
                    if ours != theirs {
                        return false;
                    }
                }
                (Some(Level::Literal(_)), Some(Level::One)) => return false,
            }
            i += 1;
        }
    }

    /// Is there at least one topic name both filters match?
    pub(crate) fn overlaps(&self, other: &Filter) -> bool {
        let mut i = 0;
        loop {
            match (self.levels.get(i), other.levels.get(i)) {
                (Some(Level::Rest), theirs) => return !(i == 0 && is_dollar_literal(theirs)),
                (ours, Some(Level::Rest)) => return !(i == 0 && is_dollar_literal(ours)),
                (None, None) => return true,
                (Some(_), None) | (None, Some(_)) => return false,
                (Some(Level::One), Some(Level::One)) => {}
                (Some(Level::One), Some(lit @ Level::Literal(_)))
                | (Some(lit @ Level::Literal(_)), Some(Level::One)) => {
                    if i == 0 && is_dollar_literal(Some(lit)) {
                        return false;
                    }
                }
                (Some(Level::Literal(a)), Some(Level::Literal(b))) => {
                    if a != b {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s,
                Level::One => "+",
                Level::Rest => "#",
            })
            .collect();
        write!(f, "{:?}", text.join("/"))
    }
}

/// Parses one level of a filter; `last` says whether `#` is allowed here.
pub(crate) fn parse_level(part: &str, last: bool) -> Result<Level, FilterError> {
    match part {
        "#" if last => Ok(Level::Rest),
        "#" => Err(FilterError::MisplacedMultiLevel),
        "+" => Ok(Level::One),
        _ if part.contains('#') => Err(FilterError::MisplacedMultiLevel),
        _ if part.contains('+') => Err(FilterError::MisplacedSingleLevel),
        _ => Ok(Level::Literal(part.into())),
    }
}

pub(crate) fn check_length_and_nul(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        Err(FilterError::Empty)
    } else if filter.len() > MAX_LEN {
        Err(FilterError::TooLong)
    } else if filter.contains('\0') {
        Err(FilterError::Nul)
    } else {
        Ok(())
    }
}

/// A topic name a client may publish to: non-empty, at most 65535 bytes, no wildcards, no NUL.
pub(crate) fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_LEN && !topic.contains(['+', '#', '\0'])
}

fn is_dollar_literal(level: Option<&Level>) -> bool {
    matches!(level, Some(Level::Literal(s)) if s.starts_with('$'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    #[test]
    fn validates_filters() {
        for ok in ["#", "+", "a", "a/b", "a/+", "+/+", "a/#", "/", "//", "a//b", "$SYS/#", "+/#", "a b/c", "%c"] {
            assert!(Filter::parse(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("", FilterError::Empty),
            ("a/#/b", FilterError::MisplacedMultiLevel),
            ("#/a", FilterError::MisplacedMultiLevel),
            ("a#", FilterError::MisplacedMultiLevel),
            ("a/b#", FilterError::MisplacedMultiLevel),
            ("a+", FilterError::MisplacedSingleLevel),
            ("a/+b/c", FilterError::MisplacedSingleLevel),
            ("a\0b", FilterError::Nul),
        ];
        for (bad, expected) in cases {
            assert_eq!(Filter::parse(bad), Err(expected), "{bad}");
        }
        assert_eq!(Filter::parse(&"a".repeat(MAX_LEN + 1)), Err(FilterError::TooLong));
    }

    #[test]
    fn matches_topics() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b", "a", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("+/+", "/b", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "a/b", true),
            ("#", "/", true),
            ("+/#", "a", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("a/+/c", "a/$x/c", true),
            ("sport/tennis/#", "sport/tennis", true),
            ("a//b", "a//b", true),
            ("a//b", "a/b", false),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(f(filter).matches(topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn coverage() {
        let cases: &[(&str, &str, bool)] = &[
            ("sensors/#", "sensors/+/temp", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/#", true),
            ("sensors/#", "sensor/#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a/+", "a/#", false),
            ("a/+", "a/+/c", false),
            ("a/+/#", "a/#", false),
            ("a/+/#", "a/+", true),
            ("a/+/#", "a/b/#", true),
            ("a", "a/#", false),
            ("#", "#", true),
            ("#", "+/x", true),
            ("#", "$SYS/#", false),
            ("+/#", "$SYS/x", false),
            ("+", "$x", false),
            ("$SYS/#", "$SYS/broker/+", true),
            ("+/+", "+/b", true),
            ("+/b", "+/+", false),
        ];
        for &(rule, sub, expected) in cases {
            assert_eq!(f(rule).covers(&f(sub)), expected, "{rule} covers {sub}");
        }
    }

    #[test]
    fn overlap() {
        let cases: &[(&str, &str, bool)] = &[
            ("test/nosubscribe", "#", true),
            ("test/nosubscribe", "test/+", true),
            ("test/nosubscribe", "+/+/+", false),
            ("test/nosubscribe", "test/other", false),
            ("a/#", "a", true),
            ("a", "a/#", true),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/+", true),
            ("a/+", "+/b/c", false),
            ("#", "$SYS/x", false),
            ("$SYS/x", "#", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("#", "#", true),
            ("+", "#", true),
        ];
        for &(a, b, expected) in cases {
            assert_eq!(f(a).overlaps(&f(b)), expected, "{a} overlaps {b}");
            assert_eq!(f(b).overlaps(&f(a)), expected, "{b} overlaps {a}");
        }
    }

    /// Every sequence of 1..=max_len items drawn from `alphabet`, joined with '/'.
    fn all_joined(alphabet: &[&str], max_len: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut current: Vec<String> = vec![String::new()];
        for depth in 1..=max_len {
            current = current
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |l| if depth == 1 { (*l).to_owned() } else { format!("{prefix}/{l}") })
                })
                .collect();
            out.extend(current.iter().cloned());
        }
        out
    }

    /// Brute-force cross-check of `covers` and `overlaps` against `matches`: every filter of up to
    /// three levels over a small alphabet, against every topic of up to four levels. Deeper topics
    /// add nothing, since no such filter distinguishes levels beyond the third.
    #[test]
    fn covers_and_overlaps_agree_with_matching() {
        let topics: Vec<String> =
            all_joined(&["a", "b", "$s", ""], 4).into_iter().filter(|t| is_valid_topic_name(t)).collect();
        let filters: Vec<Filter> =
            all_joined(&["a", "$s", "", "+", "#"], 3).iter().filter_map(|s| Filter::parse(s).ok()).collect();
        assert!(filters.len() > 100);
        for fx in &filters {
            let x_matches: Vec<bool> = topics.iter().map(|t| fx.matches(t)).collect();
            for fy in &filters {
                let y_matches = topics.iter().map(|t| fy.matches(t));
                let (mut covered, mut overlapping) = (true, false);
                for (x, y) in x_matches.iter().zip(y_matches) {
                    covered &= !y || *x;
                    overlapping |= y && *x;
                }
                assert_eq!(fx.covers(fy), covered, "{fx:?} covers {fy:?}");
                assert_eq!(fx.overlaps(fy), overlapping, "{fx:?} overlaps {fy:?}");
            }
        }
    }

    #[test]
    fn topic_names() {
        assert!(is_valid_topic_name("a/b"));
        assert!(is_valid_topic_name("/"));
        assert!(is_valid_topic_name("$SYS/x"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name("a/+"));
        assert!(!is_valid_topic_name("a/#"));
        assert!(!is_valid_topic_name("a\0"));
    }
}
