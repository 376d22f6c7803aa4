//! The OCI runtime `config.json` that runc runs a container from.
//!
//! Owns: the translation of a [`ContainerConfig`] (what the pod layer wants) into an OCI runtime
//! spec (1.0.2, what runc 1.1 reads), with the defaults containerd's CRI plugin gives every
//! container: `oci/spec.go` `populateDefaultUnixSpec` (capabilities, `RLIMIT_NOFILE` 1024,
//! masked and read-only paths, deny-all device cgroup), the CRI mount set (containerd's default
//! mounts without `/run`, plus a read-only `/sys/fs/cgroup`) and the allowed char devices of
//! `WithDefaultUnixDevices` (without `/dev/console` and `/dev/net/tun`, which a pod does not get
//! by default).
//! Never does: I/O, or decide anything Kubernetes-shaped (which namespaces a container shares,
//! its cgroup path): the caller says. Facts about the host that make runc fail are passed in as
//! [`HostLimits`]; where a requested value cannot work on this host it is clamped and a warning is
//! returned for the caller to log, rather than letting `runc create` fail later with a worse
//! message.
//!
//! The JSON is returned as a `serde_json::Value`; without serde_json's `preserve_order` its keys
//! are sorted, which keeps golden files and `config.json` byte-stable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sys::cgroup::CgroupValues;

/// The OCI runtime spec version written to `ociVersion` (what runc 1.1 reports).
pub const OCI_VERSION: &str = "1.0.2";

/// containerd's default capability set (bounding, effective and permitted).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every Linux capability, in bit order (`linux/capability.h`, up to `CAP_LAST_CAP` 40).
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The `RLIMIT_NOFILE` soft and hard limit containerd gives a container.
pub const DEFAULT_NOFILE: u64 = 1024;

/// Paths runc hides (bind-mounts `/dev/null` or an empty tmpfs over), as containerd sets them.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths runc remounts read-only, as containerd sets them.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A Linux namespace kind, named as in `linux.namespaces[].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    Pid,
    Network,
    Ipc,
    Uts,
    Mount,
    Cgroup,
}

impl NamespaceKind {
    /// The OCI name of the namespace type.
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceKind::Pid => "pid",
            NamespaceKind::Network => "network",
            NamespaceKind::Ipc => "ipc",
            NamespaceKind::Uts => "uts",
            NamespaceKind::Mount => "mount",
            NamespaceKind::Cgroup => "cgroup",
        }
    }
}

/// A namespace the container gets: a new one (`path: None`) or an existing one to join.
/// A kind absent from [`ContainerConfig::namespaces`] means the host's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub kind: NamespaceKind,
    pub path: Option<PathBuf>,
}

/// An extra mount (volumes, `/etc/hosts`, `/dev/termination-log`, …), after the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub source: PathBuf,
    /// The OCI mount type, usually `"bind"`.
    pub kind: String,
    pub options: Vec<String>,
}

/// The numeric identity the container process runs as (see [`super::user::resolve_user`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// What the pod layer asks of one container, in OCI terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Empty means `/`.
    pub cwd: String,
    pub user: User,
    /// Set for a container with its own UTS namespace (the pod sandbox). A container that joins
    /// the pod's UTS namespace inherits its hostname and should pass `None`, as CRI does;
    /// without any UTS namespace entry the hostname is dropped with a warning (runc refuses it).
    pub hostname: Option<String>,
    pub namespaces: Vec<Namespace>,
    /// Extra mounts, placed after the default ones (so they may cover them).
    pub mounts: Vec<Mount>,
    pub cgroups_path: String,
    pub annotations: BTreeMap<String, String>,
    pub oom_score_adj: Option<i32>,
    pub readonly_rootfs: bool,
    pub no_new_privileges: bool,
    /// Absolute, or relative to the bundle directory.
    pub rootfs: PathBuf,
    /// The container cgroup's limits (`linux.resources`: runc writes v1 or v2 files).
    pub resources: CgroupValues,
    /// The `CAP_*` names of the bounding, effective and permitted sets; `None`: containerd's
    /// [`DEFAULT_CAPABILITIES`].
    pub capabilities: Option<Vec<String>>,
    /// Every device allowed, `/sys` and `/sys/fs/cgroup` read-write, `/proc` unmasked.
    pub privileged: bool,
    /// No masked or read-only `/proc` paths.
    pub unmasked_proc: bool,
    /// `linux.seccomp` as OCI JSON; `None`: unconfined.
    pub seccomp: Option<serde_json::Value>,
    /// `linux.sysctl`: namespaced sysctls runc sets in the container's namespaces.
    pub sysctls: BTreeMap<String, String>,
}

/// Facts about the host that bound what runc can apply; the caller reads them from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Whether nanolet may set a negative `oom_score_adj` (needs `CAP_SYS_RESOURCE`).
    pub can_lower_oom_score_adj: bool,
    /// nanolet's effective capabilities (bit n: `ALL_CAPABILITIES[n]`): runc cannot give a
    /// container one nanolet lacks (here root has no `CAP_SYS_RESOURCE`). Like containerd's
    /// privileged containers, which get the capabilities containerd has, the rest are dropped.
    pub capabilities: u64,
    /// nanolet's own `RLIMIT_NOFILE` hard limit: without `CAP_SYS_RESOURCE` runc cannot raise a
    /// container's above it.
    pub nofile_hard: u64,
}

// Typed mirror of the OCI spec subset we emit. Field names follow the spec via `rename_all`.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    oci_version: &'static str,
    process: Process,
    root: Root,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    mounts: Vec<SpecMount>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    linux: Linux,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    terminal: bool,
    user: SpecUser,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    capabilities: Capabilities,
    rlimits: Vec<Rlimit>,
    no_new_privileges: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    oom_score_adj: Option<i32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecUser {
    uid: u32,
    gid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    additional_gids: Vec<u32>,
}

#[derive(Serialize)]
struct Capabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    permitted: Vec<String>,
}

#[derive(Serialize)]
struct Rlimit {
    #[serde(rename = "type")]
    kind: &'static str,
    hard: u64,
    soft: u64,
}

#[derive(Serialize)]
struct Root {
    path: String,
    readonly: bool,
}

#[derive(Serialize)]
struct SpecMount {
    destination: String,
    #[serde(rename = "type")]
    kind: String,
    source: String,
    options: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    resources: Resources,
    #[serde(skip_serializing_if = "String::is_empty")]
    cgroups_path: String,
    namespaces: Vec<SpecNamespace>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    masked_paths: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    readonly_paths: Vec<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sysctl: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seccomp: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Resources {
    devices: Vec<DeviceRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pids: Option<Pids>,
}

#[derive(Serialize)]
struct Cpu {
    #[serde(skip_serializing_if = "Option::is_none")]
    shares: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period: Option<u64>,
}

#[derive(Serialize)]
struct Memory {
    limit: i64,
}

#[derive(Serialize)]
struct Pids {
    limit: i64,
}

fn resources(v: &CgroupValues, privileged: bool) -> Resources {
    let cpu = (v.cpu_shares.is_some() || v.cpu_quota.is_some()).then_some(Cpu {
        shares: v.cpu_shares,
        quota: v.cpu_quota,
        period: v.cpu_period,
    });
    Resources {
        devices: if privileged {
            vec![DeviceRule {
                allow: true,
                kind: None,
                major: None,
                minor: None,
                access: "rwm",
            }]
        } else {
            device_rules()
        },
        cpu,
        memory: v.memory_limit.map(|limit| Memory { limit }),
        pids: v.pids_limit.map(|limit| Pids { limit }),
    }
}

#[derive(Serialize)]
struct DeviceRule {
    allow: bool,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    major: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    minor: Option<i64>,
    access: &'static str,
}

#[derive(Serialize)]
struct SpecNamespace {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

fn default_mounts(privileged: bool) -> Vec<SpecMount> {
    let sys = if privileged { "rw" } else { "ro" };
    let m = |destination: &str, kind: &str, source: &str, options: &[&str]| SpecMount {
        destination: destination.to_string(),
        kind: kind.to_string(),
        source: source.to_string(),
        options: options.iter().map(|o| o.to_string()).collect(),
    };
    vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys],
        ),
    ]
}

/// Deny every device, then allow the char devices every container needs.
fn device_rules() -> Vec<DeviceRule> {
    let allow = |major: i64, minor: Option<i64>| DeviceRule {
        allow: true,
        kind: Some("c"),
        major: Some(major),
        minor,
        access: "rwm",
    };
    vec![
        DeviceRule {
            allow: false,
            kind: None,
            major: None,
            minor: None,
            access: "rwm",
        },
        allow(1, Some(3)), // /dev/null
        allow(1, Some(8)), // /dev/random
        allow(1, Some(7)), // /dev/full
        allow(5, Some(0)), // /dev/tty
        allow(1, Some(5)), // /dev/zero
        allow(1, Some(9)), // /dev/urandom
        allow(136, None),  // /dev/pts/*
        allow(5, Some(2)), // /dev/ptmx
    ]
}

/// A path as JSON text; a path that is not UTF-8 cannot be written to `config.json` faithfully.
fn path_text(what: &str, p: &Path, warnings: &mut Vec<String>) -> String {
    match p.to_str() {
        Some(s) => s.to_string(),
        None => {
            let lossy = p.to_string_lossy().into_owned();
            warnings.push(format!(
                "{what} {lossy:?}: path is not valid UTF-8; written lossily"
            ));
            lossy
        }
    }
}

/// Builds runc's `config.json` for `c`, clamping what `host` cannot grant. Returns the spec and
/// the warnings (one per clamped or dropped value) for the caller to log.
pub fn runtime_spec(c: &ContainerConfig, host: &HostLimits) -> (serde_json::Value, Vec<String>) {
    let mut warnings = Vec::new();

    let nofile = if host.nofile_hard < DEFAULT_NOFILE {
        warnings.push(format!(
            "rlimit RLIMIT_NOFILE: {DEFAULT_NOFILE} is above the host's hard limit {}: clamped to it",
            host.nofile_hard
        ));
        host.nofile_hard
    } else {
        DEFAULT_NOFILE
    };

    let oom_score_adj = match c.oom_score_adj {
        Some(adj) if adj < 0 && !host.can_lower_oom_score_adj => {
            warnings.push(format!(
                "oomScoreAdj {adj}: lowering the OOM score needs CAP_SYS_RESOURCE: clamped to 0"
            ));
            Some(0)
        }
        other => other,
    };

    if c.args.is_empty() {
        warnings.push("process.args: empty: runc will refuse to create the container".to_string());
    }

    let has_uts_namespace = c.namespaces.iter().any(|n| n.kind == NamespaceKind::Uts);
    let hostname = match &c.hostname {
        Some(h) if !has_uts_namespace => {
            warnings.push(format!(
                "hostname {h:?}: the container shares the host's UTS namespace: not set"
            ));
            None
        }
        other => other.clone(),
    };

    let mut mounts = default_mounts(c.privileged);
    for m in &c.mounts {
        let source = path_text(
            &format!("mount {}: source", m.destination),
            &m.source,
            &mut warnings,
        );
        mounts.push(SpecMount {
            destination: m.destination.clone(),
            kind: m.kind.clone(),
            source,
            options: m.options.clone(),
        });
    }

    let mut namespaces = Vec::with_capacity(c.namespaces.len());
    for n in &c.namespaces {
        let path = n.path.as_deref().map(|p| {
            path_text(
                &format!("namespace {}: path", n.kind.as_str()),
                p,
                &mut warnings,
            )
        });
        namespaces.push(SpecNamespace {
            kind: n.kind.as_str(),
            path,
        });
    }

    let mut caps = c
        .capabilities
        .clone()
        .unwrap_or_else(|| DEFAULT_CAPABILITIES.map(String::from).to_vec());
    let host_has = |cap: &String| {
        ALL_CAPABILITIES
            .iter()
            .position(|c| c == cap)
            .is_some_and(|bit| host.capabilities & (1 << bit) != 0)
    };
    let missing: Vec<String> = caps.iter().filter(|c| !host_has(c)).cloned().collect();
    if !missing.is_empty() {
        caps.retain(host_has);
        // A privileged container asks for everything; only a named capability is news.
        if !c.privileged {
            warnings.push(format!(
                "capabilities {}: nanolet itself lacks them: dropped",
                missing.join(", ")
            ));
        }
    }
    let unmasked = c.privileged || c.unmasked_proc;
    let spec = Spec {
        oci_version: OCI_VERSION,
        process: Process {
            terminal: false,
            user: SpecUser {
                uid: c.user.uid,
                gid: c.user.gid,
                additional_gids: c.user.additional_gids.clone(),
            },
            args: c.args.clone(),
            env: c.env.clone(),
            cwd: if c.cwd.is_empty() {
                "/".to_string()
            } else {
                c.cwd.clone()
            },
            capabilities: Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
            },
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE",
                hard: nofile,
                soft: nofile,
            }],
            no_new_privileges: c.no_new_privileges,
            oom_score_adj,
        },
        root: Root {
            path: path_text("root", &c.rootfs, &mut warnings),
            readonly: c.readonly_rootfs,
        },
        hostname,
        mounts,
        annotations: c.annotations.clone(),
        linux: Linux {
            resources: resources(&c.resources, c.privileged),
            cgroups_path: c.cgroups_path.clone(),
            namespaces,
            masked_paths: if unmasked {
                vec![]
            } else {
                MASKED_PATHS.to_vec()
            },
            readonly_paths: if unmasked {
                vec![]
            } else {
                READONLY_PATHS.to_vec()
            },
            sysctl: c.sysctls.clone(),
            seccomp: c.seccomp.clone(),
        },
    };
    (to_value(&spec), warnings)
}

/// Invariant: `Spec` holds only strings, numbers, booleans, sequences, options and maps with
/// string keys, all of which serde_json serializes without error.
#[allow(clippy::expect_used)]
fn to_value(spec: &Spec) -> serde_json::Value {
    serde_json::to_value(spec).expect("Spec serializes: string keys and plain values only")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::Value;

    const HOST: HostLimits = HostLimits {
        can_lower_oom_score_adj: true,
        capabilities: u64::MAX,
        nofile_hard: 1 << 20,
    };

    fn minimal() -> ContainerConfig {
        ContainerConfig {
            args: vec!["/bin/sh".into(), "-c".into(), "echo hello".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            user: User::default(),
            hostname: Some("web".into()),
            namespaces: [
                NamespaceKind::Pid,
                NamespaceKind::Ipc,
                NamespaceKind::Uts,
                NamespaceKind::Mount,
                NamespaceKind::Network,
            ]
            .into_iter()
            .map(|kind| Namespace { kind, path: None })
            .collect(),
            mounts: vec![],
            cgroups_path: "/nanolet/pod1234/app".into(),
            annotations: BTreeMap::new(),
            oom_score_adj: None,
            readonly_rootfs: false,
            no_new_privileges: false,
            rootfs: "rootfs".into(),
            ..ContainerConfig::default()
        }
    }

    /// A burstable container with limits, dropped and added capabilities, the default seccomp
    /// profile and a namespaced sysctl.
    fn limited_and_confined() -> ContainerConfig {
        let caps = vec![
            "CAP_NET_BIND_SERVICE".to_string(),
            "CAP_NET_ADMIN".to_string(),
        ];
        ContainerConfig {
            resources: CgroupValues {
                cpu_shares: Some(256),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                memory_limit: Some(128 << 20),
                pids_limit: None,
            },
            seccomp: Some(crate::runtime::seccomp::runtime_default(&caps)),
            capabilities: Some(caps),
            sysctls: BTreeMap::from([("net.ipv4.tcp_syncookies".into(), "0".into())]),
            oom_score_adj: Some(750),
            no_new_privileges: true,
            ..minimal()
        }
    }

    fn privileged() -> ContainerConfig {
        ContainerConfig {
            capabilities: Some(vec!["CAP_SYS_ADMIN".into()]),
            privileged: true,
            ..minimal()
        }
    }

    /// A container joining its pod sandbox's network, IPC and UTS namespaces, with the host's PID
    /// namespace (`hostPID: true`).
    fn joined_namespaces() -> ContainerConfig {
        let join = |kind, path: &str| Namespace {
            kind,
            path: Some(path.into()),
        };
        ContainerConfig {
            user: User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29],
            },
            namespaces: vec![
                join(NamespaceKind::Network, "/run/nanolet/netns/pod1234"),
                join(NamespaceKind::Ipc, "/proc/4242/ns/ipc"),
                join(NamespaceKind::Uts, "/proc/4242/ns/uts"),
                Namespace {
                    kind: NamespaceKind::Mount,
                    path: None,
                },
            ],
            annotations: BTreeMap::from([
                ("io.kubernetes.container.name".into(), "app".into()),
                ("io.kubernetes.pod.name".into(), "web".into()),
            ]),
            hostname: None,
            oom_score_adj: Some(1000),
            ..minimal()
        }
    }

    fn readonly_with_volumes() -> ContainerConfig {
        let bind = |destination: &str, source: &str, options: &[&str]| Mount {
            destination: destination.into(),
            source: source.into(),
            kind: "bind".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        ContainerConfig {
            cwd: "/srv".into(),
            mounts: vec![
                bind(
                    "/etc/hosts",
                    "/var/lib/nanolet/pods/pod1234/etc-hosts",
                    &["rbind", "rprivate", "rw"],
                ),
                bind(
                    "/data",
                    "/var/lib/nanolet/pods/pod1234/volumes/data",
                    &["rbind", "rprivate", "ro"],
                ),
            ],
            oom_score_adj: Some(-997),
            readonly_rootfs: true,
            no_new_privileges: true,
            rootfs: "/var/lib/nanolet/containers/abc/rootfs".into(),
            ..minimal()
        }
    }

    fn golden_cases() -> Vec<(&'static str, ContainerConfig, HostLimits)> {
        let constrained = HostLimits {
            can_lower_oom_score_adj: false,
            capabilities: u64::MAX,
            nofile_hard: 512,
        };
        vec![
            ("minimal", minimal(), HOST),
            ("joined-namespaces-host-pid", joined_namespaces(), HOST),
            (
                "readonly-rootfs-volumes-clamped",
                readonly_with_volumes(),
                constrained,
            ),
            ("limited-and-confined", limited_and_confined(), HOST),
            ("privileged", privileged(), HOST),
        ]
    }

    /// Compares against `tests/golden/runtime-spec/<name>.json`;
    /// `NANOLET_UPDATE_GOLDEN=1 cargo test runtime::spec` rewrites them.
    #[test]
    fn matches_golden_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/runtime-spec");
        let update = std::env::var_os("NANOLET_UPDATE_GOLDEN").is_some_and(|v| v == "1");
        for (name, config, host) in golden_cases() {
            let (spec, _) = runtime_spec(&config, &host);
            let got = serde_json::to_string_pretty(&spec).unwrap() + "\n";
            let path = dir.join(format!("{name}.json"));
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run with NANOLET_UPDATE_GOLDEN=1 to create)",
                    path.display()
                )
            });
            assert_eq!(got, want, "{name}: differs from {}", path.display());
        }
    }

    #[test]
    fn has_the_fields_runc_requires() {
        for (name, config, host) in golden_cases() {
            let (spec, _) = runtime_spec(&config, &host);
            assert_eq!(spec["ociVersion"], OCI_VERSION, "{name}");
            let args = spec["process"]["args"].as_array().unwrap();
            assert!(!args.is_empty(), "{name}: process.args is empty");
            assert!(
                spec["process"]["cwd"].as_str().unwrap().starts_with('/'),
                "{name}"
            );
            assert!(!spec["root"]["path"].as_str().unwrap().is_empty(), "{name}");
            assert!(spec["process"]["user"]["uid"].is_u64(), "{name}");
        }
    }

    #[test]
    fn clamps_what_the_host_cannot_grant() {
        type Case = (Option<i32>, bool, u64, Value, u64, usize);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // oom adj, may lower, host nofile hard, want adj, want nofile, want warnings
            (Some(-997), false, 1 << 20, Value::from(0), 1024, 1),
            (Some(-997), true, 1 << 20, Value::from(-997), 1024, 0),
            (Some(1000), false, 1 << 20, Value::from(1000), 1024, 0),
            (None, false, 1 << 20, Value::Null, 1024, 0),
            (Some(0), false, 1024, Value::from(0), 1024, 0),
            (Some(0), false, 100, Value::from(0), 100, 1),
            (Some(-1), false, 100, Value::from(0), 100, 2),
        ];
        for (adj, may_lower, hard, want_adj, want_nofile, want_warnings) in cases {
            let config = ContainerConfig {
                oom_score_adj: *adj,
                ..minimal()
            };
            let host = HostLimits {
                can_lower_oom_score_adj: *may_lower,
                capabilities: u64::MAX,
                nofile_hard: *hard,
            };
            let (spec, warnings) = runtime_spec(&config, &host);
            let p = &spec["process"];
            assert_eq!(&p["oomScoreAdj"], want_adj, "adj {adj:?} host {host:?}");
            assert_eq!(p["rlimits"][0]["type"], "RLIMIT_NOFILE");
            assert_eq!(p["rlimits"][0]["hard"], *want_nofile, "host {host:?}");
            assert_eq!(p["rlimits"][0]["soft"], *want_nofile, "host {host:?}");
            assert_eq!(
                warnings.len(),
                *want_warnings,
                "adj {adj:?} host {host:?}: {warnings:?}"
            );
        }
    }

    #[test]
    fn capabilities_nanolet_lacks_are_dropped() {
        // Everything but CAP_SYS_RESOURCE (24), as root on this development machine.
        let host = HostLimits {
            capabilities: !(1 << 24),
            ..HOST
        };
        let wanted = vec!["CAP_CHOWN".to_string(), "CAP_SYS_RESOURCE".to_string()];
        let config = ContainerConfig {
            capabilities: Some(wanted.clone()),
            ..minimal()
        };
        let (spec, warnings) = runtime_spec(&config, &host);
        assert_eq!(
            spec["process"]["capabilities"]["effective"],
            Value::from(vec!["CAP_CHOWN"])
        );
        assert_eq!(
            spec["process"]["capabilities"]["bounding"],
            Value::from(vec!["CAP_CHOWN"])
        );
        assert_eq!(
            warnings,
            ["capabilities CAP_SYS_RESOURCE: nanolet itself lacks them: dropped"]
        );
        // A privileged container gets what there is, without a warning.
        let config = ContainerConfig {
            capabilities: Some(wanted),
            privileged: true,
            ..minimal()
        };
        let (_, warnings) = runtime_spec(&config, &host);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn unmasked_proc_drops_masked_and_readonly_paths_only() {
        let config = ContainerConfig {
            unmasked_proc: true,
            ..minimal()
        };
        let (spec, _) = runtime_spec(&config, &HOST);
        assert_eq!(spec["linux"].get("maskedPaths"), None);
        assert_eq!(spec["linux"].get("readonlyPaths"), None);
        // Still not privileged: /sys read-only, the default device rules.
        assert_eq!(spec["mounts"][5]["options"][3], "ro");
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
    }

    #[test]
    fn warns_about_empty_args() {
        let config = ContainerConfig {
            args: vec![],
            ..minimal()
        };
        let (_, warnings) = runtime_spec(&config, &HOST);
        assert_eq!(
            warnings,
            ["process.args: empty: runc will refuse to create the container"]
        );
    }

    #[test]
    fn drops_hostname_without_a_uts_namespace() {
        let config = ContainerConfig {
            namespaces: vec![Namespace {
                kind: NamespaceKind::Mount,
                path: None,
            }],
            ..minimal()
        };
        let (spec, warnings) = runtime_spec(&config, &HOST);
        assert_eq!(spec.get("hostname"), None);
        assert_eq!(
            warnings,
            ["hostname \"web\": the container shares the host's UTS namespace: not set"]
        );

        let (spec, warnings) = runtime_spec(&minimal(), &HOST);
        assert_eq!(spec["hostname"], "web");
        assert!(warnings.is_empty());
    }

    #[test]
    fn extra_mounts_follow_the_defaults_in_order() {
        let (spec, _) = runtime_spec(&readonly_with_volumes(), &HOST);
        let destinations: Vec<&str> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hosts",
                "/data"
            ]
        );
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn omitted_namespace_kinds_mean_the_host_namespace() {
        let (spec, _) = runtime_spec(&joined_namespaces(), &HOST);
        let kinds: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["network", "ipc", "uts", "mount"]);
        assert_eq!(
            spec["linux"]["namespaces"][0]["path"],
            "/run/nanolet/netns/pod1234"
        );
        assert_eq!(spec["linux"]["namespaces"][3].get("path"), None);
    }

    /// Compares our key set with `runc spec`'s (needs /usr/sbin/runc): every key runc's template
    /// has at the top level and in `process` is one we also write, except the ones we leave out
    /// on purpose (`process.consoleSize` only applies with a terminal; `linux.seccomp` is only
    /// written when a profile is asked for).
    #[test]
    #[ignore = "needs /usr/sbin/runc"]
    fn key_sets_match_runc_spec() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("/usr/sbin/runc")
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let runc: Value = serde_json::from_str(&text).unwrap();
        let (ours, _) = runtime_spec(&minimal(), &HOST);
        let keys = |v: &Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
        };
        for (section, runc_v, ours_v) in [
            ("", &runc, &ours),
            ("process", &runc["process"], &ours["process"]),
            ("linux", &runc["linux"], &ours["linux"]),
        ] {
            for k in keys(runc_v) {
                if ["consoleSize", "seccomp", "uidMappings", "gidMappings"].contains(&k.as_str()) {
                    continue;
                }
                assert!(
                    ours_v.get(&k).is_some(),
                    "{section}.{k}: in runc spec, not in ours"
                );
            }
        }
    }

    /// The host limits as the agent would read them: `RLIMIT_NOFILE`'s hard limit and whether
    /// `CAP_SYS_RESOURCE` (bit 24) is in the effective set.
    fn probe_host() -> HostLimits {
        let nofile_hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .unwrap_or(u64::MAX);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        HostLimits {
            can_lower_oom_score_adj: cap_eff & (1 << 24) != 0,
            capabilities: cap_eff,
            nofile_hard,
        }
    }

    /// Runs `runc run` on generated specs with a rootfs made of the host's `/usr` (bind-mounted
    /// read-only) and checks what the process inside sees. Asks for a negative `oomScoreAdj`,
    /// which without `CAP_SYS_RESOURCE` only works because it is clamped.
    #[test]
    #[ignore = "needs root and /usr/sbin/runc"]
    fn runc_runs_the_generated_spec() {
        assert!(rustix::process::geteuid().is_root(), "run as root");
        let host = probe_host();
        let bundle = tempfile::tempdir().unwrap();
        let rootfs = bundle.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("usr")).unwrap();
        for link in ["bin", "lib", "lib64", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{link}"), rootfs.join(link)).unwrap();
        }
        let id = format!("nanolet-spec-test-{}", std::process::id());
        let script = "hostname; id -u; id -g; id -G; ulimit -n; cat /proc/self/oom_score_adj; \
                      pwd; touch /rootfs-is-writable 2>/dev/null || echo read-only";
        let config = ContainerConfig {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            cwd: "/usr".into(),
            user: User {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10, 29],
            },
            mounts: vec![Mount {
                destination: "/usr".into(),
                source: "/usr".into(),
                kind: "bind".into(),
                options: vec!["rbind".into(), "ro".into()],
            }],
            cgroups_path: format!("/{id}"),
            oom_score_adj: Some(-5),
            readonly_rootfs: true,
            no_new_privileges: true,
            ..minimal()
        };
        let (spec, warnings) = runtime_spec(&config, &host);
        let config_json = serde_json::to_string_pretty(&spec).unwrap();
        std::fs::write(bundle.path().join("config.json"), config_json).unwrap();
        let out = std::process::Command::new("/usr/sbin/runc")
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "runc run: {}\n{stdout}\n{stderr}",
            out.status
        );
        let want_adj = if host.can_lower_oom_score_adj { -5 } else { 0 };
        let want = format!(
            "web\n1000\n1001\n1001 10 29\n{}\n{want_adj}\n/usr\nread-only\n",
            host.nofile_hard.min(DEFAULT_NOFILE)
        );
        assert_eq!(stdout, want, "warnings: {warnings:?}; stderr: {stderr}");
    }
}
