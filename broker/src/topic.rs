//! Topic names and topic filters: validation and matching (spec 4.7).
//!
//! Topics are `&[u8]` that the codec has already checked to be UTF-8 without U+0000.

/// Why a topic name or filter is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("wildcard in a topic name")]
    WildcardInName,
    #[error("'#' is not the last level of the filter")]
    MisplacedMultiLevel,
    #[error("'+' does not occupy a whole level")]
    MisplacedSingleLevel,
    #[error("malformed shared subscription")]
    BadShare,
}

/// A topic name as used in PUBLISH: non-empty, no `+` or `#` [MQTT-3.3.2-2], [MQTT-4.7.3-1].
pub fn validate_topic_name(topic: &[u8]) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    if topic.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A topic filter as used in SUBSCRIBE/UNSUBSCRIBE, wildcards allowed where the spec
/// allows them [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1]. A `$share/` prefix is
/// validated by [`parse_shared`], not here.
pub fn validate_filter(filter: &[u8]) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        if level.contains(&b'#') && (level != b"#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevel);
        }
        if level.contains(&b'+') && level != b"+" {
            return Err(TopicError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

/// Whether the filter contains `+` or `#`.
pub fn has_wildcards(filter: &[u8]) -> bool {
    filter.iter().any(|&b| b == b'+' || b == b'#')
}

/// `(group, filter)` of a shared subscription.
pub type SharedFilter<'a> = (&'a [u8], &'a [u8]);

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `Ok(None)` for a non-shared
/// filter. The group must be non-empty without wildcards or `/` and the filter valid
/// [MQTT-4.8.2-1], [MQTT-4.8.2-2].
pub fn parse_shared(filter: &[u8]) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(b"$share/") else {
        if filter == b"$share" {
            return Err(TopicError::BadShare);
        }
        return Ok(None);
    };
    let slash = rest.iter().position(|&b| b == b'/').ok_or(TopicError::BadShare)?;
    let (group, inner) = (&rest[..slash], &rest[slash + 1..]);
    if group.is_empty() || group.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::BadShare);
    }
    validate_filter(inner).map_err(|_| TopicError::BadShare)?;
    Ok(Some((group, inner)))
}

/// Whether `topic` matches `filter`. Topics starting with `$` are not matched by a
/// filter starting with a wildcard [MQTT-4.7.2-1].
pub fn matches(filter: &[u8], topic: &[u8]) -> bool {
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+') | Some(b'#')) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            (Some(b"#"), _) => return true,
            (Some(fl), Some(tl)) => {
                if fl != b"+" && fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_wildcards() {
        assert!(validate_topic_name(b"a/b").is_ok());
        assert!(validate_topic_name(b"/").is_ok());
        assert_eq!(validate_topic_name(b""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name(b"a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name(b"a/#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters_follow_wildcard_placement_rules() {
        for ok in [&b"#"[..], b"+", b"a/+/c", b"a/#", b"+/+", b"/+", b"a//b", b"sport/tennis/#"] {
            assert!(validate_filter(ok).is_ok(), "{:?}", std::str::from_utf8(ok));
        }
        for bad in [&b"a#"[..], b"a/#/b", b"a/b#", b"a+", b"a/+b", b"#/"] {
            assert!(validate_filter(bad).is_err(), "{:?}", std::str::from_utf8(bad));
        }
        assert_eq!(validate_filter(b""), Err(TopicError::Empty));
    }

    #[test]
    fn matching_follows_spec_examples() {
        // Examples of spec 4.7.1.2 and 4.7.1.3.
        assert!(matches(b"sport/tennis/player1/#", b"sport/tennis/player1"));
        assert!(matches(b"sport/tennis/player1/#", b"sport/tennis/player1/ranking"));
        assert!(matches(b"sport/#", b"sport"));
        assert!(matches(b"#", b"a/b/c"));
        assert!(matches(b"sport/tennis/+", b"sport/tennis/player1"));
        assert!(!matches(b"sport/tennis/+", b"sport/tennis/player1/ranking"));
        assert!(!matches(b"sport/+", b"sport"));
        assert!(matches(b"sport/+", b"sport/"));
        assert!(matches(b"+/+", b"/finance"));
        assert!(matches(b"/+", b"/finance"));
        assert!(!matches(b"+", b"/finance"));
        assert!(!matches(b"a/b", b"a/b/c"));
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1]
        assert!(!matches(b"#", b"$SYS/broker"));
        assert!(!matches(b"+/broker", b"$SYS/broker"));
        assert!(matches(b"$SYS/#", b"$SYS/broker"));
        assert!(matches(b"$SYS/+", b"$SYS/broker"));
    }

    #[test]
    fn shared_subscriptions_parse() {
        assert_eq!(parse_shared(b"a/b"), Ok(None));
        assert_eq!(parse_shared(b"$share/g/a/+"), Ok(Some((&b"g"[..], &b"a/+"[..]))));
        assert!(parse_shared(b"$share/g").is_err());
        assert!(parse_shared(b"$share//a").is_err());
        assert!(parse_shared(b"$share/g+/a").is_err());
        assert!(parse_shared(b"$share/g/a#").is_err());
    }
}
