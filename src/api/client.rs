//! The API client: one [`Client`] per API server, used from the agent's one thread (`Rc`).
//!
//! It turns a pure [`Request`] into bytes on a connection (keeping one idle keep-alive
//! connection for the next request; each watch has its own), adds the credentials, bounds every
//! request in time and size, and turns error answers into [`Error`]. It does not retry beyond
//! one reconnect of a stale keep-alive connection: back-off belongs to the loops that call it.
//!
//! Limits: a whole answer is at most [`MAX_BODY`]; one watch event at most [`MAX_EVENT`] (an
//! object can be 1.5 MiB in etcd, so a pod with a 1 MiB annotation fits, an endless line does
//! not). Host names are resolved with the system resolver, which blocks the thread: configure
//! the server as an IP address where DNS may hang (the result is cached until a connect fails).

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use serde::de::DeserializeOwned;

use super::error::Error;
use super::http::{Connection, Failure, Lines, Response, Stream};
use super::kubeconfig::{KubeConfig, Server, Token};
use super::request::Request;
use super::types::{Status, WatchEvent};

/// The largest non-watch answer accepted.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// The largest single watch event accepted.
pub const MAX_EVENT: usize = 16 * 1024 * 1024;

/// How long things may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// A whole non-watch request, answer included.
    pub request: Duration,
    /// Silence on a watch beyond its `timeoutSeconds` before the connection counts as dead
    /// (a half-open connection after a network change never says so otherwise).
    pub watch_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
            watch_grace: Duration::from_secs(30),
        }
    }
}

enum Credentials {
    None,
    Bearer(String),
    TokenFile {
        path: PathBuf,
        cached: Option<(String, Instant)>,
    },
}

/// How often a `tokenFile` is re-read (kubelet's client does the same each minute).
const TOKEN_FILE_REFRESH: Duration = Duration::from_secs(60);

/// A client of one API server.
pub struct Client {
    server: Server,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::Tls>,
    credentials: RefCell<Credentials>,
    idle: RefCell<Option<Connection>>,
    addrs: RefCell<Vec<SocketAddr>>,
    local_ip: Cell<Option<IpAddr>>,
    /// The time limits; change them before the first request.
    pub timeouts: Timeouts,
}

impl Client {
    /// A client for the kubeconfig's server and user. Checks the TLS material now.
    pub fn new(k: &KubeConfig) -> Result<Client, Error> {
        #[cfg(feature = "tls")]
        let tls = if k.server.https {
            Some(super::tls::Tls::new(k)?)
        } else {
            None
        };
        #[cfg(not(feature = "tls"))]
        if k.server.https {
            return Err(Error::Config(
                "this nanolet was built without TLS (the `tls` feature); use an http:// server \
                 (a local proxy)"
                    .into(),
            ));
        }
        let credentials = match &k.token {
            Some(Token::Inline(t)) => Credentials::Bearer(t.clone()),
            Some(Token::File(p)) => Credentials::TokenFile {
                path: p.clone(),
                cached: None,
            },
            None => Credentials::None,
        };
        Ok(Client {
            server: k.server.clone(),
            #[cfg(feature = "tls")]
            tls,
            credentials: RefCell::new(credentials),
            idle: RefCell::new(None),
            addrs: RefCell::new(Vec::new()),
            local_ip: Cell::new(None),
            timeouts: Timeouts::default(),
        })
    }

    /// The server, as configured.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// This host's address on the route to the API server (from the last connection): the
    /// node's InternalIP.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local_ip.get()
    }

    /// Sends `req`; the body of a 2xx answer, else the error.
    pub async fn send(&self, req: &Request) -> Result<Vec<u8>, Error> {
        let what = req.to_string();
        let timeout = self.timeouts.request;
        with_timeout(&what, timeout, async {
            let reused = self.idle.borrow_mut().take();
            let was_reused = reused.is_some();
            match self.exchange(req, reused).await {
                // A kept-alive connection the server has closed meanwhile: once more, fresh.
                Err(Error::Transport { .. }) if was_reused => self.exchange(req, None).await,
                other => other,
            }
        })
        .await
    }

    async fn exchange(&self, req: &Request, conn: Option<Connection>) -> Result<Vec<u8>, Error> {
        let what = req.to_string();
        let conn = match conn {
            Some(c) => c,
            None => self.connect(&what).await?,
        };
        let mut response = self.start(req, conn, &what).await?;
        let body = response
            .body
            .to_end(MAX_BODY)
            .await
            .map_err(|f| failure(&what, f))?;
        let status = response.status;
        if let Some(conn) = response.body.finish() {
            *self.idle.borrow_mut() = Some(conn);
        }
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(status_error(&what, status, &response.headers, &body))
        }
    }

    /// Sends `req` and decodes the answer.
    pub async fn json<T: DeserializeOwned>(&self, req: &Request) -> Result<T, Error> {
        let body = self.send(req).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode {
            request: req.to_string(),
            detail: e.to_string(),
        })
    }

    /// Opens a watch (`req` from [`super::request::Resource::watch`]); its events come from
    /// [`WatchStream::next`].
    pub async fn watch(&self, req: &Request) -> Result<WatchStream, Error> {
        let what = req.to_string();
        let timeout_seconds = req
            .query
            .iter()
            .find(|(k, _)| *k == "timeoutSeconds")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(300);
        let idle = Duration::from_secs(timeout_seconds) + self.timeouts.watch_grace;
        let connect_timeout = self.timeouts.connect + self.timeouts.request;
        let mut response = with_timeout(&what, connect_timeout, async {
            let conn = self.connect(&what).await?;
            self.start(req, conn, &what).await
        })
        .await?;
        if !(200..300).contains(&response.status) {
            let body = with_timeout(&what, self.timeouts.request, async {
                response
                    .body
                    .to_end(MAX_BODY)
                    .await
                    .map_err(|f| failure(&what, f))
            })
            .await?;
            return Err(status_error(
                &what,
                response.status,
                &response.headers,
                &body,
            ));
        }
        Ok(WatchStream {
            lines: Lines::new(response.body, MAX_EVENT),
            request: what,
            idle,
        })
    }

    async fn start(&self, req: &Request, conn: Connection, what: &str) -> Result<Response, Error> {
        let uri = format!(
            "{}://{}{}{}",
            if self.server.https { "https" } else { "http" },
            self.server.authority(),
            self.server.path_prefix,
            req.path_and_query()
        );
        let mut builder = ureq_proto::http::Request::builder()
            .method(req.method.as_str())
            .uri(uri)
            .header("accept", "application/json")
            .header("accept-encoding", "gzip")
            .header("user-agent", concat!("nanolet/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = self.token()? {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if let Some(ct) = req.content_type {
            builder = builder.header("content-type", ct);
        }
        if let Some(body) = &req.body {
            builder = builder.header("content-length", body.len().to_string());
        }
        let request = builder.body(()).map_err(|e| Error::Decode {
            request: what.to_string(),
            detail: format!("cannot build the request: {e}"),
        })?;
        let sent = conn.send(request, req.body.as_deref()).await;
        sent.map_err(|f| failure(what, f))
    }

    fn token(&self) -> Result<Option<String>, Error> {
        let mut creds = self.credentials.borrow_mut();
        match &mut *creds {
            Credentials::None => Ok(None),
            Credentials::Bearer(t) => Ok(Some(t.clone())),
            Credentials::TokenFile { path, cached } => {
                if let Some((t, at)) = cached
                    && at.elapsed() < TOKEN_FILE_REFRESH
                {
                    return Ok(Some(t.clone()));
                }
                match std::fs::read_to_string(&*path) {
                    Ok(t) => {
                        let t = t.trim().to_string();
                        *cached = Some((t.clone(), Instant::now()));
                        Ok(Some(t))
                    }
                    // Keep using the last token read when the file is briefly missing (rotation).
                    Err(_) if cached.is_some() => Ok(cached.as_ref().map(|(t, _)| t.clone())),
                    Err(e) => Err(Error::Config(format!("tokenFile {}: {e}", path.display()))),
                }
            }
        }
    }

    async fn connect(&self, what: &str) -> Result<Connection, Error> {
        let addrs = self.resolve()?;
        let mut last = None;
        for addr in addrs {
            let attempt = with_timeout(what, self.timeouts.connect, async {
                let tcp =
                    Async::<TcpStream>::connect(addr)
                        .await
                        .map_err(|e| Error::Transport {
                            request: what.to_string(),
                            detail: format!("connect to {addr}: {e}"),
                        })?;
                if let Ok(local) = tcp.get_ref().local_addr() {
                    self.local_ip.set(Some(local.ip()));
                }
                let _ = tcp.get_ref().set_nodelay(true);
                self.wrap(tcp, what).await
            })
            .await;
            match attempt {
                Ok(stream) => return Ok(Connection::new(stream)),
                Err(e) => last = Some(e),
            }
        }
        // Resolve afresh next time: the server may have moved.
        self.addrs.borrow_mut().clear();
        Err(last.unwrap_or_else(|| Error::Transport {
            request: what.to_string(),
            detail: format!("{}: no address", self.server.host),
        }))
    }

    #[cfg(feature = "tls")]
    async fn wrap(&self, tcp: Async<TcpStream>, what: &str) -> Result<Stream, Error> {
        match &self.tls {
            Some(tls) => tls.connect(tcp).await.map_err(|e| Error::Transport {
                request: what.to_string(),
                detail: format!("tls handshake with {}: {e}", self.server.authority()),
            }),
            None => Ok(Stream::Plain(tcp)),
        }
    }

    #[cfg(not(feature = "tls"))]
    async fn wrap(&self, tcp: Async<TcpStream>, _what: &str) -> Result<Stream, Error> {
        Ok(Stream::Plain(tcp))
    }

    fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        let mut cache = self.addrs.borrow_mut();
        if cache.is_empty() {
            *cache = match self.server.host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, self.server.port)],
                Err(_) => (self.server.host.as_str(), self.server.port)
                    .to_socket_addrs()
                    .map_err(|e| Error::Transport {
                        request: self.server.authority(),
                        detail: format!("resolve {}: {e}", self.server.host),
                    })?
                    .collect(),
            };
        }
        Ok(cache.clone())
    }
}

/// A watch in progress: one event per line.
pub struct WatchStream {
    lines: Lines,
    request: String,
    idle: Duration,
}

impl WatchStream {
    /// The next event; None when the server ended the watch (its `timeoutSeconds`, or it went
    /// away cleanly). An ERROR event comes as `Some(Ok(WatchEvent::Error(..)))`: a 410 in it means
    /// relist. A broken or silent connection is `Some(Err(..))`.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        let request = self.request.clone();
        let line = with_timeout(&request, self.idle, async {
            self.lines
                .next_line()
                .await
                .map_err(|f| failure(&request, f))
        })
        .await;
        match line {
            Ok(None) => None,
            Ok(Some(line)) => Some(WatchEvent::parse(&line).map_err(|detail| Error::Decode {
                request: self.request.clone(),
                detail,
            })),
            Err(e) => Some(Err(e)),
        }
    }
}

async fn with_timeout<T>(
    what: &str,
    after: Duration,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    future::or(work, async {
        Timer::after(after).await;
        Err(Error::Timeout {
            request: what.to_string(),
            after,
        })
    })
    .await
}

fn failure(what: &str, f: Failure) -> Error {
    match f {
        Failure::Io(e) => Error::Transport {
            request: what.to_string(),
            detail: e.to_string(),
        },
        other => Error::Decode {
            request: what.to_string(),
            detail: other.to_string(),
        },
    }
}

fn status_error(what: &str, code: u16, headers: &[(String, String)], body: &[u8]) -> Error {
    let status: Option<Status> = serde_json::from_slice::<Status>(body)
        .ok()
        .filter(|s| !s.reason.is_empty() || !s.message.is_empty());
    let retry_after = headers
        .iter()
        .find(|(k, _)| k == "retry-after")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Error::from_status(what, code, status, retry_after)
}
