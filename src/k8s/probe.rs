//! `v1` Probe, LifecycleHandler and Lifecycle: the wire types and the API server's rules for
//! them, plus [`Probe::action`] / [`LifecycleHandler::action`], which resolve a handler (named
//! ports included) into one typed [`Action`] the prober can run without asking again.
//!
//! It must never do I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An `IntOrString` port: a number, or the name of one of the container's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

/// `exec`: a command run inside the container; exit code 0 is success.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExecAction {
    pub command: Vec<String>,
}

/// One `httpHeaders` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// `httpGet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpGetAction {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub port: IntOrString,
    /// Defaults to the pod IP (`127.0.0.1` for hostNetwork pods on nanolet).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// `tcpSocket`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TcpSocketAction {
    pub port: IntOrString,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// `grpc`: `grpc.health.v1.Health/Check` on a number port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GrpcAction {
    pub port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `sleep` (lifecycle hooks only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SleepAction {
    pub seconds: i64,
}

/// The `v1` Probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

/// The `v1` LifecycleHandler (postStart, preStop).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LifecycleHandler {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// Deprecated and never run by kubelet; accepted so that old manifests parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepAction>,
}

/// The `v1` Lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Lifecycle {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_start: Option<LifecycleHandler>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<LifecycleHandler>,
    /// Accepted, not acted on (the image's StopSignal is used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<Value>,
}

/// Which probe: they differ in defaults and in what a failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    /// The field name, e.g. `livenessProbe`.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }

    /// kubelet's word for it in messages (`Liveness probe failed: ...`).
    pub fn word(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A handler with every name resolved: what the prober runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exec {
        command: Vec<String>,
    },
    HttpGet {
        scheme: Scheme,
        /// Empty: the pod's address.
        host: String,
        port: u16,
        /// Always starts with `/`.
        path: String,
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        host: String,
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
    Sleep {
        seconds: u64,
    },
}

/// The probe's timing, with the API server's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay_seconds: u32,
    pub timeout_seconds: u32,
    pub period_seconds: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe-level grace period for a kill this probe causes; `None`: the pod's.
    pub termination_grace_period_seconds: Option<u64>,
}

impl Probe {
    /// Timing with the API server's defaults (timeout 1, period 10, success 1, failure 3).
    /// Call on a validated probe: out-of-range values are clamped, never trusted.
    pub fn timing(&self) -> Timing {
        let pos = |v: Option<i64>, default: u32| v.map_or(default, |v| v.clamp(1, 1 << 30) as u32);
        Timing {
            initial_delay_seconds: self.initial_delay_seconds.unwrap_or(0).clamp(0, 1 << 30) as u32,
            timeout_seconds: pos(self.timeout_seconds, 1),
            period_seconds: pos(self.period_seconds, 10),
            success_threshold: pos(self.success_threshold, 1),
            failure_threshold: pos(self.failure_threshold, 3),
            termination_grace_period_seconds: self
                .termination_grace_period_seconds
                .map(|t| t.max(0) as u64),
        }
    }

    /// The one handler, resolved against the container's `ports`.
    pub fn action(&self, ports: Option<&Value>) -> Result<Action, String> {
        let handlers = [
            self.exec.as_ref().map(exec_action),
            self.http_get.as_ref().map(|h| http_action(h, ports)),
            self.tcp_socket.as_ref().map(|t| tcp_action(t, ports)),
            self.grpc.as_ref().map(grpc_action),
        ];
        one_handler(handlers, "exec, httpGet, tcpSocket, grpc")
    }
}

impl LifecycleHandler {
    /// The one handler, resolved against the container's `ports`.
    pub fn action(&self, ports: Option<&Value>) -> Result<Action, String> {
        let handlers = [
            self.exec.as_ref().map(exec_action),
            self.http_get.as_ref().map(|h| http_action(h, ports)),
            self.tcp_socket
                .as_ref()
                .map(|_| Err("tcpSocket: not supported in lifecycle hooks".to_string())),
            self.sleep.as_ref().map(|s| {
                if s.seconds < 0 {
                    Err(format!(
                        "sleep.seconds: {}: must be greater than or equal to 0",
                        s.seconds
                    ))
                } else {
                    Ok(Action::Sleep {
                        seconds: s.seconds as u64,
                    })
                }
            }),
        ];
        one_handler(handlers, "exec, httpGet, sleep")
    }
}

fn one_handler(
    handlers: [Option<Result<Action, String>>; 4],
    names: &str,
) -> Result<Action, String> {
    let mut set = handlers.into_iter().flatten();
    match (set.next(), set.next()) {
        (Some(action), None) => action,
        (None, _) => Err(format!("must specify a handler type (one of {names})")),
        (Some(_), Some(_)) => Err(format!(
            "may not specify more than one handler type ({names})"
        )),
    }
}

fn exec_action(e: &ExecAction) -> Result<Action, String> {
    if e.command.is_empty() {
        return Err("exec.command: required".to_string());
    }
    Ok(Action::Exec {
        command: e.command.clone(),
    })
}

fn http_action(h: &HttpGetAction, ports: Option<&Value>) -> Result<Action, String> {
    let port = resolve_port(&h.port, ports).map_err(|e| format!("httpGet.port: {e}"))?;
    let scheme = match h.scheme.as_deref() {
        None | Some("HTTP") => Scheme::Http,
        Some("HTTPS") => Scheme::Https,
        Some(other) => {
            return Err(format!(
                "httpGet.scheme: {other:?}: supported values: \"HTTP\", \"HTTPS\""
            ));
        }
    };
    let mut headers = Vec::new();
    for (i, header) in h.http_headers.iter().enumerate() {
        if !is_http_token(&header.name) {
            return Err(format!(
                "httpGet.httpHeaders[{i}].name: {:?}: a valid HTTP header name is required",
                header.name
            ));
        }
        if header.value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(format!(
                "httpGet.httpHeaders[{i}].value: must not contain line breaks"
            ));
        }
        headers.push((header.name.clone(), header.value.clone()));
    }
    if let Some(p) = host_problem(&h.host) {
        return Err(format!("httpGet.host: {p}"));
    }
    let path = if h.path.is_empty() {
        "/".to_string()
    } else if h.path.starts_with('/') {
        h.path.clone()
    } else {
        format!("/{}", h.path)
    };
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "httpGet.path: {:?}: must not contain spaces or control characters",
            h.path
        ));
    }
    Ok(Action::HttpGet {
        scheme,
        host: h.host.clone(),
        port,
        path,
        headers,
    })
}

fn tcp_action(t: &TcpSocketAction, ports: Option<&Value>) -> Result<Action, String> {
    let port = resolve_port(&t.port, ports).map_err(|e| format!("tcpSocket.port: {e}"))?;
    if let Some(p) = host_problem(&t.host) {
        return Err(format!("tcpSocket.host: {p}"));
    }
    Ok(Action::TcpSocket {
        host: t.host.clone(),
        port,
    })
}

/// Probes go to IP addresses only: resolving a name would block the agent's one thread.
fn host_problem(host: &str) -> Option<String> {
    (!host.is_empty() && host.parse::<std::net::IpAddr>().is_err()).then(|| {
        format!("{host:?}: must be an IP address (nanolet does not resolve host names for probes)")
    })
}

fn grpc_action(g: &GrpcAction) -> Result<Action, String> {
    let port = number_port(g.port).map_err(|e| format!("grpc.port: {e}"))?;
    Ok(Action::Grpc {
        port,
        service: g.service.clone().unwrap_or_default(),
    })
}

fn number_port(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("{n}: must be between 1 and 65535, inclusive")),
    }
}

/// A port number, or a name looked up in the container's `ports` (`name` → `containerPort`).
fn resolve_port(port: &IntOrString, ports: Option<&Value>) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => number_port(*n),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<i64>() {
                return number_port(n);
            }
            let named = ports
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()));
            match named
                .and_then(|p| p.get("containerPort"))
                .and_then(Value::as_i64)
            {
                Some(n) => number_port(n),
                None => Err(format!(
                    "{name:?}: no container port with this name (ports[].name)"
                )),
            }
        }
    }
}

fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a probe like the API server does; calls `problem(field, message)` for each problem.
pub fn validate_probe(
    path: &str,
    kind: ProbeKind,
    probe: &Probe,
    ports: Option<&Value>,
    problem: &mut impl FnMut(String, String),
) {
    let path = format!("{path}.{}", kind.field());
    if let Err(e) = probe.action(ports) {
        problem(path.clone(), e);
    } else if let Some(h) = &probe.http_get
        && h.scheme.as_deref() == Some("HTTPS")
    {
        problem(
            format!("{path}.httpGet.scheme"),
            "\"HTTPS\": not supported by nanolet (use HTTP, tcpSocket or exec)".to_string(),
        );
    }
    let non_negative = [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        (
            "terminationGracePeriodSeconds",
            probe.termination_grace_period_seconds,
        ),
    ];
    for (field, value) in non_negative {
        if let Some(v) = value
            && v < 0
        {
            problem(
                format!("{path}.{field}"),
                format!("{v}: must be greater than or equal to 0"),
            );
        }
    }
    if probe.termination_grace_period_seconds == Some(0) {
        problem(
            format!("{path}.terminationGracePeriodSeconds"),
            "0: must be greater than 0".to_string(),
        );
    }
    let positive = [
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ];
    for (field, value) in positive {
        if let Some(v) = value
            && v < 1
        {
            problem(
                format!("{path}.{field}"),
                format!("{v}: must be greater than or equal to 1"),
            );
        }
    }
    if kind != ProbeKind::Readiness
        && let Some(s) = probe.success_threshold
        && s != 1
    {
        problem(
            format!("{path}.successThreshold"),
            format!("{s}: must be 1"),
        );
    }
    if kind == ProbeKind::Readiness && probe.termination_grace_period_seconds.is_some() {
        problem(
            format!("{path}.terminationGracePeriodSeconds"),
            "must not be set for readinessProbes".to_string(),
        );
    }
}

/// Checks `lifecycle` like the API server does.
pub fn validate_lifecycle(
    path: &str,
    lifecycle: &Lifecycle,
    ports: Option<&Value>,
    problem: &mut impl FnMut(String, String),
) {
    let hooks = [
        ("postStart", lifecycle.post_start.as_ref()),
        ("preStop", lifecycle.pre_stop.as_ref()),
    ];
    for (field, hook) in hooks {
        let Some(hook) = hook else { continue };
        let path = format!("{path}.lifecycle.{field}");
        match hook.action(ports) {
            Err(e) => problem(path, e),
            Ok(Action::HttpGet {
                scheme: Scheme::Https,
                ..
            }) => problem(
                format!("{path}.httpGet.scheme"),
                "\"HTTPS\": not supported by nanolet (use HTTP or exec)".to_string(),
            ),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn probe(json: Value) -> Probe {
        serde_json::from_value(json).unwrap()
    }

    fn problems(kind: ProbeKind, p: &Probe, ports: Option<&Value>) -> Vec<String> {
        let mut out = Vec::new();
        validate_probe("spec.containers[0]", kind, p, ports, &mut |f, m| {
            out.push(format!("{f}: {m}"))
        });
        out
    }

    #[test]
    fn defaults_are_the_api_servers() {
        let t = probe(serde_json::json!({"exec": {"command": ["true"]}})).timing();
        assert_eq!(
            t,
            Timing {
                initial_delay_seconds: 0,
                timeout_seconds: 1,
                period_seconds: 10,
                success_threshold: 1,
                failure_threshold: 3,
                termination_grace_period_seconds: None,
            }
        );
    }

    #[test]
    fn named_ports_resolve_against_container_ports() {
        let ports = serde_json::json!([{"name": "http", "containerPort": 8080}]);
        let p = probe(serde_json::json!({"httpGet": {"port": "http", "path": "healthz"}}));
        assert_eq!(
            p.action(Some(&ports)).unwrap(),
            Action::HttpGet {
                scheme: Scheme::Http,
                host: String::new(),
                port: 8080,
                path: "/healthz".into(),
                headers: vec![],
            }
        );
        let p = probe(serde_json::json!({"tcpSocket": {"port": "metrics"}}));
        let err = problems(ProbeKind::Liveness, &p, Some(&ports));
        assert_eq!(
            err,
            [
                "spec.containers[0].livenessProbe: tcpSocket.port: \"metrics\": no container port with this name (ports[].name)"
            ]
        );
    }

    #[test]
    fn each_rule_reports_its_field() {
        let cases: &[(ProbeKind, Value, &str)] = &[
            (
                ProbeKind::Liveness,
                serde_json::json!({}),
                "livenessProbe: must specify a handler type",
            ),
            (
                ProbeKind::Liveness,
                serde_json::json!({"exec": {"command": ["x"]}, "tcpSocket": {"port": 1}}),
                "livenessProbe: may not specify more than one handler type",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"exec": {}}),
                "readinessProbe: exec.command: required",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"tcpSocket": {"port": 0}}),
                "tcpSocket.port: 0: must be between 1 and 65535",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"tcpSocket": {"port": 70000}}),
                "tcpSocket.port: 70000",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"grpc": {"port": -1}}),
                "grpc.port: -1",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"tcpSocket": {"port": 80, "host": "db.local"}}),
                "tcpSocket.host: \"db.local\": must be an IP address",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"httpGet": {"port": 80, "scheme": "FTP"}}),
                "httpGet.scheme: \"FTP\"",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"httpGet": {"port": 80, "scheme": "HTTPS"}}),
                "httpGet.scheme: \"HTTPS\": not supported by nanolet",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"httpGet": {"port": 80, "httpHeaders": [{"name": "a b", "value": "x"}]}}),
                "httpGet.httpHeaders[0].name: \"a b\"",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"exec": {"command": ["x"]}, "periodSeconds": 0}),
                "readinessProbe.periodSeconds: 0: must be greater than or equal to 1",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"exec": {"command": ["x"]}, "failureThreshold": -2}),
                "readinessProbe.failureThreshold: -2",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"exec": {"command": ["x"]}, "timeoutSeconds": 0}),
                "readinessProbe.timeoutSeconds: 0",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"exec": {"command": ["x"]}, "initialDelaySeconds": -1}),
                "readinessProbe.initialDelaySeconds: -1",
            ),
            (
                ProbeKind::Liveness,
                serde_json::json!({"exec": {"command": ["x"]}, "successThreshold": 2}),
                "livenessProbe.successThreshold: 2: must be 1",
            ),
            (
                ProbeKind::Startup,
                serde_json::json!({"exec": {"command": ["x"]}, "successThreshold": 3}),
                "startupProbe.successThreshold: 3: must be 1",
            ),
            (
                ProbeKind::Readiness,
                serde_json::json!({"exec": {"command": ["x"]}, "terminationGracePeriodSeconds": 5}),
                "readinessProbe.terminationGracePeriodSeconds: must not be set",
            ),
            (
                ProbeKind::Liveness,
                serde_json::json!({"exec": {"command": ["x"]}, "terminationGracePeriodSeconds": 0}),
                "livenessProbe.terminationGracePeriodSeconds: 0: must be greater than 0",
            ),
        ];
        for (kind, json, want) in cases {
            let got = problems(*kind, &probe(json.clone()), None).join("; ");
            assert!(got.contains(want), "{json}: {got}");
        }
        let fine = probe(serde_json::json!({"exec": {"command": ["x"]}, "successThreshold": 2}));
        assert!(problems(ProbeKind::Readiness, &fine, None).is_empty());
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = serde_json::from_value::<Probe>(serde_json::json!({"exec": {"cmd": ["x"]}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `cmd`"), "{err}");
    }

    #[test]
    fn lifecycle_hooks() {
        let l: Lifecycle = serde_json::from_value(serde_json::json!({
            "postStart": {"sleep": {"seconds": 1}},
            "preStop": {"tcpSocket": {"port": 80}},
        }))
        .unwrap();
        let mut out = Vec::new();
        validate_lifecycle("spec.containers[0]", &l, None, &mut |f, m| {
            out.push(format!("{f}: {m}"))
        });
        assert_eq!(
            out,
            ["spec.containers[0].lifecycle.preStop: tcpSocket: not supported in lifecycle hooks"]
        );
        assert_eq!(
            l.post_start.unwrap().action(None),
            Ok(Action::Sleep { seconds: 1 })
        );
    }
}
