//! HTTP/1.1 framing for the API socket: one request per connection, read under a deadline
//! and size limits, answered with `Connection: close`.
//!
//! Why not an HTTP server crate: `tiny_http` (the small synchronous one) has no read
//! timeout, reads header lines without a length bound and starts a thread per connection
//! without a limit, so one local client could hold the API or its memory; the `micro_http`
//! cloud-hypervisor uses is not published on the registry. The request line and headers are
//! parsed by `httparse` (hyper's parser); this file only frames a request around it (head
//! size, `Content-Length`, `Expect: 100-continue`, a deadline) and writes responses.
//!
//! This file depends on `httparse` and std only: the fuzz target compiles it as is.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Request line and headers together; a longer head is refused with 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest body accepted (a VM config with many devices is a few KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// Headers parsed at most; more is refused with 431.
pub const MAX_HEADERS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    /// Any other method, kept so the router can answer 405 rather than 400.
    Other,
}

/// A complete request: what the router needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path without query string.
    pub path: String,
    pub body: Vec<u8>,
}

/// What a request head says about the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    pub path: String,
    pub content_length: usize,
    pub expect_continue: bool,
    /// Bytes the head took in the buffer (the body follows).
    pub len: usize,
}

/// A request refused before routing; each maps to one status code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("request body of {0} bytes is larger than the {MAX_BODY}-byte limit")]
    BodyTooLarge(usize),
    #[error("chunked request bodies are not supported: send Content-Length")]
    Chunked,
    #[error("only HTTP/1.0 and HTTP/1.1 are spoken here")]
    Version,
    #[error("the request did not arrive within {0} s")]
    Timeout(u64),
    #[error("the client closed the connection mid-request")]
    Closed,
    #[error("reading the request failed: {0}")]
    Io(String),
}

impl HttpError {
    /// The status to answer with; None: nobody is left to answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Malformed(_) => Some(400),
            Self::HeadTooLarge => Some(431),
            Self::BodyTooLarge(_) => Some(413),
            Self::Chunked => Some(501),
            Self::Version => Some(505),
            Self::Timeout(_) => Some(408),
            Self::Closed | Self::Io(_) => None,
        }
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    // Only the first MAX_HEAD bytes are a head's: whatever lies beyond is not looked at, so
    // the answer does not depend on how much of the stream has arrived.
    let buf = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("PUT") => Method::Put,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default().to_string();
    let mut content_length = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| HttpError::Malformed(format!("header {}", h.name)))?;
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize =
                value.parse().map_err(|_| HttpError::Malformed(format!("Content-Length '{value}' is not a number")))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::Malformed("conflicting Content-Length headers".into()));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            return Err(HttpError::Chunked);
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(HttpError::Malformed(format!("Expect '{value}' is not supported")));
            }
            expect_continue = true;
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge(content_length));
    }
    Ok(Some(Head { method, path, content_length, expect_continue, len }))
}

/// Frames a whole request held in `buf` (the fuzz target's entry point, and what
/// [`read_request`] does incrementally). `Ok(None)`: incomplete.
#[allow(dead_code)] // used by the fuzz target and the tests
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let Some(head) = parse_head(buf)? else { return Ok(None) };
    let end = head.len + head.content_length;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Request { method: head.method, path: head.path, body: buf[head.len..end].to_vec() }))
}

/// The byte stream of one connection with a per-read timeout (a Unix or TCP socket).
pub trait Connection: Read + Write {
    /// How long the next read may block (None: for ever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Connection for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
}

/// Reads one request, the whole of it arriving within `deadline` of the call: a slow or
/// half-open client gets 408 and its connection closed, never a thread held for ever.
pub fn read_request(conn: &mut dyn Connection, deadline: Duration) -> Result<Request, HttpError> {
    let end = Instant::now() + deadline;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head = loop {
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
        let n = read_some(conn, &mut chunk, end, deadline)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    if head.expect_continue && buf.len() < head.len + head.content_length {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|e| HttpError::Io(e.to_string()))?;
    }
    let total = head.len + head.content_length;
    while buf.len() < total {
        let want = (total - buf.len()).min(chunk.len());
        let n = read_some(conn, &mut chunk[..want], end, deadline)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    // Bytes past the body (a pipelined request) are dropped with the connection.
    buf.truncate(total);
    Ok(Request { method: head.method, path: head.path, body: buf.split_off(head.len) })
}

fn read_some(
    conn: &mut dyn Connection,
    chunk: &mut [u8],
    end: Instant,
    deadline: Duration,
) -> Result<usize, HttpError> {
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(deadline.as_secs()));
        }
        conn.set_read_timeout(Some(left)).map_err(|e| HttpError::Io(e.to_string()))?;
        match conn.read(chunk) {
            Ok(0) => return Err(HttpError::Closed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(HttpError::Timeout(deadline.as_secs()))
            }
            Err(e) => return Err(HttpError::Io(e.to_string())),
        }
    }
}

/// A response: status, and a JSON body or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    /// Methods to list in `Allow` (405 answers).
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn json(status: u16, body: String) -> Self {
        Self { status, body: Some(body), allow: None }
    }

    pub fn no_content() -> Self {
        Self { status: 204, body: None, allow: None }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head =
            format!("HTTP/1.1 {} {}\r\nServer: viaduct\r\nConnection: close\r\n", self.status, reason(self.status));
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        let body = self.body.as_deref().unwrap_or("");
        if self.body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if self.status != 204 {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A scripted connection: each element is what one read returns (None: a timeout).
    struct Script {
        reads: VecDeque<Option<Vec<u8>>>,
        written: Vec<u8>,
    }

    impl Script {
        fn new(parts: &[Option<&[u8]>]) -> Self {
            Self { reads: parts.iter().map(|p| p.map(<[u8]>::to_vec)).collect(), written: Vec::new() }
        }
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.reads.pop_front() {
                None => Ok(0),
                Some(None) => Err(std::io::ErrorKind::WouldBlock.into()),
                Some(Some(mut data)) => {
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    if n < data.len() {
                        self.reads.push_front(Some(data.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Connection for Script {
        fn set_read_timeout(&self, _: Option<Duration>) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn read(parts: &[Option<&[u8]>]) -> Result<Request, HttpError> {
        read_request(&mut Script::new(parts), Duration::from_secs(5))
    }

    #[test]
    fn a_request_in_pieces_with_a_body() {
        let r = read(&[
            Some(b"PUT /api/v1/vm.add-device?x=1 HT"),
            Some(b"TP/1.1\r\nHost: localhost\r\nContent-Length: 7\r\n\r\n{\"a\""),
            Some(b":1}"),
        ])
        .unwrap();
        assert_eq!(
            r,
            Request { method: Method::Put, path: "/api/v1/vm.add-device".into(), body: b"{\"a\":1}".to_vec() }
        );
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let mut s = Script::new(&[
            Some(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"),
            Some(b"{}"),
        ]);
        let r = read_request(&mut s, Duration::from_secs(5)).unwrap();
        assert_eq!(r.body, b"{}");
        assert_eq!(s.written, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn refusals_map_to_status_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"GARBAGE\r\n\r\n".to_vec(), 400),
            (b"GET /api/v1/vmm.ping HTTP/2.0\r\n\r\n".to_vec(), 505),
            (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(), 400),
            (b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".to_vec(), 413),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 501),
            (b"PUT / HTTP/1.1\r\nExpect: teapot\r\n\r\n".to_vec(), 400),
            ([b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD], b"\r\n\r\n"].concat(), 431),
            ([b"GET / HTTP/1.1\r\n".to_vec(), b"X: y\r\n".repeat(MAX_HEADERS + 1), b"\r\n".to_vec()].concat(), 431),
        ];
        for (input, status) in cases {
            let e = read(&[Some(&input)]).unwrap_err();
            assert_eq!(e.status(), Some(status), "{:?}: {e}", String::from_utf8_lossy(&input[..input.len().min(60)]));
        }
    }

    #[test]
    fn an_endless_header_line_is_refused_at_the_limit() {
        // Never a blank line: the reader must stop at MAX_HEAD, not buffer for ever.
        let line = vec![b'a'; 1024];
        let mut parts: Vec<Option<&[u8]>> = vec![Some(b"GET / HTTP/1.1\r\nX: ")];
        parts.extend(std::iter::repeat_n(Some(line.as_slice()), 64));
        assert_eq!(read(&parts).unwrap_err(), HttpError::HeadTooLarge);
    }

    #[test]
    fn slow_half_open_and_vanishing_clients() {
        assert_eq!(read(&[Some(b"GET / HTTP/1.1\r\n"), None]).unwrap_err(), HttpError::Timeout(5));
        assert_eq!(read(&[Some(b"GET / HTTP/1.1\r\n")]).unwrap_err(), HttpError::Closed);
        assert_eq!(read(&[Some(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")]).unwrap_err(), HttpError::Closed);
        assert_eq!(read(&[]).unwrap_err(), HttpError::Closed);
        assert_eq!(HttpError::Closed.status(), None);
    }

    #[test]
    fn whole_buffer_parse_needs_the_whole_body() {
        assert_eq!(parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"), Ok(None));
        assert_eq!(parse_request(b"GET /x HTTP/1.1\r\n"), Ok(None));
        let r = parse_request(b"DELETE /x HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.method, Method::Other);
    }

    #[test]
    fn responses() {
        let r = Response::json(200, "{}".into()).to_bytes();
        assert_eq!(
            r,
            b"HTTP/1.1 200 OK\r\nServer: viaduct\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let r = String::from_utf8(Response::no_content().to_bytes()).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 204 No Content\r\n") && !r.contains("Content-Length") && r.ends_with("\r\n\r\n")
        );
    }
}
