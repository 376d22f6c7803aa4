//! Replays every recorded kube-apiserver v1.20 transcript against the fake API server
//! (`tests/common/apiserver.rs`) and checks that the fake answers as the real server did: the
//! status code; for `Status` bodies the reason, code, message and details; for objects the
//! kind, apiVersion, name, and that every field the fake answers is one the real server
//! answered too (the fake invents nothing) while keeping every field the request sent; for
//! watches the sequence of event types. uids, resourceVersions and continue tokens differ and
//! are mapped from the real values to the fake's as they are learned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::apiserver::{ApiServer, raw_request};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kube-apiserver-v1.20"
);
const TOKEN: &str = "fixture-token";

struct Fixture {
    name: String,
    method: String,
    target: String,
    content_type: Option<String>,
    body: Option<String>,
    status: u16,
    response: String,
}

fn parse(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let first = lines.next().unwrap().strip_prefix("### ").unwrap();
    let (method, target) = first.split_once(' ').unwrap();
    let mut content_type = None;
    let mut body = None;
    let mut in_body = false;
    let mut body_lines = Vec::new();
    let mut rest = Vec::new();
    let mut in_response = false;
    for l in lines {
        if in_response {
            rest.push(l);
        } else if l == "### response:" {
            in_response = true;
            if in_body {
                body = Some(body_lines.join("\n"));
            }
        } else if let Some(ct) = l.strip_prefix("### Content-Type: ") {
            content_type = Some(ct.to_string());
        } else if l == "### request body:" {
            in_body = true;
        } else if in_body {
            body_lines.push(l);
        }
    }
    let status: u16 = rest[0].split(' ').nth(1).unwrap().parse().unwrap();
    let blank = rest.iter().position(|l| l.is_empty()).unwrap();
    Fixture {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        method: method.to_string(),
        target: target.to_string(),
        content_type,
        body,
        status,
        response: rest[blank + 1..].join("\n"),
    }
}

/// Every key path of a JSON value (`spec.containers[].name`); managedFields are left out.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "managedFields" {
                    continue;
                }
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn path_set(v: &Value) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    paths(v, "", &mut s);
    s
}

/// Compares one JSON answer's shape with the real one.
fn compare(fixture: &str, real: &Value, fake: &Value, sent: Option<&Value>) {
    let ctx = |what: &str| format!("{fixture}: {what}\nreal: {real}\nfake: {fake}");
    for key in ["kind", "apiVersion"] {
        if !real[key].is_null() {
            assert_eq!(real[key], fake[key], "{}", ctx(key));
        }
    }
    if real["kind"] == "Status" {
        for key in ["status", "reason", "code", "message"] {
            assert_eq!(real[key], fake[key], "{}", ctx(key));
        }
        for key in ["name", "kind", "group"] {
            assert_eq!(
                real["details"][key],
                fake["details"][key],
                "{}",
                ctx("details")
            );
        }
        let fields = |v: &Value| -> BTreeSet<String> {
            v["details"]["causes"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|c| format!("{} {}", c["field"], c["reason"]))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(fields(real), fields(fake), "{}", ctx("causes"));
        return;
    }
    for key in ["name", "namespace"] {
        assert_eq!(real["metadata"][key], fake["metadata"][key], "{}", ctx(key));
    }
    let (real_paths, fake_paths) = (path_set(real), path_set(fake));
    let invented: Vec<_> = fake_paths.difference(&real_paths).collect();
    assert!(
        invented.is_empty(),
        "{}",
        ctx(&format!(
            "fields the real server does not answer: {invented:?}"
        ))
    );
    if let Some(sent) = sent {
        let mut sent_paths = path_set(sent);
        sent_paths.retain(|p| !p.starts_with("metadata.resourceVersion"));
        // What the real server kept of the request must be kept by the fake too.
        let lost: Vec<_> = sent_paths
            .iter()
            .filter(|p| real_paths.contains(*p) && !fake_paths.contains(*p))
            .collect();
        assert!(
            lost.is_empty(),
            "{}",
            ctx(&format!("fields sent but not kept: {lost:?}"))
        );
    }
}

/// Real → fake values of uids, resourceVersions and continue tokens.
#[derive(Default)]
struct Mapping(BTreeMap<String, String>);

impl Mapping {
    fn learn(&mut self, real: &Value, fake: &Value) {
        for key in ["uid", "resourceVersion", "continue"] {
            if let (Some(r), Some(f)) = (
                real["metadata"][key].as_str(),
                fake["metadata"][key].as_str(),
            ) {
                self.0.insert(r.to_string(), f.to_string());
            }
        }
    }

    fn apply_body(&self, body: &str) -> String {
        let mut out = body.to_string();
        for (r, f) in &self.0 {
            out = out.replace(&format!("\"{r}\""), &format!("\"{f}\""));
        }
        out
    }

    fn apply_target(&self, target: &str) -> String {
        let Some((path, query)) = target.split_once('?') else {
            return target.to_string();
        };
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if matches!(k, "resourceVersion" | "continue") && v != "1" => {
                    format!("{k}={}", self.0.get(v).map(String::as_str).unwrap_or(v))
                }
                _ => kv.to_string(),
            })
            .collect();
        format!("{path}?{}", query.join("&"))
    }
}

fn events(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Event types, consecutive BOOKMARKs as one (their number depends on timing).
fn types(events: &[Value]) -> Vec<String> {
    let mut t: Vec<String> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    t.dedup_by(|a, b| a == "BOOKMARK" && b == "BOOKMARK");
    t
}

fn send(server: &ApiServer, f: &Fixture, map: &Mapping) -> (u16, Vec<u8>) {
    let target = map.apply_target(&f.target);
    let body = f.body.as_ref().map(|b| map.apply_body(b));
    let mut headers = vec![];
    let auth = format!("Bearer {TOKEN}");
    if !f.name.starts_with("21-") {
        headers.push(("Authorization", auth.as_str()));
    }
    if let Some(ct) = &f.content_type {
        headers.push(("Content-Type", ct.as_str()));
    }
    let (status, _, body) = raw_request(
        server.addr(),
        &f.method,
        &target,
        &headers,
        body.as_deref().map(str::as_bytes),
    );
    (status, body)
}

fn check_watch(f: &Fixture, status: u16, body: &[u8], map: &mut Mapping) {
    assert_eq!(status, f.status, "{}", f.name);
    let real = events(&f.response);
    let fake = events(std::str::from_utf8(body).unwrap());
    assert_eq!(
        types(&real),
        types(&fake),
        "{}: event types\nfake: {fake:?}",
        f.name
    );
    let objects = |evs: &[Value]| -> Vec<Value> {
        evs.iter()
            .filter(|e| e["type"] != "BOOKMARK")
            .map(|e| e["object"].clone())
            .collect()
    };
    for (r, k) in objects(&real).iter().zip(objects(&fake).iter()) {
        if r["kind"] == "Status" {
            assert_eq!(
                (&r["reason"], &r["code"]),
                (&k["reason"], &k["code"]),
                "{}",
                f.name
            );
        } else {
            compare(&f.name, r, k, None);
            map.learn(r, k);
        }
    }
}

#[test]
fn the_fake_answers_every_transcript_as_the_real_server_did() {
    let server = ApiServer::start();
    server.faults(|f| f.token = Some(TOKEN.into()));
    let mut files: Vec<_> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "http"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 36, "every transcript is replayed");
    let fixtures: Vec<Fixture> = files.iter().map(|p| parse(p)).collect();
    let mut map = Mapping::default();
    let mut watch_10 = None;
    for f in &fixtures {
        if f.name.starts_with("34-") {
            // Made between the recordings, not recorded: three pods on the node.
            for i in 1..=3 {
                server.create("pods", Some("default"), json!({"metadata": {"name": format!("page-{i}")},
                    "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "busybox"}]}}));
            }
        }
        if f.name.starts_with("10-") {
            // The watch runs while 11-16 happen; shortened from 12 s to 3 s.
            let target = map
                .apply_target(&f.target)
                .replace("timeoutSeconds=12", "timeoutSeconds=3");
            let addr = server.addr();
            watch_10 = Some(std::thread::spawn(move || {
                let auth = format!("Bearer {TOKEN}");
                raw_request(
                    addr,
                    "GET",
                    &target,
                    &[("Authorization", auth.as_str())],
                    None,
                )
            }));
            assert!(server.wait_for(Duration::from_secs(10), |s| s.watches_open == 1));
            continue;
        }
        if f.name.starts_with("17-") {
            let (status, _, body) = watch_10.take().unwrap().join().unwrap();
            let f10 = fixtures.iter().find(|f| f.name.starts_with("10-")).unwrap();
            check_watch(f10, status, &body, &mut map);
        }
        let (status, body) = send(&server, f, &map);
        if f.target.contains("watch=1") {
            check_watch(f, status, &body, &mut map);
            continue;
        }
        assert_eq!(
            status,
            f.status,
            "{}: status; fake answered {}",
            f.name,
            String::from_utf8_lossy(&body)
        );
        let real: Value = serde_json::from_str(&f.response).unwrap();
        let fake: Value = serde_json::from_slice(&body).unwrap();
        let sent: Option<Value> = f.body.as_ref().map(|b| serde_json::from_str(b).unwrap());
        let sent_object = sent
            .as_ref()
            .filter(|_| f.status == 201 && f.method == "POST" && real["kind"] != "TokenRequest");
        compare(&f.name, &real, &fake, sent_object);
        if real["kind"].as_str().is_some_and(|k| k.ends_with("List")) && f.name.starts_with("3") {
            let names = |v: &Value| -> Vec<String> {
                v["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(names(&real), names(&fake), "{}: the page's items", f.name);
            assert_eq!(
                real["metadata"]["continue"].is_null(),
                fake["metadata"]["continue"].is_null(),
                "{}",
                f.name
            );
        }
        map.learn(&real, &fake);
    }
}
