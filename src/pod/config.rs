//! From a Pod's container and its image to the runtime's `ContainerConfig`: the command line,
//! the environment with kubelet's `$(VAR)` expansion, namespaces, mounts and labels. Pure.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::resources::{self, CgroupValues, NodeCapacity};
use super::security::Security;
use crate::image::ImageConfig;
use crate::k8s::{Container, Pod};
use crate::runtime::spec::{ContainerConfig, Mount, Namespace, NamespaceKind, User};
use crate::sys::sandbox::Sandbox;

/// A container that cannot be configured: kubelet's `CreateContainerConfigError`.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The annotations nanolet puts on every container (read back when adopting after a restart).
pub const ANNOTATION_POD_UID: &str = "io.kubernetes.pod.uid";
pub const ANNOTATION_POD_NAME: &str = "io.kubernetes.pod.name";
pub const ANNOTATION_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const ANNOTATION_ATTEMPT: &str = "io.kubernetes.container.restartCount";

/// Where a pod's own files are (written by the worker, bind-mounted into each container).
#[derive(Clone, Debug)]
pub struct PodFiles {
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    pub resolv_conf: PathBuf,
}

/// Everything one container's configuration is made from.
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    pub user: User,
    pub sandbox: &'a Sandbox,
    pub files: &'a PodFiles,
    /// The pod's cgroup, relative to the cgroup root (see [`super::resources`]).
    pub pod_cgroup: &'a str,
    pub resources: CgroupValues,
    pub oom_score_adj: i32,
    pub security: &'a Security,
    /// The resolved `linux.seccomp` profile; `None`: unconfined.
    pub seccomp: Option<serde_json::Value>,
    pub node: &'a NodeCapacity,
    pub container_id: &'a str,
    pub attempt: u32,
    pub rootfs: PathBuf,
    /// The pod's addresses (`status.podIP`, `status.podIPs`), known once its sandbox is up;
    /// for env `fieldRef`.
    pub pod_ips: &'a [std::net::Ipv4Addr],
    /// The node's address (`status.hostIP`), for env `fieldRef`.
    pub host_ip: Option<std::net::Ipv4Addr>,
}

/// Builds the runtime configuration of one container.
pub fn container_config(i: &Inputs) -> Result<ContainerConfig, ConfigError> {
    let env = environment(i.pod, i.container, &i.image.env, i.node)?;
    let args = command_line(i.container, i.image, &env);
    if args.is_empty() {
        return Err(ConfigError(format!(
            "container {:?}: no command specified: the image has no entrypoint or cmd and the container sets no command",
            i.container.name
        )));
    }
    let cwd = match i.container.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => dir.to_string(),
        _ if !i.image.working_dir.is_empty() => i.image.working_dir.clone(),
        _ => "/".to_string(),
    };
    if !cwd.starts_with('/') {
        return Err(ConfigError(format!(
            "container {:?}: workingDir {cwd:?} must be an absolute path",
            i.container.name
        )));
    }
    let mut namespaces = vec![
        Namespace {
            kind: NamespaceKind::Pid,
            path: None,
        },
        Namespace {
            kind: NamespaceKind::Mount,
            path: None,
        },
    ];
    for (kind, name) in [
        (NamespaceKind::Network, "net"),
        (NamespaceKind::Ipc, "ipc"),
        (NamespaceKind::Uts, "uts"),
    ] {
        if let Some(path) = i.sandbox.namespace_path(name) {
            namespaces.push(Namespace {
                kind,
                path: Some(path),
            });
        }
    }
    let bind = |destination: &str, source: &PathBuf, ro: bool| Mount {
        destination: destination.to_string(),
        source: source.clone(),
        kind: "bind".to_string(),
        options: ["rbind", "rprivate", if ro { "ro" } else { "rw" }]
            .map(String::from)
            .to_vec(),
    };
    let mounts = vec![
        bind("/etc/hosts", &i.files.hosts, false),
        bind("/etc/hostname", &i.files.hostname, false),
        bind("/etc/resolv.conf", &i.files.resolv_conf, false),
    ];
    let meta = &i.pod.metadata;
    let annotations = BTreeMap::from([
        (ANNOTATION_POD_UID.to_string(), meta.uid.clone()),
        (ANNOTATION_POD_NAME.to_string(), meta.name.clone()),
        (ANNOTATION_POD_NAMESPACE.to_string(), meta.namespace.clone()),
        (
            ANNOTATION_CONTAINER_NAME.to_string(),
            i.container.name.clone(),
        ),
        (ANNOTATION_ATTEMPT.to_string(), i.attempt.to_string()),
    ]);
    Ok(ContainerConfig {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd,
        user: i.user.clone(),
        hostname: None,
        namespaces,
        mounts,
        cgroups_path: format!("/{}/{}", i.pod_cgroup.trim_matches('/'), i.container_id),
        annotations,
        oom_score_adj: Some(i.oom_score_adj),
        readonly_rootfs: i.security.readonly_rootfs,
        no_new_privileges: i.security.no_new_privileges,
        rootfs: i.rootfs.clone(),
        resources: i.resources.clone(),
        capabilities: Some(i.security.capabilities.clone()),
        privileged: i.security.privileged,
        unmasked_proc: i.security.unmasked_proc,
        seccomp: i.seccomp.clone(),
        sysctls: i.security.sysctls.clone(),
    })
}

/// The process's argv, as Kubernetes combines `command`/`args` with the image's
/// `Entrypoint`/`Cmd`, after `$(VAR)` expansion.
pub fn command_line(c: &Container, image: &ImageConfig, env: &[(String, String)]) -> Vec<String> {
    let argv: Vec<String> = match (c.command.is_empty(), c.args.is_empty()) {
        (false, _) => c.command.iter().chain(&c.args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(&c.args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // Only what the pod spec says is expanded; the image's own entrypoint is not.
    let expand_from = if c.command.is_empty() {
        image.entrypoint.len()
    } else {
        0
    };
    argv.into_iter()
        .enumerate()
        .map(|(n, a)| {
            if n >= expand_from {
                expand(&a, &lookup)
            } else {
                a
            }
        })
        .collect()
}

/// The container's environment: the image's, then the container's (each value expanded against
/// what is defined before it), then `HOSTNAME`.
pub fn environment(
    pod: &Pod,
    c: &Container,
    image_env: &[String],
    node: &NodeCapacity,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env
        .iter_mut()
        .find(|(n, _)| *n == k)
    {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut env, k.to_string(), v.to_string());
    }
    for var in &c.env {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => match from.get("resourceFieldRef") {
                Some(r) => resources::resource_field_ref(pod, c, &var.name, r, node)?,
                None => value_from(pod, c, &var.name, from)?,
            },
            (Some(v), None) => {
                let current = env.clone();
                let lookup = |name: &str| {
                    current
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                expand(v, &lookup)
            }
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    let hostname = if pod.spec.host_network {
        crate::config::hostname()
    } else {
        pod.metadata.name.clone()
    };
    set(&mut env, "HOSTNAME".to_string(), hostname);
    Ok(env)
}

fn value_from(
    pod: &Pod,
    c: &Container,
    name: &str,
    from: &serde_json::Value,
) -> Result<String, ConfigError> {
    let unsupported = || {
        ConfigError(format!(
            "container {:?}: env {name:?}: valueFrom {from} is not supported yet (fieldRef on metadata and spec.nodeName are)",
            c.name
        ))
    };
    let path = from
        .pointer("/fieldRef/fieldPath")
        .and_then(|p| p.as_str())
        .ok_or_else(unsupported)?;
    let meta = &pod.metadata;
    let key_of = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => pod.spec.node_name.clone(),
        _ => {
            if let Some(k) = key_of("metadata.labels") {
                meta.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = key_of("metadata.annotations") {
                meta.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                return Err(unsupported());
            }
        }
    })
}

/// Kubernetes' `$(VAR)` expansion: a defined `$(VAR)` is replaced, an undefined one is left as it
/// is, `$$` is an escaped `$`, and any other `$` stays.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::EnvVar;

    const NODE: NodeCapacity = NodeCapacity {
        cpu_milli: 1000,
        memory_bytes: 1 << 30,
    };

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        for (input, want) in [
            ("$(A)", "alpha"),
            ("x-$(A)-y", "x-alpha-y"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("$(EMPTY)z", "z"),
            ("100$", "100$"),
            ("$(A)$(A)", "alphaalpha"),
        ] {
            assert_eq!(expand(input, &lookup), want, "{input}");
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: String::new(),
            user: String::new(),
            stop_signal: None,
        }
    }

    #[test]
    fn command_and_args_combine_with_the_image_like_kubernetes() {
        let env = vec![("A".to_string(), "alpha".to_string())];
        let c = |command: &[&str], args: &[&str]| Container {
            name: "c".into(),
            image: "busybox".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Container::default()
        };
        assert_eq!(
            command_line(&c(&[], &[]), &image(), &env),
            vec!["/entry", "default"]
        );
        assert_eq!(
            command_line(&c(&[], &["$(A)"]), &image(), &env),
            vec!["/entry", "alpha"]
        );
        assert_eq!(
            command_line(&c(&["sh", "-c"], &[]), &image(), &env),
            vec!["sh", "-c"]
        );
        assert_eq!(
            command_line(&c(&["echo", "$(A)"], &["$(B)"]), &image(), &env),
            vec!["echo", "alpha", "$(B)"]
        );
    }

    #[test]
    fn environment_layers_image_container_and_field_refs() {
        let mut pod = Pod::default();
        pod.metadata.name = "web-edge".into();
        pod.metadata.labels.insert("app".into(), "web".into());
        pod.spec.node_name = "edge".into();
        let c = Container {
            name: "c".into(),
            env: vec![
                EnvVar {
                    name: "A".into(),
                    value: Some("pod".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "B".into(),
                    value: Some("$(A)-$(PATH)".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "NODE".into(),
                    value: None,
                    value_from: Some(
                        serde_json::json!({"fieldRef": {"fieldPath": "spec.nodeName"}}),
                    ),
                },
                EnvVar {
                    name: "APP".into(),
                    value: None,
                    value_from: Some(
                        serde_json::json!({"fieldRef": {"fieldPath": "metadata.labels['app']"}}),
                    ),
                },
            ],
            ..Container::default()
        };
        let env = environment(&pod, &c, &image().env, &NODE).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("pod"));
        assert_eq!(get("B"), Some("pod-/bin"));
        assert_eq!(get("NODE"), Some("edge"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("HOSTNAME"), Some("web-edge"));
        // Image order is kept: PATH first.
        assert_eq!(env[0].0, "PATH");

        let bad = Container {
            name: "c".into(),
            env: vec![EnvVar {
                name: "X".into(),
                value: None,
                value_from: Some(serde_json::json!({"secretKeyRef": {"name": "s", "key": "k"}})),
            }],
            ..Container::default()
        };
        let err = environment(&pod, &bad, &[], &NODE).unwrap_err().to_string();
        assert!(
            err.contains("env \"X\"") && err.contains("not supported"),
            "{err}"
        );
    }
}
