//! Image references, normalized the way docker and the kubelet do.
//!
//! Owns: parsing `busybox`, `a/b:tag`, `registry.local:5000/app@sha256:…` into a
//! [`Reference`] and printing its normalized form (`docker.io/library/busybox:latest`).
//! Pure: no I/O. Must never guess a registry other than `docker.io`.
//!
//! Rules (from distribution/reference): the first path component is a registry host if it
//! contains `.` or `:` or is `localhost`; otherwise the registry is `docker.io`, and a
//! single-component name gets `library/`. No tag and no digest means `:latest`.

use super::digest::Digest;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host, with port if any: `docker.io`, `registry.local:5000`.
    pub domain: String,
    /// Repository path: `library/busybox`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub input: String,
    pub reason: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image reference {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for Error {}

const MAX_NAME_LEN: usize = 255;

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, Error> {
        let err = |reason| Error {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("must not be empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|_| err("invalid digest"))?),
            ),
            None => (input, None),
        };
        // A tag is a `:` after the last `/` (a `:` before it is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !is_valid_tag(tag)
        {
            return Err(err("invalid tag"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        let domain = if domain == "index.docker.io" {
            "docker.io".to_string()
        } else {
            domain
        };
        let path = if domain == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if !is_valid_domain(&domain) {
            return Err(err("invalid registry host"));
        }
        if path.is_empty() || !path.split('/').all(is_valid_path_component) {
            return Err(err(
                "invalid repository name (lowercase letters, digits and . _ - separators)",
            ));
        }
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(err("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `docker.io/library/busybox`: the repository, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

/// The normalized form: `docker.io/library/busybox:latest`, `r:5000/a@sha256:…`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one `.`, one or two `_`, or any number of `-`.
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_docker() {
        let cases: Vec<(String, String)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest".into()),
            (
                "busybox:1.36".into(),
                "docker.io/library/busybox:1.36".into(),
            ),
            ("a/b:tag".into(), "docker.io/a/b:tag".into()),
            ("a/b/c".into(), "docker.io/a/b/c:latest".into()),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            ("localhost/app".into(), "localhost/app:latest".into()),
            (
                "localhost:5000/app:v1".into(),
                "localhost:5000/app:v1".into(),
            ),
            (
                "registry.local:5000/app".into(),
                "registry.local:5000/app:latest".into(),
            ),
            (
                format!("registry.local:5000/app@{D}"),
                format!("registry.local:5000/app@{D}"),
            ),
            (
                format!("busybox:1@{D}"),
                format!("docker.io/library/busybox:1@{D}"),
            ),
            (
                "my-app.v2/x__y:1.0-rc_1".into(),
                "my-app.v2/x__y:1.0-rc_1".into(),
            ),
            ("a--b".into(), "docker.io/library/a--b:latest".into()),
        ];
        for (input, want) in cases {
            let got = Reference::parse(&input).map(|r| r.to_string());
            assert_eq!(got.as_deref(), Ok(want.as_str()), "{input}");
        }
    }

    #[test]
    fn rejects_invalid() {
        let cases = [
            ("", "must not be empty"),
            ("Busybox", "invalid repository name"),
            ("busybox:", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("a//b", "invalid repository name"),
            ("a/../b", "invalid repository name"),
            ("busybox@sha256:1234", "invalid digest"),
            ("a_.b", "invalid repository name"),
            ("a___b", "invalid repository name"),
            ("-a", "invalid repository name"),
            ("bad_host.io:x/app", "invalid registry host"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(input).unwrap_err();
            assert!(err.reason.starts_with(want), "{input}: {err}");
        }
    }

    #[test]
    fn repository_has_no_tag() {
        let r = Reference::parse("registry.local:5000/app:v1").unwrap();
        assert_eq!(r.repository(), "registry.local:5000/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
    }
}
