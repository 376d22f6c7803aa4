//! `httpGet` probes and hooks: one HTTP/1.1 GET per connection (`Connection: close`), as
//! kubelet's prober sends it. Success is a status in 200..400. Redirects are followed to the
//! same host and port (at most 10); a redirect elsewhere is not followed and counts as success
//! with a warning, as in kubelet (`Probe terminated redirects, Response body: ...`, its
//! ProbeWarning event; the body read up to kubelet's 10 KiB).
//!
//! The request builder, the response-head parser and the body decoding are pure; [`get`] does
//! the I/O, on the executor's thread, with one deadline for the whole exchange.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};

use super::tcp;

/// kubelet's User-Agent (`kube-probe/<major>.<minor>`).
const USER_AGENT: &str = "kube-probe/1.34";
/// The most of a response head read; the body is not needed.
const MAX_HEAD: usize = 16 * 1024;
const MAX_REDIRECTS: usize = 10;
/// The most of a body read (kubelet's `maxRespBodyLength`); only a redirect's is read.
const MAX_BODY: usize = 10 * 1024;

/// The request bytes. `headers` (from the manifest) replace the defaults of the same name,
/// case-insensitively, as kubelet lets `Host`, `User-Agent` and `Accept` be overridden.
pub fn request(host: &str, path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let defaults = [
        ("Host", host),
        ("User-Agent", USER_AGENT),
        ("Accept", "*/*"),
    ];
    let mut text = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in defaults {
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    text.into_bytes()
}

/// What a response head says.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub location: Option<String>,
    /// `Content-Length`, when given.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

/// Parses a response head (`HTTP/1.x NNN reason`, headers); `None` if it is not one.
pub fn parse_head(head: &[u8]) -> Option<Head> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse::<u16>().ok().filter(|s| *s >= 100)?;
    let mut head = Head {
        status,
        location: None,
        content_length: None,
        chunked: false,
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("location") {
            head.location.get_or_insert_with(|| value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Some(head)
}

/// Whether `body` (the bytes after the head so far) is all of the body `head` announces, or
/// as much as is ever read ([`MAX_BODY`]); a body delimited by the end of the connection is
/// complete at EOF only.
fn body_complete(head: &Head, body: &[u8]) -> bool {
    body.len() >= MAX_BODY
        || match head.content_length {
            Some(n) => body.len() >= n,
            None => head.chunked && (body.starts_with(b"0\r\n") || contains(body, b"\r\n0\r\n")),
        }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The body as the client sees it: de-chunked, cut at `Content-Length` and [`MAX_BODY`]. Pure.
pub fn decode_body(head: &Head, raw: &[u8]) -> String {
    let mut body = Vec::new();
    if head.chunked {
        let mut rest = raw;
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&rest[..i])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok());
            let Some(size) = size.filter(|n| *n > 0) else {
                break;
            };
            let data = &rest[i + 2..];
            body.extend_from_slice(&data[..size.min(data.len())]);
            rest = data.get(size + 2..).unwrap_or_default();
        }
    } else {
        let n = head.content_length.unwrap_or(raw.len()).min(raw.len());
        body.extend_from_slice(&raw[..n]);
    }
    body.truncate(MAX_BODY);
    String::from_utf8_lossy(&body).into_owned()
}

/// Where a redirect goes: `Some(path)` on the same host and port, `None` elsewhere.
pub fn same_host_path(location: &str, authority: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_string());
    }
    let rest = location.strip_prefix("http://")?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (auth == authority).then(|| path.to_string())
}

/// GETs `path` from `addr`, following same-host redirects, within `timeout`. `Ok(Some(w))`:
/// success with kubelet's warning `w` (a redirect to another host).
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + timeout;
    let authority = addr.to_string();
    let mut path = path.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let url = format!("http://{authority}{path}");
        let exchange = async { Some(exchange(addr, &authority, &path, headers, deadline).await) };
        let timer = async {
            Timer::at(deadline).await;
            None
        };
        let (head, body) = match exchange.or(timer).await {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => return Err(format!("Get {url:?}: {e}")),
            None => {
                return Err(format!(
                    "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                ));
            }
        };
        if !(200..400).contains(&head.status) {
            return Err(format!(
                "HTTP probe failed with statuscode: {}",
                head.status
            ));
        }
        let next = match (head.status, &head.location) {
            (300..=399, Some(location)) => same_host_path(location, &authority),
            (300..=399, None) => None,
            _ => return Ok(None),
        };
        match next {
            Some(next) => path = next,
            // kubelet: a redirect to another host is not followed: success, with a warning.
            None => {
                let body = decode_body(&head, &body);
                return Ok(Some(format!(
                    "Probe terminated redirects, Response body: {body}"
                )));
            }
        }
    }
    Err(format!(
        "Get \"http://{authority}{path}\": stopped after {MAX_REDIRECTS} redirects"
    ))
}

async fn exchange(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    deadline: Instant,
) -> Result<(Head, Vec<u8>), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut stream = tcp::connect(addr, left).await?;
    stream
        .write_all(&request(authority, path, headers))
        .await
        .map_err(|e| tcp::lower(&e))?;
    let mut bytes = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut eof = false;
    let end = loop {
        let n = stream.read(&mut buf).await.map_err(|e| tcp::lower(&e))?;
        if n == 0 {
            eof = true;
            break None;
        }
        bytes.extend_from_slice(&buf[..n]);
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i + 4);
        }
        if bytes.len() >= MAX_HEAD {
            break None;
        }
    };
    if bytes.is_empty() {
        return Err("EOF".to_string());
    }
    let head = parse_head(&bytes).ok_or_else(|| "malformed HTTP response".to_string())?;
    let mut body = end.map(|i| bytes.split_off(i)).unwrap_or_default();
    // Only a redirect's body is shown (in the warning); other bodies are not waited for.
    if (300..400).contains(&head.status) && end.is_some() {
        while !eof && !body_complete(&head, &body) {
            let n = stream.read(&mut buf).await.map_err(|e| tcp::lower(&e))?;
            eof = n == 0;
            body.extend_from_slice(&buf[..n]);
        }
    }
    Ok((head, body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn request_has_kubelets_headers_and_overrides() {
        let r = request("10.0.0.5:8080", "/healthz", &[]);
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "GET /healthz HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let r = request(
            "10.0.0.5:8080",
            "/",
            &[
                ("host".into(), "web.example".into()),
                ("X-A".into(), "b".into()),
            ],
        );
        let r = String::from_utf8(r).unwrap();
        assert!(
            r.contains("host: web.example\r\n") && !r.contains("Host: 10."),
            "{r}"
        );
        assert!(r.contains("X-A: b\r\n"), "{r}");
    }

    #[test]
    fn heads_parse() {
        assert_eq!(
            parse_head(b"HTTP/1.1 302 Found\r\nLocation: /next\r\n\r\n"),
            Some(Head {
                status: 302,
                location: Some("/next".into()),
                content_length: None,
                chunked: false,
            })
        );
        let h = parse_head(
            b"HTTP/1.1 301 Moved\r\ncontent-length: 5\r\nTransfer-Encoding: gzip, Chunked\r\n\r\nbody",
        )
        .unwrap();
        assert_eq!((h.content_length, h.chunked), (Some(5), true));
        assert_eq!(
            parse_head(b"HTTP/1.0 200 OK\r\n\r\n").map(|h| h.status),
            Some(200)
        );
        assert_eq!(parse_head(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_head(b"HTTP/1.1 abc\r\n"), None);
    }

    #[test]
    fn bodies_decode_as_a_client_reads_them() {
        let head = |content_length, chunked| Head {
            status: 302,
            location: None,
            content_length,
            chunked,
        };
        assert_eq!(decode_body(&head(Some(3), false), b"abcdef"), "abc");
        assert_eq!(decode_body(&head(None, false), b"to eof"), "to eof");
        let chunked = b"4\r\nsee \r\n9;x=y\r\nelsewhere\r\n0\r\n\r\n";
        assert_eq!(decode_body(&head(None, true), chunked), "see elsewhere");
        assert!(body_complete(&head(None, true), chunked));
        assert!(!body_complete(&head(None, true), b"4\r\nsee "));
        assert!(body_complete(&head(Some(3), false), b"abc"));
        assert!(!body_complete(&head(None, false), b"to eof"));
        let big = vec![b'x'; 2 * MAX_BODY];
        assert!(body_complete(&head(None, false), &big));
        assert_eq!(decode_body(&head(None, false), &big).len(), MAX_BODY);
    }

    #[test]
    fn redirects_stay_on_the_same_host() {
        let a = "127.0.0.1:8080";
        assert_eq!(same_host_path("/x", a), Some("/x".into()));
        assert_eq!(
            same_host_path("http://127.0.0.1:8080/y", a),
            Some("/y".into())
        );
        assert_eq!(same_host_path("http://127.0.0.1:8080", a), Some("/".into()));
        assert_eq!(same_host_path("http://other:8080/y", a), None);
        assert_eq!(same_host_path("//other/y", a), None);
        assert_eq!(same_host_path("https://127.0.0.1:8080/y", a), None);
    }
}
