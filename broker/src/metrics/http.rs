//! The metrics endpoint: a small blocking HTTP/1.1 server on its own threads, never on a core.
//!
//! One accept thread; each connection is handled on a short-lived thread, at most
//! [`MAX_CONCURRENT`] at a time (beyond that a connection gets an immediate 503). A
//! connection carries one request: the head is read until the blank line (at most
//! [`MAX_HEAD`] bytes, within [`HEAD_DEADLINE`]), any body is ignored, the response is sent
//! with `Connection: close` and the connection is closed.
//!
//! Routes: `GET`/`HEAD` on the metrics path (the exposition) and on `/health` (`ok`, or 503
//! with the reason). Another method on those paths is 405, another path 404.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::registry::Metrics;
use super::render::BrokerInfo;

/// Largest accepted request head (request line and headers, with the blank line).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head (bounds a silent or trickling client).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Time allowed for writing a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time spent reading what the client still sends after the response, before closing (so
/// that unread request bytes do not turn the close into a reset that destroys the response).
const LINGER: Duration = Duration::from_millis(500);
/// Connections handled at once; more get an immediate 503.
pub const MAX_CONCURRENT: usize = 16;

/// The path of the health check.
pub const HEALTH_PATH: &str = "/health";

/// Produces the [`BrokerInfo`] for a scrape.
pub type InfoFn = Arc<dyn Fn() -> BrokerInfo + Send + Sync>;
/// The health check: `Ok` when healthy, else the reason.
pub type HealthFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a connection handler needs; shared by all handlers.
struct Shared {
    path: String,
    metrics: Arc<Metrics>,
    info: InfoFn,
    health: HealthFn,
    active: AtomicUsize,
}

/// Serves `GET <path>` (the Prometheus exposition) and `GET /health` on `listener`, from a new
/// thread named `promptmq-metrics`. The thread runs until the process exits.
///
/// `path` gets a leading `/` if it has none. `info` is called once per scrape, `health` once
/// per health check, both on a handler thread.
pub fn serve(
    listener: TcpListener,
    path: String,
    metrics: Arc<Metrics>,
    info: Arc<dyn Fn() -> BrokerInfo + Send + Sync>,
    health: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> io::Result<JoinHandle<()>> {
    // A listener made by socket2 or a runtime may be non-blocking; this thread blocks.
    listener.set_nonblocking(false)?;
    let path = if path.starts_with('/') { path } else { format!("/{path}") };
    let shared = Arc::new(Shared { path, metrics, info, health, active: AtomicUsize::new(0) });
    std::thread::Builder::new().name("promptmq-metrics".into()).spawn(move || accept_loop(&listener, &shared))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => dispatch(stream, shared),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Typically out of file descriptors; back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Counts a handler thread; decrements when dropped, whatever way the thread ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn dispatch(mut stream: TcpStream, shared: &Arc<Shared>) {
    if shared.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
        shared.active.fetch_sub(1, Ordering::AcqRel);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = respond(&mut stream, &Response::text(503, "too many concurrent requests\n"), false);
        return;
    }
    let guard = ActiveGuard(Arc::clone(shared));
    let spawned = std::thread::Builder::new().name("promptmq-metrics-conn".into()).spawn(move || {
        if let Err(e) = handle(stream, &guard.0) {
            tracing::debug!(error = %e, "metrics endpoint: connection error");
        }
        drop(guard);
    });
    // On failure the closure, with the guard and the stream, was dropped: slot freed, connection closed.
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics endpoint: cannot spawn a connection thread");
    }
}

/// A response before it is written.
struct Response {
    status: u16,
    content_type: &'static str,
    allow: bool,
    body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", allow: false, body: body.into() }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn respond(stream: &mut TcpStream, r: &Response, head_only: bool) -> io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason_phrase(r.status),
        r.content_type,
        r.body.len()
    );
    if r.allow {
        msg.push_str("Allow: GET, HEAD\r\n");
    }
    msg.push_str("\r\n");
    if !head_only {
        msg.push_str(&r.body);
    }
    stream.write_all(msg.as_bytes())?;
    stream.flush()
}

fn handle(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let (response, head_only) = match read_head(&mut stream, &mut buf) {
        Ok(len) => match parse_head(&buf[..len]) {
            Ok(req) => {
                let head_only = req.method == "HEAD";
                (route(&req, shared), head_only)
            }
            Err(status) => (Response::text(status, format!("{}\n", reason_phrase(status))), false),
        },
        Err(HeadError::TooLarge) => (Response::text(431, "request head too large\n"), false),
        Err(HeadError::Timeout) => (Response::text(408, "request head not received in time\n"), false),
        Err(HeadError::Truncated) => (Response::text(400, "incomplete request\n"), false),
        Err(HeadError::Closed) => return Ok(()),
        Err(HeadError::Io(e)) => return Err(e),
    };
    respond(&mut stream, &response, head_only)?;
    linger(&mut stream);
    Ok(())
}

/// Half-closes and reads what the client still sends, briefly, before the socket is closed.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[derive(Debug)]
enum HeadError {
    /// No blank line within [`MAX_HEAD`] bytes.
    TooLarge,
    /// No complete head within [`HEAD_DEADLINE`].
    Timeout,
    /// The client closed before sending anything.
    Closed,
    /// The client closed in the middle of the head.
    Truncated,
    Io(io::Error),
}

/// Reads until the end of the request head; returns the head's length in `buf` (with the
/// blank line). Bytes after it (a body) may be in `buf` too and are ignored.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, HeadError> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Truncated),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(HeadError::Timeout)
            }
            Err(e) => return Err(HeadError::Io(e)),
        };
        // The terminator may straddle the previous read.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf[from..]) {
            let len = from + end;
            return if len > MAX_HEAD { Err(HeadError::TooLarge) } else { Ok(len) };
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The length up to and including the first `\r\n\r\n` (or a bare `\n\n`).
fn find_head_end(b: &[u8]) -> Option<usize> {
    for i in 0..b.len() {
        if b[i..].starts_with(b"\r\n\r\n") {
            return Some(i + 4);
        }
        if b[i..].starts_with(b"\n\n") {
            return Some(i + 2);
        }
    }
    None
}

/// The parts of a request this server looks at.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The target's path, without the query.
    path: &'a str,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the request line and checks the header lines' syntax. Errors are HTTP statuses.
fn parse_head(head: &[u8]) -> Result<Request<'_>, u16> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().ok_or(400u16)?;
    let line = std::str::from_utf8(line).map_err(|_| 400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(400);
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Err(400);
    }
    match version.strip_prefix("HTTP/").map(str::as_bytes) {
        Some(b"1.0" | b"1.1") => {}
        Some([major, b'.', minor]) if major.is_ascii_digit() && minor.is_ascii_digit() => return Err(505),
        _ => return Err(400),
    }
    for header in lines {
        if header.is_empty() {
            break; // the blank line ending the head
        }
        let colon = header.iter().position(|&b| b == b':').ok_or(400u16)?;
        if colon == 0 || !header[..colon].iter().all(|&b| is_tchar(b)) {
            return Err(400);
        }
    }
    // origin-form "/p?q", absolute-form "http://host/p?q", or "*".
    let path = match target.find("://") {
        Some(i) if target[..i].eq_ignore_ascii_case("http") || target[..i].eq_ignore_ascii_case("https") => {
            let after = &target[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        _ => target,
    };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Ok(Request { method, path })
}

fn route(req: &Request<'_>, shared: &Shared) -> Response {
    let known = req.path == shared.path || req.path == HEALTH_PATH;
    if !known {
        return Response::text(404, "not found\n");
    }
    if req.method != "GET" && req.method != "HEAD" {
        let mut r = Response::text(405, "method not allowed\n");
        r.allow = true;
        return r;
    }
    if req.path == shared.path {
        let info = (shared.info)();
        let mut body = String::with_capacity(16 * 1024);
        shared.metrics.render(&mut body, &info);
        Response { status: 200, content_type: "text/plain; version=0.0.4; charset=utf-8", allow: false, body }
    } else {
        match (shared.health)() {
            Ok(()) => Response::text(200, "ok\n"),
            Err(reason) => {
                let mut body = reason;
                if !body.ends_with('\n') {
                    body.push('\n');
                }
                Response::text(503, body)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn start(healthy: Arc<AtomicBool>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(2));
        metrics.core(0).connections_accepted.add(3);
        let info: InfoFn =
            Arc::new(|| BrokerInfo { version: "9.9.9".into(), uptime_seconds: 1.0, ..BrokerInfo::default() });
        let health: HealthFn =
            Arc::new(move || if healthy.load(Ordering::Relaxed) { Ok(()) } else { Err("wal shard 1 failed".into()) });
        serve(listener, "metrics".into(), metrics, info, health).unwrap();
        addr
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may answer (and close) before it has read everything, e.g. 431 or 503.
        let _ = s.write_all(request);
        // A reset after the response (unread request bytes) ends the read, keeping what came.
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn status(resp: &str) -> u16 {
        resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn body(resp: &str) -> &str {
        resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[test]
    fn serves_metrics() {
        let addr = start(Arc::new(AtomicBool::new(true)));
        let resp = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert_eq!(status(&resp), 200, "{resp}");
        assert!(resp.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{resp}");
        assert!(resp.contains("\r\nConnection: close\r\n"));
        let b = body(&resp);
        assert!(b.contains("promptmq_build_info{version=\"9.9.9\",runtime=\"\"} 1\n"), "{b}");
        assert!(b.contains("promptmq_connections_accepted_total 3\n"));
        let len: usize =
            resp.lines().find_map(|l| l.strip_prefix("Content-Length: ")).and_then(|v| v.trim().parse().ok()).unwrap();
        assert_eq!(len, b.len());

        // Query strings and absolute-form targets reach the same route; HTTP/1.0 too.
        let resp = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert_eq!(status(&resp), 200);
        let resp = exchange(addr, b"GET http://localhost:9090/metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status(&resp), 200);
    }

    #[test]
    fn head_has_no_body() {
        let addr = start(Arc::new(AtomicBool::new(true)));
        let resp = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&resp), 200);
        assert!(resp.ends_with("\r\n\r\n"), "{resp}");
        assert!(!resp.contains("Content-Length: 0\r\n"));
        let resp = exchange(addr, b"HEAD /health HTTP/1.1\r\n\r\n");
        assert_eq!(status(&resp), 200);
        assert!(resp.contains("Content-Length: 3\r\n"));
        assert_eq!(body(&resp), "");
    }

    #[test]
    fn health_reports_ok_and_failure() {
        let healthy = Arc::new(AtomicBool::new(true));
        let addr = start(Arc::clone(&healthy));
        let resp = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&resp), 200);
        assert_eq!(body(&resp), "ok\n");
        healthy.store(false, Ordering::Relaxed);
        let resp = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&resp), 503, "{resp}");
        assert_eq!(body(&resp), "wal shard 1 failed\n");
    }

    #[test]
    fn errors() {
        let addr = start(Arc::new(AtomicBool::new(true)));
        let resp = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(status(&resp), 404, "{resp}");
        let resp = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(status(&resp), 405, "{resp}");
        assert!(resp.contains("\r\nAllow: GET, HEAD\r\n"));
        let resp = exchange(addr, b"DELETE /health HTTP/1.1\r\n\r\n");
        assert_eq!(status(&resp), 405, "{resp}");
        let resp = exchange(addr, b"garbage\r\n\r\n");
        assert_eq!(status(&resp), 400, "{resp}");
        let resp = exchange(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n");
        assert_eq!(status(&resp), 400, "{resp}");
        let resp = exchange(addr, b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n");
        assert_eq!(status(&resp), 400, "{resp}");
        let resp = exchange(addr, b"GET  /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status(&resp), 400, "{resp}");
        let resp = exchange(addr, b"GET /metrics HTTP/2.0\r\n\r\n");
        assert_eq!(status(&resp), 505, "{resp}");
        // Client half-closes in the middle of the head.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metr").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(status(&out), 400, "{out}");
    }

    #[test]
    fn oversized_head_is_refused() {
        let addr = start(Arc::new(AtomicBool::new(true)));
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while req.len() <= MAX_HEAD + 100 {
            req.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let resp = exchange(addr, &req);
        assert_eq!(status(&resp), 431, "{resp}");
        // The same with the blank line present but beyond the limit.
        req.extend_from_slice(b"\r\n");
        let resp = exchange(addr, &req);
        assert_eq!(status(&resp), 431, "{resp}");
        // Just under the limit is fine.
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while req.len() + 70 < MAX_HEAD {
            req.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        req.extend_from_slice(b"\r\n");
        assert!(req.len() <= MAX_HEAD);
        let resp = exchange(addr, &req);
        assert_eq!(status(&resp), 200);
    }

    #[test]
    fn silent_client_does_not_block_others() {
        let addr = start(Arc::new(AtomicBool::new(true)));
        let idle = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(status(&out), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(idle);
    }

    #[test]
    fn silent_client_times_out() {
        let addr = start(Arc::new(AtomicBool::new(true)));
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(HEAD_DEADLINE + Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut out = String::new();
        idle.read_to_string(&mut out).unwrap();
        assert_eq!(status(&out), 408, "{out}");
        let waited = started.elapsed();
        assert!(
            waited >= HEAD_DEADLINE - Duration::from_millis(100) && waited < HEAD_DEADLINE + Duration::from_secs(2)
        );
    }

    #[test]
    fn concurrency_is_capped() {
        let addr = start(Arc::new(AtomicBool::new(true)));
        let idle: Vec<TcpStream> = (0..MAX_CONCURRENT).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // The accept thread sees connections in order: once the cap is reached, the next one
        // is refused at once.
        let resp = exchange(addr, b"GET /health HTTP/1.1\r\n\r\n");
        assert_eq!(status(&resp), 503, "{resp}");
        drop(idle);
        // The handlers of the dropped connections see EOF and free their slots.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let resp = exchange(addr, b"GET /health HTTP/1.1\r\n\r\n");
            if status(&resp) == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "slots not freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn parser() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Ok(Request { method: "GET", path: "/" }));
        assert_eq!(parse_head(b"GET /a?b HTTP/1.1\n\n"), Ok(Request { method: "GET", path: "/a" }));
        assert_eq!(parse_head(b"OPTIONS * HTTP/1.1\r\n\r\n"), Ok(Request { method: "OPTIONS", path: "*" }));
        assert_eq!(parse_head(b"GET https://h HTTP/1.1\r\n\r\n"), Ok(Request { method: "GET", path: "/" }));
        assert_eq!(parse_head(b"G(T / HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_head(b"GET / HTTP/1.1 x\r\n\r\n"), Err(400));
        assert_eq!(parse_head(b"GET /\x01 HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_head(b"GET / FTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n: v\r\n\r\n"), Err(400));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nA b: v\r\n\r\n"), Err(400));
        assert_eq!(parse_head(b"GET / HTTP/3.0\r\n\r\n"), Err(505));
        assert_eq!(find_head_end(b"abc\r\n\r\nbody"), Some(7));
        assert_eq!(find_head_end(b"abc\n\nbody"), Some(5));
        assert_eq!(find_head_end(b"abc\r\n\r"), None);
    }
}
