//! Parsers for the values a person writes in a config file: durations (`100ms`, `7d`) and
//! sizes (`64MiB`). A bare number is in the key's own unit, so the plain numbers of the
//! command-line flags keep their meaning.

/// A duration in `unit_ms` milliseconds per bare unit: `250`, `250ms`, `5s`, `10m`, `12h`,
/// `7d`. Returns milliseconds.
pub fn parse_duration_ms(s: &str, unit_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 10m, 12h, 7d)"))?;
    let per = match suffix.trim() {
        "" => unit_ms,
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown duration unit `{other}` in `{s}` (use ms, s, m, h or d)")),
    };
    n.checked_mul(per).ok_or_else(|| format!("`{s}` is too long"))
}

/// A size in bytes: `4096`, `64KiB`, `64MiB`, `1GiB` (powers of 1024) or `64KB`, `64MB`,
/// `1GB` (powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("`{s}` is not a size (e.g. 65536, 64KiB, 64MiB, 1GiB)"))?;
    let per: u64 = match suffix.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit `{other}` in `{s}` (use KiB, MiB, GiB, KB, MB or GB)")),
    };
    n.checked_mul(per).ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250", 1), Ok(250));
        assert_eq!(parse_duration_ms("3", 1000), Ok(3000));
        assert_eq!(parse_duration_ms("250ms", 1000), Ok(250));
        assert_eq!(parse_duration_ms("7d", 1000), Ok(7 * 86_400_000));
        assert!(parse_duration_ms("5 weeks", 1).is_err());
        assert!(parse_duration_ms("ms", 1).is_err());
        assert!(parse_duration_ms("-1", 1).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
