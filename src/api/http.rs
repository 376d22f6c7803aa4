//! One HTTP/1.1 exchange over one connection: ureq-proto's sans-IO state machine driven over an
//! async-io socket (plain or TLS), with the response body read incrementally, gunzipped when the
//! server compressed it, and bounded.
//!
//! ```text
//! Connection ──send()──► Response { status, headers, Body }
//!                              Body::chunk()  → decoded bytes as they arrive (watch streams)
//!                              Body::to_end(limit) → the whole body (everything else)
//!                              Body::finish() → Some(Connection) when it can be reused
//! ```
//!
//! This file knows bytes and HTTP, not Kubernetes. It never sleeps: timeouts are the caller's.

use std::io::{self, Write as _};
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::Async;
use futures_lite::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use ureq_proto::client::state::{RecvBody, RecvResponse};
use ureq_proto::client::{Call, RecvBodyResult, RecvResponseResult, SendRequestResult};

/// The largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;

/// What went wrong in an exchange.
#[derive(Debug)]
pub enum Failure {
    /// The socket failed or closed early.
    Io(io::Error),
    /// The peer does not speak HTTP/1.1 as expected.
    Protocol(String),
    /// A body or a line exceeded its limit.
    TooLarge(usize),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Protocol(m) => write!(f, "bad HTTP: {m}"),
            Failure::TooLarge(limit) => write!(f, "answer larger than {limit} bytes"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

impl From<ureq_proto::Error> for Failure {
    fn from(e: ureq_proto::Error) -> Failure {
        Failure::Protocol(e.to_string())
    }
}

/// A byte stream to the API server: plain TCP or TLS over TCP.
pub enum Stream {
    /// `http://`.
    Plain(Async<TcpStream>),
    /// `https://`.
    #[cfg(feature = "tls")]
    Tls(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// A connection with the bytes read from it but not yet used.
pub struct Connection {
    stream: Stream,
    input: Vec<u8>,
    start: usize,
}

impl Connection {
    /// Wraps a connected stream.
    pub fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            input: Vec::new(),
            start: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.input[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes from the socket; Ok(false) at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        // On the heap: an array here would sit in the state of every future that may read,
        // for its whole life (a node's API tasks held ~140 KiB of such arrays while idle).
        let mut scratch = vec![0u8; 16 * 1024];
        let n = self.stream.read(&mut scratch).await?;
        self.input.extend_from_slice(&scratch[..n]);
        Ok(n > 0)
    }

    /// Sends `request` (with `body`) and reads the response head.
    pub async fn send(
        mut self,
        request: ureq_proto::http::Request<()>,
        body: Option<&[u8]>,
    ) -> Result<Response, Failure> {
        let call = Call::new(request)?;
        let mut call = call.proceed();
        let mut out = vec![0u8; 16 * 1024];
        let n = call.write(&mut out)?;
        self.stream.write_all(&out[..n]).await?;
        let mut recv: Call<RecvResponse> = match call.proceed()? {
            Some(SendRequestResult::RecvResponse(c)) => c,
            Some(SendRequestResult::SendBody(mut c)) => {
                let mut input = body.unwrap_or_default();
                loop {
                    let (used, n) = c.write(input, &mut out)?;
                    self.stream.write_all(&out[..n]).await?;
                    input = &input[used..];
                    if input.is_empty() {
                        let (_, n) = c.write(&[], &mut out)?;
                        self.stream.write_all(&out[..n]).await?;
                        break;
                    }
                }
                c.proceed()
                    .ok_or_else(|| Failure::Protocol("request body not fully sent".into()))?
            }
            Some(SendRequestResult::Await100(_)) | None => {
                return Err(Failure::Protocol("unexpected request state".into()));
            }
        };
        self.stream.flush().await?;
        let response = loop {
            let (used, response) = recv.try_response(self.pending(), false)?;
            self.consume(used);
            if let Some(r) = response {
                break r;
            }
            if self.pending().len() > MAX_HEAD {
                return Err(Failure::TooLarge(MAX_HEAD));
            }
            if !self.fill().await? {
                return Err(Failure::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the answer",
                )));
            }
        };
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let gzip = headers
            .iter()
            .any(|(k, v)| k == "content-encoding" && v.trim().eq_ignore_ascii_case("gzip"));
        let state = match recv.proceed() {
            Some(RecvResponseResult::RecvBody(c)) => BodyState::Reading(Box::new(c)),
            Some(RecvResponseResult::Cleanup(c)) => BodyState::Done {
                reusable: !c.must_close_connection(),
            },
            Some(RecvResponseResult::Redirect(c)) => BodyState::Done {
                reusable: !c.proceed().must_close_connection(),
            },
            None => return Err(Failure::Protocol("incomplete response head".into())),
        };
        Ok(Response {
            status: response.status().as_u16(),
            headers,
            body: Body {
                conn: self,
                state,
                gunzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            },
        })
    }
}

/// A response head and its (unread) body.
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
}

impl Response {
    /// The first header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

enum BodyState {
    Reading(Box<Call<RecvBody>>),
    Done { reusable: bool },
}

/// A response body being read.
pub struct Body {
    conn: Connection,
    state: BodyState,
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
}

impl Body {
    /// The next decoded bytes, appended to `out`; Ok(false) when the body has ended.
    pub async fn chunk(&mut self, out: &mut Vec<u8>) -> Result<bool, Failure> {
        loop {
            let BodyState::Reading(call) = &mut self.state else {
                return Ok(false);
            };
            // A close-delimited body (no length, not chunked) ends only at end of stream.
            let close_delimited = matches!(call.body_mode(), ureq_proto::BodyMode::CloseDelimited);
            if !close_delimited && call.can_proceed() {
                self.end()?;
                return Ok(false);
            }
            // On the heap, like `fill`'s scratch: not part of every caller's future.
            let mut buf = vec![0u8; 16 * 1024];
            let (used, n) = call.read(self.conn.pending(), &mut buf)?;
            self.conn.consume(used);
            if n > 0 {
                self.decode(&buf[..n], out)?;
                return Ok(true);
            }
            if used > 0 || (!close_delimited && call.can_proceed()) {
                continue;
            }
            if !self.conn.fill().await? {
                if close_delimited {
                    self.state = BodyState::Done { reusable: false };
                    self.finish_gunzip(out)?;
                    return Ok(false);
                }
                return Err(Failure::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of the answer",
                )));
            }
        }
    }

    fn decode(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        match &mut self.gunzip {
            Some(z) => {
                z.write_all(bytes)
                    .map_err(|e| Failure::Protocol(format!("gzip: {e}")))?;
                out.append(z.get_mut());
            }
            None => out.extend_from_slice(bytes),
        }
        Ok(())
    }

    fn finish_gunzip(&mut self, out: &mut Vec<u8>) -> Result<(), Failure> {
        if let Some(z) = &mut self.gunzip {
            z.try_finish()
                .map_err(|e| Failure::Protocol(format!("gzip: {e}")))?;
            out.append(z.get_mut());
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), Failure> {
        let state = std::mem::replace(&mut self.state, BodyState::Done { reusable: false });
        if let BodyState::Reading(call) = state {
            let reusable = match (*call).proceed() {
                Some(RecvBodyResult::Cleanup(c)) => !c.must_close_connection(),
                Some(RecvBodyResult::Redirect(c)) => !c.proceed().must_close_connection(),
                None => false,
            };
            self.state = BodyState::Done { reusable };
        }
        Ok(())
    }

    /// The whole (decoded) body, at most `limit` bytes.
    pub async fn to_end(&mut self, limit: usize) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::new();
        while self.chunk(&mut out).await? {
            if out.len() > limit {
                return Err(Failure::TooLarge(limit));
            }
        }
        self.finish_gunzip(&mut out)?;
        if out.len() > limit {
            return Err(Failure::TooLarge(limit));
        }
        Ok(out)
    }

    /// The connection back, if the body was read to its end and the server keeps it open.
    pub fn finish(self) -> Option<Connection> {
        match self.state {
            BodyState::Done { reusable: true } if self.conn.pending().is_empty() => Some(self.conn),
            _ => None,
        }
    }
}

/// Splits a body into lines (watch events), each at most `max_line` bytes.
pub struct Lines {
    body: Body,
    buf: Vec<u8>,
    scan_from: usize,
    max_line: usize,
    ended: bool,
}

impl Lines {
    /// Reads `body` line by line.
    pub fn new(body: Body, max_line: usize) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
            scan_from: 0,
            max_line,
            ended: false,
        }
    }

    /// The next non-empty line (without its newline); None at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        loop {
            if let Some(i) = self.buf[self.scan_from..].iter().position(|&b| b == b'\n') {
                let end = self.scan_from + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scan_from = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            self.scan_from = self.buf.len();
            if self.buf.len() > self.max_line {
                return Err(Failure::TooLarge(self.max_line));
            }
            if self.ended {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                self.scan_from = 0;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            if !self.body.chunk(&mut self.buf).await? {
                self.body.finish_gunzip(&mut self.buf)?;
                self.ended = true;
            }
        }
    }
}
