//! The Node object and its status, as pure values: what to create, what to PATCH and when.
//!
//! ```text
//!  Machine + Identity ──► registration() (create body)   static_status() (capacity, nodeInfo…)
//!  Usage ──► observe() ──► Observed ──► Reporter::plan(now) ──► Some(patch) | None
//!                                          ▲ adopt(existing Node): transition times survive restarts
//! ```
//!
//! kubelet's rules: conditions Ready, MemoryPressure, DiskPressure and PIDPressure, each with a
//! `lastTransitionTime` that moves only when its status changes and a `lastHeartbeatTime` of the
//! report; a report when anything changed, else every `nodeStatusReportFrequency` (5 min).
//! A periodic report carries the conditions only (a few hundred bytes); a change of the static
//! part (an address, the runtime version) resends the whole status.
//!
//! Thresholds (kubelet's default hard eviction thresholds; nanolet evicts nothing yet, it only
//! reports): memory pressure when `MemAvailable` < 100 MiB, disk pressure when less than 10 %
//! of the data dir's filesystem is free, PID pressure when tasks exceed 90 % of `pid_max`.
//! Allocatable is capacity less those thresholds (memory − 100 MiB, storage × 0.9).

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::machine::{Machine, Usage};
use crate::api::time::{format_time, parse_time};

/// kubelet's default `nodeStatusReportFrequency`.
pub const REPORT_FREQUENCY: Duration = Duration::from_secs(5 * 60);
/// The memory kept back from allocatable (kubelet's `memory.available<100Mi`).
pub const MEMORY_RESERVE: u64 = 100 * 1024 * 1024;
/// The kubelet version nanolet reports: the API it implements, with nanolet's own version as
/// semver build metadata (so version-skew checks see v1.30).
pub const KUBELET_VERSION: &str = concat!("v1.30.0+nanolet.", env!("CARGO_PKG_VERSION"));

/// Who the node is, beyond the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `nodeName`.
    pub name: String,
    /// The machine's hostname (the `Hostname` address and `kubernetes.io/hostname` label).
    pub hostname: String,
    /// The address on the route to the API server.
    pub internal_ip: Option<IpAddr>,
    /// `runc://<version>`.
    pub runtime_version: String,
    /// `maxPods`.
    pub max_pods: u32,
    /// The kubelet port the API server would use for logs and exec.
    pub kubelet_port: u16,
}

/// The body of the Node create: name, labels, empty spec (the status follows as a PATCH).
pub fn registration(id: &Identity, machine: &Machine) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": id.name, "labels": labels(id, machine)},
        "spec": {},
    })
}

/// The labels kubelet sets on its Node.
pub fn labels(id: &Identity, machine: &Machine) -> Value {
    json!({
        "kubernetes.io/hostname": id.hostname,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": machine.architecture,
    })
}

/// A quantity in Ki, as kubelet writes memory and storage.
fn kibibytes(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// Everything in the status that does not depend on time: capacity, allocatable, addresses,
/// daemonEndpoints, nodeInfo.
pub fn static_status(id: &Identity, m: &Machine) -> Value {
    let mut addresses = Vec::new();
    if let Some(ip) = id.internal_ip {
        addresses.push(json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": id.hostname}));
    json!({
        "capacity": {
            "cpu": m.cpus.to_string(),
            "memory": kibibytes(m.memory_bytes),
            "ephemeral-storage": kibibytes(m.storage_bytes),
            "pods": id.max_pods.to_string(),
        },
        "allocatable": {
            "cpu": m.cpus.to_string(),
            "memory": kibibytes(m.memory_bytes.saturating_sub(MEMORY_RESERVE)),
            "ephemeral-storage": kibibytes(m.storage_bytes / 10 * 9),
            "pods": id.max_pods.to_string(),
        },
        "addresses": addresses,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": id.kubelet_port}},
        "nodeInfo": {
            "machineID": m.machine_id,
            "systemUUID": m.system_uuid,
            "bootID": m.boot_id,
            "kernelVersion": m.kernel_version,
            "osImage": m.os_image,
            "containerRuntimeVersion": id.runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": m.architecture,
        },
    })
}

/// The four node conditions, in the order kubelet reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionType {
    /// `MemoryPressure`.
    MemoryPressure,
    /// `DiskPressure`.
    DiskPressure,
    /// `PIDPressure`.
    PidPressure,
    /// `Ready`.
    Ready,
}

const TYPES: [ConditionType; 4] = [
    ConditionType::MemoryPressure,
    ConditionType::DiskPressure,
    ConditionType::PidPressure,
    ConditionType::Ready,
];

impl ConditionType {
    /// The condition's `type`.
    pub fn name(self) -> &'static str {
        match self {
            ConditionType::MemoryPressure => "MemoryPressure",
            ConditionType::DiskPressure => "DiskPressure",
            ConditionType::PidPressure => "PIDPressure",
            ConditionType::Ready => "Ready",
        }
    }

    /// (reason, message) for status True and False, as kubelet words them.
    fn wording(self, status: bool) -> (&'static str, &'static str) {
        match (self, status) {
            (ConditionType::MemoryPressure, false) => (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            (ConditionType::MemoryPressure, true) => (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (ConditionType::DiskPressure, false) => {
                ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
            }
            (ConditionType::DiskPressure, true) => {
                ("KubeletHasDiskPressure", "kubelet has disk pressure")
            }
            (ConditionType::PidPressure, false) => (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            (ConditionType::PidPressure, true) => (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (ConditionType::Ready, true) => ("KubeletReady", "kubelet is posting ready status"),
            (ConditionType::Ready, false) => ("KubeletNotReady", "container runtime is down"),
        }
    }
}

/// One reading of the node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether the container runtime works; the reason why not.
    pub runtime: Result<(), String>,
    /// MemoryPressure.
    pub memory_pressure: bool,
    /// DiskPressure.
    pub disk_pressure: bool,
    /// PIDPressure.
    pub pid_pressure: bool,
}

impl Observed {
    fn status(&self, t: ConditionType) -> bool {
        match t {
            ConditionType::MemoryPressure => self.memory_pressure,
            ConditionType::DiskPressure => self.disk_pressure,
            ConditionType::PidPressure => self.pid_pressure,
            ConditionType::Ready => self.runtime.is_ok(),
        }
    }
}

/// Applies the thresholds (see the module doc) to a usage reading.
pub fn observe(u: &Usage, runtime: Result<(), String>) -> Observed {
    Observed {
        runtime,
        memory_pressure: u.memory_available < MEMORY_RESERVE,
        disk_pressure: u.storage_total > 0 && u.storage_available < u.storage_total / 10,
        pid_pressure: u.pid_max > 0 && u.tasks > u.pid_max / 10 * 9,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ConditionState {
    status: bool,
    since: SystemTime,
}

/// What was last reported successfully.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    static_status: Value,
    conditions: Vec<Value>,
    at: Instant,
}

/// A status PATCH to send; hand it back to [`Reporter::confirm`] once the server took it.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The strategic-merge patch body (`{"status": {...}}`).
    pub patch: Value,
    static_status: Value,
    conditions: Vec<Value>,
}

/// Decides when the node status is reported, and what goes in it.
#[derive(Debug, Clone)]
pub struct Reporter {
    report_every: Duration,
    static_status: Value,
    conditions: [Option<ConditionState>; 4],
    last: Option<Sent>,
}

impl Reporter {
    /// A reporter that has reported nothing yet; it reports at least every `report_every`.
    pub fn new(static_status: Value, report_every: Duration) -> Reporter {
        Reporter {
            report_every,
            static_status,
            conditions: [None; 4],
            last: None,
        }
    }

    /// Takes over the conditions of a Node that already exists (after a restart, or a 409 on
    /// create), so that unchanged conditions keep their lastTransitionTime.
    pub fn adopt(&mut self, node: &Value) {
        let Some(conds) = node["status"]["conditions"].as_array() else {
            return;
        };
        for (i, t) in TYPES.iter().enumerate() {
            let found = conds.iter().find(|c| c["type"] == t.name());
            if let Some(c) = found {
                let since = c["lastTransitionTime"].as_str().and_then(parse_time);
                if let (Some(status), Some(since)) = (c["status"].as_str(), since) {
                    self.conditions[i] = Some(ConditionState {
                        status: status == "True",
                        since,
                    });
                }
            }
        }
    }

    /// Replaces the static part (an address or the runtime changed); the next plan sends it.
    pub fn set_static(&mut self, static_status: Value) {
        self.static_status = static_status;
    }

    /// Forget what was sent (the Node was re-created): the next plan sends everything.
    pub fn forget_sent(&mut self) {
        self.last = None;
    }

    /// The report due at `now` for `observed`, if one is due.
    pub fn plan(&mut self, observed: &Observed, wall: SystemTime, now: Instant) -> Option<Report> {
        for (i, t) in TYPES.iter().enumerate() {
            let status = observed.status(*t);
            match &mut self.conditions[i] {
                Some(c) if c.status == status => {}
                slot => {
                    *slot = Some(ConditionState {
                        status,
                        since: wall,
                    })
                }
            }
        }
        let conditions: Vec<Value> = TYPES
            .iter()
            .zip(self.conditions.iter())
            .filter_map(|(t, c)| c.map(|c| condition(*t, c, observed)))
            .collect();
        let static_changed = self
            .last
            .as_ref()
            .is_none_or(|l| l.static_status != self.static_status);
        let conditions_changed = self
            .last
            .as_ref()
            .is_none_or(|l| l.conditions != conditions);
        let due = self
            .last
            .as_ref()
            .is_none_or(|l| now.saturating_duration_since(l.at) >= self.report_every);
        if !static_changed && !conditions_changed && !due {
            return None;
        }
        let heartbeat = format_time(wall);
        let with_heartbeat: Vec<Value> = conditions
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c["lastHeartbeatTime"] = json!(heartbeat);
                c
            })
            .collect();
        let mut status = if static_changed {
            self.static_status.clone()
        } else {
            json!({})
        };
        status["conditions"] = json!(with_heartbeat);
        Some(Report {
            patch: json!({ "status": status }),
            static_status: self.static_status.clone(),
            conditions,
        })
    }

    /// The server accepted `report` at `now`.
    pub fn confirm(&mut self, report: Report, now: Instant) {
        self.last = Some(Sent {
            static_status: report.static_status,
            conditions: report.conditions,
            at: now,
        });
    }
}

fn condition(t: ConditionType, c: ConditionState, observed: &Observed) -> Value {
    let (reason, message) = t.wording(c.status);
    let message = match (&observed.runtime, t) {
        (Err(why), ConditionType::Ready) => format!("container runtime is down: {why}"),
        _ => message.to_string(),
    };
    json!({
        "type": t.name(),
        "status": if c.status { "True" } else { "False" },
        "lastTransitionTime": format_time(c.since),
        "reason": reason,
        "message": message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn identity() -> Identity {
        Identity {
            name: "edge-1".into(),
            hostname: "edge-1".into(),
            internal_ip: Some("192.0.2.10".parse().unwrap()),
            runtime_version: "runc://1.1.5".into(),
            max_pods: 110,
            kubelet_port: 10250,
        }
    }

    fn machine() -> Machine {
        Machine {
            cpus: 2,
            memory_bytes: 2_035_548 * 1024,
            storage_bytes: 10 * 1024 * 1024 * 1024,
            machine_id: "m".into(),
            system_uuid: "s".into(),
            boot_id: "b".into(),
            kernel_version: "6.1.0".into(),
            os_image: "Buildroot 2024.02".into(),
            architecture: "amd64",
        }
    }

    fn healthy() -> Observed {
        Observed {
            runtime: Ok(()),
            memory_pressure: false,
            disk_pressure: false,
            pid_pressure: false,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_830_565 + secs)
    }

    #[test]
    fn registration_and_static_status_match_the_transcript_shape() {
        let reg = registration(&identity(), &machine());
        assert_eq!(
            reg["metadata"]["labels"],
            json!({"kubernetes.io/hostname": "edge-1", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"})
        );
        let s = static_status(&identity(), &machine());
        assert_eq!(
            s["capacity"],
            json!({"cpu": "2", "memory": "2035548Ki", "ephemeral-storage": "10485760Ki", "pods": "110"})
        );
        assert_eq!(s["allocatable"]["memory"], "1933148Ki");
        assert_eq!(s["allocatable"]["ephemeral-storage"], "9437184Ki");
        assert_eq!(
            s["addresses"],
            json!([{"type": "InternalIP", "address": "192.0.2.10"}, {"type": "Hostname", "address": "edge-1"}])
        );
        assert_eq!(s["nodeInfo"]["containerRuntimeVersion"], "runc://1.1.5");
        assert!(
            s["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap()
                .starts_with("v1.30.0+nanolet.")
        );
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    }

    #[test]
    fn first_report_is_full_then_nothing_until_a_change_or_five_minutes() {
        let t0 = Instant::now();
        let mut r = Reporter::new(static_status(&identity(), &machine()), REPORT_FREQUENCY);
        let first = r.plan(&healthy(), at(0), t0).unwrap();
        assert!(first.patch["status"]["nodeInfo"].is_object());
        let conds = first.patch["status"]["conditions"].as_array().unwrap();
        let types: Vec<_> = conds.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        );
        assert_eq!(conds[3]["status"], "True");
        assert_eq!(conds[3]["reason"], "KubeletReady");
        assert_eq!(conds[3]["lastHeartbeatTime"], "2026-11-28T01:49:25Z");
        r.confirm(first, t0);
        for s in [10, 60, 299] {
            assert_eq!(
                r.plan(&healthy(), at(s), t0 + Duration::from_secs(s)),
                None,
                "{s}s"
            );
        }
        // Five minutes: a heartbeat with the conditions only; transition times unchanged.
        let beat = r
            .plan(&healthy(), at(300), t0 + Duration::from_secs(300))
            .unwrap();
        assert!(beat.patch["status"]["nodeInfo"].is_null());
        let c = &beat.patch["status"]["conditions"][3];
        assert_eq!(
            (
                c["lastTransitionTime"].as_str(),
                c["lastHeartbeatTime"].as_str()
            ),
            (Some("2026-11-28T01:49:25Z"), Some("2026-11-28T01:54:25Z"))
        );
    }

    #[test]
    fn a_condition_change_is_reported_at_once_with_its_transition_time() {
        let t0 = Instant::now();
        let mut r = Reporter::new(static_status(&identity(), &machine()), REPORT_FREQUENCY);
        let first = r.plan(&healthy(), at(0), t0).unwrap();
        r.confirm(first, t0);
        let pressed = Observed {
            disk_pressure: true,
            ..healthy()
        };
        let report = r
            .plan(&pressed, at(20), t0 + Duration::from_secs(20))
            .unwrap();
        let disk = &report.patch["status"]["conditions"][1];
        assert_eq!(
            (disk["status"].as_str(), disk["reason"].as_str()),
            (Some("True"), Some("KubeletHasDiskPressure"))
        );
        assert_eq!(disk["lastTransitionTime"], "2026-11-28T01:49:45Z");
        // Not confirmed (the PATCH failed): the next plan sends it again, same transition time.
        let again = r
            .plan(&pressed, at(30), t0 + Duration::from_secs(30))
            .unwrap();
        assert_eq!(
            again.patch["status"]["conditions"][1]["lastTransitionTime"],
            "2026-11-28T01:49:45Z"
        );
        r.confirm(again, t0 + Duration::from_secs(30));
        assert_eq!(r.plan(&pressed, at(40), t0 + Duration::from_secs(40)), None);
        let down = Observed {
            runtime: Err("runc: not found".into()),
            ..pressed
        };
        let report = r.plan(&down, at(50), t0 + Duration::from_secs(50)).unwrap();
        let ready = &report.patch["status"]["conditions"][3];
        assert_eq!(ready["status"], "False");
        assert_eq!(
            ready["message"],
            "container runtime is down: runc: not found"
        );
    }

    #[test]
    fn adopted_transition_times_survive_a_restart() {
        let mut r = Reporter::new(static_status(&identity(), &machine()), REPORT_FREQUENCY);
        r.adopt(&json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-01T00:00:00Z"},
            {"type": "DiskPressure", "status": "True", "lastTransitionTime": "2026-11-01T00:00:00Z"},
        ]}}));
        let report = r.plan(&healthy(), at(0), Instant::now()).unwrap();
        let conds = &report.patch["status"]["conditions"];
        assert_eq!(
            conds[3]["lastTransitionTime"], "2026-11-01T00:00:00Z",
            "Ready unchanged"
        );
        assert_eq!(
            conds[1]["lastTransitionTime"], "2026-11-28T01:49:25Z",
            "DiskPressure changed"
        );
    }

    #[test]
    fn a_new_address_resends_the_static_part() {
        let t0 = Instant::now();
        let mut r = Reporter::new(static_status(&identity(), &machine()), REPORT_FREQUENCY);
        let first = r.plan(&healthy(), at(0), t0).unwrap();
        r.confirm(first, t0);
        let mut id = identity();
        id.internal_ip = Some("192.0.2.11".parse().unwrap());
        r.set_static(static_status(&id, &machine()));
        let report = r
            .plan(&healthy(), at(10), t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            report.patch["status"]["addresses"][0]["address"],
            "192.0.2.11"
        );
    }

    #[test]
    fn thresholds() {
        let u = Usage {
            memory_available: 99 * 1024 * 1024,
            storage_available: 9,
            storage_total: 100,
            tasks: 901,
            pid_max: 1000,
        };
        let o = observe(&u, Ok(()));
        assert!(o.memory_pressure && o.disk_pressure && o.pid_pressure);
        let u = Usage {
            memory_available: 1 << 30,
            storage_available: 50,
            storage_total: 100,
            tasks: 100,
            pid_max: 1000,
        };
        let o = observe(&u, Ok(()));
        assert!(!o.memory_pressure && !o.disk_pressure && !o.pid_pressure);
    }
}
