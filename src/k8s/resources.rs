//! `ResourceRequirements`: a container's `requests` and `limits` as written.
//!
//! Owns the wire shape only; the quantities stay text until [`crate::pod::resources`] parses them,
//! so a bad one is reported on its container. Never does: I/O or decisions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::quantity::Quantity;

/// `resources` of a container: `requests` and `limits` by resource name (`cpu`, `memory`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceRequirements {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    /// Dynamic resource allocation: accepted, not acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Value>,
}

/// The resource names nanolet acts on.
pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
