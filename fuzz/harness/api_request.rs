// The API's request parsing under arbitrary bytes, shared by the fuzz target `api_request`
// and the seed replay in `cargo test -p viaduct` (src/api/mod.rs). Included where
// `crate::api::{http, types}` are viaduct's src/api/http.rs and src/api/types.rs.
//
// Properties: nothing panics; the incremental reader (bytes arriving in chunks whose size the
// input picks) agrees with the whole-buffer parser; a body is never over the limit; every
// body decodes into each endpoint's JSON type or is refused, and what decodes encodes again.

use std::io::{Read, Write};
use std::time::Duration;

use crate::api::{http, types};

/// The input as a connection delivering it in chunks of `chunk` bytes, then end of file.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl http::Connection for Chunked<'_> {
    fn set_read_timeout(&self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

fn decodes<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(body) {
        serde_json::to_string(&v).expect("a decoded body encodes again");
    }
}

pub fn run(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else { return };
    let chunk = usize::from(first).max(1);
    let whole = http::parse_request(input);
    let mut conn = Chunked { data: input, chunk };
    let read = http::read_request(&mut conn, Duration::from_secs(5));
    match (&whole, &read) {
        (Ok(Some(a)), Ok(b)) => assert_eq!(a, b, "the reader and the parser disagree"),
        (Ok(None), Err(e)) => assert_eq!(*e, http::HttpError::Closed, "an incomplete request read as {e:?}"),
        (Err(a), Err(b)) => assert_eq!(a.status(), b.status(), "{a:?} vs {b:?}"),
        (a, b) => panic!("the parser says {a:?}, the reader {b:?}"),
    }
    if let Ok(req) = read {
        assert!(req.body.len() <= http::MAX_BODY);
        decodes::<types::VmConfigBody>(&req.body);
        decodes::<types::DeviceConfigBody>(&req.body);
        decodes::<types::DiskConfigBody>(&req.body);
        decodes::<types::NetConfigBody>(&req.body);
        decodes::<types::RemoveDeviceBody>(&req.body);
        let status = if req.path.is_empty() { 400 } else { 200 };
        let bytes = http::Response::json(status, String::from_utf8_lossy(&req.body).into_owned()).to_bytes();
        assert!(bytes.starts_with(b"HTTP/1.1 "));
    }
}
