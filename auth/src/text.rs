//! Line splitting shared by the password-file and ACL-file parsers.

/// One line of a configuration file, numbered from 1.
pub(crate) struct NumberedLine<'a> {
    pub(crate) number: usize,
    /// `None` when the line is not valid UTF-8. Decoding per line (rather than the whole file at
    /// once) lets the error name the offending line.
    pub(crate) text: Option<&'a str>,
}

/// Splits `bytes` into lines on `\n`, dropping a trailing `\r` so files edited on Windows load too.
/// A final empty segment after the last newline is not a line.
pub(crate) fn numbered_lines(bytes: &[u8]) -> impl Iterator<Item = NumberedLine<'_>> {
    // An empty file has no lines (not one empty line); likewise nothing after a final newline.
    let ends_with_newline = bytes.is_empty() || bytes.ends_with(b"\n");
    let mut segments = bytes.split(|&b| b == b'\n').enumerate().peekable();
    std::iter::from_fn(move || {
        let (index, raw) = segments.next()?;
        if ends_with_newline && segments.peek().is_none() {
            return None;
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        Some(NumberedLine { number: index + 1, text: std::str::from_utf8(raw).ok() })
    })
}

/// True for lines the parsers skip: blank, or a comment whose first non-blank character is `#`.
/// (mosquitto only recognises `#` in the first column; accepting indentation is harmless.)
pub(crate) fn is_blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(bytes: &[u8]) -> Vec<(usize, Option<&str>)> {
        numbered_lines(bytes).map(|l| (l.number, l.text)).collect()
    }

    #[test]
    fn splits_and_numbers_lines() {
        assert_eq!(collect(b""), vec![]);
        assert_eq!(collect(b"a"), vec![(1, Some("a"))]);
        assert_eq!(collect(b"a\n"), vec![(1, Some("a"))]);
        assert_eq!(collect(b"a\r\n\nb"), vec![(1, Some("a")), (2, Some("")), (3, Some("b"))]);
        assert_eq!(collect(b"a\n\xff\n"), vec![(1, Some("a")), (2, None)]);
    }

    #[test]
    fn recognises_comments() {
        assert!(is_blank_or_comment(""));
        assert!(is_blank_or_comment("   \t"));
        assert!(is_blank_or_comment("# note"));
        assert!(is_blank_or_comment("  # note"));
        assert!(!is_blank_or_comment("user:#hash"));
    }
}
