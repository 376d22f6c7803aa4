//! Pod validation, like the API server's for the fields nanolet acts on.
//!
//! Owns the rules (DNS-1123 names, unique container names, env var names, ...) and reports
//! *all* problems at once, each with its field path (`spec.containers[1].name`), so one edit
//! fixes a manifest. It must never modify the pod or do I/O.

use std::collections::BTreeSet;
use std::fmt;

use super::pod::{Container, Pod};
use super::probe::{self, ProbeKind};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.containers[0].image`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a pod, in field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub problems: Vec<FieldError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// Checks a pod; `Ok` only if nothing is wrong.
pub fn validate(pod: &Pod) -> Result<(), ValidationError> {
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String| problems.push(FieldError { field, message });

    if pod.api_version != "v1" {
        problem("apiVersion".into(), must_be(&pod.api_version, "v1"));
    }
    if pod.kind != "Pod" {
        problem("kind".into(), must_be(&pod.kind, "Pod"));
    }
    let meta = &pod.metadata;
    if meta.name.is_empty() {
        problem("metadata.name".into(), "required".into());
    } else if meta.name.len() > DNS1123_SUBDOMAIN_MAX {
        problem(
            "metadata.name".into(),
            format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"),
        );
    } else if let Some(p) = dns1123_subdomain_problem(&meta.name) {
        problem("metadata.name".into(), format!("{:?}: {p}", meta.name));
    }
    if let Some(p) = dns1123_label_problem(&meta.namespace) {
        problem(
            "metadata.namespace".into(),
            format!("{:?}: {p}", meta.namespace),
        );
    }

    let spec = &pod.spec;
    if spec.containers.is_empty() {
        problem(
            "spec.containers".into(),
            "at least one container is required".into(),
        );
    }
    if let Some(t) = spec.termination_grace_period
        && t < 0
    {
        problem(
            "spec.terminationGracePeriodSeconds".into(),
            format!("{t}: must be greater than or equal to 0"),
        );
    }
    if let Some(t) = spec.active_deadline_seconds
        && t <= 0
    {
        problem(
            "spec.activeDeadlineSeconds".into(),
            format!("{t}: must be greater than 0"),
        );
    }

    let mut names = BTreeSet::new();
    let all = (spec.init_containers.iter().enumerate())
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c, true))
        .chain(
            (spec.containers.iter().enumerate())
                .map(|(i, c)| (format!("spec.containers[{i}]"), c, false)),
        );
    super::validate_volumes::validate_volumes(spec, &mut problem);
    for (path, container, is_init) in all {
        validate_container(&path, container, is_init, &mut names, &mut problem);
        super::validate_volumes::validate_container_sources(&path, container, spec, &mut problem);
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError { problems })
    }
}

fn validate_container(
    path: &str,
    c: &Container,
    is_init: bool,
    names: &mut BTreeSet<String>,
    problem: &mut impl FnMut(String, String),
) {
    if c.name.is_empty() {
        problem(format!("{path}.name"), "required".into());
    } else if let Some(p) = dns1123_label_problem(&c.name) {
        problem(format!("{path}.name"), format!("{:?}: {p}", c.name));
    } else if !names.insert(c.name.clone()) {
        problem(
            format!("{path}.name"),
            format!("{:?}: duplicate container name", c.name),
        );
    }
    if c.image.trim().is_empty() {
        problem(format!("{path}.image"), "must not be empty".into());
    }
    if c.restart_policy.is_some() && !is_init {
        problem(
            format!("{path}.restartPolicy"),
            "may only be set on init containers".into(),
        );
    }
    let probes = [
        (ProbeKind::Liveness, c.liveness_probe.as_ref()),
        (ProbeKind::Readiness, c.readiness_probe.as_ref()),
        (ProbeKind::Startup, c.startup_probe.as_ref()),
    ];
    for (kind, p) in probes {
        let Some(p) = p else { continue };
        if is_init && !c.is_sidecar() {
            problem(
                format!("{path}.{}", kind.field()),
                "may not be set for init containers without restartPolicy=Always".into(),
            );
        } else {
            probe::validate_probe(path, kind, p, c.ports.as_ref(), problem);
        }
    }
    if let Some(l) = &c.lifecycle {
        if is_init && !c.is_sidecar() {
            problem(
                format!("{path}.lifecycle"),
                "may not be set for init containers without restartPolicy=Always".into(),
            );
        } else {
            probe::validate_lifecycle(path, l, c.ports.as_ref(), problem);
        }
    }
    for (i, env) in c.env.iter().enumerate() {
        if let Some(p) = env_var_name_problem(&env.name) {
            problem(format!("{path}.env[{i}].name"), p);
        }
        if env.value.as_deref().is_some_and(|v| !v.is_empty()) && env.value_from.is_some() {
            problem(
                format!("{path}.env[{i}].valueFrom"),
                "may not be specified when `value` is not empty".into(),
            );
        }
    }
}

fn must_be(got: &str, want: &str) -> String {
    if got.is_empty() {
        format!("required, must be {want:?}")
    } else {
        format!("{got:?}: must be {want:?}")
    }
}

/// Why `s` is not a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63), if it is not.
pub fn dns1123_label_problem(s: &str) -> Option<String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Some(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    let ok = match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    };
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character"
            .to_string()
    })
}

/// Why `s` is not a DNS-1123 subdomain (dot-separated labels, at most 253), if it is not.
pub fn dns1123_subdomain_problem(s: &str) -> Option<String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Some(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    // Labels of a subdomain may be up to the whole length; only their characters matter here.
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(&f), Some(&l)) => {
                    alnum(f) && alnum(l) && b.iter().all(|&c| alnum(c) || c == b'-')
                }
                _ => false,
            }
        });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character"
            .to_string()
    })
}

/// Why `s` is not a valid environment variable name (`[-._a-zA-Z][-._a-zA-Z0-9]*`, the API
/// server's classic rule), if it is not.
pub fn env_var_name_problem(s: &str) -> Option<String> {
    let first_ok = |b: u8| b.is_ascii_alphabetic() || matches!(b, b'-' | b'.' | b'_');
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Some("required".into());
    }
    let ok = first_ok(bytes[0]) && bytes.iter().all(|&b| first_ok(b) || b.is_ascii_digit());
    (!ok).then(|| {
        format!(
            "{s:?}: a valid environment variable name must consist of alphabetic characters, \
             digits, '_', '-', or '.', and must not start with a digit"
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::pod::{ContainerRestartPolicy, EnvVar};
    use super::*;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: "busybox:1.36".into(),
            ..Container::default()
        }
    }

    fn pod() -> Pod {
        let mut pod = Pod {
            api_version: "v1".into(),
            kind: "Pod".into(),
            ..Pod::default()
        };
        pod.metadata.name = "web".into();
        pod.spec.containers = vec![container("app")];
        pod
    }

    #[test]
    fn a_minimal_pod_is_valid() {
        assert_eq!(validate(&pod()), Ok(()));
    }

    #[test]
    fn each_rule_reports_its_field() {
        type Edit = fn(&mut Pod);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "no apiVersion",
                |p| p.api_version.clear(),
                "apiVersion: required",
            ),
            (
                "apiVersion v2",
                |p| p.api_version = "v2".into(),
                "apiVersion: \"v2\"",
            ),
            (
                "kind",
                |p| p.kind = "Deployment".into(),
                "kind: \"Deployment\": must be \"Pod\"",
            ),
            (
                "no name",
                |p| p.metadata.name.clear(),
                "metadata.name: required",
            ),
            (
                "bad name",
                |p| p.metadata.name = "Web_1".into(),
                "metadata.name: \"Web_1\"",
            ),
            (
                "long name",
                |p| p.metadata.name = "a".repeat(254),
                "metadata.name: must be no more than 253 characters",
            ),
            (
                "dotted namespace",
                |p| p.metadata.namespace = "a.b".into(),
                "metadata.namespace",
            ),
            (
                "no containers",
                |p| p.spec.containers.clear(),
                "spec.containers: at least one",
            ),
            (
                "bad container name",
                |p| p.spec.containers[0].name = "App".into(),
                "spec.containers[0].name: \"App\"",
            ),
            (
                "empty image",
                |p| p.spec.containers[0].image = " ".into(),
                "spec.containers[0].image: must not be empty",
            ),
            (
                "duplicate",
                |p| p.spec.init_containers = vec![container("app")],
                "spec.containers[0].name: \"app\": duplicate container name",
            ),
            (
                "grace",
                |p| p.spec.termination_grace_period = Some(-1),
                "spec.terminationGracePeriodSeconds: -1",
            ),
            (
                "deadline",
                |p| p.spec.active_deadline_seconds = Some(0),
                "spec.activeDeadlineSeconds: 0",
            ),
            (
                "env name",
                |p| {
                    p.spec.containers[0].env = vec![EnvVar {
                        name: "1X".into(),
                        ..EnvVar::default()
                    }]
                },
                "spec.containers[0].env[0].name: \"1X\"",
            ),
            (
                "sidecar in containers",
                |p| p.spec.containers[0].restart_policy = Some(ContainerRestartPolicy::Always),
                "spec.containers[0].restartPolicy",
            ),
        ];
        for (what, edit, want) in cases {
            let mut p = pod();
            edit(&mut p);
            let err = validate(&p).expect_err(what).to_string();
            assert!(err.contains(want), "{what}: {err}");
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let mut p = pod();
        p.metadata.name.clear();
        p.spec.containers.push(container("app"));
        p.spec.containers[0].image.clear();
        let err = validate(&p).unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.containers[0].image",
                "spec.containers[1].name"
            ]
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "a-b", "0a", "a1"] {
            assert_eq!(dns1123_label_problem(ok), None, "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label_problem(bad).is_some(), "{bad}");
        }
        for ok in ["a.b", "edge-01.example.com", "x"] {
            assert_eq!(dns1123_subdomain_problem(ok), None, "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "A.b", "a_b"] {
            assert!(dns1123_subdomain_problem(bad).is_some(), "{bad}");
        }
        for ok in ["PATH", "_x", "a.b-c", "my_var1"] {
            assert_eq!(env_var_name_problem(ok), None, "{ok}");
        }
        for bad in ["", "1A", "A=B", "A B", "é"] {
            assert!(env_var_name_problem(bad).is_some(), "{bad}");
        }
    }
}
