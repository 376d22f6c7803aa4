//! Tests of the proxy core as a user sees it: JSON in, rulesets, nft text and packet paths out.
//!
//! - goldens: one `tests/golden/proxy/<shape>.nft` per Service shape;
//!   `NANOLET_UPDATE_GOLDEN=1 cargo test proxy` rewrites them.
//! - flows: over 100 packets traced through one ruleset holding every shape.
//! - bad input: each case from the issue gets a clear error naming the object, never a panic.
//! - `nft_loads_*` (ignored; root and `nft` needed): load the text into a throwaway netns.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

use super::build::{Built, SERVICE_BACKENDS, affinity_set, build};
use super::model::{Cidr, EndpointSlice, IpFamily, NodeConfig, Protocol, Service};
use super::nft_text::{render, render_ops, render_replace};
use super::ruleset::{Action, Key, KeyPart, Op, diff};
use super::trace::{Outcome, Packet, Trace, Tracer, Verdict};

// ---------------------------------------------------------------------------------------------
// Builders

fn node() -> NodeConfig {
    NodeConfig {
        node_name: "node-a".to_string(),
        node_ips: vec![ip("192.168.1.10"), ip("fd00:1::10")],
        cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:244::/32")],
        service_cidrs: vec![cidr("10.96.0.0/16"), cidr("fd00:96::/112")],
        masquerade_bit: 0x4000,
    }
}

/// The same node without IPv6, for the single-stack goldens.
fn node_v4() -> NodeConfig {
    let mut n = node();
    n.node_ips.retain(|a| a.is_ipv4());
    n.cluster_cidrs.retain(|c| c.family() == IpFamily::V4);
    n.service_cidrs.retain(|c| c.family() == IpFamily::V4);
    n
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A ClusterIP Service; `extra` is merged into `spec`.
fn svc_json(name: &str, cluster_ip: &str, ports: Value, extra: Value) -> Value {
    let mut spec = json!({ "clusterIP": cluster_ip, "ports": ports });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({ "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "default" }, "spec": spec })
}

fn svc(name: &str, cluster_ip: &str, ports: Value, extra: Value) -> Service {
    Service::from_json(&svc_json(name, cluster_ip, ports, extra))
        .unwrap()
        .unwrap()
}

fn http() -> Value {
    json!([{ "name": "http", "port": 80, "protocol": "TCP" }])
}

/// An endpoint: address, node, and `ready`/`serving`/`terminating` as `r`, `s`, `t` letters
/// (upper case true, lower case false; `R` alone means all defaults).
fn ep(addr: &str, node: &str, cond: &str) -> Value {
    let mut e = json!({ "addresses": [addr], "nodeName": node });
    if cond != "R" {
        e["conditions"] = json!({
            "ready": cond.contains('R'),
            "serving": cond.contains('S'),
            "terminating": cond.contains('T'),
        });
    }
    e
}

fn slice_json(service: &str, suffix: &str, family: &str, ports: Value, eps: Vec<Value>) -> Value {
    json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("{service}-{suffix}"), "namespace": "default",
                          "labels": { "kubernetes.io/service-name": service } },
            "addressType": family, "ports": ports, "endpoints": eps })
}

fn slice(service: &str, family: &str, ports: Value, eps: Vec<Value>) -> EndpointSlice {
    EndpointSlice::from_json(&slice_json(service, "abc12", family, ports, eps))
        .unwrap()
        .unwrap()
}

fn http_8080() -> Value {
    json!([{ "name": "http", "port": 8080, "protocol": "TCP" }])
}

// ---------------------------------------------------------------------------------------------
// Goldens

/// One Service shape: its objects and the node it is built for.
pub(super) fn shape(name: &str) -> (Vec<Service>, Vec<EndpointSlice>, NodeConfig) {
    let two = || {
        vec![
            ep("10.244.1.5", "node-a", "R"),
            ep("10.244.2.6", "node-b", "R"),
        ]
    };
    let s = |extra: Value| vec![svc("web", "10.96.0.10", http(), extra)];
    let sl = || vec![slice("web", "IPv4", http_8080(), two())];
    match name {
        "clusterip" => (s(json!({})), sl(), node_v4()),
        "multi-port" => (
            vec![svc(
                "web",
                "10.96.0.10",
                json!([{ "name": "http", "port": 80 }, { "name": "https", "port": 443 },
                       { "name": "dns", "port": 53, "protocol": "UDP" }]),
                json!({}),
            )],
            vec![slice(
                "web",
                "IPv4",
                json!([{ "name": "http", "port": 8080 }, { "name": "https", "port": 8443 },
                       { "name": "dns", "port": 5353, "protocol": "UDP" }]),
                two(),
            )],
            node_v4(),
        ),
        "nodeport" => (
            vec![svc(
                "web",
                "10.96.0.10",
                json!([{ "name": "http", "port": 80, "nodePort": 30080 }]),
                json!({ "type": "NodePort" }),
            )],
            sl(),
            node_v4(),
        ),
        "externalips" => (
            s(json!({ "externalIPs": ["203.0.113.7"] })),
            sl(),
            node_v4(),
        ),
        "etp-local" => (
            vec![svc(
                "web",
                "10.96.0.10",
                json!([{ "name": "http", "port": 80, "nodePort": 30080 }]),
                json!({ "type": "NodePort", "externalTrafficPolicy": "Local" }),
            )],
            sl(),
            node_v4(),
        ),
        "itp-local" => (
            s(json!({ "internalTrafficPolicy": "Local" })),
            sl(),
            node_v4(),
        ),
        "affinity" => (
            s(json!({ "sessionAffinity": "ClientIP",
                      "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 600 } } })),
            sl(),
            node_v4(),
        ),
        "no-endpoints" => (s(json!({})), vec![], node_v4()),
        "terminating" => (
            s(json!({})),
            vec![slice(
                "web",
                "IPv4",
                http_8080(),
                vec![
                    ep("10.244.1.5", "node-a", "ST"),
                    ep("10.244.2.6", "node-b", "sT"),
                ],
            )],
            node_v4(),
        ),
        "ipv6" => (
            vec![svc(
                "web",
                "10.96.0.10",
                http(),
                json!({ "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                        "ipFamilies": ["IPv4", "IPv6"] }),
            )],
            vec![
                slice("web", "IPv4", http_8080(), two()),
                EndpointSlice::from_json(&slice_json(
                    "web",
                    "v6",
                    "IPv6",
                    http_8080(),
                    vec![ep("fd00:244:1::5", "node-a", "R")],
                ))
                .unwrap()
                .unwrap(),
            ],
            node(),
        ),
        "sctp" => (
            vec![svc(
                "web",
                "10.96.0.10",
                json!([{ "name": "assoc", "port": 9999, "protocol": "SCTP" }]),
                json!({}),
            )],
            vec![slice(
                "web",
                "IPv4",
                json!([{ "name": "assoc", "port": 9999, "protocol": "SCTP" }]),
                two(),
            )],
            node_v4(),
        ),
        "headless" => {
            let v = svc_json("web", "None", http(), json!({}));
            assert_eq!(Service::from_json(&v), Ok(None), "headless is skipped");
            (vec![], sl(), node_v4())
        }
        other => panic!("no shape {other}"),
    }
}

pub(super) const SHAPES: &[&str] = &[
    "clusterip",
    "multi-port",
    "nodeport",
    "externalips",
    "etp-local",
    "itp-local",
    "affinity",
    "no-endpoints",
    "terminating",
    "ipv6",
    "sctp",
    "headless",
];

fn golden_path(shape: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/proxy")
        .join(format!("{shape}.nft"))
}

fn built(shape_name: &str) -> Built {
    let (services, slices, node) = shape(shape_name);
    build(&services, &slices, &node)
}

#[test]
fn golden_rulesets_match() {
    let update = std::env::var_os("NANOLET_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for name in SHAPES {
        let b = built(name);
        assert_eq!(b.problems, vec![], "{name}");
        let text = render(&b.ruleset);
        let path = golden_path(name);
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(format!("{} differs:\n{text}", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nrefresh with NANOLET_UPDATE_GOLDEN=1 cargo test proxy",
        stale.join("\n")
    );
}

#[test]
fn build_is_deterministic_whatever_the_input_order() {
    let (mut services, mut slices, node) = flows_world();
    let a = render(&build(&services, &slices, &node).ruleset);
    services.reverse();
    slices.reverse();
    let b = render(&build(&services, &slices, &node).ruleset);
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------------
// Packet flows

/// One ruleset with every shape, each Service at its own clusterIP.
pub(super) fn flows_world() -> (Vec<Service>, Vec<EndpointSlice>, NodeConfig) {
    let np = |port: u16| json!([{ "name": "http", "port": 80, "nodePort": port }]);
    let services = vec![
        svc("web", "10.96.0.10", http(), json!({})),
        svc(
            "multi",
            "10.96.0.11",
            json!([{ "name": "http", "port": 80 }, { "name": "https", "port": 443 },
                   { "name": "dns", "port": 53, "protocol": "UDP" }]),
            json!({}),
        ),
        svc("np", "10.96.0.12", np(30080), json!({ "type": "NodePort" })),
        svc(
            "ext",
            "10.96.0.13",
            http(),
            json!({ "externalIPs": ["203.0.113.7"] }),
        ),
        svc(
            "etp",
            "10.96.0.14",
            np(30081),
            json!({ "type": "NodePort", "externalTrafficPolicy": "Local" }),
        ),
        svc(
            "etp-none",
            "10.96.0.15",
            np(30082),
            json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Local" }),
        ),
        svc(
            "itp",
            "10.96.0.16",
            http(),
            json!({ "internalTrafficPolicy": "Local" }),
        ),
        svc(
            "itp-none",
            "10.96.0.17",
            http(),
            json!({ "internalTrafficPolicy": "Local" }),
        ),
        svc(
            "sticky",
            "10.96.0.18",
            http(),
            json!({ "sessionAffinity": "ClientIP" }),
        ),
        svc("empty", "10.96.0.19", http(), json!({})),
        svc("term", "10.96.0.20", http(), json!({})),
        svc(
            "sctp",
            "10.96.0.21",
            json!([{ "name": "assoc", "port": 9999, "protocol": "SCTP" }]),
            json!({}),
        ),
        svc(
            "dual",
            "10.96.0.22",
            http(),
            json!({ "clusterIPs": ["10.96.0.22", "fd00:96::22"] }),
        ),
        svc(
            "np-empty",
            "10.96.0.23",
            np(30083),
            json!({ "type": "NodePort" }),
        ),
    ];
    let pair = |name: &str, n: u8| {
        slice(
            name,
            "IPv4",
            http_8080(),
            vec![
                ep(&format!("10.244.1.{n}"), "node-a", "R"),
                ep(&format!("10.244.2.{n}"), "node-b", "R"),
            ],
        )
    };
    let remote_only = |name: &str, n: u8| {
        slice(
            name,
            "IPv4",
            http_8080(),
            vec![ep(&format!("10.244.2.{n}"), "node-b", "R")],
        )
    };
    let slices = vec![
        slice(
            "web",
            "IPv4",
            http_8080(),
            vec![
                ep("10.244.1.5", "node-a", "R"),
                ep("10.244.2.6", "node-b", "R"),
                ep("10.244.2.7", "node-b", "rst"),
                ep("10.244.1.8", "node-a", "rST"),
            ],
        ),
        slice(
            "multi",
            "IPv4",
            json!([{ "name": "http", "port": 8080 }, { "name": "https", "port": 8443 },
                   { "name": "dns", "port": 5353, "protocol": "UDP" }]),
            vec![
                ep("10.244.1.10", "node-a", "R"),
                ep("10.244.2.10", "node-b", "R"),
            ],
        ),
        pair("np", 20),
        remote_only("ext", 30),
        pair("etp", 40),
        remote_only("etp-none", 50),
        pair("itp", 60),
        remote_only("itp-none", 70),
        pair("sticky", 80),
        slice(
            "term",
            "IPv4",
            http_8080(),
            vec![
                ep("10.244.1.90", "node-a", "rST"),
                ep("10.244.2.90", "node-b", "rsT"),
            ],
        ),
        slice(
            "sctp",
            "IPv4",
            json!([{ "name": "assoc", "port": 9999, "protocol": "SCTP" }]),
            vec![ep("10.244.2.100", "node-b", "R")],
        ),
        pair("dual", 110),
        EndpointSlice::from_json(&slice_json(
            "dual",
            "v6",
            "IPv6",
            http_8080(),
            vec![ep("fd00:244:1::110", "node-a", "R")],
        ))
        .unwrap()
        .unwrap(),
    ];
    (services, slices, node())
}

/// `dnat A B+` (endpoints; `+` = masqueraded), `drop`, `reject`, `pass`, `pass+`.
fn expect(outcomes: &str) -> BTreeSet<Outcome> {
    let mut words = outcomes.split_whitespace();
    match words.next() {
        Some("drop") => [Outcome::Drop].into(),
        Some("reject") => [Outcome::Reject].into(),
        Some("pass") => [Outcome::NotService { masquerade: false }].into(),
        Some("pass+") => [Outcome::NotService { masquerade: true }].into(),
        Some("dnat") => words
            .map(|w| Outcome::Dnat {
                endpoint: sock(w.trim_end_matches('+')),
                masquerade: w.ends_with('+'),
                remembered_in: None,
            })
            .collect(),
        _ => panic!("bad expectation {outcomes:?}"),
    }
}

/// Sources: R remote host, P pod on this node, Q pod on another node, H this host,
/// P6/R6/H6 the same in IPv6.
fn source(s: &str) -> (IpAddr, bool) {
    match s {
        "R" => (ip("192.168.1.50"), false),
        "P" => (ip("10.244.1.99"), false),
        "Q" => (ip("10.244.2.99"), false),
        "H" => (ip("192.168.1.10"), true),
        "R6" => (ip("fd00:1::50"), false),
        "P6" => (ip("fd00:244:1::99"), false),
        "H6" => (ip("fd00:1::10"), true),
        other => (ip(other), false),
    }
}

fn proto(s: &str) -> Protocol {
    match s {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => panic!("{s}"),
    }
}

#[rustfmt::skip]
const FLOWS: &[(&str, &str, &str, u16, &str)] = &[
    // web: two ready endpoints; one not ready, one serving+terminating (unused: ready ones exist)
    ("R", "10.96.0.10", "tcp", 80, "dnat 10.244.1.5:8080+ 10.244.2.6:8080+"),
    ("P", "10.96.0.10", "tcp", 80, "dnat 10.244.1.5:8080 10.244.2.6:8080"),
    ("Q", "10.96.0.10", "tcp", 80, "dnat 10.244.1.5:8080 10.244.2.6:8080"),
    ("H", "10.96.0.10", "tcp", 80, "dnat 10.244.1.5:8080+ 10.244.2.6:8080+"),
    ("10.244.1.5", "10.96.0.10", "tcp", 80, "dnat 10.244.1.5:8080+ 10.244.2.6:8080"),
    ("10.244.2.6", "10.96.0.10", "tcp", 80, "dnat 10.244.1.5:8080 10.244.2.6:8080+"),
    ("P", "10.96.0.10", "tcp", 81, "reject"),
    ("P", "10.96.0.10", "udp", 80, "reject"),
    ("P", "10.96.0.10", "sctp", 80, "reject"),
    ("H", "10.96.0.10", "tcp", 81, "reject"),
    ("R", "10.96.0.10", "tcp", 8080, "reject"),
    ("Q", "10.96.0.10", "tcp", 443, "reject"),
    // unallocated clusterIPs: drop
    ("P", "10.96.0.99", "tcp", 80, "drop"),
    ("H", "10.96.0.99", "tcp", 80, "drop"),
    ("R", "10.96.0.99", "tcp", 80, "drop"),
    ("Q", "10.96.5.5", "udp", 53, "drop"),
    ("P", "10.96.255.255", "tcp", 443, "drop"),
    // not a Service
    ("P", "8.8.8.8", "udp", 53, "pass"),
    ("H", "1.1.1.1", "tcp", 443, "pass"),
    ("R", "10.244.1.5", "tcp", 8080, "pass"),
    ("P", "10.244.2.6", "tcp", 8080, "pass"),
    ("P", "192.168.1.10", "tcp", 22, "pass"),
    ("R", "192.168.1.10", "tcp", 22, "pass"),
    ("H", "192.168.1.10", "tcp", 22, "pass"),
    ("R", "10.97.0.10", "tcp", 80, "pass"),
    ("H", "127.0.0.1", "tcp", 80, "pass"),
    // multi-port
    ("P", "10.96.0.11", "tcp", 80, "dnat 10.244.1.10:8080 10.244.2.10:8080"),
    ("P", "10.96.0.11", "tcp", 443, "dnat 10.244.1.10:8443 10.244.2.10:8443"),
    ("P", "10.96.0.11", "udp", 53, "dnat 10.244.1.10:5353 10.244.2.10:5353"),
    ("R", "10.96.0.11", "udp", 53, "dnat 10.244.1.10:5353+ 10.244.2.10:5353+"),
    ("H", "10.96.0.11", "tcp", 443, "dnat 10.244.1.10:8443+ 10.244.2.10:8443+"),
    ("Q", "10.96.0.11", "tcp", 443, "dnat 10.244.1.10:8443 10.244.2.10:8443"),
    ("P", "10.96.0.11", "tcp", 53, "reject"),
    ("P", "10.96.0.11", "udp", 80, "reject"),
    ("P", "10.96.0.11", "tcp", 8080, "reject"),
    ("H", "10.96.0.11", "udp", 443, "reject"),
    // NodePort (externalTrafficPolicy Cluster): external traffic is always masqueraded
    ("P", "10.96.0.12", "tcp", 80, "dnat 10.244.1.20:8080 10.244.2.20:8080"),
    ("R", "10.96.0.12", "tcp", 80, "dnat 10.244.1.20:8080+ 10.244.2.20:8080+"),
    ("R", "192.168.1.10", "tcp", 30080, "dnat 10.244.1.20:8080+ 10.244.2.20:8080+"),
    ("P", "192.168.1.10", "tcp", 30080, "dnat 10.244.1.20:8080+ 10.244.2.20:8080+"),
    ("Q", "192.168.1.10", "tcp", 30080, "dnat 10.244.1.20:8080+ 10.244.2.20:8080+"),
    ("H", "192.168.1.10", "tcp", 30080, "dnat 10.244.1.20:8080+ 10.244.2.20:8080+"),
    ("R", "192.168.1.10", "udp", 30080, "pass"),
    ("R", "192.168.1.10", "tcp", 30099, "pass"),
    ("R", "192.168.1.77", "tcp", 30080, "pass"),
    ("P", "10.96.0.12", "tcp", 30080, "reject"),
    ("R", "203.0.113.7", "tcp", 30080, "pass"),
    // NodePort without endpoints: reject on the node's address
    ("R", "192.168.1.10", "tcp", 30083, "reject"),
    ("H", "192.168.1.10", "tcp", 30083, "reject"),
    ("P", "10.96.0.23", "tcp", 80, "reject"),
    // externalIPs
    ("R", "203.0.113.7", "tcp", 80, "dnat 10.244.2.30:8080+"),
    ("P", "203.0.113.7", "tcp", 80, "dnat 10.244.2.30:8080+"),
    ("H", "203.0.113.7", "tcp", 80, "dnat 10.244.2.30:8080+"),
    ("R", "203.0.113.7", "tcp", 81, "pass"),
    ("R", "203.0.113.7", "udp", 80, "pass"),
    ("P", "10.96.0.13", "tcp", 80, "dnat 10.244.2.30:8080"),
    ("R", "10.96.0.13", "tcp", 80, "dnat 10.244.2.30:8080+"),
    // externalTrafficPolicy Local: external clients keep their address and reach local
    // endpoints only; pods and this host reach every endpoint
    ("R", "192.168.1.10", "tcp", 30081, "dnat 10.244.1.40:8080"),
    ("192.0.2.1", "192.168.1.10", "tcp", 30081, "dnat 10.244.1.40:8080"),
    ("P", "192.168.1.10", "tcp", 30081, "dnat 10.244.1.40:8080 10.244.2.40:8080"),
    ("Q", "192.168.1.10", "tcp", 30081, "dnat 10.244.1.40:8080 10.244.2.40:8080"),
    ("H", "192.168.1.10", "tcp", 30081, "dnat 10.244.1.40:8080+ 10.244.2.40:8080+"),
    ("P", "10.96.0.14", "tcp", 80, "dnat 10.244.1.40:8080 10.244.2.40:8080"),
    ("R", "10.96.0.14", "tcp", 80, "dnat 10.244.1.40:8080+ 10.244.2.40:8080+"),
    ("H", "10.96.0.14", "tcp", 80, "dnat 10.244.1.40:8080+ 10.244.2.40:8080+"),
    ("R", "192.168.1.10", "udp", 30081, "pass"),
    // externalTrafficPolicy Local without local endpoints: drop external, serve internal
    ("R", "192.168.1.10", "tcp", 30082, "drop"),
    ("P", "192.168.1.10", "tcp", 30082, "drop"),
    ("H", "192.168.1.10", "tcp", 30082, "drop"),
    ("P", "10.96.0.15", "tcp", 80, "dnat 10.244.2.50:8080"),
    ("R", "10.96.0.15", "tcp", 80, "dnat 10.244.2.50:8080+"),
    ("P", "10.96.0.15", "tcp", 81, "reject"),
    // internalTrafficPolicy Local: this node's endpoints only
    ("P", "10.96.0.16", "tcp", 80, "dnat 10.244.1.60:8080"),
    ("Q", "10.96.0.16", "tcp", 80, "dnat 10.244.1.60:8080"),
    ("H", "10.96.0.16", "tcp", 80, "dnat 10.244.1.60:8080+"),
    ("R", "10.96.0.16", "tcp", 80, "dnat 10.244.1.60:8080+"),
    ("10.244.1.60", "10.96.0.16", "tcp", 80, "dnat 10.244.1.60:8080+"),
    ("P", "10.96.0.16", "tcp", 81, "reject"),
    // internalTrafficPolicy Local without local endpoints: drop
    ("P", "10.96.0.17", "tcp", 80, "drop"),
    ("H", "10.96.0.17", "tcp", 80, "drop"),
    ("R", "10.96.0.17", "tcp", 80, "drop"),
    ("P", "10.96.0.17", "tcp", 81, "reject"),
    // session affinity, nobody remembered yet: any endpoint
    ("P", "10.96.0.18", "tcp", 80, "dnat 10.244.1.80:8080 10.244.2.80:8080"),
    ("R", "10.96.0.18", "tcp", 80, "dnat 10.244.1.80:8080+ 10.244.2.80:8080+"),
    // no endpoints at all: reject, every port of the clusterIP
    ("P", "10.96.0.19", "tcp", 80, "reject"),
    ("R", "10.96.0.19", "tcp", 80, "reject"),
    ("H", "10.96.0.19", "tcp", 80, "reject"),
    ("Q", "10.96.0.19", "tcp", 81, "reject"),
    ("P", "10.96.0.19", "udp", 80, "reject"),
    // no ready endpoints: fall back to serving+terminating ones
    ("P", "10.96.0.20", "tcp", 80, "dnat 10.244.1.90:8080"),
    ("R", "10.96.0.20", "tcp", 80, "dnat 10.244.1.90:8080+"),
    ("H", "10.96.0.20", "tcp", 80, "dnat 10.244.1.90:8080+"),
    // SCTP
    ("P", "10.96.0.21", "sctp", 9999, "dnat 10.244.2.100:9999"),
    ("R", "10.96.0.21", "sctp", 9999, "dnat 10.244.2.100:9999+"),
    ("P", "10.96.0.21", "tcp", 9999, "reject"),
    ("P", "10.96.0.21", "udp", 9999, "reject"),
    ("P", "10.96.0.21", "sctp", 9998, "reject"),
    // dual-stack and IPv6
    ("P", "10.96.0.22", "tcp", 80, "dnat 10.244.1.110:8080 10.244.2.110:8080"),
    ("P6", "fd00:96::22", "tcp", 80, "dnat [fd00:244:1::110]:8080"),
    ("R6", "fd00:96::22", "tcp", 80, "dnat [fd00:244:1::110]:8080+"),
    ("H6", "fd00:96::22", "tcp", 80, "dnat [fd00:244:1::110]:8080+"),
    ("fd00:244:1::110", "fd00:96::22", "tcp", 80, "dnat [fd00:244:1::110]:8080+"),
    ("P6", "fd00:96::22", "tcp", 81, "reject"),
    ("P6", "fd00:96::22", "udp", 80, "reject"),
    ("P6", "fd00:96::99", "tcp", 80, "drop"),
    ("H6", "fd00:96::1", "tcp", 443, "drop"),
    ("P6", "fd00:96::10", "tcp", 80, "drop"),
    ("P6", "2001:db8::1", "tcp", 80, "pass"),
    ("R6", "fd00:1::10", "tcp", 30080, "pass"),
    ("H6", "fd00:1::10", "tcp", 22, "pass"),
];

fn outcomes_without_affinity(t: &Trace) -> BTreeSet<Outcome> {
    t.outcomes
        .iter()
        .cloned()
        .map(|o| match o {
            Outcome::Dnat {
                endpoint,
                masquerade,
                ..
            } => Outcome::Dnat {
                endpoint,
                masquerade,
                remembered_in: None,
            },
            other => other,
        })
        .collect()
}

#[test]
fn over_100_flows_go_where_kube_proxy_would_send_them() {
    assert!(FLOWS.len() >= 100, "{} flows", FLOWS.len());
    let (services, slices, node) = flows_world();
    let b = build(&services, &slices, &node);
    assert_eq!(b.problems, vec![]);
    let tracer = Tracer::new(&b.ruleset, &node.node_ips);
    let mut failures = Vec::new();
    for (src, dst, pr, dport, want) in FLOWS {
        let (src_ip, is_from_local) = source(src);
        let p = Packet {
            src: src_ip,
            dst: ip(dst),
            protocol: proto(pr),
            dport: *dport,
            is_from_local,
        };
        let got = outcomes_without_affinity(&tracer.trace(&p).unwrap());
        if got != expect(want) {
            failures.push(format!(
                "{src} -> {dst} {pr}/{dport}: want {want}, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn session_affinity_sends_a_remembered_client_to_its_endpoint() {
    let (services, slices, node) = flows_world();
    let b = build(&services, &slices, &node);
    let p = Packet {
        src: ip("10.244.1.99"),
        dst: ip("10.96.0.18"),
        protocol: Protocol::Tcp,
        dport: 80,
        is_from_local: false,
    };
    let mut tracer = Tracer::new(&b.ruleset, &node.node_ips);
    let first = tracer.trace(&p).unwrap();
    let chosen = sock("10.244.2.80:8080");
    let set = affinity_set("default/sticky/tcp/http", &chosen);
    // The first connection remembers its client in the chosen endpoint's set.
    assert!(first.outcomes.contains(&Outcome::Dnat {
        endpoint: chosen,
        masquerade: false,
        remembered_in: Some(set.clone()),
    }));
    tracer.remember(&set, p.src);
    assert_eq!(
        tracer.trace(&p).unwrap().verdict(),
        Verdict::Dnat([chosen].into())
    );
    // Another client is not affected.
    let other = Packet {
        src: ip("10.244.2.99"),
        ..p
    };
    assert_eq!(
        tracer.trace(&other).unwrap().verdict(),
        Verdict::Dnat([sock("10.244.1.80:8080"), chosen].into())
    );
    // The timeout is in the set's declaration.
    let table = b.ruleset.table(IpFamily::V4).unwrap();
    assert_eq!(table.sets[&set].timeout_seconds, Some(10800));
}

#[test]
fn terminating_endpoints_are_used_only_without_ready_ones() {
    let cases: &[(&[(&str, &str)], Verdict)] = &[
        (
            &[("10.244.1.1", "R"), ("10.244.1.2", "rST")],
            Verdict::Dnat([sock("10.244.1.1:8080")].into()),
        ),
        (
            &[("10.244.1.1", "rST"), ("10.244.1.2", "rST")],
            Verdict::Dnat([sock("10.244.1.1:8080"), sock("10.244.1.2:8080")].into()),
        ),
        (
            &[("10.244.1.1", "rsT"), ("10.244.1.2", "rST")],
            Verdict::Dnat([sock("10.244.1.2:8080")].into()),
        ),
        (&[("10.244.1.1", "rsT")], Verdict::Reject),
        (&[("10.244.1.1", "rSt")], Verdict::Reject),
        (
            &[("10.244.1.1", "RST")],
            Verdict::Dnat([sock("10.244.1.1:8080")].into()),
        ),
    ];
    let node = node_v4();
    for (case, want) in cases {
        let eps = case.iter().map(|(a, c)| ep(a, "node-a", c)).collect();
        let b = build(
            &[svc("web", "10.96.0.10", http(), json!({}))],
            &[slice("web", "IPv4", http_8080(), eps)],
            &node,
        );
        let p = Packet {
            src: ip("10.244.9.9"),
            dst: ip("10.96.0.10"),
            protocol: Protocol::Tcp,
            dport: 80,
            is_from_local: false,
        };
        let got = Tracer::new(&b.ruleset, &node.node_ips).trace(&p).unwrap();
        assert_eq!(&got.verdict(), want, "endpoints {case:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Diff

#[test]
fn diff_of_equal_rulesets_is_empty() {
    let (services, slices, node) = flows_world();
    let r = build(&services, &slices, &node).ruleset;
    assert_eq!(diff(&r, &r), vec![]);
}

#[test]
fn diff_touches_only_the_changed_service() {
    let (services, mut slices, node) = flows_world();
    let old = build(&services, &slices, &node).ruleset;
    // A third endpoint for "np".
    let i = slices.iter().position(|s| s.service_name == "np").unwrap();
    slices[i] = slice(
        "np",
        "IPv4",
        http_8080(),
        vec![
            ep("10.244.1.20", "node-a", "R"),
            ep("10.244.2.20", "node-b", "R"),
            ep("10.244.3.20", "node-c", "R"),
        ],
    );
    let new = build(&services, &slices, &node).ruleset;
    let ops = diff(&old, &new);
    assert!(!ops.is_empty());
    // Only elements change (and chains for a new endpoint count may appear): every key
    // touched is np's clusterIP, its NodePort, or its new endpoint in the hairpin set.
    let np_ip = KeyPart::Addr(ip("10.96.0.12"));
    let np_port = KeyPart::Port(30080);
    let new_ep = KeyPart::Addr(ip("10.244.3.20"));
    let is_np = |k: &Key| k.contains(&np_ip) || k.contains(&np_port) || k.contains(&new_ep);
    for op in &ops {
        match op {
            Op::AddElements(_, _, els) => assert!(els.iter().all(|(k, _)| is_np(k)), "{op:?}"),
            Op::AddEndpoints(_, _, els) => assert!(els.iter().all(|(k, _)| is_np(k)), "{op:?}"),
            Op::DeleteElements(_, _, keys) => assert!(keys.iter().all(is_np), "{op:?}"),
            Op::AddChain(_, n, None) | Op::AddRule(_, n, _) => {
                assert!(n.ends_with("-3"), "unexpected change to {n}")
            }
            // np was the only Service with 2 endpoints on its NodePort.
            Op::FlushChain(_, n) | Op::DeleteChain(_, n) => {
                assert!(n.ends_with("-2"), "unexpected change to {n}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let third = vec![
        np_ip,
        KeyPart::Proto(Protocol::Tcp),
        KeyPart::Port(80),
        KeyPart::Index(2),
    ];
    assert!(ops.iter().any(|op| matches!(op,
        Op::AddEndpoints(_, m, els) if m == SERVICE_BACKENDS
            && els.contains(&(third.clone(), sock("10.244.3.20:8080"))))));
}

#[test]
fn diff_removes_a_deleted_service_and_its_map_elements() {
    let (mut services, slices, node) = flows_world();
    let old = build(&services, &slices, &node).ruleset;
    services.retain(|s| s.name != "sticky");
    let new = build(&services, &slices, &node).ruleset;
    let ops = diff(&old, &new);
    let deleted: Vec<&String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::DeleteChain(_, n) | Op::DeleteSet(_, n) => Some(n),
            _ => None,
        })
        .collect();
    // The service chain, two endpoint chains and their two affinity sets.
    assert_eq!(deleted.len(), 5, "{deleted:?}");
    assert!(ops.iter().any(|op| matches!(op,
        Op::DeleteElements(_, m, keys) if m == "service-ips" && keys.len() == 1)));
    assert!(ops.iter().any(|op| matches!(op,
        Op::DeleteElements(_, m, keys) if m == "cluster-ips" && keys.len() == 1)));
    // Deleting chains comes after deleting the map elements that point to them.
    let last_element = ops
        .iter()
        .rposition(|op| matches!(op, Op::DeleteElements(..)));
    let first_chain = ops.iter().position(|op| matches!(op, Op::DeleteChain(..)));
    assert!(last_element < first_chain);
}

// ---------------------------------------------------------------------------------------------
// Bad input: a clear error naming the object, never a panic

fn service_err(v: Value) -> String {
    match Service::from_json(&v) {
        Err(e) => e.to_string(),
        Ok(s) => panic!("accepted {s:?}"),
    }
}

fn slice_err(v: Value) -> String {
    match EndpointSlice::from_json(&v) {
        Err(e) => e.to_string(),
        Ok(s) => panic!("accepted {s:?}"),
    }
}

#[test]
fn bad_services_are_rejected_with_the_object_and_field() {
    let cases: Vec<(Value, &str)> = vec![
        (svc_json("web", "010.96.0.1", http(), json!({})),
         "service default/web: spec.clusterIP: \"010.96.0.1\": IPv4 address must not have leading zeros"),
        (svc_json("web", "10.96.0.1", http(), json!({ "clusterIPs": ["10.96.0.1", "10.96.0.2"] })),
         "service default/web: spec.clusterIPs[1]: 10.96.0.2: a second IPv4 clusterIP, a dual-stack service has one of each family"),
        (svc_json("web", "10.96.0.1", http(), json!({ "clusterIPs": ["fd00:96::1"], "ipFamilies": ["IPv4"] })),
         "service default/web: spec.clusterIPs[0]: fd00:96::1 is not an IPv4 address (spec.ipFamilies[0] is IPv4)"),
        (svc_json("web", "::ffff:10.96.0.1", http(), json!({})),
         "service default/web: spec.clusterIP: \"::ffff:10.96.0.1\": IPv4-mapped IPv6 address is not allowed, use the IPv4 form"),
        (svc_json("web", "10.96.0.1", json!([{ "port": 0 }]), json!({})),
         "service default/web: spec.ports[0].port: port 0 must be 1..=65535"),
        (svc_json("web", "10.96.0.1", json!([{ "port": 65536 }]), json!({})),
         "service default/web: spec.ports[0].port: port 65536 must be 1..=65535"),
        (svc_json("web", "10.96.0.1", json!([{ "port": 80, "nodePort": 0 }]), json!({ "type": "NodePort" })),
         "service default/web: spec.ports[0].nodePort: port 0 must be 1..=65535"),
        (svc_json("web", "10.96.0.1",
                  json!([{ "name": "a", "port": 80 }, { "name": "b", "port": 80, "protocol": "TCP" }]), json!({})),
         "service default/web: spec.ports[1]: duplicate port 80/TCP"),
        (svc_json("web", "10.96.0.1",
                  json!([{ "name": "a", "port": 80 }, { "name": "a", "port": 81 }]), json!({})),
         "service default/web: spec.ports[1]: duplicate port name \"a\""),
        (svc_json("web", "10.96.0.1", json!([{ "port": 80 }, { "port": 81 }]), json!({})),
         "service default/web: spec.ports[0].name: must be set when the service has more than one port"),
        (svc_json("web", "10.96.0.1", http(), json!({ "externalIPs": ["127.0.0.1"] })),
         "service default/web: spec.externalIPs[0]: 127.0.0.1 is a loopback, unspecified or multicast address"),
        (svc_json("web", "10.96.0.1", http(), json!({ "externalIPs": ["::1"] })),
         "service default/web: spec.externalIPs[0]: ::1 is a loopback, unspecified or multicast address"),
        (svc_json("web", "10.96.0.1", http(), json!({ "externalIPs": ["203.0.113.07"] })),
         "service default/web: spec.externalIPs[0]: \"203.0.113.07\": IPv4 address must not have leading zeros"),
        (svc_json("web", "10.96.0.1", http(), json!({ "externalIPs": ["2001:db8::7"] })),
         "service default/web: spec.externalIPs[0]: 2001:db8::7 is IPv6 but the service has no IPv6 clusterIP"),
        (svc_json("web", "10.96.0.1", http(), json!({ "sessionAffinity": "ClientIP",
                  "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 0 } } })),
         "service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 must be 1..=86400"),
        (svc_json("web", "10.96.0.1", json!([{ "port": 80, "protocol": "ICMP" }]), json!({})),
         "service default/web: spec.ports[0].protocol: \"ICMP\": must be TCP, UDP or SCTP"),
        (svc_json("web", "", http(), json!({})),
         "service default/web: spec.clusterIP: no clusterIP allocated"),
        (svc_json(&"a".repeat(64), "10.96.0.1", http(), json!({})),
         &*Box::leak(format!("service default/{0}: metadata.name: \"{0}\": 64 characters, at most 63 are allowed", "a".repeat(64)).into_boxed_str())),
        (svc_json("Web", "10.96.0.1", http(), json!({})),
         "service default/Web: metadata.name: \"Web\": must be lowercase letters, digits and '-', starting and ending with a letter or digit"),
        (json!([1, 2]), "service default/: expected a JSON object"),
        (json!({ "metadata": { "name": "web" }, "spec": { "clusterIP": 7, "ports": [] } }),
         "service default/web: spec.clusterIP: must be a string"),
        (json!({ "metadata": { "name": "web" }, "spec": { "clusterIP": "10.96.0.1", "ports": "80" } }),
         "service default/web: spec.ports: must be a list"),
    ];
    for (v, want) in cases {
        assert_eq!(service_err(v), want);
    }
}

#[test]
fn bad_endpoint_slices_are_rejected_with_the_object_and_field() {
    let cases: Vec<(Value, &str)> = vec![
        (
            slice_json(
                "web",
                "x",
                "IPv4",
                http_8080(),
                vec![ep("10.244.001.5", "n", "R")],
            ),
            "endpointslice default/web-x: endpoints[0].addresses[0]: \"10.244.001.5\": IPv4 address must not have leading zeros",
        ),
        (
            slice_json(
                "web",
                "x",
                "IPv4",
                http_8080(),
                vec![ep("fd00::5", "n", "R")],
            ),
            "endpointslice default/web-x: endpoints[0].addresses[0]: fd00::5 is not an IPv4 address (addressType IPv4)",
        ),
        (
            slice_json(
                "web",
                "x",
                "IPv6",
                http_8080(),
                vec![ep("10.244.1.5", "n", "R")],
            ),
            "endpointslice default/web-x: endpoints[0].addresses[0]: 10.244.1.5 is not an IPv6 address (addressType IPv6)",
        ),
        (
            slice_json(
                "web",
                "x",
                "IPv4",
                json!([{ "name": "http", "port": 0 }]),
                vec![],
            ),
            "endpointslice default/web-x: ports[0].port: port 0 must be 1..=65535",
        ),
        (
            slice_json(
                "web",
                "x",
                "IPv4",
                http_8080(),
                vec![json!({ "addresses": [] })],
            ),
            "endpointslice default/web-x: endpoints[0].addresses: must have at least one address",
        ),
        (
            slice_json(
                "web",
                "x",
                "IPv4",
                http_8080(),
                vec![json!({ "addresses": ["10.0.0.1"], "conditions": { "ready": "yes" } })],
            ),
            "endpointslice default/web-x: endpoints[0].conditions.ready: must be a boolean",
        ),
        (
            slice_json(
                "web",
                "x",
                "IPv4",
                http_8080(),
                (0..1001)
                    .map(|i| ep(&format!("10.244.{}.{}", i / 250, i % 250 + 1), "n", "R"))
                    .collect(),
            ),
            "endpointslice default/web-x: endpoints: 1001 endpoints, at most 1000 are allowed in one slice",
        ),
        (
            json!({ "metadata": { "name": "web-x", "namespace": "default" }, "addressType": "IPv4" }),
            "endpointslice default/web-x: metadata.labels: missing label kubernetes.io/service-name",
        ),
        (
            json!({ "metadata": { "name": "web-x", "labels": { "kubernetes.io/service-name": "web" } }, "addressType": "IPv5" }),
            "endpointslice default/web-x: addressType: unknown address type \"IPv5\"",
        ),
    ];
    for (v, want) in cases {
        assert_eq!(slice_err(v), want);
    }
    // FQDN slices are not for the proxy.
    let fqdn = slice_json("web", "x", "FQDN", http_8080(), vec![]);
    assert_eq!(EndpointSlice::from_json(&fqdn), Ok(None));
}

#[test]
fn strict_ip_and_cidr_parsing() {
    use super::model::parse_ip;
    for good in ["10.0.0.1", "0.0.0.0", "fd00::1", "2001:db8::10"] {
        assert!(parse_ip(good).is_ok(), "{good}");
    }
    for bad in [
        "010.0.0.1",
        "10.0.0.01",
        "1.2.3",
        "10.0.0.1 ",
        "::ffff:1.2.3.4",
        "",
        "x",
    ] {
        assert!(parse_ip(bad).is_err(), "{bad}");
    }
    for (s, ok) in [
        ("10.244.0.0/16", true),
        ("fd00::/48", true),
        ("10.244.0.1/16", false),
        ("10.244.0.0/33", false),
        ("10.244.0.0/016", false),
        ("10.244.0.0", false),
        ("010.244.0.0/16", false),
    ] {
        assert_eq!(Cidr::parse(s).is_ok(), ok, "{s}");
    }
}

#[test]
fn external_ip_equal_to_the_node_ip_is_skipped_and_reported() {
    let node = node_v4();
    let services = [svc(
        "web",
        "10.96.0.10",
        json!([{ "name": "ssh", "port": 22 }]),
        json!({ "externalIPs": ["192.168.1.10", "203.0.113.7"] }),
    )];
    let slices = [slice(
        "web",
        "IPv4",
        json!([{ "name": "ssh", "port": 2222 }]),
        vec![ep("10.244.2.6", "node-b", "R")],
    )];
    let b = build(&services, &slices, &node);
    assert_eq!(
        b.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        vec![
            "service default/web: externalIP 192.168.1.10 is this node's own address, skipped (it would capture the node's own ports)"
        ]
    );
    let tracer = Tracer::new(&b.ruleset, &node.node_ips);
    let to = |dst: &str| {
        tracer
            .trace(&Packet {
                src: ip("192.168.1.50"),
                dst: ip(dst),
                protocol: Protocol::Tcp,
                dport: 22,
                is_from_local: false,
            })
            .unwrap()
            .verdict()
    };
    // The node's own SSH is not captured; the other externalIP still works.
    assert_eq!(to("192.168.1.10"), Verdict::NotService);
    assert_eq!(
        to("203.0.113.7"),
        Verdict::Dnat([sock("10.244.2.6:2222")].into())
    );
}

#[test]
fn two_services_claiming_one_node_port_keep_the_first() {
    let node = node_v4();
    let np = json!([{ "name": "http", "port": 80, "nodePort": 30080 }]);
    let services = [
        svc("b", "10.96.0.11", np.clone(), json!({ "type": "NodePort" })),
        svc("a", "10.96.0.10", np, json!({ "type": "NodePort" })),
    ];
    let b = build(&services, &[], &node);
    assert_eq!(
        b.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        vec!["service default/b: nodePort 30080/TCP is already used by another service, skipped"]
    );
}

#[test]
fn names_at_the_63_character_limit_make_valid_nft_names() {
    let b = long_names_world();
    assert_eq!(b.problems, vec![]);
    let longest = b
        .ruleset
        .tables
        .iter()
        .flat_map(|t| t.chains.keys().chain(t.sets.keys()))
        .map(String::len)
        .max()
        .unwrap();
    // nftables' NFT_NAME_MAXLEN is 256 including the terminating NUL.
    assert!(longest < 256, "{longest}");
    assert!(
        longest > 200,
        "the test should exercise long names: {longest}"
    );
}

/// 63-character namespace, Service and slice names, a 15-character port name, the longest
/// IPv6 address form, and affinity sets named after all of them.
fn long_names_world() -> Built {
    let long = "a".repeat(63);
    let v = json!({ "metadata": { "name": long, "namespace": long },
                    "spec": { "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                              "ports": [{ "name": "b".repeat(15), "port": 80 }],
                              "sessionAffinity": "ClientIP" } });
    let s = Service::from_json(&v).unwrap().unwrap();
    let mut sl = slice_json(
        &long,
        "x",
        "IPv6",
        json!([{ "name": "b".repeat(15), "port": 8080 }]),
        vec![ep("fd00:244:ffff:ffff:ffff:ffff:ffff:ffff", "node-a", "R")],
    );
    sl["metadata"]["namespace"] = json!(long);
    sl["metadata"]["name"] = json!("c".repeat(63));
    let sl = EndpointSlice::from_json(&sl).unwrap().unwrap();
    build(&[s], &[sl], &node())
}

#[test]
fn five_thousand_endpoints_in_one_service_build_and_trace() {
    let (b, node) = five_thousand_world();
    assert_eq!(b.problems, vec![]);
    let table = b.ruleset.table(IpFamily::V4).unwrap();
    let chain = &table.chains["endpoints-5000"];
    assert!(matches!(
        chain.rules.last().map(|r| &r.action),
        Some(Action::DnatMap { modulus: 5000, .. })
    ));
    assert_eq!(table.dnat_maps[SERVICE_BACKENDS].elements.len(), 5000);
    let t = Tracer::new(&b.ruleset, &node.node_ips)
        .trace(&Packet {
            src: ip("10.244.100.1"),
            dst: ip("10.96.0.10"),
            protocol: Protocol::Tcp,
            dport: 80,
            is_from_local: false,
        })
        .unwrap();
    match t.verdict() {
        Verdict::Dnat(eps) => {
            assert_eq!(eps.len(), 5000);
            assert!(eps.contains(&sock("10.244.19.250:8080")));
        }
        other => panic!("{other:?}"),
    }
    assert!(render(&b.ruleset).contains("numgen random mod 5000 map @service-backends"));
}

#[test]
fn duplicate_endpoints_across_slices_count_once() {
    let node = node_v4();
    let e = || vec![ep("10.244.1.5", "node-a", "R")];
    let slices = [
        EndpointSlice::from_json(&slice_json("web", "a", "IPv4", http_8080(), e()))
            .unwrap()
            .unwrap(),
        EndpointSlice::from_json(&slice_json("web", "b", "IPv4", http_8080(), e()))
            .unwrap()
            .unwrap(),
    ];
    let b = build(
        &[svc("web", "10.96.0.10", http(), json!({}))],
        &slices,
        &node,
    );
    let text = render(&b.ruleset);
    assert!(text.contains("numgen random mod 1 map @service-backends"));
    assert!(text.contains("10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080"));
    assert!(!text.contains(". 1 : 10.244.1.5"));
}

// ---------------------------------------------------------------------------------------------
// The kernel: root only

/// Runs `nft -f -` on `script` inside network namespace `ns`; returns `nft list ruleset`.
fn nft_in_netns(ns: &str, scripts: &[String]) -> Result<String, String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let run = |args: &[&str], input: Option<&str>| -> Result<String, String> {
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", args[0]))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.unwrap_or("").as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&["ip", "netns", "add", ns], None)?;
    let result = (|| {
        for s in scripts {
            run(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(s))?;
        }
        run(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"], None)
    })();
    let _ = run(&["ip", "netns", "del", ns], None);
    result
}

#[test]
#[ignore = "needs root and nft: cargo test proxy -- --ignored"]
fn nft_loads_every_golden_and_the_flows_world() {
    let mut rulesets: Vec<(String, String)> = SHAPES
        .iter()
        .map(|s| (s.to_string(), render_replace(&built(s).ruleset)))
        .collect();
    let (services, slices, node) = flows_world();
    rulesets.push((
        "long-names".to_string(),
        render_replace(&long_names_world().ruleset),
    ));
    rulesets.push((
        "5000-endpoints".to_string(),
        render_replace(&five_thousand_world().0.ruleset),
    ));
    rulesets.push((
        "flows".to_string(),
        render_replace(&build(&services, &slices, &node).ruleset),
    ));
    for (name, text) in rulesets {
        let ns = format!("nanolet-proxy-{}", std::process::id());
        if let Err(e) = nft_in_netns(&ns, &[text]) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
#[ignore = "needs root and nft: cargo test proxy -- --ignored"]
fn nft_applies_a_diff_to_the_same_state_as_a_full_load() {
    let (services, slices, node) = flows_world();
    let old = build(&services, &slices, &node).ruleset;
    let mut services2 = services.clone();
    services2.retain(|s| s.name != "sticky" && s.name != "web");
    services2.push(svc(
        "new",
        "10.96.0.50",
        http(),
        json!({ "sessionAffinity": "ClientIP" }),
    ));
    // A verdict that changes in place: internalTrafficPolicy Local → Cluster.
    for s in services2.iter_mut().filter(|s| s.name == "itp") {
        s.internal_traffic_policy = super::model::TrafficPolicy::Cluster;
    }
    let mut slices2 = slices.clone();
    // A NodePort that loses its endpoints moves to the no-endpoint maps.
    slices2.retain(|s| s.service_name != "np");
    slices2.push(slice(
        "new",
        "IPv4",
        http_8080(),
        vec![ep("10.244.1.200", "node-a", "R")],
    ));
    let new = build(&services2, &slices2, &node).ruleset;
    let ns = format!("nanolet-proxy-diff-{}", std::process::id());
    // The first write after a start replaces tables that may or may not exist.
    let mut replace: Vec<Op> = old
        .tables
        .iter()
        .map(|t| Op::DeleteTable(t.family))
        .collect();
    replace.extend(old.tables.iter().cloned().map(Op::AddTable));
    let steps = [
        render_ops(&replace),
        render_replace(&old),
        render_ops(&diff(&old, &new)),
    ];
    let stepped = nft_in_netns(&ns, &steps).unwrap();
    let fresh = nft_in_netns(&ns, &[render_replace(&new)]).unwrap();
    // nft lists objects in creation order: compare the lines as multisets.
    let lines = |s: &str| {
        let mut v: Vec<String> = s.lines().map(|l| l.trim().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(lines(&stepped), lines(&fresh));
}

#[test]
fn dump_renders_the_valid_objects_and_names_the_invalid_ones() {
    let services = [
        svc_json("web", "10.96.0.10", http(), json!({})),
        svc_json("bad", "10.96.0.011", http(), json!({})),
    ];
    let slices = [slice_json(
        "web",
        "abc12",
        "IPv4",
        http_8080(),
        vec![ep("10.244.1.5", "node-a", "R")],
    )];
    let (text, problems) = super::dump(&services, &slices, &node_v4(), super::DumpFormat::Nft);
    assert_eq!(
        problems,
        vec![
            "service default/bad: spec.clusterIP: \"10.96.0.011\": IPv4 address must not have leading zeros"
        ]
    );
    assert!(text.contains("10.96.0.10 . tcp . 80 : goto clusterip-1"));
    assert!(text.contains("10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080"));
    assert!(!text.contains("default/bad"));
    let mut broken = node_v4();
    broken.masquerade_bit = 0x4001;
    assert_eq!(
        super::dump(&services, &slices, &broken, super::DumpFormat::Nft).1,
        vec!["node config: masqueradeBit: 0x4001 must have exactly one bit set"]
    );
}

/// One Service with 5000 ready endpoints in five full slices.
fn five_thousand_world() -> (Built, NodeConfig) {
    let node = node_v4();
    let services = [svc("big", "10.96.0.10", http(), json!({}))];
    let slices: Vec<EndpointSlice> = (0..5)
        .map(|s| {
            let eps = (0..1000)
                .map(|i| {
                    ep(
                        &format!("10.244.{}.{}", s * 4 + i / 250, i % 250 + 1),
                        "node-b",
                        "R",
                    )
                })
                .collect();
            EndpointSlice::from_json(&slice_json(
                "big",
                &format!("s{s}"),
                "IPv4",
                http_8080(),
                eps,
            ))
            .unwrap()
            .unwrap()
        })
        .collect();
    (build(&services, &slices, &node), node)
}

#[test]
fn diff_replaces_a_changed_verdict_and_redeclared_sets() {
    let node = node_v4();
    let slices = [slice(
        "web",
        "IPv4",
        http_8080(),
        vec![ep("10.244.1.5", "node-a", "R")],
    )];
    let at =
        |extra: Value| build(&[svc("web", "10.96.0.10", http(), extra)], &slices, &node).ruleset;
    // Cluster → Local: the same service-ips key now goes to the local chain.
    let ops = diff(
        &at(json!({})),
        &at(json!({ "internalTrafficPolicy": "Local" })),
    );
    let key_ops: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op, Op::AddElements(_, m, _) | Op::DeleteElements(_, m, _) if m == "service-ips"))
        .collect();
    assert!(
        matches!(
            key_ops.as_slice(),
            [Op::DeleteElements(..), Op::AddElements(..)]
        ),
        "{key_ops:?}"
    );
    // A new affinity timeout redeclares the sets: the table is replaced in one transaction.
    let sticky = |t: u32| {
        at(json!({ "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": t } } }))
    };
    let ops = diff(&sticky(60), &sticky(120));
    assert!(matches!(
        ops.as_slice(),
        [Op::DeleteTable(IpFamily::V4), Op::AddTable(_)]
    ));
}

#[path = "netlink_kernel_tests.rs"]
mod netlink_kernel;

#[path = "incremental_tests.rs"]
mod incremental;

#[path = "decode_tests.rs"]
mod decode;

#[path = "sync_tests.rs"]
mod sync;
