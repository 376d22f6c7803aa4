//! The proxy state's transactions against a model of the kernel's table: whatever the events,
//! the full sync and the incremental ones after it leave what a fresh build of the store's
//! objects holds, and a key two Services claim goes to the first by name either way.

use std::collections::BTreeMap;

use super::*;
use crate::proxy::ruleset::{Chain, MapVerdict, Ruleset};
use crate::proxy::state::{Event, ProxyState, STASH_MAX};

/// The kernel's view of one ruleset, changed by operations as nf_tables would (and refusing
/// what it would refuse: an element added twice with another value, a missing element
/// deleted, a chain deleted while it has rules or map elements jump to it, a jump to no chain).
#[derive(Default)]
struct Kernel(Ruleset);

impl Kernel {
    fn table(&mut self, f: IpFamily) -> &mut crate::proxy::ruleset::Table {
        self.0
            .tables
            .iter_mut()
            .find(|t| t.family == f)
            .unwrap_or_else(|| panic!("no {f:?} table"))
    }

    fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            self.apply_one(op);
        }
    }

    fn apply_one(&mut self, op: &Op) {
        match op {
            Op::DeleteTable(f) => self.0.tables.retain(|t| t.family != *f),
            Op::AddTable(t) => {
                assert!(self.0.table(t.family).is_none(), "table added twice");
                self.0.tables.push(t.clone());
                self.0.tables.sort_by_key(|t| t.family != IpFamily::V4);
            }
            Op::AddSet(f, n, s) => {
                let old = self.table(*f).sets.insert(n.clone(), s.clone());
                assert!(old.is_none(), "set {n} added twice");
            }
            Op::AddMap(f, n, m) => {
                self.table(*f).maps.insert(n.clone(), m.clone());
            }
            Op::AddDnatMap(f, n, m) => {
                self.table(*f).dnat_maps.insert(n.clone(), m.clone());
            }
            Op::AddChain(f, n, base) => {
                let chain = Chain {
                    base: *base,
                    rules: Vec::new(),
                };
                let old = self.table(*f).chains.insert(n.clone(), chain);
                assert!(old.is_none(), "chain {n} added twice");
            }
            Op::FlushChain(f, n) => self.table(*f).chains.get_mut(n).unwrap().rules.clear(),
            Op::AddRule(f, n, r) => {
                let t = self.table(*f);
                if let Action::Jump(c) | Action::Goto(c) = &r.action {
                    assert!(t.chains.contains_key(c), "rule jumps to missing {c}");
                }
                t.chains.get_mut(n).unwrap().rules.push(r.clone());
            }
            Op::AddElements(f, n, els) => {
                let t = self.table(*f);
                for (k, v) in els {
                    if let Some(MapVerdict::Goto(c)) = v {
                        assert!(t.chains.contains_key(c), "element goes to missing {c}");
                    }
                    match v {
                        None => {
                            t.sets.get_mut(n).unwrap().elements.insert(k.clone());
                        }
                        Some(v) => {
                            let old = t
                                .maps
                                .get_mut(n)
                                .unwrap()
                                .elements
                                .insert(k.clone(), v.clone());
                            assert!(old.is_none_or(|o| o == *v), "{n} {k:?}: another value");
                        }
                    }
                }
            }
            Op::AddEndpoints(f, n, els) => {
                let m = self.table(*f).dnat_maps.get_mut(n).unwrap();
                for (k, e) in els {
                    let old = m.elements.insert(k.clone(), *e);
                    assert!(old.is_none_or(|o| o == *e), "{n} {k:?}: another endpoint");
                }
            }
            Op::DeleteElements(f, n, keys) => {
                let t = self.table(*f);
                for k in keys {
                    let gone = t.sets.get_mut(n).is_some_and(|s| s.elements.remove(k))
                        || t.maps
                            .get_mut(n)
                            .is_some_and(|m| m.elements.remove(k).is_some())
                        || t.dnat_maps
                            .get_mut(n)
                            .is_some_and(|m| m.elements.remove(k).is_some());
                    assert!(gone, "{n} {k:?}: deleted but missing");
                }
            }
            Op::DeleteChain(f, n) => {
                let t = self.table(*f);
                let used = t
                    .maps
                    .values()
                    .flat_map(|m| m.elements.values())
                    .any(|v| matches!(v, MapVerdict::Goto(c) if c == n));
                assert!(!used, "chain {n} deleted while elements go to it");
                let c = t.chains.remove(n).unwrap();
                assert!(c.rules.is_empty(), "chain {n} deleted with rules");
            }
            Op::DeleteSet(f, n) | Op::DeleteMap(f, n) => {
                let t = self.table(*f);
                let gone = t.sets.remove(n).is_some()
                    || t.maps.remove(n).is_some()
                    || t.dnat_maps.remove(n).is_some();
                assert!(gone, "{n}: deleted but missing");
            }
        }
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A Service drawn from few addresses and ports, so that Services collide.
fn random_service(r: &mut Rng, name: &str) -> Value {
    let v6 = r.below(5) == 0;
    let ip = if v6 {
        r.pick(&["fd00:96::1", "fd00:96::2"]).to_string()
    } else {
        r.pick(&["10.96.0.1", "10.96.0.2", "10.96.0.3"]).to_string()
    };
    let node_port = r.below(3) == 0;
    let mut ports = vec![json!({ "name": "http", "port": 80, "protocol": "TCP" })];
    if r.below(2) == 0 {
        ports.push(json!({ "name": "dns", "port": 53, "protocol": "UDP" }));
    }
    if node_port {
        for (i, p) in ports.iter_mut().enumerate() {
            p["nodePort"] = json!(30080 + r.below(2) as u16 + 10 * i as u16);
        }
    }
    let mut extra = json!({});
    if node_port {
        extra["type"] = json!("NodePort");
        if r.below(2) == 0 {
            extra["externalTrafficPolicy"] = json!("Local");
        }
    }
    match r.below(6) {
        0 => extra["sessionAffinity"] = json!("ClientIP"),
        1 => extra["internalTrafficPolicy"] = json!("Local"),
        2 if !v6 => extra["externalIPs"] = json!([r.pick(&["203.0.113.7", "203.0.113.8"])]),
        _ => {}
    }
    if v6 {
        extra["ipFamilies"] = json!(["IPv6"]);
    }
    svc_json(name, &ip, Value::Array(ports), extra)
}

/// A slice of one of the Services, with endpoints drawn from a small pool (shared by
/// Services, so that hairpin members and UDP backends have several users).
fn random_slice(r: &mut Rng, name: &str, suffix: &str) -> Value {
    let v6 = r.below(4) == 0;
    let pool: &[&str] = if v6 {
        &["fd00:244::1", "fd00:244::2"]
    } else {
        &["10.244.1.1", "10.244.1.2", "10.244.2.1", "10.244.2.2"]
    };
    let mut eps = Vec::new();
    for a in pool {
        if r.below(2) == 0 {
            let node = *r.pick(&["node-a", "node-b"]);
            let cond = *r.pick(&["R", "R", "rST", "rsT"]);
            eps.push(ep(a, node, cond));
        }
    }
    let ports = json!([{ "name": "http", "port": 8080, "protocol": "TCP" },
                       { "name": "dns", "port": 5353, "protocol": "UDP" }]);
    slice_json(name, suffix, if v6 { "IPv6" } else { "IPv4" }, ports, eps)
}

fn random_event(r: &mut Rng) -> Event {
    let name = *r.pick(&NAMES);
    let suffix = *r.pick(&["x", "y"]);
    match r.below(6) {
        0 | 1 => Event::ServiceApplied(random_service(r, name)),
        2 => Event::ServiceDeleted {
            namespace: "default".into(),
            name: name.into(),
        },
        3 | 4 => Event::EndpointSliceApplied(random_slice(r, name, suffix)),
        _ => Event::EndpointSliceDeleted {
            namespace: "default".into(),
            name: format!("{name}-{suffix}"),
        },
    }
}

/// What a fresh build of the state's objects holds.
fn fresh(state: &ProxyState, node: &NodeConfig) -> Built {
    let (services, slices) = state.objects().unwrap();
    let services: Vec<Service> = services.into_iter().cloned().collect();
    let slices: Vec<EndpointSlice> = slices.into_iter().cloned().collect();
    build(&services, &slices, node)
}

/// The UDP endpoints a ruleset DNATs to.
fn udp_backends(r: &Ruleset) -> BTreeSet<SocketAddr> {
    let udp = KeyPart::Proto(Protocol::Udp);
    let mut out = BTreeSet::new();
    for t in &r.tables {
        for m in t.dnat_maps.values() {
            out.extend(
                m.elements
                    .iter()
                    .filter(|(k, _)| k.contains(&udp))
                    .map(|(_, e)| *e),
            );
        }
        for c in t.chains.values() {
            for rule in &c.rules {
                if let Action::Dnat(Protocol::Udp, e) = rule.action {
                    out.insert(e);
                }
            }
        }
    }
    out
}

fn sync(state: &mut ProxyState, kernel: &mut Kernel, node: &NodeConfig) -> bool {
    let tx = state.next_transaction(node).unwrap();
    let full = tx.is_full();
    kernel.apply(&tx.ops);
    state.committed(tx);
    full
}

#[test]
fn any_events_leave_the_kernel_where_a_fresh_build_of_the_store_would() {
    let node = node();
    let mut incremental = 0;
    for seed in 1..=40u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut state = ProxyState::default();
        let mut kernel = Kernel::default();
        for _ in 0..r.below(6) {
            state.apply(random_event(&mut r)).ok();
        }
        state.apply(Event::ServicesSynced).unwrap();
        state.apply(Event::EndpointSlicesSynced).unwrap();
        assert!(
            sync(&mut state, &mut kernel, &node),
            "the first sync replaces all"
        );
        for step in 0..40 {
            for _ in 0..=r.below(3) {
                state.apply(random_event(&mut r)).ok();
            }
            // Now and then the periodic resync.
            if r.below(10) == 0 {
                state.forget_applied();
            }
            if !sync(&mut state, &mut kernel, &node) {
                incremental += 1;
            }
            let want = fresh(&state, &node);
            assert_eq!(kernel.0, want.ruleset, "seed {seed}, step {step}");
            assert_eq!(
                state.udp_backends(),
                udp_backends(&want.ruleset),
                "seed {seed}, step {step}"
            );
            let again = state.next_transaction(&node).unwrap();
            assert_eq!(
                again.ops,
                vec![],
                "seed {seed}, step {step}: nothing left to do"
            );
        }
    }
    assert!(incremental > 1000, "mostly incremental: {incremental}");
}

#[test]
fn an_earlier_service_takes_a_key_over_from_a_later_holder_as_a_fresh_build_would() {
    let node = node_v4();
    let mut state = ProxyState::default();
    let mut kernel = Kernel::default();
    let z = svc_json("z", "10.96.0.1", http(), json!({}));
    state.apply(Event::ServiceApplied(z)).unwrap();
    state.apply(Event::ServicesSynced).unwrap();
    state.apply(Event::EndpointSlicesSynced).unwrap();
    sync(&mut state, &mut kernel, &node);
    // `a` claims z's clusterIP and port: it is first by name, so it holds them.
    let a = svc_json("a", "10.96.0.1", http(), json!({}));
    state.apply(Event::ServiceApplied(a)).unwrap();
    let eps = vec![ep("10.244.1.1", "node-b", "R")];
    let a_slice = slice_json("a", "x", "IPv4", http_8080(), eps);
    state.apply(Event::EndpointSliceApplied(a_slice)).unwrap();
    let tx = state.next_transaction(&node).unwrap();
    assert!(!tx.is_full());
    let problems: Vec<String> = tx.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        vec!["service default/z: 10.96.0.1 80/TCP is already used by another service, skipped"]
    );
    kernel.apply(&tx.ops);
    state.committed(tx);
    let want = fresh(&state, &node);
    assert_eq!(kernel.0, want.ruleset);
    assert_eq!(
        want.problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        problems,
        "the full build says the same"
    );
    let services = &kernel.0.tables[0].maps["service-ips"].elements;
    assert_eq!(services.len(), 1, "a's element, not z's reject");
    // a goes: z gets its key back.
    state
        .apply(Event::ServiceDeleted {
            namespace: "default".into(),
            name: "a".into(),
        })
        .unwrap();
    let tx = state.next_transaction(&node).unwrap();
    assert_eq!(tx.problems, vec![]);
    kernel.apply(&tx.ops);
    state.committed(tx);
    assert_eq!(kernel.0, fresh(&state, &node).ruleset);
    let rejects: BTreeMap<_, _> = kernel.0.tables[0].maps["no-endpoint-services"]
        .elements
        .clone();
    assert_eq!(rejects.len(), 1, "z has no endpoints: rejected");
}

#[test]
fn more_changed_services_than_the_stash_holds_make_a_full_sync() {
    let node = node_v4();
    let n = STASH_MAX as u32 + 1;
    let service = |i: u32, port: u16| {
        let ports = json!([{ "name": "http", "port": port, "protocol": "TCP" }]);
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        Event::ServiceApplied(svc_json(&format!("s{i}"), &ip, ports, json!({})))
    };
    let mut state = ProxyState::default();
    let mut kernel = Kernel::default();
    for i in 0..n {
        state.apply(service(i, 80)).unwrap();
    }
    state.apply(Event::ServicesSynced).unwrap();
    state.apply(Event::EndpointSlicesSynced).unwrap();
    assert!(sync(&mut state, &mut kernel, &node));
    // A few changes: incremental.
    for i in 0..3 {
        state.apply(service(i, 81)).unwrap();
    }
    assert!(!sync(&mut state, &mut kernel, &node));
    assert_eq!(kernel.0, fresh(&state, &node).ruleset);
    // Every Service again (a relist): one full sync, not a stash of every one.
    for i in 0..n {
        state.apply(service(i, 82)).unwrap();
    }
    assert!(sync(&mut state, &mut kernel, &node));
    assert_eq!(kernel.0, fresh(&state, &node).ruleset);
}
