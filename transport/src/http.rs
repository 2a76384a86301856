//! The HTTP/1.1 side of the WebSocket opening handshake (RFC 6455 section 4.2): checking the
//! client's upgrade request and writing the server's response.

use bytes::Bytes;

/// Subprotocols the broker speaks, in the names MQTT clients offer: `mqtt` (MQTT 3.1.1 and 5)
/// and `mqttv3.1` (old MQTT 3.1 clients).
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Header fields parsed at most; a browser sends about fifteen.
const MAX_HEADERS: usize = 64;

/// The RFC 6455 GUID appended to the client's key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused. Each maps to the HTTP status of the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    #[error("request header is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request has over {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("method {0} is not GET")]
    Method(String),
    #[error("HTTP/1.0 request (the upgrade needs HTTP/1.1)")]
    HttpVersion,
    #[error("no `Upgrade: websocket` header")]
    NotWebSocket,
    #[error("no `Connection: upgrade` header")]
    NoConnectionUpgrade,
    #[error("Sec-WebSocket-Version is missing or not 13")]
    Version,
    #[error("Sec-WebSocket-Key is missing or not 16 bytes in base64")]
    Key,
    #[error("none of the offered subprotocols is supported (mqtt, mqttv3.1)")]
    Subprotocol,
    #[error("path {0} is not served")]
    Path(String),
}

impl UpgradeError {
    /// The HTTP status code and reason phrase of the answer.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            UpgradeError::TooLarge { .. } | UpgradeError::TooManyHeaders => (431, "Request Header Fields Too Large"),
            UpgradeError::Version => (426, "Upgrade Required"),
            UpgradeError::Path(_) => (404, "Not Found"),
            _ => (400, "Bad Request"),
        }
    }
}

/// An accepted upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Upgrade {
    pub accept: String,
    /// As the client spelled it.
    pub subprotocol: Option<String>,
    pub path: String,
}

/// Index just past the `\r\n\r\n` ending the request head, searching from `from`.
pub(crate) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|i| start + i + 4)
}

/// Checks a complete request head (through its blank line).
pub(crate) fn parse_upgrade(head: &[u8], only_path: Option<&str>) -> Result<Upgrade, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(UpgradeError::Malformed("incomplete request".into())),
        Err(httparse::Error::TooManyHeaders) => return Err(UpgradeError::TooManyHeaders),
        Err(e) => return Err(UpgradeError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default();
    if method != "GET" {
        return Err(UpgradeError::Method(method.to_owned()));
    }
    if req.version != Some(1) {
        return Err(UpgradeError::HttpVersion);
    }
    let target = req.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    if let Some(wanted) = only_path {
        if path != wanted {
            return Err(UpgradeError::Path(path.to_owned()));
        }
    }
    let values = |name: &'static str| req.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    if !values("upgrade").any(|h| has_token(h.value, "websocket")) {
        return Err(UpgradeError::NotWebSocket);
    }
    if !values("connection").any(|h| has_token(h.value, "upgrade")) {
        return Err(UpgradeError::NoConnectionUpgrade);
    }
    if !values("sec-websocket-version").any(|h| h.value.trim_ascii() == b"13") {
        return Err(UpgradeError::Version);
    }
    let mut keys = values("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(h), None) if valid_key(h.value.trim_ascii()) => h.value.trim_ascii(),
        _ => return Err(UpgradeError::Key),
    };
    let mut offered = false;
    let mut subprotocol = None;
    for token in values("sec-websocket-protocol").flat_map(|h| h.value.split(|&b| b == b',')) {
        let token = token.trim_ascii();
        if token.is_empty() {
            continue;
        }
        offered = true;
        if SUBPROTOCOLS.iter().any(|ours| ours.as_bytes().eq_ignore_ascii_case(token)) {
            // Tokens are ASCII (else they could not equal ours), so this cannot fail.
            subprotocol = std::str::from_utf8(token).ok().map(str::to_owned);
            break;
        }
    }
    if offered && subprotocol.is_none() {
        return Err(UpgradeError::Subprotocol);
    }
    Ok(Upgrade { accept: accept_key(key), subprotocol, path: path.to_owned() })
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A key is 16 bytes in base64: 22 significant characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WS_GUID.as_bytes());
    base64(ctx.finish().as_ref())
}

/// Standard base64 with padding.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `101 Switching Protocols`.
pub(crate) fn switching_response(upgrade: &Upgrade) -> Bytes {
    let mut r = String::with_capacity(160);
    r.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    r.push_str(&upgrade.accept);
    r.push_str("\r\n");
    if let Some(p) = &upgrade.subprotocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    Bytes::from(r)
}

/// The refusal of an upgrade request, with the reason as a plain-text body.
pub(crate) fn error_response(error: &UpgradeError) -> Bytes {
    let (code, phrase) = error.status();
    let body = format!("{error}\n");
    let extra = if *error == UpgradeError::Version { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    Bytes::from(format!(
        "HTTP/1.1 {code} {phrase}\r\nConnection: close\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_example_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xFB, 0xFF]), "+/8=");
    }

    #[test]
    fn tokens_are_matched_case_insensitively_in_lists() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(has_token(b"WebSocket", "websocket"));
        assert!(!has_token(b"upgrades", "upgrade"));
        assert!(!has_token(b"", "upgrade"));
    }

    #[test]
    fn keys() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ!="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZ$=="));
        assert!(!valid_key(b""));
    }

    #[test]
    fn head_end_finds_the_blank_line_across_calls() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        assert_eq!(head_end(req, 0), Some(req.len() - 4));
        // Searching from inside the terminator still finds it.
        assert_eq!(head_end(req, req.len() - 5), Some(req.len() - 4));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
    }

    #[test]
    fn error_responses_carry_status_and_reason() {
        let r = error_response(&UpgradeError::Version);
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        let r = error_response(&UpgradeError::TooLarge { limit: 8192 });
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, "request header is over 8192 bytes\n");
    }
}
