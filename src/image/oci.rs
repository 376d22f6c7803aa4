//! OCI and Docker image documents: index, manifest, config, descriptors, media types,
//! and the `docker save` `manifest.json`.
//!
//! Owns: the serde types and the checks that make a parsed document unambiguous (a
//! manifest must not carry `manifests`, an index must not carry `layers`/`config`, media
//! types must agree with the document kind). Pure: parses bytes, never reads files.

use super::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `org.opencontainers.image.ref.name`: the tag (or full name) of a manifest in a layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's full image name annotation (written by `ctr export` and `docker save` ≥ 25).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The largest JSON document (index, manifest, config) read into memory.
pub const MAX_DOCUMENT_SIZE: u64 = 4 << 20;

#[derive(Debug)]
pub enum Error {
    Json(serde_json::Error),
    /// The document mixes fields of another kind, or has an unexpected media type.
    Ambiguous(&'static str),
    MediaType {
        want: &'static str,
        got: String,
    },
    SchemaVersion(u32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "invalid json: {e}"),
            Error::Ambiguous(what) => write!(f, "ambiguous document: {what}"),
            Error::MediaType { want, got } => write!(f, "media type {got:?}: want {want}"),
            Error::SchemaVersion(v) => write!(f, "schemaVersion {v}: want 2"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Json(e) => Some(e),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn is_index(&self) -> bool {
        self.media_type == MEDIA_TYPE_OCI_INDEX || self.media_type == MEDIA_TYPE_DOCKER_LIST
    }
    pub fn is_manifest(&self) -> bool {
        self.media_type == MEDIA_TYPE_OCI_MANIFEST || self.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    // Present only to reject ambiguous documents.
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Index {
    pub fn parse(bytes: &[u8]) -> Result<Index, Error> {
        let index: Index = serde_json::from_slice(bytes).map_err(Error::Json)?;
        if index.schema_version != 2 {
            return Err(Error::SchemaVersion(index.schema_version));
        }
        if index.layers.is_some() || index.config.is_some() {
            return Err(Error::Ambiguous("index has layers or config"));
        }
        match index.media_type.as_deref() {
            None | Some(MEDIA_TYPE_OCI_INDEX) | Some(MEDIA_TYPE_DOCKER_LIST) => Ok(index),
            Some(other) => Err(Error::MediaType {
                want: MEDIA_TYPE_OCI_INDEX,
                got: other.into(),
            }),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing)]
    manifests: Option<serde_json::Value>,
}

impl Manifest {
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.to_string()),
            config,
            layers,
            manifests: None,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest, Error> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(Error::Json)?;
        if m.schema_version != 2 {
            return Err(Error::SchemaVersion(m.schema_version));
        }
        if m.manifests.is_some() {
            return Err(Error::Ambiguous("manifest has manifests"));
        }
        match m.media_type.as_deref() {
            None | Some(MEDIA_TYPE_OCI_MANIFEST) | Some(MEDIA_TYPE_DOCKER_MANIFEST) => {}
            Some(other) => {
                return Err(Error::MediaType {
                    want: MEDIA_TYPE_OCI_MANIFEST,
                    got: other.into(),
                });
            }
        }
        match m.config.media_type.as_str() {
            MEDIA_TYPE_OCI_CONFIG | MEDIA_TYPE_DOCKER_CONFIG => Ok(m),
            other => Err(Error::MediaType {
                want: MEDIA_TYPE_OCI_CONFIG,
                got: other.into(),
            }),
        }
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// `Err` names an unsupported media type (foreign layers, encrypted layers) as it was
    /// given.
    pub fn of_layer(media_type: &str) -> Result<Compression, String> {
        match media_type {
            MEDIA_TYPE_OCI_LAYER | "application/vnd.docker.image.rootfs.diff.tar" => {
                Ok(Compression::None)
            }
            MEDIA_TYPE_OCI_LAYER_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
            MEDIA_TYPE_OCI_LAYER_ZSTD => Ok(Compression::Zstd),
            other => Err(format!("layer media type {other:?}: not supported")),
        }
    }

    /// The OCI layer media type for a blob compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_OCI_LAYER,
            Compression::Gzip => MEDIA_TYPE_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }
}

/// The image configuration (only the fields nanolet uses).
#[derive(Debug, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<ExecConfig>,
    pub rootfs: RootFs,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, Error> {
        let c: Config = serde_json::from_slice(bytes).map_err(Error::Json)?;
        if c.rootfs.kind != "layers" {
            return Err(Error::Ambiguous("rootfs.type is not \"layers\""));
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// One entry of a `docker save` `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

pub fn parse_docker_archive_manifest(bytes: &[u8]) -> Result<Vec<DockerArchiveEntry>, Error> {
    serde_json::from_slice(bytes).map_err(Error::Json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn desc(mt: &str) -> String {
        format!(r#"{{"mediaType":"{mt}","digest":"{D}","size":0}}"#)
    }

    #[test]
    fn rejects_ambiguous_documents() {
        let cfg = desc(MEDIA_TYPE_OCI_CONFIG);
        let man = desc(MEDIA_TYPE_OCI_MANIFEST);
        let cases: Vec<(String, bool, &str)> = vec![
            (
                format!(r#"{{"schemaVersion":2,"config":{cfg},"layers":[]}}"#),
                true,
                "",
            ),
            (
                format!(r#"{{"schemaVersion":2,"config":{cfg},"layers":[],"manifests":[]}}"#),
                true,
                "ambiguous document: manifest has manifests",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_OCI_INDEX}","config":{cfg},"layers":[]}}"#
                ),
                true,
                "media type",
            ),
            (
                format!(r#"{{"schemaVersion":1,"config":{cfg},"layers":[]}}"#),
                true,
                "schemaVersion 1",
            ),
            (
                format!(r#"{{"schemaVersion":2,"manifests":[{man}]}}"#),
                false,
                "",
            ),
            (
                format!(r#"{{"schemaVersion":2,"manifests":[{man}],"layers":[]}}"#),
                false,
                "ambiguous document: index has layers or config",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_OCI_MANIFEST}","manifests":[]}}"#
                ),
                false,
                "media type",
            ),
        ];
        for (doc, is_manifest, want_err) in cases {
            let got = if is_manifest {
                Manifest::parse(doc.as_bytes()).map(|_| ())
            } else {
                Index::parse(doc.as_bytes()).map(|_| ())
            };
            match got {
                Ok(()) => assert!(want_err.is_empty(), "{doc}: want error {want_err}"),
                Err(e) => assert!(
                    !want_err.is_empty() && e.to_string().starts_with(want_err),
                    "{doc}: got {e}"
                ),
            }
        }
    }

    #[test]
    fn layer_compression_from_media_type() {
        let cases: &[(&str, Result<Compression, &str>)] = &[
            (MEDIA_TYPE_OCI_LAYER, Ok(Compression::None)),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                Ok(Compression::None),
            ),
            (MEDIA_TYPE_OCI_LAYER_GZIP, Ok(Compression::Gzip)),
            (MEDIA_TYPE_DOCKER_LAYER_GZIP, Ok(Compression::Gzip)),
            (MEDIA_TYPE_OCI_LAYER_ZSTD, Ok(Compression::Zstd)),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Err(
                    "layer media type \"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip\": not supported",
                ),
            ),
        ];
        for (media_type, want) in cases {
            let got = Compression::of_layer(media_type);
            assert_eq!(got, want.map_err(String::from), "{media_type}");
        }
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(Compression::of_layer(c.layer_media_type()), Ok(c));
        }
    }

    #[test]
    fn config_reads_exec_fields() {
        let c = Config::parse(
            br#"{"architecture":"arm64","os":"linux","config":{"Cmd":["sh"],"Env":null},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let exec = c.config.unwrap();
        assert_eq!(exec.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(exec.env, None);
    }
}
