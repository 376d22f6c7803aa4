//! The `v1` environment sources: `EnvVarSource` (an env var's `valueFrom`) and `EnvFromSource`
//! (a container's `envFrom`).
//!
//! Owns the wire shape only, as [`super::pod`] does; [`super::validate`] checks it. It must
//! never do I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::volume::ObjectFieldSelector;

/// An env var's `valueFrom`: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EnvVarSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    /// Resolved by the resources code (container limits and requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    /// Alpha in Kubernetes 1.34 (EnvFiles); accepted and refused at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_key_ref: Option<Value>,
}

impl EnvVarSource {
    /// How many sources are set (valid values have exactly one).
    pub fn count(&self) -> usize {
        usize::from(self.field_ref.is_some())
            + usize::from(self.resource_field_ref.is_some())
            + usize::from(self.config_map_key_ref.is_some())
            + usize::from(self.secret_key_ref.is_some())
            + usize::from(self.file_key_ref.is_some())
    }
}

/// `configMapKeyRef` / `secretKeyRef`: one key of a named object in the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KeySelector {
    pub name: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `configMapRef` / `secretRef` of an `envFrom` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NameRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A container's `envFrom[]` entry: every key of a ConfigMap or Secret, with a prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EnvFromSource {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<NameRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<NameRef>,
}
