//! From a Pod's container and its image to the runtime's `ContainerConfig`: the command line,
//! the environment with kubelet's `$(VAR)` expansion, namespaces, mounts and labels. Pure, but
//! for the ConfigMaps and Secrets it reads through an [`ObjectSource`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::resources::{self, CgroupValues, NodeCapacity};
use super::security::Security;
use crate::image::ImageConfig;
use crate::k8s::env::EnvVarSource;
use crate::k8s::object::ObjectSource;
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
    /// Where `envFrom` and `valueFrom` read from.
    pub sources: &'a EnvSources<'a>,
    /// The container's volume mounts, prepared by the worker (see [`super::volumes`]).
    pub volume_mounts: Vec<Mount>,
}

/// Builds the runtime configuration of one container.
pub fn container_config(i: &Inputs) -> Result<ContainerConfig, ConfigError> {
    let container_env = kubelet_environment(i.pod, i.container, i.sources)?;
    // kubelet expands command and args with the container's variables only.
    let args = command_line(i.container, i.image, &container_env);
    let env = runtime_environment(i.pod, &i.image.env, container_env);
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
    let mut mounts = vec![
        bind("/etc/hosts", &i.files.hosts, false),
        bind("/etc/hostname", &i.files.hostname, false),
        bind("/etc/resolv.conf", &i.files.resolv_conf, false),
    ];
    mounts.extend(i.volume_mounts.iter().cloned());
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

/// The pod's addresses, for `status.hostIP(s)` and `status.podIP(s)` field references.
#[derive(Clone, Debug, Default)]
pub struct Addresses {
    pub host_ips: Vec<String>,
    pub pod_ips: Vec<String>,
}

/// The container's environment as the runtime gets it: `HOSTNAME`, then the image's, then the
/// container's own ([`kubelet_environment`]), later entries replacing earlier ones in place
/// (containerd's order).
pub fn environment(
    pod: &Pod,
    c: &Container,
    image_env: &[String],
    sources: &EnvSources,
) -> Result<Vec<(String, String)>, ConfigError> {
    Ok(runtime_environment(
        pod,
        image_env,
        kubelet_environment(pod, c, sources)?,
    ))
}

fn runtime_environment(
    pod: &Pod,
    image_env: &[String],
    container_env: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let hostname = if pod.spec.host_network {
        crate::config::hostname()
    } else {
        pod.metadata.name.clone()
    };
    set(&mut env, "HOSTNAME".to_string(), hostname);
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut env, k.to_string(), v.to_string());
    }
    for (k, v) in container_env {
        set(&mut env, k, v);
    }
    env
}

fn set(env: &mut Vec<(String, String)>, k: String, v: String) {
    match env.iter_mut().find(|(n, _)| *n == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    }
}

/// Where `valueFrom` and `envFrom` read from.
pub struct EnvSources<'a> {
    pub objects: &'a dyn ObjectSource,
    pub addresses: &'a Addresses,
    /// The node's CPUs and memory: `resourceFieldRef` of a limit the container does not set.
    pub node: &'a NodeCapacity,
}

/// kubelet's `makeEnvironmentVariables`: `envFrom` in order (keys with the prefix; invalid
/// names skipped with a warning), then `env` in order, each `value` expanded against what is
/// defined so far (not the image's variables: kubelet never sees them), later wins. Missing
/// non-optional objects and keys are kubelet's `CreateContainerConfigError` messages.
pub fn kubelet_environment(
    pod: &Pod,
    c: &Container,
    sources: &EnvSources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = &pod.metadata.namespace;
    let mut env: Vec<(String, String)> = Vec::new();
    for from in &c.env_from {
        let (object, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (
                sources.objects.config_map(ns, &r.name),
                (r.optional == Some(true), "configmap", &r.name),
            ),
            (None, Some(r)) => (
                sources.objects.secret(ns, &r.name),
                (r.optional == Some(true), "secret", &r.name),
            ),
            (None, None) => continue,
        };
        let (optional, kind, name) = optional;
        let object = match object.map_err(ConfigError)? {
            Some(o) => o,
            None if optional => continue,
            None => return Err(ConfigError(format!("{kind} {name:?} not found"))),
        };
        let mut invalid = Vec::new();
        for (key, value) in object.data {
            let k = format!("{}{key}", from.prefix);
            if crate::k8s::validate::env_var_name_problem(&k).is_some() {
                invalid.push(k);
                continue;
            }
            set(&mut env, k, String::from_utf8_lossy(&value).into_owned());
        }
        if !invalid.is_empty() {
            log::warn!(
                "pod {ns}/{}: container {:?}: keys [{}] from the EnvFrom {kind} {ns}/{name} were skipped since they are considered invalid environment variable names",
                pod.metadata.name,
                c.name,
                invalid.join(", ")
            );
        }
    }
    for var in &c.env {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => {
                let current = env.clone();
                let lookup = |name: &str| {
                    current
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                expand(v, &lookup)
            }
            (_, Some(from)) => match value_from(pod, c, &var.name, from, sources)? {
                Some(v) => v,
                // An optional object or key that is missing: the variable is not set.
                None => continue,
            },
            _ => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn value_from(
    pod: &Pod,
    c: &Container,
    name: &str,
    from: &EnvVarSource,
    sources: &EnvSources,
) -> Result<Option<String>, ConfigError> {
    let ns = &pod.metadata.namespace;
    if let Some(r) = &from.resource_field_ref {
        return resources::resource_field_ref(pod, c, name, r, sources.node).map(Some);
    }
    if let Some(r) = &from.field_ref {
        return field_value(pod, &r.field_path, sources.addresses)
            .map(Some)
            .ok_or_else(|| {
                ConfigError(format!(
                    "container {:?}: env {name:?}: unsupported fieldPath {:?}",
                    c.name, r.field_path
                ))
            });
    }
    let (selector, object, kind, object_kind) = match (
        &from.config_map_key_ref,
        &from.secret_key_ref,
    ) {
        (Some(k), _) => (
            k,
            sources.objects.config_map(ns, &k.name),
            "configmap",
            "ConfigMap",
        ),
        (None, Some(k)) => (k, sources.objects.secret(ns, &k.name), "secret", "Secret"),
        (None, None) => {
            return Err(ConfigError(format!(
                "container {:?}: env {name:?}: this valueFrom source is not supported by nanolet",
                c.name
            )));
        }
    };
    let optional = selector.optional == Some(true);
    let object = match object.map_err(ConfigError)? {
        Some(o) => o,
        None if optional => return Ok(None),
        None => {
            return Err(ConfigError(format!("{kind} {:?} not found", selector.name)));
        }
    };
    match object.data.get(&selector.key) {
        Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        None if optional => Ok(None),
        None => Err(ConfigError(format!(
            "couldn't find key {} in {object_kind} {ns}/{}",
            selector.key, selector.name
        ))),
    }
}

/// The value of a pod field for `fieldRef` (env and downwardAPI files): kubelet's
/// `podFieldSelectorRuntimeValue` and `ExtractFieldPathAsString`. `None`: not a field path.
pub fn field_value(pod: &Pod, path: &str, addresses: &Addresses) -> Option<String> {
    let meta = &pod.metadata;
    let first = |ips: &[String]| ips.first().cloned().unwrap_or_default();
    Some(match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => format_map(&meta.labels),
        "metadata.annotations" => format_map(&meta.annotations),
        "spec.nodeName" => pod.spec.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.service_account_name().to_string(),
        "status.hostIP" => first(&addresses.host_ips),
        "status.hostIPs" => addresses.host_ips.join(","),
        "status.podIP" => first(&addresses.pod_ips),
        "status.podIPs" => addresses.pod_ips.join(","),
        _ => match crate::k8s::validate_volumes::subscript(path)? {
            ("metadata.labels", k) => meta.labels.get(k).cloned().unwrap_or_default(),
            (_, k) => meta.annotations.get(k).cloned().unwrap_or_default(),
        },
    })
}

/// kubelet's `FormatMap`: sorted `key="value"` lines (Go's %q quoting), no trailing newline.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `%q` of a string, for the characters label and annotation values hold.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::k8s::object::DataObject;

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

    struct Objects;
    impl ObjectSource for Objects {
        fn config_map(&self, ns: &str, name: &str) -> Result<Option<DataObject>, String> {
            let data: &[(&str, &str)] = match name {
                "cfg" => &[("MODE", "fast"), ("1BAD", "x"), ("A", "from-cfg")],
                "other" => &[("MODE", "slow")],
                _ => return Ok(None),
            };
            Ok(Some(DataObject {
                kind: "ConfigMap",
                namespace: ns.into(),
                name: name.into(),
                data: data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            }))
        }
        fn secret(&self, ns: &str, name: &str) -> Result<Option<DataObject>, String> {
            Ok((name == "s").then(|| DataObject {
                kind: "Secret",
                namespace: ns.into(),
                name: name.into(),
                data: [("password".to_string(), b"hunter2".to_vec())].into(),
            }))
        }
    }

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = "web-edge".into();
        pod.metadata.uid = "u1".into();
        pod.metadata.labels.insert("app".into(), "web".into());
        pod.metadata.annotations.insert("a/b".into(), "c".into());
        pod.spec.node_name = "edge".into();
        pod.spec.service_account_name = Some(serde_json::json!("robot"));
        pod
    }

    fn container(spec: serde_json::Value) -> Container {
        let mut c: Container = serde_json::from_value(spec).unwrap();
        c.name = "c".into();
        c
    }

    fn env_of(c: &Container) -> Result<Vec<(String, String)>, ConfigError> {
        let addresses = Addresses {
            host_ips: vec!["192.0.2.10".into()],
            pod_ips: vec!["10.1.0.5".into(), "fd00::5".into()],
        };
        let sources = EnvSources {
            objects: &Objects,
            addresses: &addresses,
            node: &NODE,
        };
        environment(&pod(), c, &image().env, &sources)
    }

    #[test]
    fn environment_orders_like_containerd_and_expands_like_kubelet() {
        let c = container(serde_json::json!({"env": [
            {"name": "A", "value": "pod"},
            // kubelet does not see the image's variables: $(PATH) stays.
            {"name": "B", "value": "$(A)-$(PATH)-$$(A)"},
            {"name": "EMPTY", "value": ""},
        ]}));
        let env = env_of(&c).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("pod"));
        assert_eq!(get("B"), Some("pod-$(PATH)-$(A)"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("HOSTNAME"), Some("web-edge"));
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        // HOSTNAME, then the image's (A replaced in place), then the container's.
        assert_eq!(names, ["HOSTNAME", "PATH", "A", "B", "EMPTY"]);
    }

    #[test]
    fn every_field_ref_resolves() {
        let cases = [
            ("metadata.name", "web-edge"),
            ("metadata.namespace", "default"),
            ("metadata.uid", "u1"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['a/b']", "c"),
            ("spec.nodeName", "edge"),
            ("spec.serviceAccountName", "robot"),
            ("status.hostIP", "192.0.2.10"),
            ("status.hostIPs", "192.0.2.10"),
            ("status.podIP", "10.1.0.5"),
            ("status.podIPs", "10.1.0.5,fd00::5"),
        ];
        for (path, want) in cases {
            let c = container(serde_json::json!({"env": [
                {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": path}}}]}));
            let env = env_of(&c).unwrap();
            assert_eq!(
                env.last().unwrap(),
                &("X".to_string(), want.to_string()),
                "{path}"
            );
        }
    }

    #[test]
    fn env_from_then_env_later_wins_with_prefixes_and_invalid_keys_skipped() {
        let c = container(serde_json::json!({
            "envFrom": [
                {"configMapRef": {"name": "cfg"}},
                {"configMapRef": {"name": "other"}, "prefix": "O_"},
                {"configMapRef": {"name": "other"}},
                {"secretRef": {"name": "s"}, "prefix": "S_"},
                {"secretRef": {"name": "nope", "optional": true}},
            ],
            "env": [
                {"name": "A", "value": "$(MODE)-$(S_password)"},
                {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x", "optional": true}}},
                {"name": "GONE2", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": true}}},
            ],
        }));
        let env = env_of(&c).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MODE"), Some("slow"));
        assert_eq!(get("O_MODE"), Some("slow"));
        assert_eq!(get("S_password"), Some("hunter2"));
        assert_eq!(get("1BAD"), None);
        assert_eq!(get("A"), Some("slow-hunter2"));
        assert_eq!(get("K"), Some("fast"));
        assert_eq!(get("P"), Some("hunter2"));
        assert_eq!(get("GONE"), None);
        assert_eq!(get("GONE2"), None);
    }

    #[test]
    fn missing_objects_and_keys_give_kubelets_messages() {
        let cases = [
            (
                serde_json::json!({"envFrom": [{"configMapRef": {"name": "nope"}}]}),
                "configmap \"nope\" not found",
            ),
            (
                serde_json::json!({"envFrom": [{"secretRef": {"name": "nope"}}]}),
                "secret \"nope\" not found",
            ),
            (
                serde_json::json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nokey"}}}]}),
                "couldn't find key nokey in ConfigMap default/cfg",
            ),
            (
                serde_json::json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nokey"}}}]}),
                "couldn't find key nokey in Secret default/s",
            ),
            (
                serde_json::json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}),
                "secret \"gone\" not found",
            ),
        ];
        for (spec, want) in cases {
            let err = env_of(&container(spec.clone())).unwrap_err();
            assert_eq!(err.0, want, "{spec}");
        }
    }
}
