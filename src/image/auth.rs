//! Registry authentication, pure: the `WWW-Authenticate` challenge, docker `config.json`
//! credentials, token scopes and the token request and response.
//!
//! Owns the decisions of the distribution spec's auth flow ("token authentication"):
//!
//! ```text
//! GET /v2/<repo>/manifests/<tag>  ──401, WWW-Authenticate: Bearer realm=…,service=…,scope=…──►
//! GET <realm>?service=…&scope=repository:<repo>:pull  (Basic credentials if any) ──► {"token":…}
//! GET /v2/<repo>/manifests/<tag>  Authorization: Bearer <token>
//! ```
//!
//! or, for `WWW-Authenticate: Basic realm=…`, the request again with Basic credentials.
//! Pure: parses text and builds strings; never opens a connection or a file (the caller
//! reads `config.json` and passes its bytes). Must never log a credential or put one in an
//! error message.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The `WWW-Authenticate` header is not a challenge we can answer.
    Challenge {
        header: String,
        reason: &'static str,
    },
    /// `config.json` is not a docker config file.
    Config { reason: String },
    /// The token endpoint's answer has no token.
    Token { reason: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Challenge { header, reason } => {
                write!(f, "WWW-Authenticate {header:?}: {reason}")
            }
            Error::Config { reason } => write!(f, "config.json: {reason}"),
            Error::Token { reason } => write!(f, "token response: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// A challenge from a registry's 401 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send the request again with `Authorization: Basic …`.
    Basic,
    /// Fetch a token from `realm`, then send the request again with `Authorization: Bearer`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// A username and password (or identity token used as password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Never print the password.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The value of an `Authorization` header for Basic auth.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64_encode(raw.as_bytes()))
    }
}

/// Parses a `WWW-Authenticate` header (RFC 7235: a scheme, then `key=value` or
/// `key="quoted value"` pairs separated by commas). Only the first challenge is read.
pub fn parse_challenge(header: &str) -> Result<Challenge, Error> {
    let err = |reason| Error::Challenge {
        header: header.to_string(),
        reason,
    };
    let header_trimmed = header.trim();
    let (scheme, rest) = header_trimmed
        .split_once(' ')
        .unwrap_or((header_trimmed, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(err("unsupported scheme (want Basic or Bearer)"));
    }
    let params = parse_params(rest).ok_or_else(|| err("malformed parameters"))?;
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let realm = get("realm").ok_or_else(|| err("Bearer challenge without realm"))?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return Err(err("realm is not an http(s) URL"));
    }
    Ok(Challenge::Bearer {
        realm,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `key=value, key="quoted, \"value\""` into pairs; `None` when malformed.
fn parse_params(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=') {
            key.push(c);
        }
        chars.next()?; // '='
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
        }
        let key = key.trim();
        if key.is_empty() {
            return None;
        }
        out.push((key.to_string(), value.trim().to_string()));
    }
}

/// The scope a pull needs: `repository:library/busybox:pull`.
pub fn pull_scope(repository_path: &str) -> String {
    format!("repository:{repository_path}:pull")
}

/// The token request URL: the realm with `service` and `scope` query parameters. The scope
/// is the challenge's when it names one, else the pull scope of `repository_path`.
pub fn token_url(
    realm: &str,
    service: Option<&str>,
    scope: Option<&str>,
    repository_path: &str,
) -> String {
    let mut url = realm.to_string();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    if let Some(service) = service {
        url.push(sep);
        url.push_str("service=");
        url.push_str(&query_escape(service));
        sep = '&';
    }
    let scope = scope.map_or_else(|| pull_scope(repository_path), str::to_string);
    url.push(sep);
    url.push_str("scope=");
    url.push_str(&query_escape(&scope));
    url
}

/// The token of a token endpoint's JSON answer (`token`, or OAuth2's `access_token`).
pub fn parse_token_response(body: &[u8]) -> Result<String, Error> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
    }
    let r: TokenResponse = serde_json::from_slice(body).map_err(|e| Error::Token {
        reason: format!("invalid json: {e}"),
    })?;
    r.token
        .or(r.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Token {
            reason: "no token".into(),
        })
}

/// The credentials for `registry` (`host[:port]` as in a reference) in a docker
/// `config.json`: `auths.<key>.auth` (base64 `user:password`) or `username`/`password`.
/// Keys are matched like docker does: with or without `http(s)://` and a path; docker.io
/// is also found under `index.docker.io` and `https://index.docker.io/v1/`.
pub fn credentials_for(config_json: &[u8], registry: &str) -> Result<Option<Credentials>, Error> {
    #[derive(serde::Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, AuthEntry>,
    }
    #[derive(serde::Deserialize)]
    struct AuthEntry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: DockerConfig = serde_json::from_slice(config_json).map_err(|e| Error::Config {
        reason: format!("invalid json: {e}"),
    })?;
    let wanted = |key: &str| {
        let host = registry_host_of_key(key);
        host == registry
            || (registry == "docker.io"
                && matches!(host, "index.docker.io" | "registry-1.docker.io"))
    };
    let Some((key, entry)) = config.auths.iter().find(|(k, _)| wanted(k)) else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || Error::Config {
            reason: format!("auths.{key:?}.auth: want base64 of \"username:password\""),
        };
        let decoded = base64_decode(auth.trim()).ok_or_else(bad)?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Err(Error::Config {
            reason: format!("auths.{key:?}: want auth, or username and password"),
        }),
    }
}

/// `https://registry.local:5000/v1/` → `registry.local:5000`.
fn registry_host_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with optional padding; `None` on any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = BASE64.iter().position(|b| *b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_into_what_to_do_next() {
        let bearer = |realm: &str, service: Option<&str>, scope: Option<&str>| {
            Ok(Challenge::Bearer {
                realm: realm.into(),
                service: service.map(Into::into),
                scope: scope.map(Into::into),
            })
        };
        let cases: Vec<(&str, Result<Challenge, &str>)> = vec![
            (r#"Basic realm="Registry Realm""#, Ok(Challenge::Basic)),
            ("basic", Ok(Challenge::Basic)),
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
                bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/busybox:pull"),
                ),
            ),
            (
                "Bearer realm=http://127.0.0.1:5001/auth, service=reg",
                bearer("http://127.0.0.1:5001/auth", Some("reg"), None),
            ),
            (
                r#"Bearer realm="https://a/t",scope="repository:x:pull,push""#,
                bearer("https://a/t", None, Some("repository:x:pull,push")),
            ),
            (
                r#"Bearer service="x""#,
                Err("Bearer challenge without realm"),
            ),
            (r#"Bearer realm="file:///etc""#, Err("not an http(s) URL")),
            (r#"Negotiate abc"#, Err("unsupported scheme")),
            (r#"Bearer realm="https://unterminated"#, Err("malformed")),
        ];
        for (header, want) in cases {
            let got = parse_challenge(header);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{header}"),
                (Err(e), Err(fragment)) => {
                    assert!(e.to_string().contains(fragment), "{header}: {e}")
                }
                _ => panic!("{header}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn token_url_asks_for_the_pull_scope() {
        assert_eq!(
            token_url(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                None,
                "library/busybox"
            ),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fbusybox%3Apull"
        );
        assert_eq!(
            token_url("http://r/t?x=1", None, Some("repository:a:pull"), "b"),
            "http://r/t?x=1&scope=repository%3Aa%3Apull"
        );
    }

    #[test]
    fn token_responses() {
        assert_eq!(parse_token_response(br#"{"token":"abc"}"#).unwrap(), "abc");
        assert_eq!(
            parse_token_response(br#"{"access_token":"xyz","expires_in":60}"#).unwrap(),
            "xyz"
        );
        assert!(
            parse_token_response(br#"{"token":""}"#)
                .unwrap_err()
                .to_string()
                .contains("no token")
        );
        assert!(parse_token_response(b"<html>").is_err());
    }

    #[test]
    fn credentials_are_found_like_docker_finds_them() {
        // "alice:s3cr:et" (a password may contain ':').
        let config = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcjpldA=="},
            "registry.local:5000":{"username":"bob","password":"pw"},
            "http://10.0.0.1/v2/":{"auth":"Ym9iOnB3"},
            "broken.local":{"auth":"!!"},
            "half.local":{"username":"x"}
        }}"#;
        type Want = Result<Option<(&'static str, &'static str)>, &'static str>;
        let cases: &[(&str, Want)] = &[
            ("docker.io", Ok(Some(("alice", "s3cr:et")))),
            ("registry.local:5000", Ok(Some(("bob", "pw")))),
            ("10.0.0.1", Ok(Some(("bob", "pw")))),
            ("registry.local", Ok(None)),
            ("ghcr.io", Ok(None)),
            ("broken.local", Err("want base64")),
            ("half.local", Err("want auth, or username and password")),
        ];
        for (registry, want) in cases {
            let got = credentials_for(config, registry);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(
                    g.map(|c| (c.username, c.password)),
                    w.map(|(u, p)| (u.to_string(), p.to_string())),
                    "{registry}"
                ),
                (Err(e), Err(fragment)) => {
                    assert!(e.to_string().contains(fragment), "{registry}: {e}");
                    assert!(!e.to_string().contains("pw"));
                }
                (got, want) => panic!("{registry}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(credentials_for(b"{}", "docker.io").unwrap(), None);
        assert!(credentials_for(b"[", "docker.io").is_err());
    }

    #[test]
    fn basic_header_and_base64_round_trip() {
        let c = Credentials {
            username: "alice".into(),
            password: "s3cr:et".into(),
        };
        assert_eq!(c.basic_header(), "Basic YWxpY2U6czNjcjpldA==");
        assert!(!format!("{c:?}").contains("s3cr"));
        for s in ["", "a", "ab", "abc", "abcd", "\u{e9}t\u{e9}"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_decode("Ym9iOnB3"), Some(b"bob:pw".to_vec()));
        assert_eq!(base64_decode("a b"), None);
    }
}
