//! The pod's and the container's security contexts → what the runtime applies. Pure.
//!
//! Owns kubelet's and containerd's CRI rules: the container's fields win over the pod's
//! (`DetermineEffectiveSecurityContext`); `runAsNonRoot` is checked against `runAsUser` or the
//! image's user with kubelet's errors (`verifyRunAsNonRoot`: a named image user cannot be
//! verified); `fsGroup` then `supplementalGroups` become additional gids; capabilities start
//! from containerd's default set, then `add: [ALL]`, `drop: [ALL]`, each added name, each dropped
//! name (names as Kubernetes writes them, `NET_ADMIN`; a `CAP_` prefix is accepted; an unknown
//! name is an error); `privileged` gives every capability, unmasked `/proc`, read-write `/sys`,
//! every device and no seccomp; `allowPrivilegeEscalation: false` sets `no_new_privs` (and
//! contradicts `privileged` or `SYS_ADMIN`); seccomp `RuntimeDefault` (see
//! [`crate::runtime::seccomp`]), `Unconfined` (kubelet's default) or `Localhost` (a profile
//! file under `<configDir>/seccomp/`, read by the caller); `procMount: Unmasked`; sysctls:
//! kubelet's safe set plus `allowedUnsafeSysctls`, each of them namespaced (and `net.*` refused
//! with `hostNetwork`, IPC ones with `hostIPC`, where they would change the node).
//!
//! Never does: I/O. Errors become the container's `CreateContainerConfigError`.

use std::collections::BTreeMap;

use super::config::ConfigError;
use crate::k8s::security::{PodSecurityContext, SeccompProfile, SecurityContext};
use crate::k8s::{Container, Pod};
pub use crate::runtime::spec::ALL_CAPABILITIES;
use crate::runtime::spec::DEFAULT_CAPABILITIES;

/// kubelet's safe sysctls (`pkg/kubelet/sysctl/safe_sysctls.go`).
pub const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Which seccomp profile a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    Unconfined,
    RuntimeDefault,
    /// A path relative to the seccomp profile folder (checked: no `..`, not absolute).
    Localhost(String),
}

/// Everything the security contexts decide for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    pub privileged: bool,
    /// The `CAP_*` names of the bounding, effective and permitted sets.
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    pub readonly_rootfs: bool,
    /// `/proc` without masked and read-only paths (`procMount: Unmasked`, or privileged).
    pub unmasked_proc: bool,
    pub seccomp: Seccomp,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    /// `fsGroup`, then `supplementalGroups`.
    pub extra_gids: Vec<u32>,
    pub sysctls: BTreeMap<String, String>,
}

/// The pod's `fsGroup`, for volume ownership.
pub fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok())
}

fn id(c: &Container, field: &str, v: Option<i64>) -> Result<Option<u32>, ConfigError> {
    match v {
        None => Ok(None),
        Some(v) if (0..=i64::from(i32::MAX)).contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(ConfigError(format!(
            "container {:?}: securityContext.{field}: {v}: must be between 0 and 2147483647, inclusive",
            c.name
        ))),
    }
}

/// Decides container `c`'s security. `allowed_unsafe_sysctls` is `allowedUnsafeSysctls`
/// (names, or prefixes ending in `*`).
pub fn security(
    pod: &Pod,
    c: &Container,
    allowed_unsafe_sysctls: &[String],
) -> Result<Security, ConfigError> {
    let none_pod = PodSecurityContext::default();
    let none = SecurityContext::default();
    let p = pod.spec.security_context.as_ref().unwrap_or(&none_pod);
    let s = c.security_context.as_deref().unwrap_or(&none);
    let err = |m: String| ConfigError(format!("container {:?}: {m}", c.name));
    let privileged = s.privileged == Some(true);

    let capabilities = if privileged {
        ALL_CAPABILITIES.map(String::from).to_vec()
    } else {
        capabilities(c, s)?
    };
    let has_sys_admin = capabilities.iter().any(|c| c == "CAP_SYS_ADMIN");
    if s.allow_privilege_escalation == Some(false) {
        if privileged {
            return Err(err(
                "securityContext.allowPrivilegeEscalation: cannot set `allowPrivilegeEscalation` to false and `privileged` to true".into(),
            ));
        }
        if has_sys_admin {
            return Err(err(
                "securityContext.allowPrivilegeEscalation: cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN".into(),
            ));
        }
    }
    let unmasked_proc = privileged
        || match s.proc_mount.as_deref() {
            None | Some("Default") => false,
            Some("Unmasked") => true,
            Some(other) => {
                return Err(err(format!(
                    "securityContext.procMount: {other:?}: must be \"Default\" or \"Unmasked\""
                )));
            }
        };
    let seccomp = if privileged {
        Seccomp::Unconfined
    } else {
        match (&s.seccomp_profile, &p.seccomp_profile) {
            (Some(profile), _) => seccomp(c, "securityContext", profile)?,
            (None, Some(profile)) => seccomp(c, "pod securityContext", profile)?,
            (None, None) => Seccomp::Unconfined,
        }
    };
    let mut extra_gids = Vec::new();
    if let Some(g) = p.fs_group {
        extra_gids.extend(id(c, "fsGroup", Some(g))?);
    }
    for &g in &p.supplemental_groups {
        extra_gids.extend(id(c, "supplementalGroups", Some(g))?);
    }
    Ok(Security {
        privileged,
        no_new_privileges: s.allow_privilege_escalation == Some(false),
        readonly_rootfs: s.read_only_root_filesystem == Some(true),
        unmasked_proc,
        seccomp,
        run_as_user: id(c, "runAsUser", s.run_as_user.or(p.run_as_user))?,
        run_as_group: id(c, "runAsGroup", s.run_as_group.or(p.run_as_group))?,
        run_as_non_root: s.run_as_non_root.or(p.run_as_non_root) == Some(true),
        extra_gids,
        sysctls: sysctls(pod, allowed_unsafe_sysctls)?,
        capabilities,
    })
}

fn capabilities(c: &Container, s: &SecurityContext) -> Result<Vec<String>, ConfigError> {
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.map(String::from).to_vec();
    let Some(wanted) = &s.capabilities else {
        return Ok(caps);
    };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    if wanted.add.iter().any(is_all) {
        caps = ALL_CAPABILITIES.map(String::from).to_vec();
    }
    if wanted.drop.iter().any(is_all) {
        caps.clear();
    }
    let canonical = |field: &str, name: &String| -> Result<String, ConfigError> {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        if ALL_CAPABILITIES.contains(&full.as_str()) {
            Ok(full)
        } else {
            Err(ConfigError(format!(
                "container {:?}: securityContext.capabilities.{field}: unknown capability {name:?}",
                c.name
            )))
        }
    };
    for name in wanted.add.iter().filter(|n| !is_all(n)) {
        let cap = canonical("add", name)?;
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    for name in wanted.drop.iter().filter(|n| !is_all(n)) {
        let cap = canonical("drop", name)?;
        caps.retain(|c| *c != cap);
    }
    Ok(caps)
}

fn seccomp(c: &Container, field: &str, p: &SeccompProfile) -> Result<Seccomp, ConfigError> {
    let err = |m: String| {
        ConfigError(format!(
            "container {:?}: {field}.seccompProfile: {m}",
            c.name
        ))
    };
    match (p.kind.as_str(), p.localhost_profile.as_deref()) {
        ("RuntimeDefault", None) => Ok(Seccomp::RuntimeDefault),
        ("Unconfined", None) => Ok(Seccomp::Unconfined),
        ("Localhost", Some(path)) => {
            if path.is_empty()
                || path.starts_with('/')
                || path.split('/').any(|s| s == ".." || s.is_empty())
            {
                return Err(err(format!(
                    "localhostProfile {path:?}: must be a relative path without \"..\""
                )));
            }
            Ok(Seccomp::Localhost(path.to_string()))
        }
        ("Localhost", None) => Err(err("localhostProfile: required for type Localhost".into())),
        ("RuntimeDefault" | "Unconfined", Some(_)) => Err(err(
            "localhostProfile: may only be set for type Localhost".into(),
        )),
        (other, _) => Err(err(format!(
            "type {other:?}: must be \"RuntimeDefault\", \"Unconfined\" or \"Localhost\""
        ))),
    }
}

/// The namespace a sysctl belongs to, as kubelet's `NamespacedBy`.
fn sysctl_namespace(name: &str) -> Option<&'static str> {
    if name.starts_with("net.") {
        Some("net")
    } else if name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
    {
        Some("ipc")
    } else {
        None
    }
}

fn sysctls(pod: &Pod, allowed_unsafe: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    let Some(p) = &pod.spec.security_context else {
        return Ok(out);
    };
    for s in &p.sysctls {
        let err = |m: &str| ConfigError(format!("pod securityContext.sysctls: {:?}: {m}", s.name));
        // Kubernetes accepts `/` as the separator too (`net/ipv4/tcp_syncookies`).
        let name = if s.name.contains('.') {
            s.name.clone()
        } else {
            s.name.replace('/', ".")
        };
        let valid_name = !name.is_empty()
            && name.split('.').all(|seg| {
                !seg.is_empty()
                    && seg.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            });
        if !valid_name {
            return Err(err("invalid sysctl name"));
        }
        let allowed = SAFE_SYSCTLS.contains(&name.as_str())
            || allowed_unsafe.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => *a == name,
            });
        if !allowed {
            return Err(err(
                "forbidden sysctl: not in the safe set nor in allowedUnsafeSysctls (SysctlForbidden)",
            ));
        }
        match sysctl_namespace(&name) {
            None => {
                return Err(err(
                    "forbidden sysctl: not namespaced, it would change the node",
                ));
            }
            Some("net") if pod.spec.host_network => {
                return Err(err("forbidden sysctl: not allowed with hostNetwork"));
            }
            Some("ipc") if pod.spec.host_ipc => {
                return Err(err("forbidden sysctl: not allowed with hostIPC"));
            }
            Some(_) => {}
        }
        out.insert(name, s.value.clone());
    }
    Ok(out)
}

/// The user string to resolve in the image: `runAsUser`/`runAsGroup` override the image's
/// user and group parts (as containerd's `WithUserID`/`WithUser`).
pub fn user_spec(image_user: &str, sec: &Security) -> String {
    let (image_u, image_g) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image_user.to_string(), None),
    };
    let user = sec.run_as_user.map_or(image_u, |u| u.to_string());
    // A new uid brings its own primary group from /etc/passwd unless runAsGroup says.
    let group = match (sec.run_as_group, sec.run_as_user) {
        (Some(g), _) => Some(g.to_string()),
        (None, Some(_)) => None,
        (None, None) => image_g,
    };
    let user = if user.is_empty() && group.is_some() {
        "0".to_string()
    } else {
        user
    };
    match group {
        Some(g) => format!("{user}:{g}"),
        None => user,
    }
}

/// kubelet's `verifyRunAsNonRoot`, with its messages.
pub fn verify_run_as_non_root(
    pod: &Pod,
    c: &Container,
    sec: &Security,
    image_user: &str,
) -> Result<(), ConfigError> {
    if !sec.run_as_non_root {
        return Ok(());
    }
    let pod_name = pod.metadata.kubelet_ref();
    if let Some(uid) = sec.run_as_user {
        if uid == 0 {
            return Err(ConfigError(format!(
                "container's runAsUser breaks non-root policy (pod: {pod_name:?}, container: {})",
                c.name
            )));
        }
        return Ok(());
    }
    let user = image_user.split(':').next().unwrap_or_default();
    match user.parse::<u32>() {
        Ok(0) => Err(ConfigError(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod_name:?}, container: {})",
            c.name
        ))),
        Ok(_) => Ok(()),
        // An image without a user runs as root.
        Err(_) if user.is_empty() => Err(ConfigError(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod_name:?}, container: {})",
            c.name
        ))),
        Err(_) => Err(ConfigError(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod_name:?}, container: {})",
            c.name
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::k8s::security::{Capabilities, Sysctl};

    fn pod_with(
        pod_sc: Option<PodSecurityContext>,
        sc: Option<SecurityContext>,
    ) -> (Pod, Container) {
        let c = Container {
            name: "app".into(),
            security_context: sc.map(Box::new),
            ..Container::default()
        };
        let mut p = Pod::default();
        p.metadata.name = "web".into();
        p.metadata.uid = "u1".into();
        p.spec.security_context = pod_sc;
        p.spec.containers = vec![c.clone()];
        (p, c)
    }

    fn caps(add: &[&str], drop: &[&str]) -> Result<Vec<String>, String> {
        let sc = SecurityContext {
            capabilities: Some(Capabilities {
                add: add.iter().map(|s| s.to_string()).collect(),
                drop: drop.iter().map(|s| s.to_string()).collect(),
            }),
            ..SecurityContext::default()
        };
        let (p, c) = pod_with(None, Some(sc));
        security(&p, &c, &[])
            .map(|s| s.capabilities)
            .map_err(|e| e.0)
    }

    #[test]
    fn capabilities_follow_containerd() {
        assert_eq!(
            caps(&[], &[]).unwrap(),
            DEFAULT_CAPABILITIES.map(String::from)
        );
        assert_eq!(caps(&[], &["ALL"]).unwrap(), Vec::<String>::new());
        assert_eq!(
            caps(&["NET_BIND_SERVICE"], &["ALL"]).unwrap(),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(caps(&["ALL"], &["chown"]).unwrap().len(), 40);
        let c = caps(&["NET_ADMIN", "CAP_SYS_TIME"], &["NET_RAW", "KILL"]).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".into()) && c.contains(&"CAP_SYS_TIME".into()));
        assert!(!c.contains(&"CAP_NET_RAW".into()) && !c.contains(&"CAP_KILL".into()));
        assert_eq!(
            caps(&["NET_FOO"], &[]).unwrap_err(),
            "container \"app\": securityContext.capabilities.add: unknown capability \"NET_FOO\""
        );
        assert!(
            caps(&[], &["BOGUS"])
                .unwrap_err()
                .contains("capabilities.drop: unknown capability \"BOGUS\"")
        );
    }

    #[test]
    fn container_fields_win_over_the_pod() {
        let pod_sc = PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(2000),
            fs_group: Some(3000),
            supplemental_groups: vec![4000, 4001],
            seccomp_profile: Some(SeccompProfile {
                kind: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        };
        let sc = SecurityContext {
            run_as_user: Some(1001),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        };
        let (p, c) = pod_with(Some(pod_sc), Some(sc));
        let s = security(&p, &c, &[]).unwrap();
        assert_eq!((s.run_as_user, s.run_as_group), (Some(1001), Some(2000)));
        assert_eq!(s.extra_gids, [3000, 4000, 4001]);
        assert_eq!(s.seccomp, Seccomp::RuntimeDefault);
        assert!(s.readonly_rootfs && s.no_new_privileges && !s.privileged && !s.unmasked_proc);
        assert_eq!(fs_group(&p), Some(3000));
        assert_eq!(user_spec("app:staff", &s), "1001:2000");
    }

    #[test]
    fn privileged_gets_everything_and_contradictions_are_errors() {
        let (p, c) = pod_with(
            None,
            Some(SecurityContext {
                privileged: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    kind: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..SecurityContext::default()
            }),
        );
        let s = security(&p, &c, &[]).unwrap();
        assert_eq!(s.capabilities.len(), 41);
        assert!(s.unmasked_proc && s.seccomp == Seccomp::Unconfined);
        let (p, c) = pod_with(
            None,
            Some(SecurityContext {
                privileged: Some(true),
                allow_privilege_escalation: Some(false),
                ..SecurityContext::default()
            }),
        );
        assert!(
            security(&p, &c, &[])
                .unwrap_err()
                .0
                .contains("`privileged` to true")
        );
        let (p, c) = pod_with(
            None,
            Some(SecurityContext {
                proc_mount: Some("Unmasked".into()),
                ..SecurityContext::default()
            }),
        );
        let s = security(&p, &c, &[]).unwrap();
        assert!(s.unmasked_proc && !s.privileged);
        assert_eq!(s.capabilities, DEFAULT_CAPABILITIES.map(String::from));
        let (p, c) = pod_with(
            None,
            Some(SecurityContext {
                proc_mount: Some("Weird".into()),
                ..SecurityContext::default()
            }),
        );
        assert!(
            security(&p, &c, &[])
                .unwrap_err()
                .0
                .contains("procMount: \"Weird\"")
        );
        let (p, c) = pod_with(
            None,
            Some(SecurityContext {
                run_as_user: Some(-1),
                ..SecurityContext::default()
            }),
        );
        assert!(
            security(&p, &c, &[])
                .unwrap_err()
                .0
                .contains("runAsUser: -1: must be between")
        );
        let bad_profile = |kind: &str, path: Option<&str>| {
            let (p, c) = pod_with(
                None,
                Some(SecurityContext {
                    seccomp_profile: Some(SeccompProfile {
                        kind: kind.into(),
                        localhost_profile: path.map(String::from),
                    }),
                    ..SecurityContext::default()
                }),
            );
            security(&p, &c, &[]).map(|s| s.seccomp).map_err(|e| e.0)
        };
        assert_eq!(
            bad_profile("Localhost", Some("a/b.json")),
            Ok(Seccomp::Localhost("a/b.json".into()))
        );
        assert!(bad_profile("Localhost", Some("../etc/x")).is_err());
        assert!(bad_profile("Localhost", None).is_err());
        assert!(
            bad_profile("Strict", None)
                .unwrap_err()
                .contains("type \"Strict\"")
        );
    }

    #[test]
    fn run_as_non_root_uses_kubelet_messages() {
        let sc = |user: Option<i64>| SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: user,
            ..SecurityContext::default()
        };
        let check = |user: Option<i64>, image_user: &str| {
            let (p, c) = pod_with(None, Some(sc(user)));
            let s = security(&p, &c, &[]).unwrap();
            verify_run_as_non_root(&p, &c, &s, image_user).map_err(|e| e.0)
        };
        assert_eq!(check(None, "1000"), Ok(()));
        assert_eq!(check(Some(1000), ""), Ok(()));
        assert_eq!(
            check(None, "").unwrap_err(),
            "container has runAsNonRoot and image will run as root (pod: \"web_default(u1)\", container: app)"
        );
        assert!(
            check(None, "0:0")
                .unwrap_err()
                .contains("image will run as root")
        );
        assert!(
            check(Some(0), "1000")
                .unwrap_err()
                .starts_with("container's runAsUser breaks non-root policy")
        );
        assert!(
            check(None, "nobody")
                .unwrap_err()
                .contains("image has non-numeric user (nobody), cannot verify user is non-root")
        );
        // Without runAsNonRoot, anything goes.
        let (p, c) = pod_with(None, None);
        let s = security(&p, &c, &[]).unwrap();
        assert_eq!(verify_run_as_non_root(&p, &c, &s, ""), Ok(()));
    }

    #[test]
    fn sysctls_safe_allowed_namespaced() {
        let with = |names: &[&str], host_network: bool, allowed: &[&str]| {
            let (mut p, c) = pod_with(
                Some(PodSecurityContext {
                    sysctls: names
                        .iter()
                        .map(|n| Sysctl {
                            name: n.to_string(),
                            value: "1".into(),
                        })
                        .collect(),
                    ..PodSecurityContext::default()
                }),
                None,
            );
            p.spec.host_network = host_network;
            let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
            security(&p, &c, &allowed)
                .map(|s| s.sysctls.into_keys().collect::<Vec<_>>())
                .map_err(|e| e.0)
        };
        assert_eq!(
            with(
                &["net.ipv4.tcp_syncookies", "kernel/shm_rmid_forced"],
                false,
                &[]
            ),
            Ok(vec![
                "kernel.shm_rmid_forced".to_string(),
                "net.ipv4.tcp_syncookies".to_string()
            ])
        );
        assert!(
            with(&["net.core.somaxconn"], false, &[])
                .unwrap_err()
                .contains("not in the safe set")
        );
        assert_eq!(
            with(&["net.core.somaxconn"], false, &["net.core.*"]),
            Ok(vec!["net.core.somaxconn".to_string()])
        );
        assert!(
            with(&["kernel.panic"], false, &["kernel.*"])
                .unwrap_err()
                .contains("not namespaced")
        );
        assert!(
            with(&["net.ipv4.tcp_syncookies"], true, &[])
                .unwrap_err()
                .contains("hostNetwork")
        );
        assert!(
            with(&["net.ipv4/../../x"], false, &["*"])
                .unwrap_err()
                .contains("invalid sysctl name")
        );
    }

    #[test]
    fn user_spec_overrides_parts() {
        let s = |u: Option<u32>, g: Option<u32>| Security {
            privileged: false,
            capabilities: vec![],
            no_new_privileges: false,
            readonly_rootfs: false,
            unmasked_proc: false,
            seccomp: Seccomp::Unconfined,
            run_as_user: u,
            run_as_group: g,
            run_as_non_root: false,
            extra_gids: vec![],
            sysctls: BTreeMap::new(),
        };
        assert_eq!(user_spec("app:staff", &s(None, None)), "app:staff");
        assert_eq!(user_spec("app:staff", &s(Some(5), None)), "5");
        assert_eq!(user_spec("app", &s(None, Some(7))), "app:7");
        assert_eq!(user_spec("", &s(None, Some(7))), "0:7");
        assert_eq!(user_spec("", &s(None, None)), "");
    }
}
