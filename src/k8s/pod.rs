//! The `v1` Pod as serde types: `Pod`, `ObjectMeta`, `PodSpec`, `Container`, `EnvVar` (volumes
//! and environment sources are in [`super::volume`] and [`super::env`]).
//!
//! Owns the wire shape only. Every struct denies unknown fields, so a typo (`contianers`) is an
//! error naming the field. Fields nanolet acts on are typed; every other valid v1 field is
//! accepted as an opaque `serde_json::Value`, so a real manifest from the Kubernetes docs parses.
//! Every field is optional on the wire (`#[serde(default)]`): required-ness is checked by
//! [`super::validate`], which reports all problems with field paths, instead of serde stopping
//! at the first missing field.
//!
//! It must never do I/O or validation beyond the shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::env::{EnvFromSource, EnvVarSource};
use super::probe::{Lifecycle, Probe};
use super::resources::ResourceRequirements;
use super::security::{PodSecurityContext, SecurityContext};
use super::volume::{Volume, VolumeMount};

/// A `v1` Pod. `status` is accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Pod {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    #[serde(skip_serializing)]
    pub status: Option<Value>,
}

/// Standard object metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ObjectMeta {
    pub name: String,
    /// Defaults to `default`.
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
}

impl ObjectMeta {
    /// How kubelet names a pod in messages (its `format.Pod`): `name_namespace(uid)`.
    pub fn kubelet_ref(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }
}

impl Default for ObjectMeta {
    fn default() -> Self {
        ObjectMeta {
            name: String::new(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            uid: String::new(),
            generate_name: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            resource_version: None,
            creation_timestamp: None,
            deletion_timestamp: None,
            deletion_grace_period_seconds: None,
            generation: None,
            finalizers: None,
            owner_references: None,
            managed_fields: None,
            self_link: None,
        }
    }
}

/// The namespace of an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// kubelet's default `terminationGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// A container's own `restartPolicy`: only `Always`, which makes an init container a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerRestartPolicy {
    Always,
}

/// The `v1` PodSpec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodSpec {
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub restart_policy: RestartPolicy,
    /// Absent means [`DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS`]; see
    /// [`PodSpec::termination_grace_period_seconds`].
    #[serde(rename = "terminationGracePeriodSeconds")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    #[serde(rename = "hostNetwork")]
    pub host_network: bool,
    #[serde(rename = "hostPID")]
    pub host_pid: bool,
    #[serde(rename = "hostIPC")]
    pub host_ipc: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<bool>,

    // Accepted, not acted on (yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_containers: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_aliases: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_users: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preemption_policy: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_gates: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_claims: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling_gates: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Deprecated alias of `serviceAccountName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<Value>,
    #[serde(rename = "setHostnameAsFQDN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_hostname_as_fqdn: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

impl PodSpec {
    /// `serviceAccountName` (or its deprecated alias `serviceAccount`); empty when unset.
    pub fn service_account_name(&self) -> &str {
        [&self.service_account_name, &self.service_account]
            .into_iter()
            .find_map(|v| v.as_ref().and_then(Value::as_str))
            .unwrap_or("")
    }

    /// `terminationGracePeriodSeconds` with kubelet's default of 30 applied.
    pub fn termination_grace_period_seconds(&self) -> i64 {
        self.termination_grace_period
            .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
    }
}

/// The `v1` Container (also used for init containers).
///
/// The parts most containers leave unset (probes, lifecycle, resources, securityContext) are
/// boxed: inline they made up ~1.5 KiB of the 2.1 KiB of every container, set or not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// As written; see [`Container::image_pull_policy`] for the defaulted value.
    #[serde(rename = "imagePullPolicy")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Only on init containers: `Always` makes it a sidecar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<ContainerRestartPolicy>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// Typed and validated in [`super::probe`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Box<Probe>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Box<Probe>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Box<Probe>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Box<Lifecycle>>,

    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,

    // Accepted, not acted on (yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize_policy: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy_rules: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<SecurityContext>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_message_policy: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_devices: Option<Value>,
}

impl Container {
    /// `imagePullPolicy` with the API server's default: `Always` when the image has no tag or
    /// the tag `latest` (and no digest), else `IfNotPresent`.
    pub fn image_pull_policy(&self) -> PullPolicy {
        if let Some(policy) = self.pull_policy {
            return policy;
        }
        if image_tag(&self.image).is_none_or(|tag| tag == "latest") && !self.image.contains('@') {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        }
    }

    /// Whether this (init) container is a sidecar (`restartPolicy: Always`).
    pub fn is_sidecar(&self) -> bool {
        self.restart_policy == Some(ContainerRestartPolicy::Always)
    }
}

/// The tag of an image reference: after the last `:` of the last path segment, digest removed.
fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    last_segment.rsplit_once(':').map(|(_, tag)| tag)
}

/// An environment variable: a `value` (with `$(VAR)` references) or a `valueFrom` source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_policy_defaults_by_tag() {
        let cases: &[(&str, Option<PullPolicy>, PullPolicy)] = &[
            ("nginx", None, PullPolicy::Always),
            ("nginx:latest", None, PullPolicy::Always),
            ("nginx:1.27", None, PullPolicy::IfNotPresent),
            ("registry:5000/nginx", None, PullPolicy::Always),
            ("registry:5000/nginx:1.0", None, PullPolicy::IfNotPresent),
            ("nginx@sha256:abcd", None, PullPolicy::IfNotPresent),
            ("nginx:1.27", Some(PullPolicy::Never), PullPolicy::Never),
        ];
        for (image, set, want) in cases {
            let c = Container {
                image: image.to_string(),
                pull_policy: *set,
                ..Container::default()
            };
            assert_eq!(c.image_pull_policy(), *want, "{image}");
        }
    }
}
