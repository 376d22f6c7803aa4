//! The HTTP conversation with one repository of an OCI distribution registry: manifests
//! and blobs, authentication, redirects, resumption and retries.
//!
//! Owns every byte sent to or read from the registry. Blocking (`ureq`): it runs in the
//! `internal-pull` child process, never on the agent's executor thread.
//!
//! ```text
//! GET /v2/<repo>/manifests/<tag|digest>   Accept: OCI index/manifest, Docker list/manifest v2
//! GET /v2/<repo>/blobs/<digest>           (Range: bytes=N- to resume; 3xx to storage)
//!      └─401─► auth::parse_challenge ─► Basic credentials, or GET <realm> for a Bearer token
//! ```
//!
//! Decisions: TLS (rustls, webpki roots) except for loopback registries and those listed
//! in `insecureRegistries`, which are reached over plain HTTP (as docker does). Redirects
//! are followed here, sending `Authorization` only to the registry's own origin (a blob
//! redirected to storage gets no credentials). Connection failures, 429 and 5xx are retried
//! with doubling back-off, a bounded number of times; a blob body that breaks off is resumed
//! with a Range request from the last byte received. Must never: read more of a body than
//! its descriptor announces (manifests: [`oci::MAX_DOCUMENT_SIZE`]), decide what a document
//! means (that is `pull`'s job), or put a credential into an error message or a log line.

use super::auth::{self, Challenge, Credentials};
use super::digest::Digest;
use super::oci;
use super::reference::Reference;
use log::{debug, warn};
use std::fmt;
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Every manifest media type we can use; schema 1 is deliberately absent.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The most of an error body we read, for its message.
const MAX_ERROR_BODY: u64 = 64 * 1024;

#[derive(Debug)]
pub enum Error {
    /// The request could not be made or its answer not read (after the retries).
    Transport { url: String, source: ureq::Error },
    /// The registry answered with an unexpected status.
    Status {
        url: String,
        status: u16,
        message: String,
    },
    /// The registry wants credentials we do not have, or refused ours.
    Unauthorized { registry: String, reason: String },
    /// The challenge or the token answer could not be used.
    Auth {
        registry: String,
        source: auth::Error,
    },
    /// A document is larger than we accept.
    TooLarge { url: String, limit: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport { url, source } => write!(f, "GET {url}: {source}"),
            Error::Status {
                url,
                status,
                message,
            } => write!(f, "GET {url}: {status}: {message}"),
            Error::Unauthorized { registry, reason } => {
                write!(f, "registry {registry}: 401 unauthorized: {reason}")
            }
            Error::Auth { registry, source } => write!(f, "registry {registry}: {source}"),
            Error::TooLarge { url, limit } => {
                write!(f, "GET {url}: body larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport { source, .. } => Some(source),
            Error::Auth { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How hard to try before giving up on a request.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per request (and resumptions of a blob without progress), at least 1.
    pub attempts: u32,
    /// The first back-off; each next one doubles.
    pub initial_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 4,
            initial_backoff: Duration::from_millis(500),
        }
    }
}

impl Retry {
    fn backoff(&self, failures: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1 << failures.saturating_sub(1).min(6))
    }
}

/// Whether `domain` (`host[:port]` as in a reference) is reached over plain HTTP: loopback
/// hosts always, others when listed in `insecure` as `host:port` or as a bare `host`.
pub fn is_plain_http(domain: &str, insecure: &[String]) -> bool {
    let host = host_of(domain);
    let is_loopback =
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    is_loopback || insecure.iter().any(|i| i == domain || i == host)
}

/// `r.local:5000` → `r.local`; `[::1]:5000` → `::1`.
fn host_of(domain: &str) -> &str {
    if let Some(rest) = domain.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    domain.rsplit_once(':').map_or(domain, |(h, _)| h)
}

/// A manifest or index as served.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The `Content-Type`, without parameters; empty if absent.
    pub content_type: String,
    /// The `Docker-Content-Digest` header, if any.
    pub digest_header: Option<String>,
}

/// One repository of one registry.
pub struct Registry {
    agent: ureq::Agent,
    /// `https://registry-1.docker.io/v2/library/busybox`
    base: String,
    /// The domain as in the reference, for messages.
    domain: String,
    path: String,
    credentials: Option<Credentials>,
    /// The `Authorization` value that worked last (Basic or Bearer). Behind a mutex
    /// because a pull downloads several layers at once, each on its own thread.
    authorization: Mutex<Option<String>>,
    retry: Retry,
    /// Where the credentials came from, for messages (`config.json`, or a pod's
    /// imagePullSecrets).
    origin: &'static str,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .finish()
    }
}

impl Registry {
    /// The repository of `reference`. `credentials` are sent only to this registry and to
    /// the token realm it names.
    pub fn new(
        reference: &Reference,
        credentials: Option<Credentials>,
        insecure: &[String],
        retry: Retry,
    ) -> Registry {
        let scheme = if is_plain_http(&reference.domain, insecure) {
            "http"
        } else {
            "https"
        };
        // docker.io names the registry; its API lives on another host.
        let endpoint = match reference.domain.as_str() {
            "docker.io" => "registry-1.docker.io",
            other => other,
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed in `send`, which decides where credentials go.
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("nanolet/", env!("CARGO_PKG_VERSION")))
            .build();
        Registry {
            agent: config.into(),
            base: format!("{scheme}://{endpoint}/v2/{}", reference.path),
            domain: reference.domain.clone(),
            path: reference.path.clone(),
            credentials,
            authorization: Mutex::new(None),
            retry,
            origin: "config.json",
        }
    }

    /// Names where the credentials came from in error messages (default `config.json`).
    pub fn with_origin(mut self, origin: &'static str) -> Registry {
        self.origin = origin;
        self
    }

    /// The manifest or index named by a tag or a digest, at most
    /// [`oci::MAX_DOCUMENT_SIZE`] bytes. Not verified here.
    pub fn get_manifest(&self, tag_or_digest: &str) -> Result<Fetched, Error> {
        let url = format!("{}/manifests/{tag_or_digest}", self.base);
        let response = self.get(&url, Some(MANIFEST_ACCEPT), 0)?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type")
            .map(|t| t.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let digest_header = header("docker-content-digest");
        let limit = oci::MAX_DOCUMENT_SIZE;
        let mut bytes = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Transport {
                url: url.clone(),
                source: ureq::Error::Io(e),
            })?;
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge { url, limit });
        }
        Ok(Fetched {
            bytes,
            content_type,
            digest_header,
        })
    }

    /// A reader of the blob `digest` that yields at most `size` bytes. It connects on the
    /// first read (so opening a blob the store already has costs nothing) and resumes
    /// with a Range request when the body breaks off. Not verified here.
    pub fn blob(&self, digest: &Digest, size: u64) -> BlobReader<'_> {
        BlobReader {
            registry: self,
            url: format!("{}/blobs/{digest}", self.base),
            size,
            done: 0,
            body: None,
            failures: 0,
        }
    }

    /// GET with retries and one round of authentication. `offset > 0` asks for a range.
    fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        offset: u64,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let mut failures = 0;
        let mut authenticated = false;
        loop {
            let retryable = match self.send(url, accept, offset) {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == 401 && !authenticated {
                        authenticated = true;
                        self.authenticate(&response)?;
                        continue;
                    }
                    if status == 401 {
                        return Err(self.unauthorized(response));
                    }
                    if (200..300).contains(&status) {
                        return Ok(response);
                    }
                    let error = status_error(url, response);
                    if status != 429 && status < 500 {
                        return Err(error);
                    }
                    error
                }
                Err(source) => Error::Transport {
                    url: url.to_string(),
                    source,
                },
            };
            failures += 1;
            if failures >= self.retry.attempts.max(1) {
                return Err(retryable);
            }
            let wait = self.retry.backoff(failures);
            warn!("{retryable}: retrying in {wait:?}");
            std::thread::sleep(wait);
        }
    }

    /// One GET, following redirects itself: `Authorization` goes only to the origin
    /// (scheme, host and port) of `url`, never to the storage a blob is redirected to.
    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        offset: u64,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut target = url.to_string();
        let mut redirects = 0;
        loop {
            let mut request = self.agent.get(&target);
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            if offset > 0 {
                request = request.header("Range", format!("bytes={offset}-"));
            }
            if let Some(auth) = self
                .authorization()
                .filter(|_| origin(&target) == origin(url))
            {
                request = request.header("Authorization", auth);
            }
            let response = request.call()?;
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok());
            match (response.status().as_u16(), location) {
                (301 | 302 | 303 | 307 | 308, Some(location)) if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    target = resolve_location(&target, location);
                    debug!("GET {url}: redirected to {}", origin(&target));
                }
                _ => return Ok(response),
            }
        }
    }

    /// Answers a 401 challenge: sets the `Authorization` to use from now on.
    fn authenticate(&self, response: &ureq::http::Response<ureq::Body>) -> Result<(), Error> {
        let header = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let challenge = auth::parse_challenge(header).map_err(|source| Error::Auth {
            registry: self.domain.clone(),
            source,
        })?;
        let value = match challenge {
            Challenge::Basic => match &self.credentials {
                Some(c) => c.basic_header(),
                None => return Err(self.no_credentials()),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self.fetch_token(&realm, service.as_deref(), scope.as_deref())?;
                format!("Bearer {token}")
            }
        };
        debug!("registry {}: authenticated", self.domain);
        // A poisoned lock only means another download panicked; the value is a string.
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }

    fn authorization(&self) -> Option<String> {
        self.authorization
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, Error> {
        let url = auth::token_url(realm, service, scope, &self.path);
        let mut request = self.agent.get(&url);
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", c.basic_header());
        }
        let response = request.call().map_err(|source| Error::Transport {
            url: realm.to_string(),
            source,
        })?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 if self.credentials.is_some() => {
                return Err(Error::Unauthorized {
                    registry: self.domain.clone(),
                    reason: format!("token service {realm} refused the credentials"),
                });
            }
            401 | 403 => return Err(self.no_credentials()),
            _ => return Err(status_error(realm, response)),
        }
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_ERROR_BODY)
            .read_to_end(&mut body)
            .map_err(|e| Error::Transport {
                url: realm.to_string(),
                source: ureq::Error::Io(e),
            })?;
        auth::parse_token_response(&body).map_err(|source| Error::Auth {
            registry: self.domain.clone(),
            source,
        })
    }

    fn no_credentials(&self) -> Error {
        Error::Unauthorized {
            registry: self.domain.clone(),
            reason: format!(
                "authentication required and no credentials for it in {}",
                self.origin
            ),
        }
    }

    fn unauthorized(&self, response: ureq::http::Response<ureq::Body>) -> Error {
        let message = error_message(response);
        let reason = if self.credentials.is_some() {
            format!("credentials from {} refused ({message})", self.origin)
        } else {
            format!(
                "authentication required and no credentials for it in {} ({message})",
                self.origin
            )
        };
        Error::Unauthorized {
            registry: self.domain.clone(),
            reason,
        }
    }
}

/// Redirects followed per request.
const MAX_REDIRECTS: u32 = 5;

/// `scheme://host:port` of a URL (as written; we only compare URLs we built or were sent).
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// A `Location` against the URL it answered: absolute, or a path on the same origin.
fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split_once("://").map_or("https", |(s, _)| s);
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{}{location}", origin(base));
    }
    let dir = base.rsplit_once('/').map_or(base, |(d, _)| d);
    format!("{dir}/{location}")
}

/// An error for an unexpected status, with the registry's own message if it sent one.
fn status_error(url: &str, response: ureq::http::Response<ureq::Body>) -> Error {
    let status = response.status().as_u16();
    Error::Status {
        url: url.to_string(),
        status,
        message: error_message(response),
    }
}

/// The first `errors[].message` of a distribution-spec error body, else the status text.
fn error_message(response: ureq::http::Response<ureq::Body>) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let reason = response
        .status()
        .canonical_reason()
        .unwrap_or("unexpected status")
        .to_lowercase();
    let mut bytes = Vec::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut bytes);
    match serde_json::from_slice::<Body>(&bytes) {
        Ok(b) if !b.errors.is_empty() => b
            .errors
            .iter()
            .map(|e| format!("{} ({})", e.message, e.code))
            .collect::<Vec<_>>()
            .join("; "),
        _ => reason,
    }
}

/// A blob's body, cut at its descriptor's size and resumed after a break.
pub struct BlobReader<'a> {
    registry: &'a Registry,
    url: String,
    size: u64,
    /// Bytes handed out so far.
    done: u64,
    body: Option<ureq::BodyReader<'static>>,
    /// Consecutive failures without progress.
    failures: u32,
}

impl BlobReader<'_> {
    /// (Re)connects at `done`. A server that ignores the Range answers 200 from the start:
    /// the bytes we already have are skipped.
    fn connect(&mut self) -> io::Result<()> {
        let response = self
            .registry
            .get(&self.url, None, self.done)
            .map_err(io::Error::other)?;
        let is_partial = response.status().as_u16() == 206;
        let mut body = response.into_body().into_reader();
        if self.done > 0 && !is_partial {
            let skipped = io::copy(&mut (&mut body).take(self.done), &mut io::sink())?;
            if skipped < self.done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body shorter than before",
                ));
            }
        }
        self.body = Some(body);
        Ok(())
    }

    /// Counts a failure; `Err` once the retries are used up.
    fn failed(&mut self, e: io::Error) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        let retry = self.registry.retry;
        if self.failures >= retry.attempts.max(1) {
            return Err(io::Error::new(
                e.kind(),
                format!("GET {}: after {} bytes: {e}", self.url, self.done),
            ));
        }
        let wait = retry.backoff(self.failures);
        warn!(
            "GET {}: broke off after {} bytes ({e}): resuming in {wait:?}",
            self.url, self.done
        );
        std::thread::sleep(wait);
        Ok(())
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let remaining = self.size - self.done;
            if remaining == 0 || buf.is_empty() {
                return Ok(0);
            }
            let Some(body) = self.body.as_mut() else {
                if let Err(e) = self.connect() {
                    // A refusal (404, 401) will not change on retry.
                    if e.kind() == io::ErrorKind::Other {
                        return Err(e);
                    }
                    self.failed(e)?;
                }
                continue;
            };
            let max = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            match body.read(&mut buf[..max]) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "body ended early");
                    self.failed(e)?;
                }
                Ok(n) => {
                    self.done += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.failed(e)?,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let insecure = vec!["registry.lan".to_string(), "10.0.0.5:5000".to_string()];
        let cases = [
            ("localhost:5000", true),
            ("localhost", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("[::1]:5000", true),
            ("registry.lan", true),
            ("registry.lan:443", true),
            ("10.0.0.5:5000", true),
            ("10.0.0.5:5001", false),
            ("10.0.0.5", false),
            ("docker.io", false),
            ("localhost.evil.example", false),
            ("[::2]:5000", false),
        ];
        for (domain, want) in cases {
            assert_eq!(is_plain_http(domain, &insecure), want, "{domain}");
        }
    }

    #[test]
    fn redirects_resolve_and_credentials_stay_with_their_origin() {
        let base = "https://r.io:5000/v2/app/blobs/sha256:ab";
        let cases = [
            (
                "https://s3.example/b?sig=1",
                "https://s3.example/b?sig=1",
                false,
            ),
            ("/v2/app/blobs/x", "https://r.io:5000/v2/app/blobs/x", true),
            ("//cdn.example/x", "https://cdn.example/x", false),
            ("other", "https://r.io:5000/v2/app/blobs/other", true),
            ("https://r.io:5001/x", "https://r.io:5001/x", false),
            ("http://r.io:5000/x", "http://r.io:5000/x", false),
        ];
        for (location, want, same_origin) in cases {
            let got = resolve_location(base, location);
            assert_eq!(got, want, "{location}");
            assert_eq!(origin(&got) == origin(base), same_origin, "{location}");
        }
        assert_eq!(origin("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let r = Retry {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
        };
        let waits: Vec<u128> = (1..=3).map(|f| r.backoff(f).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400]);
        assert_eq!(r.backoff(40).as_millis(), 6400);
    }
}
