//! Round-trip times of a VMM's control socket, for the `api-bench` testbed scenario: viaduct's
//! HTTP API and QEMU's QMP, measured the same way from one process (a shell loop would time
//! fork and exec instead).
//!
//!     api-rtt http SOCKET ENDPOINT N     N x GET /api/v1/ENDPOINT (a connection each, as
//!                                        viaduct's API serves one request per connection)
//!     api-rtt qmp SOCKET N               N x query-status on one QMP session
//!     api-rtt qmp-fresh SOCKET N         N x (connect, greeting, qmp_capabilities, query-status)
//!     api-rtt qmp-cmd SOCKET COMMAND     one QMP command (e.g. system_powerdown)
//!
//! Prints `median_us=M p90_us=P n=N` (or the command's answer).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn http_get(socket: &str, endpoint: &str) -> Result<()> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&raw)? {
        httparse::Status::Complete(_) if resp.code == Some(200) => Ok(()),
        _ => Err(format!("unexpected answer: {}", String::from_utf8_lossy(&raw)).into()),
    }
}

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(socket: &str) -> Result<Self> {
        let s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Self { reader: BufReader::new(s.try_clone()?), writer: s };
        q.line()?; // the greeting
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l)? == 0 {
            return Err("QMP closed the connection".into());
        }
        Ok(l)
    }

    /// Sends a command and returns its answer (events arriving meanwhile are skipped).
    fn execute(&mut self, command: &str) -> Result<String> {
        writeln!(self.writer, "{{\"execute\": \"{command}\"}}")?;
        loop {
            let l = self.line()?;
            if l.contains("\"return\"") || l.contains("\"error\"") {
                return Ok(l);
            }
        }
    }
}

fn measure(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        us.push(t.elapsed().as_micros());
    }
    us.sort_unstable();
    let at = |q: usize| us.get((us.len() * q / 100).min(us.len().saturating_sub(1))).copied().unwrap_or(0);
    println!("median_us={} p90_us={} n={}", at(50), at(90), us.len());
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("usage: see the file's header");
    let count = |i: usize| -> Result<usize> { Ok(arg(i)?.parse()?) };
    match arg(1)? {
        "http" => {
            let (socket, endpoint) = (arg(2)?, arg(3)?);
            measure(count(4)?, || http_get(socket, endpoint))
        }
        "qmp" => {
            let mut q = Qmp::connect(arg(2)?)?;
            measure(count(3)?, || q.execute("query-status").map(drop))
        }
        "qmp-fresh" => {
            let socket = arg(2)?;
            measure(count(3)?, || Qmp::connect(socket)?.execute("query-status").map(drop))
        }
        "qmp-cmd" => {
            print!("{}", Qmp::connect(arg(2)?)?.execute(arg(3)?)?);
            Ok(())
        }
        other => Err(format!("unknown mode {other}").into()),
    }
}
