//! The netlink encoder against the kernel: a ruleset written by nanolet over netlink must be
//! exactly what `nft -f` of the same ruleset's text yields, as `nft -j list table` shows it.
//!
//! Root tests: each works in network namespaces of its own (removed on drop) and skips
//! without root or `nft` unless `NANOLET_REQUIRE_ROOT_TESTS` is set.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use super::*;
use crate::netlink::nftables::{self, Batch};
use crate::proxy::lower::lower_ops;
use crate::proxy::ruleset::Ruleset;

fn root_and_nft_or_skip() -> bool {
    let ok = rustix::process::geteuid().is_root()
        && Command::new("nft").arg("--version").output().is_ok();
    if !ok && std::env::var_os("NANOLET_REQUIRE_ROOT_TESTS").is_some() {
        panic!("root tests are required here but cannot run: need root and nft (nftables)");
    }
    if !ok {
        eprintln!("skipped: needs root and nft");
    }
    ok
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists until dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("nl-{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    /// Runs `f` on a thread that has entered this namespace (setns is per thread).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&fd),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn nft(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nft -j list ruleset`, without handles (they count objects, not meaning).
    fn listing(&self) -> Value {
        let text = self.nft(&["-j", "list", "ruleset"], None).unwrap();
        let mut v: Value = serde_json::from_str(&text).unwrap();
        strip(&mut v);
        v
    }

    /// [`Netns::listing`] as a sorted list of objects: nft lists in creation order, which
    /// differs between an incremental load and a fresh one.
    fn sorted_listing(&self) -> Vec<String> {
        let mut items: Vec<String> = self.listing()["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        items.sort();
        items
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Removes `handle` keys and the `metainfo` entry (nft's version).
fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => {
            a.retain(|x| x.get("metainfo").is_none());
            a.iter_mut().for_each(strip);
        }
        _ => {}
    }
}

/// The first write after a start: replace whatever tables exist.
fn replace_ops(r: &Ruleset) -> Vec<Op> {
    let mut ops: Vec<Op> = r.tables.iter().map(|t| Op::DeleteTable(t.family)).collect();
    ops.extend(r.tables.iter().cloned().map(Op::AddTable));
    ops
}

fn apply(ns: &Netns, ops: &[Op]) -> Result<(), String> {
    ns.run(|| {
        let mut sock = nftables::open().map_err(|e| e.to_string())?;
        let mut batch = Batch::new(1);
        lower_ops(ops, &mut batch);
        nftables::apply(&mut sock, batch).map_err(|e| e.to_string())
    })
}

fn assert_same_as_nft(name: &str, ruleset: &Ruleset) {
    let by_nft = Netns::new("nft");
    by_nft
        .nft(&["-f", "-"], Some(&render_replace(ruleset)))
        .unwrap();
    let by_us = Netns::new("us");
    apply(&by_us, &replace_ops(ruleset)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (want, got) = (by_nft.listing(), by_us.listing());
    let rules = want["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x.get("rule").is_some())
        .count();
    assert!(rules > 10, "{name}: nft -f loaded only {rules} rules");
    if want != got {
        let w = serde_json::to_string_pretty(&want).unwrap();
        let g = serde_json::to_string_pretty(&got).unwrap();
        let first = w
            .lines()
            .zip(g.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let ctx = |s: &str| {
            s.lines()
                .skip(first.saturating_sub(8))
                .take(16)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{name}: the kernel holds something else\n--- nft -f:\n{}\n--- netlink:\n{}",
            ctx(&w),
            ctx(&g)
        );
    }
}

#[test]
fn netlink_writes_what_nft_writes_for_every_golden_shape() {
    if !root_and_nft_or_skip() {
        return;
    }
    for s in SHAPES {
        assert_same_as_nft(s, &built(s).ruleset);
    }
}

#[test]
fn netlink_writes_what_nft_writes_for_the_flows_world_and_big_inputs() {
    if !root_and_nft_or_skip() {
        return;
    }
    let (services, slices, node) = flows_world();
    assert_same_as_nft("flows", &build(&services, &slices, &node).ruleset);
    assert_same_as_nft("long-names", &long_names_world().ruleset);
    assert_same_as_nft("5000-endpoints", &five_thousand_world().0.ruleset);
}

#[test]
fn an_incremental_netlink_update_leaves_what_a_fresh_nft_load_leaves() {
    if !root_and_nft_or_skip() {
        return;
    }
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
    for s in services2.iter_mut().filter(|s| s.name == "itp") {
        s.internal_traffic_policy = super::super::model::TrafficPolicy::Cluster;
    }
    let mut slices2 = slices.clone();
    slices2.retain(|s| s.service_name != "np");
    slices2.push(slice(
        "new",
        "IPv4",
        http_8080(),
        vec![ep("10.244.1.200", "node-a", "R")],
    ));
    let new = build(&services2, &slices2, &node).ruleset;
    let ops = diff(&old, &new);
    assert!(
        !ops.iter().any(|op| matches!(op, Op::AddTable(_))),
        "an incremental diff"
    );
    let by_us = Netns::new("inc");
    apply(&by_us, &replace_ops(&old)).unwrap();
    apply(&by_us, &ops).unwrap();
    let by_nft = Netns::new("fresh");
    by_nft
        .nft(&["-f", "-"], Some(&render_replace(&new)))
        .unwrap();
    // Creation order differs (nft lists in that order): compare as multisets of objects.
    assert_eq!(by_us.sorted_listing(), by_nft.sorted_listing());
}

#[test]
fn a_refused_batch_changes_nothing_and_names_the_message() {
    if !root_and_nft_or_skip() {
        return;
    }
    let ns = Netns::new("refuse");
    let r = built("clusterip").ruleset;
    apply(&ns, &replace_ops(&r)).unwrap();
    let before = ns.listing();
    // Elements for a map that does not exist: the whole transaction must be refused.
    let mut ops = vec![Op::FlushChain(IpFamily::V4, "services".into())];
    ops.push(Op::DeleteElements(
        IpFamily::V4,
        "no-such-map".into(),
        vec![vec![super::super::ruleset::KeyPart::Port(1)]],
    ));
    let err = apply(&ns, &ops).unwrap_err();
    assert!(err.contains("message 3 refused"), "{err}");
    assert_eq!(
        ns.listing(),
        before,
        "a refused batch must leave the old ruleset"
    );
}

/// Applies events to a [`ProxyState`] and writes its transaction into `ns`.
fn sync_state(
    ns: &Netns,
    state: &mut crate::proxy::state::ProxyState,
    events: Vec<crate::proxy::state::Event>,
) -> (bool, usize) {
    for e in events {
        state.apply(e).unwrap();
    }
    let tx = state.next_transaction(&node()).unwrap();
    apply(ns, &tx.ops).unwrap();
    let shape = (tx.is_full(), tx.ops.len());
    state.committed(tx);
    shape
}

#[test]
fn incremental_transactions_of_the_state_leave_what_a_fresh_load_of_the_whole_leaves() {
    use crate::proxy::state::{Event, ProxyState};
    if !root_and_nft_or_skip() {
        return;
    }
    let np = |port: u16| json!([{ "name": "http", "port": 80, "nodePort": port }]);
    let mut services = vec![
        svc_json("web", "10.96.0.10", http(), json!({})),
        svc_json(
            "np",
            "10.96.0.12",
            np(30080),
            json!({ "type": "NodePort", "externalTrafficPolicy": "Local" }),
        ),
        svc_json(
            "ext",
            "10.96.0.13",
            http(),
            json!({ "externalIPs": ["203.0.113.7"] }),
        ),
        svc_json(
            "sticky",
            "10.96.0.14",
            http(),
            json!({ "sessionAffinity": "ClientIP" }),
        ),
        svc_json(
            "v6",
            "fd00:96::10",
            http(),
            json!({ "ipFamilies": ["IPv6"] }),
        ),
    ];
    let two = |a: &str, b: &str| vec![ep(a, "node-a", "R"), ep(b, "node-b", "R")];
    let mut slices = vec![
        slice_json(
            "web",
            "a",
            "IPv4",
            http_8080(),
            two("10.244.1.1", "10.244.2.1"),
        ),
        slice_json(
            "np",
            "a",
            "IPv4",
            http_8080(),
            two("10.244.1.2", "10.244.2.2"),
        ),
        slice_json(
            "ext",
            "a",
            "IPv4",
            http_8080(),
            two("10.244.1.3", "10.244.2.3"),
        ),
        slice_json(
            "sticky",
            "a",
            "IPv4",
            http_8080(),
            two("10.244.1.4", "10.244.2.4"),
        ),
        slice_json(
            "v6",
            "a",
            "IPv6",
            http_8080(),
            two("fd00:244::1", "fd00:244::2"),
        ),
    ];
    let mut state = ProxyState::default();
    let ns = Netns::new("state");
    let mut first: Vec<Event> = services
        .iter()
        .cloned()
        .map(Event::ServiceApplied)
        .collect();
    first.extend(slices.iter().cloned().map(Event::EndpointSliceApplied));
    first.extend([Event::ServicesSynced, Event::EndpointSlicesSynced]);
    sync_state(&ns, &mut state, first);

    let steps: Vec<Vec<(&str, Option<Value>)>> = vec![
        vec![
            (
                "svc new",
                Some(svc_json("new", "10.96.0.50", http(), json!({}))),
            ),
            (
                "slice new",
                Some(slice_json(
                    "new",
                    "a",
                    "IPv4",
                    http_8080(),
                    two("10.244.1.5", "10.244.1.2"),
                )),
            ),
            (
                "slice np",
                Some(slice_json(
                    "np",
                    "a",
                    "IPv4",
                    http_8080(),
                    vec![ep("10.244.2.2", "node-b", "R")],
                )),
            ),
            ("svc sticky", None),
            (
                "svc ext",
                Some(svc_json(
                    "ext",
                    "10.96.0.13",
                    http(),
                    json!({ "externalIPs": ["203.0.113.7"], "internalTrafficPolicy": "Local" }),
                )),
            ),
        ],
        vec![
            ("slice web", None),
            (
                "svc sticky",
                Some(svc_json(
                    "sticky",
                    "10.96.0.14",
                    http(),
                    json!({ "sessionAffinity": "ClientIP" }),
                )),
            ),
            (
                "slice v6",
                Some(slice_json(
                    "v6",
                    "a",
                    "IPv6",
                    http_8080(),
                    vec![ep("fd00:244::3", "node-a", "R")],
                )),
            ),
        ],
    ];
    for (n, step) in steps.into_iter().enumerate() {
        let mut events = Vec::new();
        for (what, v) in step {
            let (kind, name) = what.split_once(' ').unwrap();
            let list = if kind == "svc" {
                &mut services
            } else {
                &mut slices
            };
            list.retain(|o| {
                let on = o["metadata"]["name"].as_str().unwrap();
                on != name && on != format!("{name}-a")
            });
            events.push(match (kind, v) {
                ("svc", Some(v)) => {
                    list.push(v.clone());
                    Event::ServiceApplied(v)
                }
                ("svc", None) => Event::ServiceDeleted {
                    namespace: "default".into(),
                    name: name.into(),
                },
                (_, Some(v)) => {
                    list.push(v.clone());
                    Event::EndpointSliceApplied(v)
                }
                (_, None) => Event::EndpointSliceDeleted {
                    namespace: "default".into(),
                    name: format!("{name}-a"),
                },
            });
        }
        let (full, n_ops) = sync_state(&ns, &mut state, events);
        assert!(!full && n_ops > 0, "step {n}: an incremental change");
        let models: Vec<Service> = services
            .iter()
            .map(|v| Service::from_json(v).unwrap().unwrap())
            .collect();
        let slice_models: Vec<EndpointSlice> = slices
            .iter()
            .map(|v| EndpointSlice::from_json(v).unwrap().unwrap())
            .collect();
        let fresh = Netns::new("fresh");
        let whole = build(&models, &slice_models, &node()).ruleset;
        fresh
            .nft(&["-f", "-"], Some(&render_replace(&whole)))
            .unwrap();
        assert_eq!(
            ns.sorted_listing(),
            fresh.sorted_listing(),
            "after step {n}"
        );
    }
}
