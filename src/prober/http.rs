//! `httpGet` probes and hooks: one HTTP/1.1 GET per connection (`Connection: close`), as
//! kubelet's prober sends it. Success is a status in 200..400. Redirects are followed to the
//! same host and port (at most 10); a redirect elsewhere counts as success, as in kubelet.
//!
//! The request builder and the response-head parser are pure; [`get`] does the I/O, on the
//! executor's thread, with one deadline for the whole exchange.

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
    let location = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_string())
    });
    Some(Head { status, location })
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

/// GETs `path` from `addr`, following same-host redirects, within `timeout`.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
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
        let head = match exchange.or(timer).await {
            Some(Ok(head)) => head,
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
        match (head.status, head.location) {
            (300..=399, Some(location)) => match same_host_path(&location, &authority) {
                Some(next) => path = next,
                // kubelet: a redirect to another host is not followed, and counts as success.
                None => return Ok(()),
            },
            _ => return Ok(()),
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
) -> Result<Head, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut stream = tcp::connect(addr, left).await?;
    stream
        .write_all(&request(authority, path, headers))
        .await
        .map_err(|e| tcp::lower(&e))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| tcp::lower(&e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD {
            break;
        }
    }
    if head.is_empty() {
        return Err("EOF".to_string());
    }
    parse_head(&head).ok_or_else(|| "malformed HTTP response".to_string())
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
                location: Some("/next".into())
            })
        );
        assert_eq!(
            parse_head(b"HTTP/1.0 200 OK\r\n\r\n").map(|h| h.status),
            Some(200)
        );
        assert_eq!(parse_head(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_head(b"HTTP/1.1 abc\r\n"), None);
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
