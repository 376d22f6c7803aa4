//! A fake kube-apiserver for tests: real HTTP/1.1 on 127.0.0.1 (keep-alive, chunked watch
//! streams), in-memory objects with resourceVersions, and fault hooks. It answers as the
//! recorded v1.20 transcripts in `tests/fixtures/kube-apiserver-v1.20/` do (see
//! `tests/api_fixtures.rs`, which replays them against it).
//!
//! What it implements:
//! - create (POST; `generateName`; 409 `AlreadyExists`; 422 `Invalid` for bad names and pods
//!   without containers; pods get the defaults a real server adds), get (404), replace (PUT;
//!   409 `Conflict` on a stale resourceVersion), patch (strategic merge with the list keys
//!   nodes and pods use, or JSON merge; 422 on a wrong `metadata.uid`; `/status` subresource),
//!   delete (graceful for bound pods: deletionTimestamp first, then gone on gracePeriodSeconds
//!   0; uid preconditions), list (fieldSelector `metadata.name`, `metadata.namespace`,
//!   `spec.nodeName`, others 400; labelSelector `k=v`/`k`; `limit` + `continue` tokens in the
//!   real format), watch (synthetic ADDED without resourceVersion, replay from a resourceVersion,
//!   BOOKMARKs, 200 + ERROR 410 from a compacted one, `timeoutSeconds`),
//!   `serviceaccounts/<name>/token` (404 `serviceaccounts "x" not found` unless the
//!   ServiceAccount was created; `default` always exists, as kube-controller-manager creates it
//!   in every namespace), `/version`, `/api`, `/apis`.
//! - faults ([`ApiServer::faults`] and the helpers): a required bearer token (401), queued
//!   error answers (403/429/5xx with `Retry-After`), slow answers (all, or by path), dropped connections,
//!   expired resourceVersions (410 as HTTP status for lists, ERROR events in open watches),
//!   going down (connections refused) and coming back on the same port, gzip answers.
//! - observation: every request with its status, and bytes in and out.
//!
//! Threads are fine here (this is test code): one accept thread, one thread per connection.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};

/// One queued error answer.
#[derive(Debug, Clone)]
pub struct Fail {
    /// The HTTP status (401, 403, 429, 500, 503, ...).
    pub status: u16,
    /// `Retry-After` seconds.
    pub retry_after: Option<u32>,
    /// Only requests whose path contains this (None: any request).
    pub path_contains: Option<String>,
    /// Only requests with this method (None: any).
    pub method: Option<String>,
}

/// Fault knobs; change them through [`ApiServer::faults`].
#[derive(Debug, Default)]
pub struct Faults {
    /// Requests must carry `Authorization: Bearer <token>` (else 401).
    pub token: Option<String>,
    /// Error answers given to the next matching requests, in order.
    pub fail: VecDeque<Fail>,
    /// Every answer waits this long first.
    pub delay: Duration,
    /// Answers to requests whose path contains the string wait this long first (with `delay`).
    pub slow: Vec<(String, Duration)>,
    /// Compress answers with gzip when the client accepts it.
    pub gzip: bool,
    /// BOOKMARK events this often on watches that asked for them (plus one before a watch ends).
    pub bookmark_every: Option<Duration>,
    /// Serve `discovery.k8s.io/v1` EndpointSlices (v1.21+). Off: 404 like the v1.20 server of
    /// the transcripts (24).
    pub endpointslices_v1: bool,
    /// 404 for `discovery.k8s.io/v1beta1` EndpointSlices (a server without them: core/v1
    /// Endpoints only).
    pub no_endpointslices_v1beta1: bool,
}

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query.
    pub query: String,
    /// The body, parsed (Null when none).
    pub body: Value,
    /// The answer's status.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
    /// Bytes on the wire: the request and (except for watches) its answer.
    pub wire_bytes: u64,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    res: &'static str,
    object: Value,
}

/// The fake's state; tests read it through [`ApiServer::state`].
#[derive(Debug)]
pub struct State {
    rv: u64,
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Change>,
    compacted: u64,
    /// The fault knobs.
    pub faults: Faults,
    /// Every request so far.
    pub requests: Vec<Recorded>,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
    /// Watches being streamed now.
    pub watches_open: usize,
    /// TCP connections accepted so far.
    pub connections: u64,
    generation: u64,
    down: bool,
    uids: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running fake; stops (closing every connection) on drop.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// A resource the fake serves.
#[derive(Debug, Clone, Copy)]
struct Res {
    prefix: &'static str,
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const RESOURCES: &[Res] = &[
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "events",
        kind: "Event",
        namespaced: true,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "endpoints",
        kind: "Endpoints",
        namespaced: true,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
    },
    Res {
        prefix: "/api/v1",
        group: "",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    Res {
        prefix: "/apis/coordination.k8s.io/v1",
        group: "coordination.k8s.io",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
    },
    Res {
        prefix: "/apis/discovery.k8s.io/v1beta1",
        group: "discovery.k8s.io",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Res {
        prefix: "/apis/discovery.k8s.io/v1",
        group: "discovery.k8s.io",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Res {
        prefix: "/apis/events.k8s.io/v1",
        group: "events.k8s.io",
        plural: "events",
        kind: "Event",
        namespaced: true,
    },
];

impl Res {
    fn api_version(&self) -> &'static str {
        self.prefix
            .trim_start_matches("/apis/")
            .trim_start_matches("/api/")
    }
    /// `pods`, `leases.coordination.k8s.io`: the qualified resource in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    fn key(&self) -> &'static str {
        self.prefix
    }
}

enum Route {
    Version,
    Api,
    Apis,
    Collection {
        res: Res,
        ns: Option<String>,
    },
    Object {
        res: Res,
        ns: Option<String>,
        name: String,
        sub: Option<String>,
    },
    Unknown,
}

fn route(path: &str) -> Route {
    match path.trim_end_matches('/') {
        "/version" => return Route::Version,
        "/api" => return Route::Api,
        "/apis" => return Route::Apis,
        _ => {}
    }
    for res in RESOURCES {
        let Some(rest) = path.strip_prefix(res.prefix) else {
            continue;
        };
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let (ns, segs) = match segs.as_slice() {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() && res.namespaced => {
                (Some(ns.to_string()), rest.to_vec())
            }
            _ => (None, segs),
        };
        match segs.as_slice() {
            [p] if *p == res.plural => return Route::Collection { res: *res, ns },
            [p, name] if *p == res.plural => {
                return Route::Object {
                    res: *res,
                    ns,
                    name: name.to_string(),
                    sub: None,
                };
            }
            [p, name, sub] if *p == res.plural => {
                return Route::Object {
                    res: *res,
                    ns,
                    name: name.to_string(),
                    sub: Some(sub.to_string()),
                };
            }
            _ => {}
        }
    }
    Route::Unknown
}

/// An answer.
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<u32>,
}

fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        body,
        retry_after: None,
    }
}

/// A `Status` failure body.
pub fn status_body(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}

fn details(res: &Res, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": res.plural});
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    d
}

fn not_found(res: &Res, name: &str) -> Answer {
    answer(
        404,
        status_body(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", res.qualified()),
            Some(details(res, name)),
        ),
    )
}

fn conflict(res: &Res, name: &str, message: &str) -> Answer {
    answer(
        409,
        status_body(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": {message}",
                res.qualified()
            ),
            Some(details(res, name)),
        ),
    )
}

fn invalid(res: &Res, name: &str, causes: Vec<(&str, String, &str)>) -> Answer {
    let mut texts: Vec<String> = causes
        .iter()
        .map(|(field, msg, _)| format!("{field}: {msg}"))
        .collect();
    texts.dedup();
    let joined = if texts.len() == 1 {
        texts[0].clone()
    } else {
        format!("[{}]", texts.join(", "))
    };
    let causes: Vec<Value> = causes
        .iter()
        .map(|(field, msg, reason)| json!({"reason": reason, "message": msg, "field": field}))
        .collect();
    answer(
        422,
        status_body(
            422,
            "Invalid",
            &format!("{} \"{name}\" is invalid: {joined}", res.kind),
            Some(json!({"name": name, "kind": res.kind, "causes": causes})),
        ),
    )
}

fn bad_request(message: &str) -> Answer {
    answer(400, status_body(400, "BadRequest", message, None))
}

fn unknown_route() -> Answer {
    answer(
        404,
        status_body(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        ),
    )
}

fn now_time() -> String {
    nanolet::api::time::format_time(SystemTime::now())
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

const DNS_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// The defaults kube-apiserver fills into a new Pod (as in the transcripts).
fn default_pod(pod: &mut Value) {
    let spec = &mut pod["spec"];
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("priority", json!(0)),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let image = c["image"].as_str().unwrap_or_default().to_string();
                let tag_latest = image
                    .rsplit('/')
                    .next()
                    .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"))
                    && !image.contains('@');
                let policy = if tag_latest { "Always" } else { "IfNotPresent" };
                for (k, v) in [
                    ("resources", json!({})),
                    ("terminationMessagePath", json!("/dev/termination-log")),
                    ("terminationMessagePolicy", json!("File")),
                    ("imagePullPolicy", json!(policy)),
                ] {
                    if c.get(k).is_none() {
                        c[k] = v;
                    }
                }
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                    }
                }
            }
        }
    }
    if pod.get("status").is_none() {
        pod["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    }
}

/// The list keys of strategic merge patches for the lists nodes and pods patch.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" | "addresses" => Some("type"),
        "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses"
        | "containers"
        | "initContainers" => Some("name"),
        "podIPs" => Some("ip"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                match (t.get_mut(k), merge_key(k).filter(|_| strategic), v) {
                    (Some(Value::Array(old)), Some(key), Value::Array(new)) => {
                        for item in new {
                            let id = &item[key];
                            match old.iter_mut().find(|o| &o[key] == id) {
                                Some(o) => merge(o, item, true),
                                None => old.push(item.clone()),
                            }
                        }
                    }
                    (Some(old), _, _) if old.is_object() && v.is_object() => {
                        merge(old, v, strategic)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn field_value<'a>(obj: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(obj, |v, k| &v[k])
}

struct Selectors {
    fields: Vec<(String, bool, String)>,
    labels: Vec<(String, Option<String>)>,
}

fn selectors(res: &Res, q: &BTreeMap<String, String>) -> Result<Selectors, Answer> {
    let mut fields = Vec::new();
    if let Some(fs) = q.get("fieldSelector").filter(|s| !s.is_empty()) {
        for term in fs.split(',') {
            let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(bad_request(&format!(
                    "invalid selector: '{fs}'; can't understand '{term}'"
                )));
            };
            let allowed = matches!(k, "metadata.name" | "metadata.namespace")
                || (res.plural == "pods"
                    && matches!(k, "spec.nodeName" | "status.phase" | "spec.schedulerName"))
                || (res.plural == "events" && k.starts_with("involvedObject."));
            if !allowed {
                return Err(bad_request(&format!("field label not supported: {k}")));
            }
            fields.push((k.to_string(), eq, v.to_string()));
        }
    }
    let mut labels = Vec::new();
    if let Some(ls) = q.get("labelSelector").filter(|s| !s.is_empty()) {
        for term in ls.split(',') {
            // `key=value`, `key` (exists) and `!key` (absent: kept as `!key`).
            match term.split_once('=') {
                Some((k, v)) => {
                    labels.push((k.trim_end_matches('=').to_string(), Some(v.to_string())))
                }
                None => labels.push((term.to_string(), None)),
            }
        }
    }
    Ok(Selectors { fields, labels })
}

impl Selectors {
    fn matches(&self, obj: &Value) -> bool {
        self.fields.iter().all(|(k, eq, v)| {
            let actual = field_value(obj, k).as_str().unwrap_or_default();
            (actual == v) == *eq
        }) && self.labels.iter().all(|(k, v)| {
            if let Some(absent) = k.strip_prefix('!') {
                return obj["metadata"]["labels"][absent].is_null();
            }
            let actual = &obj["metadata"]["labels"][k.as_str()];
            match v {
                Some(v) => actual.as_str() == Some(v.as_str()),
                None => !actual.is_null(),
            }
        })
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn continue_token(rv: u64, start: &str) -> String {
    let raw =
        json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start}\u{0}")}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_continue(token: &str) -> Option<(u64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((
        v["rv"].as_u64()?,
        v["start"].as_str()?.trim_end_matches('\u{0}').to_string(),
    ))
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn new_uid(&mut self) -> String {
        self.uids += 1;
        let n = self.uids;
        let p = u64::from(std::process::id());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            n ^ 0x5eed_0000,
            p & 0xffff,
            n & 0xfff,
            (n >> 12) & 0xfff,
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_ffff_ffff
        )
    }

    fn record(&mut self, kind: &'static str, res: &Res, object: &Value) {
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.rv);
        self.log.push(Change {
            rv,
            kind,
            res: res.key(),
            object: object.clone(),
        });
    }

    fn key(res: &Res, ns: &Option<String>, name: &str) -> (String, String, String) {
        (
            format!("{}/{}", res.prefix, res.plural),
            if res.namespaced {
                ns.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    /// Creates an object as a user would (also used by POST).
    fn create(&mut self, res: &Res, ns: Option<String>, mut obj: Value) -> Answer {
        if !obj.is_object() {
            return bad_request("the body of the request was in an unknown format");
        }
        let ns = if res.namespaced {
            Some(
                ns.or_else(|| obj["metadata"]["namespace"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "default".into()),
            )
        } else {
            None
        };
        let mut name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty()
            && let Some(prefix) = obj["metadata"]["generateName"].as_str()
        {
            let n = self.uids + 1;
            let suffix: String = (0..5)
                .map(|i| {
                    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
                    let x = (n.wrapping_mul(2_654_435_761).wrapping_add(i * 7919)) as usize;
                    char::from(alphabet[(x >> (i * 3)) % alphabet.len()])
                })
                .collect();
            name = format!("{prefix}{suffix}");
        }
        let mut causes = Vec::new();
        if name.is_empty() {
            causes.push((
                "metadata.name",
                "Required value: name or generateName is required".to_string(),
                "FieldValueRequired",
            ));
        } else if !is_dns_subdomain(&name) && res.plural != "events" {
            causes.push((
                "metadata.name",
                format!("Invalid value: \"{name}\": {DNS_MESSAGE}"),
                "FieldValueInvalid",
            ));
        }
        if res.plural == "pods"
            && obj["spec"]["containers"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            causes.push((
                "spec.containers",
                "Required value".to_string(),
                "FieldValueRequired",
            ));
        }
        if !causes.is_empty() {
            return invalid(res, &name, causes);
        }
        let key = State::key(res, &ns, &name);
        if self.objects.contains_key(&key) {
            return answer(
                409,
                status_body(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", res.qualified()),
                    Some(details(res, &name)),
                ),
            );
        }
        let rv = self.next_rv();
        let uid = self.new_uid();
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if res.namespaced {
            meta["namespace"] = json!(ns.clone());
        }
        meta["uid"] = json!(uid);
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(now_time());
        obj["kind"] = json!(res.kind);
        obj["apiVersion"] = json!(res.api_version());
        if res.plural == "pods" {
            default_pod(&mut obj);
        }
        if res.plural == "endpointslices" && res.prefix.ends_with("v1beta1") {
            // v1beta1 as served by v1.20 drops endpoints[].nodeName (feature gate off).
            if let Some(eps) = obj["endpoints"].as_array_mut() {
                for ep in eps.iter_mut().filter_map(Value::as_object_mut) {
                    ep.remove("nodeName");
                }
            }
        }
        if res.plural == "events" && res.group.is_empty() {
            for (k, v) in [
                ("eventTime", Value::Null),
                ("reportingComponent", json!("")),
                ("reportingInstance", json!("")),
            ] {
                if obj.get(k).is_none() {
                    obj[k] = v;
                }
            }
        }
        self.objects.insert(key, obj.clone());
        self.record("ADDED", res, &obj);
        answer(201, obj)
    }

    fn get(&self, res: &Res, ns: &Option<String>, name: &str) -> Option<&Value> {
        self.objects.get(&State::key(res, ns, name))
    }

    fn store_modified(
        &mut self,
        res: &Res,
        ns: &Option<String>,
        name: &str,
        mut obj: Value,
    ) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(State::key(res, ns, name), obj.clone());
        self.record("MODIFIED", res, &obj);
        obj
    }

    fn replace(
        &mut self,
        res: &Res,
        ns: Option<String>,
        name: &str,
        sub: Option<&str>,
        body: Value,
    ) -> Answer {
        let Some(current) = self.get(res, &ns, name).cloned() else {
            return not_found(res, name);
        };
        let rv = body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() {
            return conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        let mut new = if sub == Some("status") {
            let mut n = current.clone();
            n["status"] = body["status"].clone();
            n
        } else {
            let mut n = body;
            for k in [
                "uid",
                "creationTimestamp",
                "namespace",
                "name",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                if !current["metadata"][k].is_null() {
                    n["metadata"][k] = current["metadata"][k].clone();
                }
            }
            n["kind"] = json!(res.kind);
            n["apiVersion"] = json!(res.api_version());
            n
        };
        if new == current {
            return answer(200, current);
        }
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        answer(200, self.store_modified(res, &ns, name, new))
    }

    fn patch(
        &mut self,
        res: &Res,
        ns: Option<String>,
        name: &str,
        sub: Option<&str>,
        content_type: &str,
        patch: Value,
    ) -> Answer {
        let Some(current) = self.get(res, &ns, name).cloned() else {
            return not_found(res, name);
        };
        let strategic = content_type.starts_with("application/strategic-merge-patch");
        if !strategic && !content_type.starts_with("application/merge-patch") {
            return answer(
                415,
                status_body(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
                    None,
                ),
            );
        }
        if let Some(uid) = patch["metadata"]["uid"].as_str()
            && Some(uid) != current["metadata"]["uid"].as_str()
        {
            let msg = format!("Invalid value: \"{uid}\": field is immutable");
            return invalid(
                res,
                name,
                vec![
                    ("metadata.uid", msg.clone(), "FieldValueInvalid"),
                    ("metadata.uid", msg, "FieldValueInvalid"),
                ],
            );
        }
        if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
            && Some(rv) != current["metadata"]["resourceVersion"].as_str()
        {
            return conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        let mut new = current.clone();
        match sub {
            Some("status") => {
                if !patch["status"].is_null() {
                    merge(&mut new["status"], &patch["status"], strategic);
                }
            }
            Some(_) => return unknown_route(),
            None => {
                let mut p = patch.clone();
                if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("uid");
                    m.remove("resourceVersion");
                }
                merge(&mut new, &p, strategic);
            }
        }
        if new == current {
            return answer(200, current);
        }
        answer(200, self.store_modified(res, &ns, name, new))
    }

    fn delete(
        &mut self,
        res: &Res,
        ns: Option<String>,
        name: &str,
        options: &Value,
        q: &BTreeMap<String, String>,
    ) -> Answer {
        let Some(current) = self.get(res, &ns, name).cloned() else {
            return not_found(res, name);
        };
        if let Some(uid) = options["preconditions"]["uid"].as_str() {
            let actual = current["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != actual {
                return conflict(res, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"))
                    .with_message(format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"));
            }
        }
        let grace = options["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
        let bound_pod = res.plural == "pods"
            && current["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
        if bound_pod {
            let grace = grace
                .or_else(|| current["metadata"]["deletionGracePeriodSeconds"].as_i64())
                .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30);
            let already = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if grace > 0 {
                if already.is_some() {
                    return answer(200, current);
                }
                let mut new = current.clone();
                let at = SystemTime::now() + Duration::from_secs(grace.unsigned_abs());
                new["metadata"]["deletionTimestamp"] = json!(nanolet::api::time::format_time(at));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                return answer(200, self.store_modified(res, &ns, name, new));
            }
            // Grace 0: the API server first records the shortened grace, then removes.
            let mut new = current.clone();
            if already != Some(0) {
                new["metadata"]["deletionTimestamp"] = json!(now_time());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                new = self.store_modified(res, &ns, name, new);
            }
            return answer(200, self.remove(res, &ns, name, new));
        }
        let gone = self.remove(res, &ns, name, current);
        if res.plural == "pods" {
            return answer(200, gone);
        }
        answer(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": res.plural, "uid": gone["metadata"]["uid"]}}),
        )
    }

    fn remove(&mut self, res: &Res, ns: &Option<String>, name: &str, mut last: Value) -> Value {
        self.objects.remove(&State::key(res, ns, name));
        let rv = self.next_rv();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record("DELETED", res, &last);
        last
    }

    fn list(&self, res: &Res, ns: &Option<String>, q: &BTreeMap<String, String>) -> Answer {
        let sel = match selectors(res, q) {
            Ok(s) => s,
            Err(a) => return a,
        };
        if let Some(rv) = q.get("resourceVersion").and_then(|v| v.parse::<u64>().ok())
            && rv != 0
            && rv < self.compacted
        {
            return answer(
                410,
                status_body(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", self.rv),
                    None,
                ),
            );
        }
        let mut start = String::new();
        if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
            match parse_continue(token) {
                Some((rv, s)) if rv >= self.compacted => start = s,
                Some(_) => {
                    return answer(
                        410,
                        status_body(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                            None,
                        ),
                    );
                }
                None => return bad_request("continue key is not valid: illegal base64 data"),
            }
        }
        let limit = q
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let prefix = format!("{}/{}", res.prefix, res.plural);
        let mut items = Vec::new();
        let mut next = None;
        for ((p, ons, name), obj) in &self.objects {
            if *p != prefix || (res.namespaced && ns.as_ref().is_some_and(|n| n != ons)) {
                continue;
            }
            let k = if ons.is_empty() {
                name.clone()
            } else {
                format!("{ons}/{name}")
            };
            if !start.is_empty() && k.as_str() <= start.as_str() {
                continue;
            }
            if !sel.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() == l) {
                next = Some(continue_token(self.rv, &prev_key(&items)));
                break;
            }
            let mut item = obj.clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            items.push((k, item));
        }
        let mut meta = json!({"resourceVersion": self.rv.to_string()});
        if let Some(c) = next {
            meta["continue"] = json!(c);
        }
        answer(
            200,
            json!({
                "kind": format!("{}List", res.kind),
                "apiVersion": res.api_version(),
                "metadata": meta,
                "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            }),
        )
    }
}

fn prev_key(items: &[(String, Value)]) -> String {
    items.last().map(|(k, _)| k.clone()).unwrap_or_default()
}

impl Answer {
    fn with_message(mut self, m: String) -> Answer {
        self.body["message"] = json!(m);
        self
    }
}

impl ApiServer {
    /// Starts a fake on a free loopback port.
    pub fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                // Start as a server that has been up a while: history before `compacted` is gone.
                rv: 100,
                objects: BTreeMap::new(),
                log: Vec::new(),
                compacted: 50,
                faults: Faults::default(),
                requests: Vec::new(),
                bytes_in: 0,
                bytes_out: 0,
                watches_open: 0,
                connections: 0,
                generation: 0,
                down: false,
                uids: 0,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, addr, s));
        ApiServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for this server (with `token` if given) as `<dir>/kubeconfig`.
    pub fn write_kubeconfig(&self, dir: &Path, token: Option<&str>) -> PathBuf {
        let user = match token {
            Some(t) => format!("  user:\n    token: {t}\n"),
            None => "  user: {}\n".to_string(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: node\n{user}contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: node\ncurrent-context: fake\n",
            self.url()
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The state, locked (read objects, requests, change faults).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Changes the faults and wakes every connection so they see it.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.lock().faults);
        self.shared.changed.notify_all();
    }

    /// Queues `n` error answers with `status` (and `Retry-After`) for requests whose path
    /// contains `path_contains`.
    pub fn fail_next(
        &self,
        n: usize,
        status: u16,
        retry_after: Option<u32>,
        path_contains: Option<&str>,
    ) {
        self.faults(|f| {
            for _ in 0..n {
                f.fail.push_back(Fail {
                    status,
                    retry_after,
                    path_contains: path_contains.map(str::to_string),
                    method: None,
                });
            }
        });
    }

    /// Closes every open connection (watches included), as a crashing server or a network
    /// change would.
    pub fn drop_connections(&self) {
        self.shared.lock().generation += 1;
        self.shared.changed.notify_all();
    }

    /// Compacts all history: lists and watches from any resourceVersion up to now get 410, and
    /// open watches get an ERROR 410 event.
    pub fn expire(&self) {
        let mut s = self.shared.lock();
        s.compacted = s.rv + 1;
        s.log.clear();
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Stops answering: open connections close, new ones are refused.
    pub fn go_down(&self) {
        let mut s = self.shared.lock();
        s.down = true;
        s.generation += 1;
        drop(s);
        self.shared.changed.notify_all();
        // Wait until the accept thread has closed the listener.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Answers again, on the same port.
    pub fn come_back(&self) {
        self.shared.lock().down = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An object (`resource` as in the path: `nodes`, `pods`, `leases`), if it exists.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = find_res(resource);
        self.shared
            .lock()
            .get(&res, &namespace.map(str::to_string), name)
            .cloned()
    }

    /// Creates an object as a user would; returns it (or panics with the error answer).
    pub fn create(&self, resource: &str, namespace: Option<&str>, obj: Value) -> Value {
        let res = find_res(resource);
        let a = self
            .shared
            .lock()
            .create(&res, namespace.map(str::to_string), obj);
        self.shared.changed.notify_all();
        assert_eq!(a.status, 201, "create: {}", a.body);
        a.body
    }

    /// Merge-patches an object as a user would; returns it.
    pub fn patch(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Value {
        let res = find_res(resource);
        let a = self.shared.lock().patch(
            &res,
            namespace.map(str::to_string),
            name,
            None,
            "application/merge-patch+json",
            patch,
        );
        self.shared.changed.notify_all();
        assert_eq!(a.status, 200, "patch: {}", a.body);
        a.body
    }

    /// Creates a pod in `default`, as a user would (see [`ApiServer::create`]).
    pub fn create_pod(&self, pod: Value) -> Value {
        self.create("pods", Some("default"), pod)
    }

    /// Deletes an object as a user would (pods bound to a node: graceful).
    pub fn delete(&self, resource: &str, namespace: Option<&str>, name: &str) -> Value {
        let res = find_res(resource);
        let a = self.shared.lock().delete(
            &res,
            namespace.map(str::to_string),
            name,
            &Value::Null,
            &BTreeMap::new(),
        );
        self.shared.changed.notify_all();
        assert_eq!(a.status, 200, "delete: {}", a.body);
        a.body
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The Events created (POSTed; repeats are PATCHes of these) about pod `namespace/pod`,
    /// in order.
    pub fn events_about(&self, namespace: &str, pod: &str) -> Vec<Value> {
        let path = format!("/api/v1/namespaces/{namespace}/events");
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == path)
            .map(|r| r.body)
            .filter(|e| e["involvedObject"]["name"] == pod)
            .collect()
    }

    /// Waits (up to `limit`) for an Event about pod `namespace/pod` with `reason`; returns it.
    pub fn wait_event(
        &self,
        namespace: &str,
        pod: &str,
        reason: &str,
        limit: Duration,
    ) -> Option<Value> {
        let path = format!("/api/v1/namespaces/{namespace}/events");
        self.wait_for(limit, |s| {
            s.requests.iter().any(|r| {
                r.method == "POST"
                    && r.path == path
                    && r.body["involvedObject"]["name"] == pod
                    && r.body["reason"] == reason
            })
        });
        self.events_about(namespace, pod)
            .into_iter()
            .find(|e| e["reason"] == reason)
    }

    /// (bytes received, bytes sent) so far.
    pub fn bytes(&self) -> (u64, u64) {
        let s = self.shared.lock();
        (s.bytes_in, s.bytes_out)
    }

    /// Waits (up to `limit`) until `cond` holds on the state; returns whether it did.
    pub fn wait_for(&self, limit: Duration, mut cond: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut s = self.shared.lock();
        loop {
            if cond(&s) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl State {
    /// The requests matching `method` and a path containing `path_part`.
    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_part))
            .count()
    }

    /// An object by resource plural (as in the path), namespace and name.
    pub fn object(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.get(&find_res(resource), &namespace.map(str::to_string), name)
    }
}

/// `pods`, or with a version where several are served: `endpointslices/v1`.
fn find_res(plural: &str) -> Res {
    let (name, version) = match plural.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (plural, None),
    };
    *RESOURCES
        .iter()
        .find(|r| r.plural == name && version.is_none_or(|v| r.prefix.ends_with(&format!("/{v}"))))
        .unwrap_or_else(|| panic!("fake api server: unknown resource {plural}"))
}

impl State {
    /// Whether this server version serves `res` (see [`Faults::endpointslices_v1`]).
    fn serves(&self, res: &Res) -> bool {
        match res.prefix {
            "/apis/discovery.k8s.io/v1" => self.faults.endpointslices_v1,
            "/apis/discovery.k8s.io/v1beta1" => !self.faults.no_endpointslices_v1beta1,
            _ => true,
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.lock().generation += 1;
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let down = shared.lock().down;
        if down {
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(addr) {
                Ok(l) => listener.insert(l),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((stream, _)) => {
                shared.lock().connections += 1;
                let s = shared.clone();
                std::thread::spawn(move || serve(stream, s));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

struct Incoming {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    wire_bytes: u64,
}

fn read_request(
    reader: &mut BufReader<TcpStream>,
    shared: &Shared,
    generation: u64,
) -> Option<Incoming> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {
                head.push(line.clone());
                if line == "\r\n" || line == "\n" {
                    if head.len() == 1 {
                        head.clear();
                        continue;
                    }
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stop.load(Ordering::SeqCst) || shared.lock().generation != generation {
                    return None;
                }
                if !line.is_empty() {
                    head.push(line);
                }
                continue;
            }
            Err(_) => return None,
        }
    }
    // Partial lines read across timeouts were pushed separately: join and re-split.
    let joined: String = head.concat();
    let mut lines = joined.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match reader.read(&mut body[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stop.load(Ordering::SeqCst) || shared.lock().generation != generation {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    let wire_bytes = (joined.len() + len) as u64;
    shared.lock().bytes_in += wire_bytes;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Incoming {
        method,
        path,
        query,
        headers,
        body,
        wire_bytes,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let generation = shared.lock().generation;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader, &shared, generation) {
        let delay = {
            let s = shared.lock();
            let slow = s
                .faults
                .slow
                .iter()
                .filter(|(p, _)| req.path.contains(p.as_str()));
            s.faults.delay + slow.map(|(_, d)| *d).sum::<Duration>()
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if shared.lock().generation != generation {
            break;
        }
        let q = parse_query(&req.query);
        let is_watch = matches!(q.get("watch").map(String::as_str), Some("1" | "true"));
        let ((status, answer_bytes), keep) = if is_watch {
            match pre_answer(&req, &shared) {
                Some(a) => (write_answer(&mut writer, &req, a, &shared), true),
                None => {
                    shared.lock().watches_open += 1;
                    shared.changed.notify_all();
                    watch(&mut writer, &req, &q, &shared, generation);
                    shared.lock().watches_open -= 1;
                    ((200, 0), false)
                }
            }
        } else {
            let a = pre_answer(&req, &shared).unwrap_or_else(|| handle(&req, &q, &shared));
            (write_answer(&mut writer, &req, a, &shared), true)
        };
        let mut s = shared.lock();
        let body = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        s.requests.push(Recorded {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            body,
            status,
            at: Instant::now(),
            wire_bytes: req.wire_bytes + answer_bytes,
        });
        drop(s);
        shared.changed.notify_all();
        if !keep
            || req
                .headers
                .get("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Authentication and queued faults: an answer that replaces the real one.
fn pre_answer(req: &Incoming, shared: &Shared) -> Option<Answer> {
    let s = &mut *shared.lock();
    if let Route::Collection { res, .. } | Route::Object { res, .. } = route(&req.path)
        && !s.serves(&res)
    {
        return Some(unknown_route());
    }
    if let Some(token) = &s.faults.token {
        let want = format!("Bearer {token}");
        if req.headers.get("authorization") != Some(&want) {
            return Some(answer(
                401,
                status_body(401, "Unauthorized", "Unauthorized", None),
            ));
        }
    }
    let pos = s.faults.fail.iter().position(|f| {
        f.path_contains
            .as_ref()
            .is_none_or(|p| req.path.contains(p.as_str()))
            && f.method.as_ref().is_none_or(|m| *m == req.method)
    })?;
    let f = s.faults.fail.remove(pos)?;
    let (reason, message) = match f.status {
        401 => ("Unauthorized", "Unauthorized".to_string()),
        403 => (
            "Forbidden",
            format!(
                "forbidden: User \"system:node:test\" cannot {} resource at {}",
                req.method.to_lowercase(),
                req.path
            ),
        ),
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.".to_string(),
        ),
        500 => (
            "InternalError",
            "Internal error occurred: fake fault".to_string(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_string(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted".to_string(),
        ),
        _ => ("", "fake fault".to_string()),
    };
    let details = f.retry_after.map(|r| json!({"retryAfterSeconds": r}));
    Some(Answer {
        status: f.status,
        body: status_body(f.status, reason, &message, details),
        retry_after: f.retry_after,
    })
}

fn handle(req: &Incoming, q: &BTreeMap<String, String>, shared: &Shared) -> Answer {
    let body: Value = if req.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                return bad_request(&format!(
                    "the body of the request could not be decoded: {e}"
                ));
            }
        }
    };
    let content_type = req.headers.get("content-type").cloned().unwrap_or_default();
    let mut s = shared.lock();
    let a = match (route(&req.path), req.method.as_str()) {
        (Route::Version, "GET") => answer(
            200,
            json!({
            "major": "1", "minor": "20", "gitVersion": "v1.20.2-fake", "gitCommit": "", "gitTreeState": "",
            "buildDate": "1970-01-01T00:00:00Z", "goVersion": "go1.19.8", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        (Route::Api, "GET") => answer(
            200,
            json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        ),
        (Route::Apis, "GET") => {
            let groups: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| !r.group.is_empty() && s.serves(r))
                .map(|r| {
                    let gv = r.api_version();
                    let version = gv.rsplit('/').next().unwrap_or_default();
                    json!({"name": r.group, "versions": [{"groupVersion": gv, "version": version}],
                       "preferredVersion": {"groupVersion": gv, "version": version}})
                })
                .collect();
            answer(
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        (Route::Collection { res, ns }, "GET") => s.list(&res, &ns, q),
        (Route::Collection { res, ns }, "POST") => s.create(&res, ns, body),
        (
            Route::Object {
                res,
                ns,
                name,
                sub: None,
            },
            "GET",
        ) => match s.get(&res, &ns, &name) {
            Some(o) => answer(200, o.clone()),
            None => not_found(&res, &name),
        },
        (
            Route::Object {
                res,
                ns,
                name,
                sub: Some(sub),
            },
            "GET",
        ) if sub == "status" => match s.get(&res, &ns, &name) {
            Some(o) => answer(200, o.clone()),
            None => not_found(&res, &name),
        },
        (Route::Object { res, ns, name, sub }, "PUT") => {
            s.replace(&res, ns, &name, sub.as_deref(), body)
        }
        (Route::Object { res, ns, name, sub }, "PATCH") => {
            s.patch(&res, ns, &name, sub.as_deref(), &content_type, body)
        }
        (
            Route::Object {
                res,
                ns,
                name,
                sub: None,
            },
            "DELETE",
        ) => s.delete(&res, ns, &name, &body, q),
        (
            Route::Object {
                res,
                name,
                sub: Some(sub),
                ns,
            },
            "POST",
        ) if res.plural == "serviceaccounts"
            && sub == "token"
            && name != "default"
            && s.get(&res, &ns, &name).is_none() =>
        {
            // kube-apiserver's answer for a ServiceAccount that does not exist.
            not_found(&res, &name)
        }
        (
            Route::Object {
                res,
                name,
                sub: Some(sub),
                ..
            },
            "POST",
        ) if res.plural == "serviceaccounts" && sub == "token" => {
            let secs = body["spec"]["expirationSeconds"].as_u64().unwrap_or(3600);
            let exp =
                nanolet::api::time::format_time(SystemTime::now() + Duration::from_secs(secs));
            let n = s.next_rv();
            answer(
                201,
                json!({
                    "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "spec": {"audiences": body["spec"]["audiences"], "expirationSeconds": secs, "boundObjectRef": body["spec"]["boundObjectRef"]},
                    "status": {"token": format!("fake-token.{name}.{n}"), "expirationTimestamp": exp},
                }),
            )
        }
        (Route::Unknown, _) => unknown_route(),
        (_, m) => answer(
            405,
            status_body(
                405,
                "MethodNotAllowed",
                &format!("the server does not allow this method on the requested resource ({m})"),
                Some(json!({})),
            ),
        ),
    };
    drop(s);
    shared.changed.notify_all();
    a
}

/// Writes an answer; returns its status and size. JSON is pretty-printed for curl and wget
/// (as kube-apiserver does: the transcripts were recorded with curl), compact for others.
fn write_answer(w: &mut TcpStream, req: &Incoming, a: Answer, shared: &Shared) -> (u16, u64) {
    let pretty = req
        .headers
        .get("user-agent")
        .is_some_and(|ua| ua.starts_with("curl") || ua.starts_with("Wget"));
    let mut body = if pretty {
        serde_json::to_vec_pretty(&a.body).unwrap()
    } else {
        serde_json::to_vec(&a.body).unwrap()
    };
    let gzip = shared.lock().faults.gzip
        && req
            .headers
            .get("accept-encoding")
            .is_some_and(|e| e.contains("gzip"));
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\n",
        a.status,
        reason_phrase(a.status)
    );
    if gzip {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&body).unwrap();
        body = z.finish().unwrap();
        head.push_str("Content-Encoding: gzip\r\n");
    }
    if let Some(r) = a.retry_after {
        head.push_str(&format!("Retry-After: {r}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(&body);
    let _ = w.flush();
    shared.lock().bytes_out += (head.len() + body.len()) as u64;
    (a.status, (head.len() + body.len()) as u64)
}

fn write_chunk(w: &mut TcpStream, data: &[u8], shared: &Shared) -> bool {
    let frame = [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
    shared.lock().bytes_out += frame.len() as u64;
    w.write_all(&frame).and_then(|_| w.flush()).is_ok()
}

fn event_line(kind: &str, object: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    line
}

fn watch(
    w: &mut TcpStream,
    req: &Incoming,
    q: &BTreeMap<String, String>,
    shared: &Shared,
    generation: u64,
) {
    let Route::Collection { res, ns } = route(&req.path) else {
        let _ = write_answer(w, req, unknown_route(), shared);
        return;
    };
    let sel = match selectors(&res, q) {
        Ok(s) => s,
        Err(a) => {
            let _ = write_answer(w, req, a, shared);
            return;
        }
    };
    let head = "HTTP/1.1 200 OK\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    shared.lock().bytes_out += head.len() as u64;
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let end = Instant::now() + timeout;
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let prefix = format!("{}/{}", res.prefix, res.plural);
    let in_scope = |obj: &Value| {
        (!res.namespaced
            || ns
                .as_ref()
                .is_none_or(|n| obj["metadata"]["namespace"].as_str() == Some(n.as_str())))
            && sel.matches(obj)
    };
    let bookmark = |rv: u64| {
        event_line(
            "BOOKMARK",
            &json!({"kind": res.kind, "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
            "spec": {"containers": null}, "status": {}}),
        )
    };
    let expired = |rv: u64, now: u64| {
        event_line(
            "ERROR",
            &status_body(
                410,
                "Expired",
                &format!("too old resource version: {rv} ({now})"),
                None,
            ),
        )
    };
    // Where the stream starts.
    let mut cursor = {
        let s = shared.lock();
        match q
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v != 0)
        {
            Some(rv) if rv < s.compacted => {
                let line = expired(rv, s.rv);
                drop(s);
                write_chunk(w, &line, shared);
                write_chunk(w, b"", shared);
                return;
            }
            Some(rv) => rv,
            None => {
                let lines: Vec<Vec<u8>> = s
                    .objects
                    .iter()
                    .filter(|((p, _, _), o)| *p == prefix && in_scope(o))
                    .map(|(_, o)| event_line("ADDED", o))
                    .collect();
                let rv = s.rv;
                drop(s);
                for l in lines {
                    if !write_chunk(w, &l, shared) {
                        return;
                    }
                }
                rv
            }
        }
    };
    let mut last_bookmark = Instant::now();
    let mut compacted_seen = shared.lock().compacted;
    loop {
        let s = shared.lock();
        if s.generation != generation || shared.stop.load(Ordering::SeqCst) {
            // Dropped: no end chunk, the connection just breaks.
            return;
        }
        if s.compacted != compacted_seen && cursor < s.compacted {
            let line = expired(cursor, s.rv);
            drop(s);
            write_chunk(w, &line, shared);
            write_chunk(w, b"", shared);
            return;
        }
        compacted_seen = s.compacted;
        let pending: Vec<(u64, Vec<u8>)> = s
            .log
            .iter()
            .filter(|c| {
                c.rv > cursor
                    && c.res == res.key()
                    && c.object["kind"] == json!(res.kind)
                    && in_scope(&c.object)
            })
            .map(|c| (c.rv, event_line(c.kind, &c.object)))
            .collect();
        let now_rv = s.rv;
        let every = s.faults.bookmark_every;
        let left = end.saturating_duration_since(Instant::now());
        if pending.is_empty() {
            if left.is_zero() {
                drop(s);
                if bookmarks {
                    write_chunk(w, &bookmark(now_rv), shared);
                }
                write_chunk(w, b"", shared);
                return;
            }
            if bookmarks && every.is_some_and(|e| last_bookmark.elapsed() >= e) {
                drop(s);
                last_bookmark = Instant::now();
                if !write_chunk(w, &bookmark(now_rv), shared) {
                    return;
                }
                cursor = cursor.max(now_rv);
                continue;
            }
            let (guard, _) = shared
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner());
            drop(guard);
            // Let the peer's closing be noticed: a write of nothing would not; rely on errors.
            continue;
        }
        drop(s);
        for (_, line) in pending {
            if !write_chunk(w, &line, shared) {
                return;
            }
        }
        cursor = now_rv;
    }
}

/// A blocking HTTP/1.1 exchange for tests that need exact bytes (the transcript replay):
/// returns the status, the headers (lowercase) and the de-chunked body.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let len = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if len == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + len]);
            rest = &rest[nl + 2 + len + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    (status, headers, body)
}
