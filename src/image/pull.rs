//! `pull`: an image from a registry into the store, for the node's platform.
//!
//! Owns the decisions between the registry's answers and the store: which document a
//! `Content-Type` announces (schema 1 and anything unknown are refused), that each
//! manifest or index is the one asked for (digest and size against the descriptor or the
//! reference; `Docker-Content-Digest` against the bytes for a tag), which manifest of an
//! index is for the node's platform, and the names the image gets.
//!
//! ```text
//! GET manifests/<tag> ─► index? ─choose platform─► GET manifests/<digest> ─► manifest
//!      ─► fetch::import_pulled ─► config (import.rs checks) ─► layers: GET blobs/<digest>,
//!         up to 3 at once, each unpacked as it arrives (size, sha256, diff_id verified in
//!         the same pass) ─► blobs, documents, rootfs renamed in ─► record
//! ```
//!
//! Must never: let a byte into the store that has not been verified (documents go through
//! `import.rs`, layers through `fetch.rs`), or run on the agent's thread (it blocks, and
//! downloads on a few threads of its own: it runs in the `internal-pull` child).

use super::auth::{self, Credentials};
use super::digest::{Digest, Verifier};
use super::oci::{self, Descriptor, Index, Manifest};
use super::reference::{self, Reference};
use super::registry::{self, Registry, Retry};
use super::source::Source;
use super::{Image, ImageStore, Platform};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Schema 1 media types: refused with a message saying so.
const MEDIA_TYPES_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// How many index levels we follow (index → index → manifest).
const MAX_INDEX_DEPTH: usize = 2;

#[derive(Debug)]
pub enum Error {
    Reference(reference::Error),
    /// `<config-dir>/config.json` could not be read or used.
    Credentials {
        path: PathBuf,
        reason: String,
    },
    /// The registry could not be asked, or said no.
    Registry {
        image: String,
        source: registry::Error,
    },
    /// A manifest or index is not what we asked for or not something we can use.
    Document {
        image: String,
        object: String,
        reason: String,
    },
    /// Verification, storing or unpacking failed (the store names image and descriptor).
    Store(super::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Reference(e) => e.fmt(f),
            Error::Credentials { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::Registry { image, source } => write!(f, "image {image}: {source}"),
            Error::Document {
                image,
                object,
                reason,
            } => write!(f, "image {image}: {object}: {reason}"),
            Error::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Reference(e) => Some(e),
            Error::Registry { source, .. } => Some(source),
            Error::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// What a pull needs besides the reference.
#[derive(Debug, Clone)]
pub struct Options {
    pub platform: Platform,
    /// `insecureRegistries` of `nanolet.yaml`.
    pub insecure_registries: Vec<String>,
    /// From [`credentials_in`].
    pub credentials: Option<Credentials>,
    /// Where `credentials` came from, for messages: `config.json` or the pod's imagePullSecrets.
    pub credentials_origin: &'static str,
    pub retry: Retry,
}

/// Progress of one layer: `(layer digest, bytes done, bytes total)`. Called from the
/// download threads (several layers download at once), hence `Sync`.
pub type Progress<'a> = &'a (dyn Fn(&Digest, u64, u64) + Sync);

/// One line of `nanolet internal-pull`'s stdout, as JSON: any number of `Layer`, then one
/// `Image` or `Error`. The agent reads these with [`Event::parse`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Event {
    /// `{"layer":"sha256:…","done":n,"total":m}`
    Layer {
        layer: Digest,
        done: u64,
        total: u64,
    },
    /// `{"image":{…}}`: the store's record of the pulled image.
    Image { image: Image },
    /// `{"error":"…"}`: the pull failed; the text names the image and what went wrong.
    Error { error: String },
}

impl Event {
    pub fn parse(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// The JSON line, without the newline.
    pub fn to_line(&self) -> String {
        // Serializing these plain types cannot fail; an empty object is never produced.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The credentials for `domain` in `<config_dir>/config.json` (docker's format); none when
/// the file does not exist.
pub fn credentials_in(config_dir: &Path, domain: &str) -> Result<Option<Credentials>, Error> {
    let path = config_dir.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Credentials {
                path,
                reason: format!("read: {e}"),
            });
        }
    };
    auth::credentials_for(&bytes, domain).map_err(|e| Error::Credentials {
        path,
        reason: e.to_string(),
    })
}

/// Pulls `reference` into `store` and unpacks its rootfs. Layers the store already has are
/// not downloaded again; an image already complete costs one manifest request.
pub fn pull(
    store: &ImageStore,
    reference: &str,
    options: &Options,
    progress: Progress<'_>,
) -> Result<Image, Error> {
    let r = Reference::parse(reference).map_err(Error::Reference)?;
    let name = image_name(&r);
    let registry = Registry::new(
        &r,
        options.credentials.clone(),
        &options.insecure_registries,
        options.retry,
    )
    .with_origin(options.credentials_origin);
    let (desc, bytes, manifest) = resolve(&registry, &name, &r, &options.platform)?;
    let mut sizes = HashMap::new();
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        sizes.insert(d.digest.hex().to_string(), d.size);
    }
    for layer in &manifest.layers {
        if store.blob_path(&layer.digest).is_file() {
            progress(&layer.digest, layer.size, layer.size);
        }
    }
    let source = RegistrySource {
        registry: &registry,
        manifest_digest: desc.digest.clone(),
        manifest: bytes,
        sizes,
    };
    let image = super::fetch::import_pulled(
        store,
        &source,
        &registry,
        &options.platform,
        &desc,
        vec![name.clone()],
        progress,
    )
    .map_err(Error::Store)?;
    // Unpacked during the pull, unless the image was complete in the store already (then
    // only a rootfs removed since is unpacked again here).
    if let Err(e) = store.rootfs(&image) {
        // An image that cannot be unpacked is not pulled: take back the name we added (and
        // with it the image, if it has no other). Best effort: the unpack error is the news.
        let _ = store.remove(&name);
        return Err(Error::Store(e));
    }
    log::info!("image {name}: pulled ({})", image.manifest_digest.short());
    Ok(image)
}

/// The name recorded for a pulled image: `repo:tag`, or `repo@digest` without a tag.
fn image_name(r: &Reference) -> String {
    match &r.tag {
        Some(_) => Reference {
            digest: None,
            ..r.clone()
        }
        .to_string(),
        None => r.to_string(),
    }
}

/// Which document a `Content-Type` announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

fn kind_of(content_type: &str) -> Result<Kind, String> {
    match content_type {
        oci::MEDIA_TYPE_OCI_INDEX | oci::MEDIA_TYPE_DOCKER_LIST => Ok(Kind::Index),
        oci::MEDIA_TYPE_OCI_MANIFEST | oci::MEDIA_TYPE_DOCKER_MANIFEST => Ok(Kind::Manifest),
        t if MEDIA_TYPES_SCHEMA1.contains(&t) => Err(format!(
            "Docker schema 1 manifest ({t}): not supported; push the image again with a \
             current docker or skopeo"
        )),
        "" => Err("served without a Content-Type".into()),
        t => Err(format!(
            "served as {t:?}: want an OCI or Docker v2 image manifest or index"
        )),
    }
}

/// Why `bytes` are not the document asked for, if they are not. `want` is the parent
/// index's descriptor, `by_digest` the reference's digest, `header` the registry's
/// `Docker-Content-Digest`.
fn check_identity(
    bytes: &[u8],
    content_type: &str,
    want: Option<&Descriptor>,
    by_digest: Option<&Digest>,
    header: Option<&str>,
) -> Result<Digest, String> {
    let verifier = || {
        let mut v = Verifier::new();
        v.update(bytes);
        v
    };
    let digest = verifier().digest();
    if let Some(d) = want {
        verifier()
            .verify(&d.digest, Some(d.size))
            .map_err(|e| e.to_string())?;
        if d.media_type != content_type {
            return Err(format!(
                "served as {content_type:?}, but the index says {:?}",
                d.media_type
            ));
        }
    } else if let Some(d) = by_digest {
        verifier().verify(d, None).map_err(|e| e.to_string())?;
    } else if let Some(h) = header
        && h != digest.to_string()
    {
        return Err(format!(
            "digest mismatch: registry says {h}, content is {digest}"
        ));
    }
    Ok(digest)
}

/// The manifest for `platform` that `r` names: its descriptor, bytes and parsed form.
fn resolve(
    registry: &Registry,
    image: &str,
    r: &Reference,
    platform: &Platform,
) -> Result<(Descriptor, Vec<u8>, Manifest), Error> {
    let registry_err = |source| Error::Registry {
        image: image.to_string(),
        source,
    };
    let first = match (&r.digest, &r.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".to_string(),
    };
    let mut object = format!("manifest {first}");
    let mut fetched = registry.get_manifest(&first).map_err(registry_err)?;
    let mut parent: Option<Descriptor> = None;
    for depth in 0..=MAX_INDEX_DEPTH {
        let doc_err = |reason: String| Error::Document {
            image: image.to_string(),
            object: object.clone(),
            reason,
        };
        let kind = kind_of(&fetched.content_type).map_err(doc_err)?;
        let digest = check_identity(
            &fetched.bytes,
            &fetched.content_type,
            parent.as_ref(),
            r.digest.as_ref(),
            fetched.digest_header.as_deref(),
        )
        .map_err(doc_err)?;
        let ambiguous = |declared: Option<&str>| {
            declared.filter(|t| *t != fetched.content_type).map(|t| {
                doc_err(format!(
                    "ambiguous document: mediaType {t:?} served as {:?}",
                    fetched.content_type
                ))
            })
        };
        if kind == Kind::Manifest {
            let m = Manifest::parse(&fetched.bytes).map_err(|e| doc_err(e.to_string()))?;
            if let Some(e) = ambiguous(m.media_type.as_deref()) {
                return Err(e);
            }
            let desc = Descriptor {
                media_type: fetched.content_type.clone(),
                digest,
                size: fetched.bytes.len() as u64,
                platform: None,
                annotations: Default::default(),
            };
            return Ok((desc, fetched.bytes, m));
        }
        let index = Index::parse(&fetched.bytes).map_err(|e| doc_err(e.to_string()))?;
        if let Some(e) = ambiguous(index.media_type.as_deref()) {
            return Err(e);
        }
        if depth == MAX_INDEX_DEPTH {
            return Err(doc_err("image indexes nested too deep".into()));
        }
        let Some(child) = choose(&index, platform) else {
            return Err(Error::Store(super::Error::Platform {
                image: image.to_string(),
                want: platform.to_string(),
            }));
        };
        object = format!("manifest {}", child.digest);
        fetched = registry
            .get_manifest(&child.digest.to_string())
            .map_err(registry_err)?;
        parent = Some(child.clone());
    }
    // The loop returns or fails at MAX_INDEX_DEPTH.
    Err(Error::Document {
        image: image.to_string(),
        object,
        reason: "image indexes nested too deep".into(),
    })
}

/// The index entry for `platform`: an exact variant match first, else the first entry
/// whose platform matches (a missing variant matches any). Entries without a platform
/// (attestations, other artifacts) are never chosen.
fn choose<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Descriptor> {
    let candidates = || {
        index.manifests.iter().filter(|d| {
            (d.is_manifest() || d.is_index())
                && d.platform
                    .as_ref()
                    .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
    };
    candidates()
        .find(|d| {
            platform.variant.is_some()
                && d.platform.as_ref().and_then(|p| p.variant.as_ref()) == platform.variant.as_ref()
        })
        .or_else(|| candidates().next())
}

/// The registry seen as an import source of documents: the manifest already fetched,
/// the config on demand. Layers are fetched by [`super::fetch`].
struct RegistrySource<'a> {
    registry: &'a Registry,
    manifest_digest: Digest,
    manifest: Vec<u8>,
    /// Sizes of the config and layers (hex → bytes), from the manifest.
    sizes: HashMap<String, u64>,
}

impl Source for RegistrySource<'_> {
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            return Ok(None);
        };
        if hex == self.manifest_digest.hex() {
            return Ok(Some(Box::new(self.manifest.as_slice())));
        }
        let Some(&size) = self.sizes.get(hex) else {
            return Ok(None);
        };
        let digest = Digest::from_hex(hex).map_err(io::Error::other)?;
        Ok(Some(Box::new(self.registry.blob(&digest, size))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn internal_pull_lines_parse_back_into_events() {
        let digest = Digest::of(b"layer");
        let image = Image {
            names: vec!["r.local/app:v1".into()],
            manifest_digest: Digest::of(b"m"),
            config_digest: Digest::of(b"c"),
            config: Default::default(),
            size: 42,
        };
        let events = [
            Event::Layer {
                layer: digest.clone(),
                done: 1,
                total: 2,
            },
            Event::Image { image },
            Event::Error {
                error: "image r.local/app:v1: boom".into(),
            },
        ];
        for e in events {
            assert_eq!(Event::parse(&e.to_line()).unwrap(), e);
        }
        assert_eq!(
            Event::Layer {
                layer: digest.clone(),
                done: 1,
                total: 2
            }
            .to_line(),
            format!(r#"{{"layer":"{digest}","done":1,"total":2}}"#)
        );
        assert!(Event::parse("{}").is_err());
    }

    #[test]
    fn content_types_decide_the_document_kind() {
        let cases: &[(&str, Result<Kind, &str>)] = &[
            (oci::MEDIA_TYPE_OCI_INDEX, Ok(Kind::Index)),
            (oci::MEDIA_TYPE_DOCKER_LIST, Ok(Kind::Index)),
            (oci::MEDIA_TYPE_OCI_MANIFEST, Ok(Kind::Manifest)),
            (oci::MEDIA_TYPE_DOCKER_MANIFEST, Ok(Kind::Manifest)),
            (
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                Err("Docker schema 1 manifest"),
            ),
            ("text/html", Err("served as \"text/html\": want an OCI")),
            ("", Err("without a Content-Type")),
        ];
        for (t, want) in cases {
            match (kind_of(t), want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{t}"),
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{t}: {e}"),
                (got, _) => panic!("{t}: got {got:?}"),
            }
        }
    }

    fn desc(
        media_type: &str,
        bytes: &[u8],
        platform: Option<(&str, &str, Option<&str>)>,
    ) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            platform: platform.map(|(os, arch, variant)| oci::PlatformSpec {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            annotations: Default::default(),
        }
    }

    #[test]
    fn documents_must_be_the_ones_asked_for() {
        let body = b"{}";
        let other = b"[]";
        let m = oci::MEDIA_TYPE_OCI_MANIFEST;
        let good = desc(m, body, None);
        let digest = Digest::of(body);
        // (index descriptor, reference digest, Docker-Content-Digest, Content-Type, want)
        type Case = (
            Option<Descriptor>,
            Option<Digest>,
            Option<String>,
            &'static str,
            Result<(), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (Some(good.clone()), None, None, m, Ok(())),
            (
                Some(desc(m, other, None)),
                None,
                None,
                m,
                Err("digest mismatch"),
            ),
            (
                Some(Descriptor {
                    size: 3,
                    ..good.clone()
                }),
                None,
                None,
                m,
                Err("size mismatch"),
            ),
            (
                Some(good.clone()),
                None,
                None,
                oci::MEDIA_TYPE_DOCKER_MANIFEST,
                Err("but the index says"),
            ),
            (None, Some(digest.clone()), None, m, Ok(())),
            (
                None,
                Some(Digest::of(other)),
                None,
                m,
                Err("digest mismatch"),
            ),
            (None, None, Some(digest.to_string()), m, Ok(())),
            (
                None,
                None,
                Some(Digest::of(other).to_string()),
                m,
                Err("registry says"),
            ),
            (None, None, None, m, Ok(())),
        ];
        for (i, (want, by_digest, header, ct, expect)) in cases.into_iter().enumerate() {
            let got = check_identity(
                body,
                ct,
                want.as_ref(),
                by_digest.as_ref(),
                header.as_deref(),
            );
            match (got, expect) {
                (Ok(d), Ok(())) => assert_eq!(d, digest, "case {i}"),
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "case {i}: {e}"),
                (got, expect) => panic!("case {i}: got {got:?}, want {expect:?}"),
            }
        }
    }

    #[test]
    fn index_entry_for_the_node_platform_is_chosen() {
        let m = oci::MEDIA_TYPE_OCI_MANIFEST;
        let entries = [
            desc(m, b"amd64", Some(("linux", "amd64", None))),
            desc(m, b"armv6", Some(("linux", "arm", Some("v6")))),
            desc(m, b"armv7", Some(("linux", "arm", Some("v7")))),
            desc(m, b"arm64", Some(("linux", "arm64", Some("v8")))),
            desc(m, b"win", Some(("windows", "amd64", None))),
            desc("application/vnd.in-toto+json", b"att", None),
        ];
        let index = Index::parse(
            serde_json::json!({"schemaVersion": 2, "manifests": entries.to_vec()})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let platform = |arch: &str, variant: Option<&str>| Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        };
        let cases = [
            (platform("amd64", None), Some(b"amd64".as_slice())),
            (platform("arm", Some("v7")), Some(b"armv7")),
            (platform("arm", None), Some(b"armv6")),
            (platform("arm64", None), Some(b"arm64")),
            (platform("riscv64", None), None),
        ];
        for (p, want) in cases {
            let got = choose(&index, &p).map(|d| d.digest.clone());
            assert_eq!(got, want.map(Digest::of), "{p}");
        }
    }

    #[test]
    fn pulled_images_are_named_by_tag_else_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1".to_string()),
            (&*format!("r.local/app@{d}"), format!("r.local/app@{d}")),
            (
                &*format!("r.local/app:v2@{d}"),
                "r.local/app:v2".to_string(),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                image_name(&Reference::parse(input).unwrap()),
                want,
                "{input}"
            );
        }
    }
}
