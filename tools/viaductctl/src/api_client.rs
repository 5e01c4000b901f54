//! A small HTTP/1.1 client for viaduct's API socket: one request per connection (the server
//! closes after answering), the response parsed with `httparse`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// Longer than the server's own wait for its control loop (120 s), so its 503 arrives first.
const TIMEOUT: Duration = Duration::from_secs(130);
/// Responses are small JSON documents; anything this large is not viaduct talking.
const MAX_RESPONSE: usize = 4 << 20;

pub enum Method {
    Get,
    Put,
}

/// A parsed answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request and reads the whole answer.
pub fn request(socket: &Path, method: Method, endpoint: &str, body: Option<&str>) -> anyhow::Result<Answer> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!("connecting to the API socket {} (is viaduct running with --api-socket?)", socket.display())
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let method = match method {
        Method::Get => "GET",
        Method::Put => "PUT",
    };
    let body = body.unwrap_or("");
    let head = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n",
        if body.is_empty() { "" } else { "Content-Type: application/json\r\n" },
        body.len()
    );
    stream.write_all(head.as_bytes()).context("sending the request")?;
    stream.write_all(body.as_bytes()).context("sending the request body")?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut raw).context("reading the answer")?;
    if raw.len() > MAX_RESPONSE {
        bail!("the answer is larger than {MAX_RESPONSE} bytes");
    }
    parse_response(&raw)
}

/// Parses a complete response (the server closed the connection after it).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if raw.is_empty() => bail!("the server closed the connection without answering"),
        Ok(httparse::Status::Partial) => bail!("the answer ended inside its headers"),
        Err(e) => bail!("malformed answer: {e}"),
    };
    let status = resp.code.ok_or_else(|| anyhow!("malformed answer: no status"))?;
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok()))
        .map(|v| v.ok_or_else(|| anyhow!("malformed answer: bad Content-Length")))
        .transpose()?;
    let rest = &raw[head_len..];
    let body = match length {
        Some(n) if rest.len() < n => bail!("the answer ended after {} of {n} body bytes", rest.len()),
        Some(n) => rest[..n].to_vec(),
        None => rest.to_vec(),
    };
    Ok(Answer { status, body })
}

impl Answer {
    /// The JSON body of a successful answer (`null` for 204), or the server's error message.
    pub fn into_result(self, endpoint: &str) -> anyhow::Result<serde_json::Value> {
        if (200..300).contains(&self.status) {
            if self.body.is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&self.body).with_context(|| format!("{endpoint}: the answer is not JSON"));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string());
        bail!("{endpoint}: HTTP {}: {message}", self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let a = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\": true}").unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.into_result("x").unwrap(), serde_json::json!({"a": true}));
        let a = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(a.into_result("x").unwrap(), serde_json::Value::Null);
        let a =
            parse_response(b"HTTP/1.1 409 Conflict\r\nContent-Length: 21\r\n\r\n{\"error\":\"no VM yet\"}").unwrap();
        assert_eq!(a.into_result("vm.pause").unwrap_err().to_string(), "vm.pause: HTTP 409: no VM yet");
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
