//! `<config-dir>/kubeconfig`: where the API server is and who nanolet is to it.
//!
//! The file is kubectl's format (YAML or JSON; read through [`crate::config::yaml`]). The
//! current context picks one cluster and one user; from them nanolet takes:
//!
//! | kubeconfig | meaning |
//! |---|---|
//! | `cluster.server` | `https://host:port` (or `http://` for a local proxy), optional path prefix |
//! | `cluster.certificate-authority[-data]` | the CA bundle (PEM) the server certificate must chain to |
//! | `cluster.insecure-skip-tls-verify` | do not verify the server certificate at all |
//! | `cluster.tls-server-name` | the name to verify instead of the server's host |
//! | `user.client-certificate[-data]`, `user.client-key[-data]` | mutual TLS (PEM) |
//! | `user.token`, `user.tokenFile` | a bearer token; the file is re-read every minute |
//!
//! Relative paths are relative to the kubeconfig's folder. `exec` and `auth-provider` plugins are
//! refused with a clear error (nanolet runs no helper programs). [`parse`] is pure; [`load`]
//! reads the file and the files it names.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use super::error::Error;
use crate::config::yaml;

/// The file name inside the config dir.
pub const FILE_NAME: &str = "kubeconfig";

/// The resolved connection settings.
#[derive(Clone, PartialEq)]
pub struct KubeConfig {
    /// The server's URL.
    pub server: Server,
    /// PEM CA bundle, if the kubeconfig gives one (else: the webpki roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Skip the verification of the server's certificate.
    pub insecure_skip_tls_verify: bool,
    /// Verify the server's certificate for this name instead of `server.host`.
    pub tls_server_name: Option<String>,
    /// PEM client certificate chain and key.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// The bearer token.
    pub token: Option<Token>,
}

impl std::fmt::Debug for Token {
    /// Never the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Inline(_) => f.write_str("Token::Inline(..)"),
            Token::File(p) => write!(f, "Token::File({})", p.display()),
        }
    }
}

impl std::fmt::Debug for KubeConfig {
    /// Without secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeConfig")
            .field("server", &self.server)
            .field("ca", &self.ca_pem.is_some())
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("client_cert", &self.client_cert.is_some())
            .field(
                "token",
                &match &self.token {
                    Some(Token::Inline(_)) => "inline",
                    Some(Token::File(_)) => "file",
                    None => "none",
                },
            )
            .finish()
    }
}

/// Where the bearer token comes from.
#[derive(Clone, PartialEq)]
pub enum Token {
    /// `token:`.
    Inline(String),
    /// `tokenFile:` (re-read periodically: rotated tokens).
    File(PathBuf),
}

/// The API server's address, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `https` (true) or `http`.
    pub https: bool,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port (default 443 / 80).
    pub port: u16,
    /// A path prefix (`/k8s` behind a proxy), without trailing `/`; usually empty.
    pub path_prefix: String,
}

impl Server {
    /// Parses `https://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Server, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "server {url:?}: must start with https:// or http://"
            ));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("server {url:?}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p),
                None if after.is_empty() => (h, ""),
                None => return Err(format!("server {url:?}: bad port")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None => (authority, ""),
            }
        };
        let port = if port.is_empty() {
            default_port
        } else {
            port.parse()
                .map_err(|_| format!("server {url:?}: bad port {port:?}"))?
        };
        if host.is_empty() {
            return Err(format!("server {url:?}: no host"));
        }
        Ok(Server {
            https,
            host: host.to_string(),
            port,
            path_prefix: prefix.to_string(),
        })
    }

    /// `host:port` (IPv6 in brackets), for the Host header and messages.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    entry: T,
}

#[derive(Deserialize)]
struct ClusterEntry {
    cluster: Cluster,
}
#[derive(Deserialize)]
struct UserEntry {
    #[serde(default)]
    user: User,
}
#[derive(Deserialize)]
struct ContextEntry {
    context: Context,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    exec: Option<Value>,
    auth_provider: Option<Value>,
    username: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

/// Reads `path` and the files it names.
pub fn load(path: &Path) -> Result<KubeConfig, Error> {
    let text =
        fs::read_to_string(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, &|p| fs::read(p)).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parses a kubeconfig; `base` resolves relative paths; `read` reads the files it names.
pub fn parse(
    text: &str,
    base: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<KubeConfig, Error> {
    let value = yaml::parse_one(text).map_err(|e| Error::Config(e.to_string()))?;
    let file: File = serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()))?;
    let clusters: BTreeMap<_, _> = file
        .clusters
        .iter()
        .map(|c| (&c.name, &c.entry.cluster))
        .collect();
    let users: BTreeMap<_, _> = file
        .users
        .iter()
        .map(|u| (&u.name, &u.entry.user))
        .collect();
    let context = if file.current_context.is_empty() {
        // No current-context: accept a file with exactly one context (as bootstrap files are).
        match file.contexts.as_slice() {
            [only] => &only.entry.context,
            [] => return Err(Error::Config("no contexts".into())),
            _ => {
                return Err(Error::Config(
                    "no current-context, and several contexts".into(),
                ));
            }
        }
    } else {
        &file
            .contexts
            .iter()
            .find(|c| c.name == file.current_context)
            .ok_or_else(|| {
                Error::Config(format!(
                    "current-context {:?} is not among the contexts",
                    file.current_context
                ))
            })?
            .entry
            .context
    };
    let cluster = clusters.get(&context.cluster).ok_or_else(|| {
        Error::Config(format!(
            "context's cluster {:?} is not among the clusters",
            context.cluster
        ))
    })?;
    let default_user = User::default();
    let user = if context.user.is_empty() {
        &default_user
    } else {
        users.get(&context.user).copied().ok_or_else(|| {
            Error::Config(format!(
                "context's user {:?} is not among the users",
                context.user
            ))
        })?
    };
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(Error::Config(format!(
            "user {:?}: exec and auth-provider plugins are not supported; use a token, a \
             tokenFile or a client certificate",
            context.user
        )));
    }
    if user.username.is_some() {
        return Err(Error::Config(format!(
            "user {:?}: basic auth (username/password) is not supported",
            context.user
        )));
    }
    let server = Server::parse(&cluster.server).map_err(Error::Config)?;
    let file_or_data = |what: &str, file: &Option<PathBuf>, data: &Option<String>| {
        pem_source(what, file.as_deref(), data.as_deref(), base, read)
    };
    let ca_pem = file_or_data(
        "certificate-authority",
        &cluster.certificate_authority,
        &cluster.certificate_authority_data,
    )?;
    let cert = file_or_data(
        "client-certificate",
        &user.client_certificate,
        &user.client_certificate_data,
    )?;
    let key = file_or_data("client-key", &user.client_key, &user.client_key_data)?;
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::Config(
                "client-certificate without client-key".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::Config(
                "client-key without client-certificate".into(),
            ));
        }
    };
    let token = match (&user.token, &user.token_file) {
        (Some(t), _) if !t.is_empty() => Some(Token::Inline(t.trim().to_string())),
        (_, Some(f)) => Some(Token::File(base.join(f))),
        _ => None,
    };
    if !server.https && (client_cert.is_some() || ca_pem.is_some()) {
        return Err(Error::Config(format!(
            "server {:?} is plain http but the kubeconfig has TLS settings",
            cluster.server
        )));
    }
    Ok(KubeConfig {
        server,
        ca_pem,
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        tls_server_name: cluster.tls_server_name.clone(),
        client_cert,
        token,
    })
}

fn pem_source(
    what: &str,
    file: Option<&Path>,
    data: Option<&str>,
    base: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Option<Vec<u8>>, Error> {
    if let Some(d) = data {
        let clean: String = d.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map(Some)
            .map_err(|e| Error::Config(format!("{what}-data: not base64: {e}")));
    }
    match file {
        Some(f) => {
            let path = base.join(f);
            read(&path)
                .map(Some)
                .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_files(p: &Path) -> std::io::Result<Vec<u8>> {
        if p == Path::new("/etc/nanolet/ca.crt") {
            return Ok(b"CA".to_vec());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ))
    }

    const KUBEADM_LIKE: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: edge
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority: ca.crt
contexts:
- name: node@edge
  context: {cluster: edge, user: node}
current-context: node@edge
users:
- name: node
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: "S0VZ"
"#;

    #[test]
    fn kubeadm_style_file_with_relative_ca_and_inline_cert() {
        let k = parse(KUBEADM_LIKE, Path::new("/etc/nanolet"), &no_files).unwrap();
        assert_eq!(
            k.server,
            Server {
                https: true,
                host: "10.0.0.1".into(),
                port: 6443,
                path_prefix: String::new()
            }
        );
        assert_eq!(k.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(k.client_cert, Some((b"CERT".to_vec(), b"KEY".to_vec())));
        assert!(k.token.is_none());
    }

    #[test]
    fn token_file_plain_http_and_single_context() {
        let text = r#"{"clusters":[{"name":"c","cluster":{"server":"http://127.0.0.1:8001/"}}],
            "users":[{"name":"u","user":{"tokenFile":"/run/token"}}],
            "contexts":[{"name":"x","context":{"cluster":"c","user":"u"}}]}"#;
        let k = parse(text, Path::new("/etc/nanolet"), &no_files).unwrap();
        assert!(!k.server.https);
        assert_eq!(k.server.port, 8001);
        assert_eq!(k.token, Some(Token::File("/run/token".into())));
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let cases = [
            (
                KUBEADM_LIKE.replace("node@edge\nusers", "other\nusers"),
                "current-context \"other\" is not among the contexts",
            ),
            (
                KUBEADM_LIKE.replace("ca.crt", "missing.crt"),
                "certificate-authority /etc/nanolet/missing.crt: no such file",
            ),
            (
                KUBEADM_LIKE.replace("Q0VSVA==", "not*base64"),
                "client-certificate-data: not base64",
            ),
            (
                KUBEADM_LIKE.replace("https://10.0.0.1:6443", "10.0.0.1:6443"),
                "must start with https://",
            ),
            (
                KUBEADM_LIKE.replace(
                    "    client-key-data: \"S0VZ\"\n",
                    "    exec: {command: aws}\n",
                ),
                "exec and auth-provider plugins are not supported",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text, Path::new("/etc/nanolet"), &no_files)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            Server::parse("https://[fd00::1]:6443").unwrap().authority(),
            "[fd00::1]:6443"
        );
        assert_eq!(Server::parse("https://api.example").unwrap().port, 443);
        assert_eq!(
            Server::parse("https://h:1/k8s/").unwrap().path_prefix,
            "/k8s"
        );
        assert!(Server::parse("https://h:x").is_err());
    }
}
