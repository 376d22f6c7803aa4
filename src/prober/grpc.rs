//! `grpc` probes: `grpc.health.v1.Health/Check` over HTTP/2 cleartext (prior knowledge, no
//! upgrade), as kubelet's gRPC prober calls it. Success is a response with `SERVING`.
//!
//! A whole HTTP/2 stack is not needed for one unary call, so this is a minimal client:
//!
//! ```text
//!   client: preface, SETTINGS, HEADERS (stream 1), DATA (stream 1, END_STREAM)
//!   server: SETTINGS (ACKed), HEADERS, DATA (the response), HEADERS (trailers) …
//! ```
//!
//! Request headers are HPACK literals without indexing and without Huffman coding (valid for
//! any decoder). Response headers are never decoded (that would need HPACK's Huffman table and
//! dynamic table): the answer is read from the DATA frames alone. A stream that ends without a
//! response message (a trailers-only answer: an error status such as UNIMPLEMENTED) fails, and
//! so does any message but SERVING, which is what kubelet makes of them; only the wording
//! differs, since the trailers' `grpc-status` is not read (grpcio answers an unknown service
//! with an empty message, read as UNKNOWN, and NOT_FOUND in the trailers). Our response
//! window (65535 bytes) is never exhausted by a health answer, so no WINDOW_UPDATE is sent.
//!
//! The messages are prost types written to match `proto/health.proto` (no protoc at build
//! time). [`Conversation`] is sans-IO and tested without sockets; [`check`] drives it.

use std::net::SocketAddr;
use std::time::Duration;

use async_io::Timer;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use prost::Message;

use super::tcp;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const STREAM: u32 = 1;
/// The largest frame we accept (we never raise SETTINGS_MAX_FRAME_SIZE from 16384).
const MAX_FRAME: usize = 16_384;

mod frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
}

fn frame_bytes(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `pattern` (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, pattern: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(pattern | value as u8);
        return;
    }
    out.push(pattern | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A header field "literal without indexing" whose name is static-table entry `index`, or a
/// new name when `index` is 0 (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, index: usize, name: &str, value: &str) {
    hpack_int(out, 0, 4, index);
    if index == 0 {
        hpack_str(out, name);
    }
    hpack_str(out, value);
}

/// Everything the client sends, in one write.
pub fn request(authority: &str, service: &str, timeout: Duration) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame_bytes(&mut out, frame::SETTINGS, 0, 0, &[]);
    let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http (static table 3 and 6)
    hpack_literal(&mut headers, 4, ":path", "/grpc.health.v1.Health/Check");
    hpack_literal(&mut headers, 1, ":authority", authority);
    hpack_literal(&mut headers, 31, "content-type", "application/grpc");
    hpack_literal(&mut headers, 58, "user-agent", "kube-probe/1.34");
    hpack_literal(&mut headers, 0, "te", "trailers");
    let millis = timeout.as_millis().clamp(1, 99_999_999);
    hpack_literal(&mut headers, 0, "grpc-timeout", &format!("{millis}m"));
    frame_bytes(
        &mut out,
        frame::HEADERS,
        frame::END_HEADERS,
        STREAM,
        &headers,
    );
    let message = HealthCheckRequest {
        service: service.to_string(),
    }
    .encode_to_vec();
    let mut data = vec![0u8]; // not compressed
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(&message);
    frame_bytes(&mut out, frame::DATA, frame::END_STREAM, STREAM, &data);
    out
}

/// The client's side of the call, fed with bytes from the server.
#[derive(Debug, Default)]
pub struct Conversation {
    buf: Vec<u8>,
    /// The response message's bytes so far (gRPC length-prefixed).
    body: Vec<u8>,
    seen_settings: bool,
}

/// What to do after some bytes came.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes (maybe none) and read more.
    Continue(Vec<u8>),
    /// The call is over: the probe's result.
    Done(Result<(), String>),
}

impl Conversation {
    /// Takes bytes from the server; returns what to send, or the result.
    pub fn feed(&mut self, bytes: &[u8]) -> Step {
        self.buf.extend_from_slice(bytes);
        let mut send = Vec::new();
        while self.buf.len() >= 9 {
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            let (kind, flags) = (self.buf[3], self.buf[4]);
            let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                & 0x7fff_ffff;
            if !self.seen_settings && (kind != frame::SETTINGS || self.buf.starts_with(b"HTTP/")) {
                return Step::Done(Err(
                    "the server does not speak HTTP/2 (h2c with prior knowledge)".to_string(),
                ));
            }
            if len > MAX_FRAME {
                return Step::Done(Err(format!("HTTP/2 frame of {len} bytes is too large")));
            }
            if self.buf.len() < 9 + len {
                break;
            }
            let payload: Vec<u8> = self.buf[9..9 + len].to_vec();
            self.buf.drain(..9 + len);
            match kind {
                frame::SETTINGS => {
                    self.seen_settings = true;
                    if flags & frame::ACK == 0 {
                        frame_bytes(&mut send, frame::SETTINGS, frame::ACK, 0, &[]);
                    }
                }
                frame::PING if flags & frame::ACK == 0 => {
                    frame_bytes(&mut send, frame::PING, frame::ACK, 0, &payload);
                }
                frame::GOAWAY => {
                    return Step::Done(Err("the server closed the connection (GOAWAY)".into()));
                }
                frame::RST_STREAM if stream == STREAM => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    return Step::Done(Err(format!("stream reset by the server (code {code})")));
                }
                frame::DATA if stream == STREAM => {
                    let data = unpad(&payload, flags).unwrap_or_default();
                    self.body.extend_from_slice(data);
                    if let Some(result) = self.response() {
                        return Step::Done(result);
                    }
                    if flags & frame::END_STREAM != 0 {
                        return Step::Done(Err("the response ended early".into()));
                    }
                }
                frame::HEADERS if stream == STREAM && flags & frame::END_STREAM != 0 => {
                    return Step::Done(Err(
                        "rpc error: the server answered with an error status (is grpc.health.v1.Health served for this service?)"
                            .into(),
                    ));
                }
                // Response headers, WINDOW_UPDATE, PRIORITY, CONTINUATION, …: nothing to do.
                _ => {}
            }
        }
        Step::Continue(send)
    }

    /// The response, once its whole message is here.
    fn response(&self) -> Option<Result<(), String>> {
        let head = self.body.get(..5)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let message = self.body.get(5..5 + len)?;
        if head[0] != 0 {
            return Some(Err("compressed responses are not supported".into()));
        }
        Some(match HealthCheckResponse::decode(message) {
            Err(e) => Err(format!("bad HealthCheckResponse: {e}")),
            Ok(r) => match ServingStatus::try_from(r.status) {
                Ok(ServingStatus::Serving) => Ok(()),
                Ok(other) => Err(format!(
                    "service unhealthy (responded with {:?})",
                    other.as_str_name()
                )),
                Err(_) => Err(format!(
                    "service unhealthy (responded with status {})",
                    r.status
                )),
            },
        })
    }
}

impl ServingStatus {
    fn as_str_name(self) -> &'static str {
        match self {
            ServingStatus::Unknown => "UNKNOWN",
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

fn unpad(payload: &[u8], flags: u8) -> Option<&[u8]> {
    if flags & frame::PADDED == 0 {
        return Some(payload);
    }
    let pad = usize::from(*payload.first()?);
    payload.get(1..payload.len().checked_sub(pad)?)
}

/// Calls `Check(service)` on `addr`; success when the answer is `SERVING`.
pub async fn check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    let call = async { Some(call(addr, service, timeout).await) };
    let deadline = async {
        Timer::after(timeout).await;
        None
    };
    match call.or(deadline).await {
        Some(result) => result,
        None => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

async fn call(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    let mut stream = tcp::connect(addr, timeout)
        .await
        .map_err(|e| format!("failed to connect service {addr}: {e}"))?;
    let io = |e: std::io::Error| format!("health rpc: {}", tcp::lower(&e));
    stream
        .write_all(&request(&addr.to_string(), service, timeout))
        .await
        .map_err(io)?;
    let mut talk = Conversation::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err("health rpc: the server closed the connection".into());
        }
        match talk.feed(&buf[..n]) {
            Step::Done(result) => return result,
            Step::Continue(send) if send.is_empty() => {}
            Step::Continue(send) => stream.write_all(&send).await.map_err(io)?,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn server_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_bytes(&mut out, kind, flags, stream, payload);
        out
    }

    fn answer(status: i32) -> Vec<u8> {
        let msg = HealthCheckResponse { status }.encode_to_vec();
        let mut data = vec![0];
        data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        data.extend_from_slice(&msg);
        data
    }

    #[test]
    fn the_request_is_an_h2c_call_with_a_health_check_request() {
        let r = request("127.0.0.1:50051", "web", Duration::from_secs(1));
        assert!(r.starts_with(PREFACE));
        let text = String::from_utf8_lossy(&r);
        for part in [
            "/grpc.health.v1.Health/Check",
            "127.0.0.1:50051",
            "application/grpc",
            "trailers",
            "1000m",
        ] {
            assert!(text.contains(part), "{part}");
        }
        // The message is proto3 field 1 (string) = "web", after gRPC's 5-byte prefix.
        assert!(r.ends_with(&[0, 0, 0, 0, 5, 0x0a, 3, b'w', b'e', b'b']));
    }

    #[test]
    fn hpack_integers_follow_rfc_7541() {
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 4, 31);
        assert_eq!(out, [0x0f, 0x10]);
    }

    #[test]
    fn serving_is_success_and_anything_else_is_not() {
        let mut c = Conversation::default();
        let settings = server_frame(frame::SETTINGS, 0, 0, &[]);
        assert_eq!(
            c.feed(&settings),
            Step::Continue(server_frame(frame::SETTINGS, frame::ACK, 0, &[]))
        );
        let headers = server_frame(frame::HEADERS, frame::END_HEADERS, 1, &[0x88]);
        assert_eq!(c.feed(&headers), Step::Continue(vec![]));
        // The message split over two reads.
        let data = server_frame(frame::DATA, 0, 1, &answer(1));
        assert_eq!(c.feed(&data[..11]), Step::Continue(vec![]));
        assert_eq!(c.feed(&data[11..]), Step::Done(Ok(())));

        let mut c = Conversation::default();
        let mut bytes = settings.clone();
        bytes.extend(server_frame(frame::DATA, 0, 1, &answer(2)));
        assert_eq!(
            c.feed(&bytes),
            Step::Done(Err(
                "service unhealthy (responded with \"NOT_SERVING\")".into()
            ))
        );
    }

    #[test]
    fn errors_and_strangers_fail() {
        let mut c = Conversation::default();
        let mut bytes = server_frame(frame::SETTINGS, 0, 0, &[]);
        bytes.extend(server_frame(
            frame::HEADERS,
            frame::END_HEADERS | frame::END_STREAM,
            1,
            &[0x88],
        ));
        assert!(matches!(c.feed(&bytes), Step::Done(Err(e)) if e.contains("error status")));
        let mut c = Conversation::default();
        assert!(
            matches!(c.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n"), Step::Done(Err(e)) if e.contains("HTTP/2"))
        );
        let mut c = Conversation::default();
        let mut bytes = server_frame(frame::SETTINGS, 0, 0, &[]);
        bytes.extend(server_frame(frame::RST_STREAM, 0, 1, &[0, 0, 0, 7]));
        assert!(matches!(c.feed(&bytes), Step::Done(Err(e)) if e.contains("code 7")));
    }
}
