//! The `v1` volume types: `Volume` and its sources, `VolumeMount`, `KeyToPath`, projections.
//!
//! Owns the wire shape only, as [`super::pod`] does: every struct denies unknown fields, every
//! field is optional on the wire, and [`super::validate`] checks them. A `Volume` carries one
//! `Option` per source, as the API does; [`Volume::source`] turns the one that is set into a
//! [`Source`] so code downstream matches on an enum. Sources nanolet cannot provide on an edge
//! node (persistentVolumeClaim, nfs, csi, ...) are accepted as opaque values and refused when a
//! container would mount them.
//!
//! It must never do I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default file mode of configMap, secret, downwardAPI and projected volumes (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// A pod's `spec.volumes[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(rename = "downwardAPI", skip_serializing_if = "Option::is_none")]
    pub downward_api: Option<DownwardApiVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolumeSource>,

    // Valid v1 sources that need a cluster (or a driver) nanolet does not have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csi: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nfs: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repo: Option<Value>,
}

/// The one source a volume names, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source<'a> {
    EmptyDir(&'a EmptyDirVolumeSource),
    HostPath(&'a HostPathVolumeSource),
    ConfigMap(&'a ConfigMapVolumeSource),
    Secret(&'a SecretVolumeSource),
    DownwardApi(&'a DownwardApiVolumeSource),
    Projected(&'a ProjectedVolumeSource),
    /// A source nanolet does not provide, by its field name (`persistentVolumeClaim`).
    Unsupported(&'static str),
}

impl Volume {
    /// Every source set on this volume (valid volumes have exactly one).
    pub fn sources(&self) -> Vec<Source<'_>> {
        let mut all = Vec::new();
        if let Some(s) = &self.empty_dir {
            all.push(Source::EmptyDir(s));
        }
        if let Some(s) = &self.host_path {
            all.push(Source::HostPath(s));
        }
        if let Some(s) = &self.config_map {
            all.push(Source::ConfigMap(s));
        }
        if let Some(s) = &self.secret {
            all.push(Source::Secret(s));
        }
        if let Some(s) = &self.downward_api {
            all.push(Source::DownwardApi(s));
        }
        if let Some(s) = &self.projected {
            all.push(Source::Projected(s));
        }
        for (name, v) in [
            ("persistentVolumeClaim", &self.persistent_volume_claim),
            ("ephemeral", &self.ephemeral),
            ("csi", &self.csi),
            ("image", &self.image),
            ("nfs", &self.nfs),
            ("iscsi", &self.iscsi),
            ("fc", &self.fc),
            ("gitRepo", &self.git_repo),
        ] {
            if v.is_some() {
                all.push(Source::Unsupported(name));
            }
        }
        all
    }

    /// The volume's source; `None` unless exactly one is set (validation guarantees it).
    pub fn source(&self) -> Option<Source<'_>> {
        match self.sources().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// `emptyDir`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EmptyDirVolumeSource {
    /// `""` (the node's disk) or `Memory` (tmpfs).
    pub medium: String,
    /// A quantity: a string (`64Mi`) or a number of bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Value>,
}

/// `hostPath.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPathType {
    /// No check (the API's `""`).
    #[default]
    #[serde(rename = "")]
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

/// `hostPath`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HostPathVolumeSource {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: HostPathType,
}

/// `configMap` (a volume).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigMapVolumeSource {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `secret` (a volume). Note the field `secretName`, not `name`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretVolumeSource {
    pub secret_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// One key of a ConfigMap or Secret projected to a relative path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

/// `fieldRef`: a field of the pod, by path (`metadata.labels['app']`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ObjectFieldSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub field_path: String,
}

/// `downwardAPI` (a volume).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DownwardApiVolumeSource {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiVolumeFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

/// One file of a downwardAPI volume or projection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DownwardApiVolumeFile {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    /// Resolved by the resources code (container limits and requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

/// `projected`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProjectedVolumeSource {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<VolumeProjection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

/// One source of a projected volume: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VolumeProjection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapProjection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretProjection>,
    #[serde(rename = "downwardAPI", skip_serializing_if = "Option::is_none")]
    pub downward_api: Option<DownwardApiProjection>,
    /// Needs an API server (the API-server issue provides tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_trust_bundle: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_certificate: Option<Value>,
}

/// `projected.sources[].serviceAccountToken`, read from its JSON (kept as a `Value` in the pod so
/// that odd fields never reject a pod): `audience` (empty: the API server's own),
/// `expirationSeconds` (default 3600, at least 600 as the API server validates), `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenProjection {
    pub audience: String,
    pub expiration_seconds: i64,
    pub path: String,
}

impl TokenProjection {
    pub fn of(v: &Value) -> TokenProjection {
        TokenProjection {
            audience: v
                .get("audience")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            expiration_seconds: v
                .get("expirationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(3600)
                .max(600),
            path: v
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }
    }
}

/// `projected.sources[].configMap`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigMapProjection {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `projected.sources[].secret`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretProjection {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `projected.sources[].downwardAPI`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DownwardApiProjection {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiVolumeFile>,
}

/// A container's `volumeMounts[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub_path_expr: String,
    /// Accepted; nanolet mounts everything `rprivate` (kubelet's `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_propagation: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recursive_read_only: Option<Value>,
}

/// A byte quantity as Kubernetes writes it (`64Mi`, `1G`, `1.5Gi`, `1048576`, or a JSON number);
/// `Ok(None)` for an absent one.
pub fn parse_size(value: Option<&Value>) -> Result<Option<u64>, String> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let text = match value {
        None => return Ok(None),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("{other}: expected a quantity such as 64Mi")),
    };
    let bad = || format!("{text:?}: expected a quantity such as 64Mi, 1G or 1048576");
    let (digits, multiplier) = SUFFIXES
        .iter()
        .find_map(|(s, m)| text.strip_suffix(s).map(|d| (d, *m)))
        .unwrap_or((text.as_str(), 1.0));
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1;
    let n: f64 = if well_formed {
        digits.parse().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    let bytes = (n * multiplier).ceil();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?}: too large"));
    }
    Ok(Some(bytes as u64))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_parse_like_quantities() {
        for (v, want) in [
            (json!("64Mi"), 64 << 20),
            (json!("1G"), 1_000_000_000),
            (json!("1.5Ki"), 1536),
            (json!(4096), 4096),
            (json!("0"), 0),
        ] {
            assert_eq!(parse_size(Some(&v)), Ok(Some(want)), "{v}");
        }
        for v in [
            json!("1e1000"),
            json!("-1"),
            json!("Mi"),
            json!("1.2.3"),
            json!(true),
        ] {
            assert!(parse_size(Some(&v)).is_err(), "{v}");
        }
        assert_eq!(parse_size(None), Ok(None));
    }

    #[test]
    fn exactly_one_source_is_the_source() {
        let mut v = Volume {
            name: "v".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        };
        assert!(matches!(v.source(), Some(Source::EmptyDir(_))));
        v.nfs = Some(json!({}));
        assert_eq!(v.source(), None);
        v.empty_dir = None;
        assert_eq!(v.source(), Some(Source::Unsupported("nfs")));
    }
}
