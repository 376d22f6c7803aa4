//! The API server's rules for volumes, volume mounts and environment sources, in the same
//! style as [`super::validate`] (which calls these): every problem with its field path.
//!
//! It must never modify the pod or do I/O.

use std::collections::BTreeSet;

use super::env::{EnvFromSource, EnvVarSource, KeySelector};
use super::pod::{Container, PodSpec};
use super::validate::{dns1123_label_problem, dns1123_subdomain_problem, env_var_name_problem};
use super::volume::{
    DownwardApiVolumeFile, KeyToPath, ProjectedVolumeSource, Source, Volume, parse_size,
};

/// Field paths a downwardAPI volume file may name (besides subscripted labels/annotations).
const VOLUME_FIELD_PATHS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];

/// Field paths an env var's `fieldRef` may name (besides subscripted labels/annotations).
pub const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

type Problem<'p> = &'p mut dyn FnMut(String, String);

/// `spec.volumes`: names, exactly one source each, and each source's own rules.
pub fn validate_volumes(spec: &PodSpec, problem: Problem) {
    let mut names = BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        if v.name.is_empty() {
            problem(format!("{path}.name"), "required".into());
        } else if let Some(p) = dns1123_label_problem(&v.name) {
            problem(format!("{path}.name"), format!("{:?}: {p}", v.name));
        } else if !names.insert(v.name.as_str()) {
            problem(
                format!("{path}.name"),
                format!("{:?}: duplicate volume name", v.name),
            );
        }
        validate_source(&path, v, problem);
    }
}

fn validate_source(path: &str, v: &Volume, problem: Problem) {
    let sources = v.sources();
    let source = match sources.as_slice() {
        [] => return problem(path.to_string(), "must specify a volume type".into()),
        [one] => *one,
        _ => {
            return problem(
                path.to_string(),
                "may not specify more than 1 volume type".into(),
            );
        }
    };
    match source {
        Source::EmptyDir(e) => {
            let p = format!("{path}.emptyDir");
            if !matches!(e.medium.as_str(), "" | "Memory") {
                problem(
                    format!("{p}.medium"),
                    format!(
                        "{:?}: supported values: \"\", \"Memory\" (nanolet has no hugepages volumes)",
                        e.medium
                    ),
                );
            }
            if let Err(m) = parse_size(e.size_limit.as_ref()) {
                problem(format!("{p}.sizeLimit"), m);
            }
        }
        Source::HostPath(h) => {
            let p = format!("{path}.hostPath.path");
            if h.path.is_empty() {
                problem(p, "required".into());
            } else if has_backstep(&h.path) {
                problem(p, format!("{:?}: must not contain '..'", h.path));
            }
        }
        Source::ConfigMap(c) => {
            let p = format!("{path}.configMap");
            object_name(&format!("{p}.name"), &c.name, problem);
            key_to_paths(&p, &c.items, problem);
            mode(&format!("{p}.defaultMode"), c.default_mode, problem);
        }
        Source::Secret(s) => {
            let p = format!("{path}.secret");
            object_name(&format!("{p}.secretName"), &s.secret_name, problem);
            key_to_paths(&p, &s.items, problem);
            mode(&format!("{p}.defaultMode"), s.default_mode, problem);
        }
        Source::DownwardApi(d) => {
            let p = format!("{path}.downwardAPI");
            downward_files(&p, &d.items, problem);
            mode(&format!("{p}.defaultMode"), d.default_mode, problem);
        }
        Source::Projected(pr) => projected(&format!("{path}.projected"), pr, problem),
        // Valid Kubernetes; refused when a container mounts it (see pod::volumes).
        Source::Unsupported(_) => {}
    }
}

fn projected(p: &str, pr: &ProjectedVolumeSource, problem: Problem) {
    mode(&format!("{p}.defaultMode"), pr.default_mode, problem);
    let mut paths = BTreeSet::new();
    for (j, s) in pr.sources.iter().enumerate() {
        let sp = format!("{p}.sources[{j}]");
        let set = usize::from(s.config_map.is_some())
            + usize::from(s.secret.is_some())
            + usize::from(s.downward_api.is_some())
            + usize::from(s.service_account_token.is_some())
            + usize::from(s.cluster_trust_bundle.is_some())
            + usize::from(s.pod_certificate.is_some());
        if set != 1 {
            problem(sp.clone(), "must specify exactly 1 projection type".into());
        }
        let mut files: Vec<&str> = Vec::new();
        if let Some(c) = &s.config_map {
            object_name(&format!("{sp}.configMap.name"), &c.name, problem);
            key_to_paths(&format!("{sp}.configMap"), &c.items, problem);
            files.extend(c.items.iter().map(|k| k.path.as_str()));
        }
        if let Some(c) = &s.secret {
            object_name(&format!("{sp}.secret.name"), &c.name, problem);
            key_to_paths(&format!("{sp}.secret"), &c.items, problem);
            files.extend(c.items.iter().map(|k| k.path.as_str()));
        }
        if let Some(d) = &s.downward_api {
            downward_files(&format!("{sp}.downwardAPI"), &d.items, problem);
            files.extend(d.items.iter().map(|f| f.path.as_str()));
        }
        let token = s
            .service_account_token
            .as_ref()
            .map(crate::k8s::volume::TokenProjection::of);
        if let Some(t) = &token {
            file_path(&format!("{sp}.serviceAccountToken.path"), &t.path, problem);
            files.push(&t.path);
        }
        for f in files {
            if !paths.insert(f.to_string()) {
                problem(sp.clone(), format!("{f:?}: conflicting duplicate paths"));
            }
        }
    }
}

fn object_name(path: &str, name: &str, problem: Problem) {
    if name.is_empty() {
        problem(path.to_string(), "required".into());
    } else if let Some(p) = dns1123_subdomain_problem(name) {
        problem(path.to_string(), format!("{name:?}: {p}"));
    }
}

fn key_to_paths(path: &str, items: &[KeyToPath], problem: Problem) {
    for (i, k) in items.iter().enumerate() {
        let p = format!("{path}.items[{i}]");
        if let Some(m) = config_key_problem(&k.key) {
            problem(format!("{p}.key"), m);
        }
        file_path(&format!("{p}.path"), &k.path, problem);
        mode(&format!("{p}.mode"), k.mode, problem);
    }
}

fn downward_files(path: &str, items: &[DownwardApiVolumeFile], problem: Problem) {
    for (i, f) in items.iter().enumerate() {
        let p = format!("{path}.items[{i}]");
        file_path(&format!("{p}.path"), &f.path, problem);
        mode(&format!("{p}.mode"), f.mode, problem);
        match (&f.field_ref, &f.resource_field_ref) {
            (Some(r), None) => {
                if !VOLUME_FIELD_PATHS.contains(&r.field_path.as_str())
                    && subscript(&r.field_path).is_none()
                {
                    problem(
                        format!("{p}.fieldRef.fieldPath"),
                        unsupported(&r.field_path, VOLUME_FIELD_PATHS),
                    );
                }
            }
            (None, Some(_)) => {}
            (None, None) => problem(
                p,
                "must specify one of: `fieldRef` or `resourceFieldRef`".into(),
            ),
            (Some(_), Some(_)) => problem(
                p,
                "fieldRef and resourceFieldRef can not be specified simultaneously".into(),
            ),
        }
    }
}

/// A path inside a volume: relative, no `..` element, not starting with `..`.
fn file_path(path: &str, value: &str, problem: Problem) {
    if let Some(m) = relative_path_problem(value, true) {
        problem(path.to_string(), m);
    }
}

/// Why `value` is not a relative path that stays below its folder, if it is not.
pub fn relative_path_problem(value: &str, required: bool) -> Option<String> {
    if value.is_empty() {
        return required.then(|| "required".into());
    }
    if value.starts_with('/') {
        return Some(format!("{value:?}: must be a relative path"));
    }
    if has_backstep(value) {
        return Some(format!("{value:?}: must not contain '..'"));
    }
    if value.starts_with("..") {
        return Some(format!("{value:?}: must not start with '..'"));
    }
    None
}

fn has_backstep(path: &str) -> bool {
    path.split('/').any(|part| part == "..")
}

fn mode(path: &str, mode: Option<i32>, problem: Problem) {
    if let Some(m) = mode
        && !(0..=0o777).contains(&m)
    {
        problem(
            path.to_string(),
            format!("{m}: must be a number between 0 and 0777 (octal), both inclusive"),
        );
    }
}

/// `metadata.labels['k']` / `metadata.annotations['k']` → (`metadata.labels`, `k`).
pub fn subscript(field_path: &str) -> Option<(&str, &str)> {
    let (head, rest) = field_path.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    matches!(head, "metadata.labels" | "metadata.annotations").then_some((head, key))
}

fn unsupported(value: &str, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "{value:?}: unsupported value: supported values: {}",
        list.join(", ")
    )
}

/// Why `key` is not a valid ConfigMap/Secret key (`[-._a-zA-Z0-9]+`, at most 253), if not.
pub fn config_key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("required".into());
    }
    if key.len() > 253 {
        return Some(format!("{key:?}: must be no more than 253 characters"));
    }
    let ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && key != ".."
        && !key.starts_with("..");
    (!ok).then(|| {
        format!(
            "{key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
        )
    })
}

/// A container's `volumeMounts`, `envFrom` and the `valueFrom` of its `env`.
pub fn validate_container_sources(path: &str, c: &Container, spec: &PodSpec, problem: Problem) {
    let mut mount_paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let p = format!("{path}.volumeMounts[{i}]");
        if m.name.is_empty() {
            problem(format!("{p}.name"), "required".into());
        } else if !spec.volumes.iter().any(|v| v.name == m.name) {
            problem(format!("{p}.name"), format!("{:?}: not found", m.name));
        }
        if m.mount_path.is_empty() {
            problem(format!("{p}.mountPath"), "required".into());
        } else if !m.mount_path.starts_with('/') {
            problem(
                format!("{p}.mountPath"),
                format!("{:?}: must be an absolute path", m.mount_path),
            );
        } else if !mount_paths.insert(m.mount_path.trim_end_matches('/')) {
            problem(
                format!("{p}.mountPath"),
                format!("{:?}: must be unique", m.mount_path),
            );
        }
        if let Some(e) = relative_path_problem(&m.sub_path, false) {
            problem(format!("{p}.subPath"), e);
        }
        if let Some(e) = relative_path_problem(&m.sub_path_expr, false) {
            problem(format!("{p}.subPathExpr"), e);
        }
        if !m.sub_path.is_empty() && !m.sub_path_expr.is_empty() {
            problem(
                format!("{p}.subPathExpr"),
                "subPathExpr and subPath are mutually exclusive".into(),
            );
        }
    }
    for (i, e) in c.env_from.iter().enumerate() {
        env_from(&format!("{path}.envFrom[{i}]"), e, problem);
    }
    for (i, e) in c.env.iter().enumerate() {
        if let Some(from) = &e.value_from {
            value_from(&format!("{path}.env[{i}].valueFrom"), from, problem);
        }
    }
}

fn env_from(path: &str, e: &EnvFromSource, problem: Problem) {
    if !e.prefix.is_empty()
        && let Some(p) = env_var_name_problem(&e.prefix)
    {
        problem(format!("{path}.prefix"), p);
    }
    match (&e.config_map_ref, &e.secret_ref) {
        (Some(r), None) => object_name(&format!("{path}.configMapRef.name"), &r.name, problem),
        (None, Some(r)) => object_name(&format!("{path}.secretRef.name"), &r.name, problem),
        (None, None) => problem(
            path.to_string(),
            "must specify one of: `configMapRef` or `secretRef`".into(),
        ),
        (Some(_), Some(_)) => problem(
            path.to_string(),
            "may not have more than one field specified at a time".into(),
        ),
    }
}

fn value_from(path: &str, from: &EnvVarSource, problem: Problem) {
    match from.count() {
        0 => {
            return problem(
                path.to_string(),
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
                    .into(),
            );
        }
        1 => {}
        _ => {
            return problem(
                path.to_string(),
                "may not have more than one field specified at a time".into(),
            );
        }
    }
    if let Some(r) = &from.field_ref {
        if r.api_version.as_deref().is_some_and(|v| v != "v1") {
            problem(
                format!("{path}.fieldRef.apiVersion"),
                format!("{:?}: unsupported API version", r.api_version),
            );
        }
        if !ENV_FIELD_PATHS.contains(&r.field_path.as_str()) && subscript(&r.field_path).is_none() {
            problem(
                format!("{path}.fieldRef.fieldPath"),
                unsupported(&r.field_path, ENV_FIELD_PATHS),
            );
        }
    }
    let key_ref = |p: String, k: &KeySelector, problem: Problem| {
        object_name(&format!("{p}.name"), &k.name, problem);
        if let Some(m) = config_key_problem(&k.key) {
            problem(format!("{p}.key"), m);
        }
    };
    if let Some(k) = &from.config_map_key_ref {
        key_ref(format!("{path}.configMapKeyRef"), k, problem);
    }
    if let Some(k) = &from.secret_key_ref {
        key_ref(format!("{path}.secretKeyRef"), k, problem);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::{decode_pod, validate};
    use serde_json::{Value, json};

    fn pod(volumes: Value, container: Value) -> Value {
        let mut c = json!({"name": "app", "image": "busybox"});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), container.as_object()) {
            c.extend(extra.clone());
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"volumes": volumes, "containers": [c]}})
    }

    fn problems(v: Value) -> String {
        let p = decode_pod(v).unwrap();
        validate(&p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_pod_with_every_volume_kind_is_valid() {
        let v = pod(
            json!([
                {"name": "a", "emptyDir": {}},
                {"name": "b", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "c", "hostPath": {"path": "/srv", "type": "DirectoryOrCreate"}},
                {"name": "d", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "x/y", "mode": 0o600}], "defaultMode": 0o644}},
                {"name": "e", "secret": {"secretName": "s", "optional": true}},
                {"name": "f", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "g", "projected": {"sources": [{"configMap": {"name": "cfg"}}, {"secret": {"name": "s"}}]}},
            ]),
            json!({"volumeMounts": [{"name": "a", "mountPath": "/a", "subPath": "x"}, {"name": "d", "mountPath": "/d", "readOnly": true}],
                   "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                   "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                           {"name": "Y", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a/b']"}}}]}),
        );
        assert_eq!(problems(v), "");
    }

    #[test]
    fn each_rule_reports_its_field() {
        let cases: &[(Value, Value, &str)] = &[
            (
                json!([{"name": "a"}]),
                json!({}),
                "spec.volumes[0]: must specify a volume type",
            ),
            (
                json!([{"name": "a", "emptyDir": {}, "hostPath": {"path": "/x"}}]),
                json!({}),
                "spec.volumes[0]: may not specify more than 1 volume type",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]),
                json!({}),
                "spec.volumes[1].name: \"a\": duplicate volume name",
            ),
            (
                json!([{"name": "A_", "emptyDir": {}}]),
                json!({}),
                "spec.volumes[0].name: \"A_\"",
            ),
            (
                json!([{"name": "a", "hostPath": {"path": "/x/../etc"}}]),
                json!({}),
                "spec.volumes[0].hostPath.path: \"/x/../etc\": must not contain '..'",
            ),
            (
                json!([{"name": "a", "emptyDir": {"sizeLimit": "lots"}}]),
                json!({}),
                "spec.volumes[0].emptyDir.sizeLimit",
            ),
            (
                json!([{"name": "a", "emptyDir": {"medium": "Disk"}}]),
                json!({}),
                "spec.volumes[0].emptyDir.medium: \"Disk\"",
            ),
            (
                json!([{"name": "a", "configMap": {"name": "c", "defaultMode": 0o1777}}]),
                json!({}),
                "spec.volumes[0].configMap.defaultMode: 1023: must be a number between 0 and 0777",
            ),
            (
                json!([{"name": "a", "configMap": {"name": "c", "items": [{"key": "k", "path": "/abs"}]}}]),
                json!({}),
                "spec.volumes[0].configMap.items[0].path: \"/abs\": must be a relative path",
            ),
            (
                json!([{"name": "a", "secret": {"secretName": "s", "items": [{"key": "k", "path": "a/../../x"}]}}]),
                json!({}),
                "spec.volumes[0].secret.items[0].path: \"a/../../x\": must not contain '..'",
            ),
            (
                json!([{"name": "a", "secret": {"items": [{"key": "k k", "path": "x"}]}}]),
                json!({}),
                "spec.volumes[0].secret.secretName: required; spec.volumes[0].secret.items[0].key: \"k k\": a valid config key",
            ),
            (
                json!([{"name": "a", "downwardAPI": {"items": [{"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}}]}}]),
                json!({}),
                "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath: \"spec.nodeName\": unsupported value",
            ),
            (
                json!([{"name": "a", "projected": {"sources": [{"configMap": {"name": "c", "items": [{"key": "k", "path": "x"}]}}, {"secret": {"name": "s", "items": [{"key": "k", "path": "x"}]}}]}}]),
                json!({}),
                "spec.volumes[0].projected.sources[1]: \"x\": conflicting duplicate paths",
            ),
            (
                json!([]),
                json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
                "spec.containers[0].volumeMounts[0].name: \"nope\": not found",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!({"volumeMounts": [{"name": "a", "mountPath": "rel"}]}),
                "spec.containers[0].volumeMounts[0].mountPath: \"rel\": must be an absolute path",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!({"volumeMounts": [{"name": "a", "mountPath": "/x"}, {"name": "a", "mountPath": "/x/"}]}),
                "spec.containers[0].volumeMounts[1].mountPath: \"/x/\": must be unique",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!({"volumeMounts": [{"name": "a", "mountPath": "/x", "subPath": "../etc"}]}),
                "spec.containers[0].volumeMounts[0].subPath: \"../etc\": must not contain '..'",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!({"volumeMounts": [{"name": "a", "mountPath": "/x", "subPath": "/etc"}]}),
                "subPath: \"/etc\": must be a relative path",
            ),
            (
                json!([{"name": "a", "emptyDir": {}}]),
                json!({"volumeMounts": [{"name": "a", "mountPath": "/x", "subPath": "a", "subPathExpr": "b"}]}),
                "subPathExpr and subPath are mutually exclusive",
            ),
            (
                json!([]),
                json!({"envFrom": [{"prefix": "1X"}]}),
                "and must not start with a digit; spec.containers[0].envFrom[0]: must specify one of: `configMapRef` or `secretRef`",
            ),
            (
                json!([]),
                json!({"env": [{"name": "X", "valueFrom": {}}]}),
                "spec.containers[0].env[0].valueFrom: must specify one of",
            ),
            (
                json!([]),
                json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}, "secretKeyRef": {"name": "s", "key": "k"}}}]}),
                "may not have more than one field specified at a time",
            ),
            (
                json!([]),
                json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}]}),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: \"spec.hostname\": unsupported value",
            ),
            (
                json!([]),
                json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c"}}}]}),
                "spec.containers[0].env[0].valueFrom.configMapKeyRef.key: required",
            ),
        ];
        for (volumes, container, want) in cases {
            let got = problems(pod(volumes.clone(), container.clone()));
            assert!(
                got.contains(want),
                "{volumes} {container}:\n got {got}\nwant {want}"
            );
        }
    }
}
