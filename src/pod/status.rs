//! Pod and container status, shaped like Kubernetes' `PodStatus` so that the API server issue can
//! send it as it is; the agent publishes it as the status snapshot that `nanolet ps` reads.
//!
//! Times are Unix seconds (Kubernetes status times have one-second resolution).

use serde::{Deserialize, Serialize};

/// A container's state: exactly one of waiting, running, terminated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    Waiting {
        reason: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
    },
    Running {
        #[serde(rename = "startedAt")]
        started_at: i64,
    },
    Terminated(Terminated),
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    pub finished_at: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
}

/// One container's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<Terminated>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
}

impl ContainerStatus {
    /// A container that has not been started yet.
    pub fn new(name: &str, image: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            container_id: String::new(),
            state: ContainerState::Waiting {
                reason: "ContainerCreating".to_string(),
                message: String::new(),
            },
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }

    /// The termination that matters: the current state's, else the last one.
    pub fn last_termination(&self) -> Option<&Terminated> {
        match &self.state {
            ContainerState::Terminated(t) => Some(t),
            _ => self.last_state.as_ref(),
        }
    }
}

/// Pod phase, as Kubernetes defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// A pod condition (`Initialized`, `ContainersReady`, `Ready`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub last_transition_time: i64,
}

/// One pod's status, plus what `ps` needs to name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Where the pod came from, e.g. the manifest file.
    pub source: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    pub conditions: Vec<Condition>,
    pub init_container_statuses: Vec<ContainerStatus>,
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub host_network: bool,
    /// Set while the pod is being stopped.
    #[serde(default)]
    pub terminating: bool,
    /// `Guaranteed`, `Burstable` or `BestEffort`, as kubelet computes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub qos_class: String,
    /// `status.podIP`: the pod's first address (the node's for hostNetwork pods).
    #[serde(default, rename = "podIP", skip_serializing_if = "String::is_empty")]
    pub pod_ip: String,
    /// `status.podIPs`.
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    /// `status.hostIP`: the node's address.
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// One entry of `status.podIPs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    pub ip: String,
}

impl PodStatus {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What `kubectl get pods` shows in STATUS: a container's waiting or terminated reason when
    /// there is one to show, else the phase.
    pub fn display_status(&self) -> String {
        if self.terminating {
            return "Terminating".to_string();
        }
        if !self.reason.is_empty() {
            return self.reason.clone();
        }
        for (i, c) in self.init_container_statuses.iter().enumerate() {
            match &c.state {
                ContainerState::Terminated(t) if t.exit_code == 0 => continue,
                ContainerState::Terminated(t) => return format!("Init:{}", t.reason),
                ContainerState::Waiting { reason, .. }
                    if reason != "PodInitializing" && reason != "ContainerCreating" =>
                {
                    return format!("Init:{reason}");
                }
                _ => return format!("Init:{}/{}", i, self.init_container_statuses.len()),
            }
        }
        let mut shown = None;
        for c in &self.container_statuses {
            match &c.state {
                ContainerState::Waiting { reason, .. } => shown = Some(reason.clone()),
                ContainerState::Terminated(t) if shown.is_none() => shown = Some(t.reason.clone()),
                _ => {}
            }
        }
        match shown {
            Some(reason) if !self.phase.is_terminal() || reason != "Completed" => reason,
            _ => format!("{:?}", self.phase),
        }
    }

    /// `ready/total` containers.
    pub fn ready_count(&self) -> (usize, usize) {
        let ready = self.container_statuses.iter().filter(|c| c.ready).count();
        (ready, self.container_statuses.len())
    }

    pub fn restarts(&self) -> u32 {
        self.container_statuses
            .iter()
            .map(|c| c.restart_count)
            .sum()
    }
}

/// A manifest (or other source object) that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceError {
    pub source: String,
    pub error: String,
}

/// Everything `nanolet ps` shows: written by the agent to `<runDir>/status.json` on each change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub agent_pid: i32,
    pub node_name: String,
    pub updated_at: i64,
    pub pods: Vec<PodStatus>,
    pub source_errors: Vec<SourceError>,
}
