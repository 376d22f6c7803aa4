//! The incremental path: [`ProxyState`] rebuilds only the Services that events touched, and
//! what it sends leaves the kernel where a fresh load of the whole desired ruleset would.

use super::*;
use crate::proxy::state::{Event, ProxyState, Transaction};

fn endpoint(i: u32, j: u32) -> String {
    std::net::Ipv4Addr::from(0x0af4_0000 + i * 3 + j + 1).to_string()
}

fn web_like(i: u32) -> (Value, Value) {
    let name = format!("s{i}");
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let eps = (0..3).map(|j| ep(&endpoint(i, j), "node-b", "R")).collect();
    (
        svc_json(&name, &ip, http(), json!({})),
        slice_json(&name, "abc12", "IPv4", http_8080(), eps),
    )
}

/// A synced state holding `n` Services, its first (full) transaction committed.
fn synced(n: u32) -> ProxyState {
    let mut s = ProxyState::default();
    for i in 0..n {
        let (svc, slice) = web_like(i);
        s.apply(Event::ServiceApplied(svc)).unwrap();
        s.apply(Event::EndpointSliceApplied(slice)).unwrap();
    }
    s.apply(Event::ServicesSynced).unwrap();
    s.apply(Event::EndpointSlicesSynced).unwrap();
    let full = s.next_transaction(&node_v4()).unwrap();
    assert!(full.is_full());
    s.committed(full);
    s
}

fn next(s: &ProxyState) -> Transaction {
    s.next_transaction(&node_v4()).unwrap()
}

fn is_element_op(op: &Op) -> bool {
    matches!(
        op,
        Op::AddElements(..) | Op::AddEndpoints(..) | Op::DeleteElements(..)
    )
}

#[test]
fn adding_one_service_sends_only_its_elements_whatever_the_table_holds() {
    let mut sizes = Vec::new();
    for n in [100, 1000] {
        let mut s = synced(n);
        assert_eq!(next(&s).ops, vec![], "nothing changed");
        let (svc, slice) = web_like(n);
        s.apply(Event::ServiceApplied(svc)).unwrap();
        s.apply(Event::EndpointSliceApplied(slice)).unwrap();
        let tx = next(&s);
        assert!(!tx.is_full());
        assert!(tx.ops.iter().all(is_element_op), "{:?}", tx.ops);
        let elements: usize = tx
            .ops
            .iter()
            .map(|op| match op {
                Op::AddElements(_, _, e) => e.len(),
                Op::AddEndpoints(_, _, e) => e.len(),
                _ => 0,
            })
            .sum();
        sizes.push((tx.ops.len(), elements));
        s.committed(tx);
        assert_eq!(next(&s).ops, vec![], "committed");
    }
    // service-ips, service-backends (3), cluster-ips, hairpin (3): the same at 100 and 1000.
    assert_eq!(sizes[0], sizes[1]);
    assert_eq!(sizes[0].1, 8);
}

#[test]
fn a_slice_event_rebuilds_only_its_service() {
    let mut s = synced(50);
    let ep3 = |a: &str| vec![ep(a, "node-b", "R")];
    let slice = slice_json("s7", "abc12", "IPv4", http_8080(), ep3("10.244.99.1"));
    s.apply(Event::EndpointSliceApplied(slice)).unwrap();
    let tx = next(&s);
    let s7 = KeyPart::Addr(ip("10.96.0.8"));
    let new_ep = KeyPart::Addr(ip("10.244.99.1"));
    let old_eps: Vec<KeyPart> = (0..3).map(|j| KeyPart::Addr(ip(&endpoint(7, j)))).collect();
    let ours =
        |k: &Key| k.contains(&s7) || k.contains(&new_ep) || old_eps.iter().any(|e| k.contains(e));
    for op in &tx.ops {
        match op {
            Op::AddElements(_, _, e) => assert!(e.iter().all(|(k, _)| ours(k)), "{op:?}"),
            Op::AddEndpoints(_, _, e) => assert!(e.iter().all(|(k, _)| ours(k)), "{op:?}"),
            Op::DeleteElements(_, _, k) => assert!(k.iter().all(ours), "{op:?}"),
            // Every other Service has 3 endpoints: the chains for 1 are new.
            Op::AddChain(_, n, None) | Op::AddRule(_, n, _) => assert!(n.ends_with("-1"), "{n}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Deleting the slice leaves the Service without endpoints: rejected.
    s.committed(tx);
    s.apply(Event::EndpointSliceDeleted {
        namespace: "default".into(),
        name: "s7-abc12".into(),
    })
    .unwrap();
    let tx = next(&s);
    assert!(tx.ops.iter().any(|op| matches!(op,
        Op::AddElements(_, m, e) if m == "no-endpoint-services" && e.len() == 1)));
}

#[test]
fn a_port_lost_to_another_service_is_taken_over_when_that_one_goes() {
    let np = |port: u16| json!([{ "name": "http", "port": 80, "nodePort": port }]);
    let mut s = ProxyState::default();
    let a = svc_json("a", "10.96.0.1", np(30080), json!({ "type": "NodePort" }));
    s.apply(Event::ServiceApplied(a)).unwrap();
    s.apply(Event::ServicesSynced).unwrap();
    s.apply(Event::EndpointSlicesSynced).unwrap();
    let full = next(&s);
    s.committed(full);
    let b = svc_json("b", "10.96.0.2", np(30080), json!({ "type": "NodePort" }));
    s.apply(Event::ServiceApplied(b)).unwrap();
    let tx = next(&s);
    let problems: Vec<String> = tx.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        vec!["service default/b: nodePort 30080/TCP is already used by another service, skipped"]
    );
    s.committed(tx);
    s.apply(Event::ServiceDeleted {
        namespace: "default".into(),
        name: "a".into(),
    })
    .unwrap();
    let tx = next(&s);
    // b takes the port over: same verdict (no endpoints), so the kernel's element stays.
    assert_eq!(tx.problems, vec![]);
    let np_key = |op: &Op| {
        matches!(op,
        Op::DeleteElements(_, m, k) if m == "no-endpoint-nodeports"
            && k.iter().any(|k| k.contains(&KeyPart::Port(30080))))
    };
    assert!(!tx.ops.iter().any(np_key), "{:?}", tx.ops);
    s.committed(tx);
    s.apply(Event::ServiceDeleted {
        namespace: "default".into(),
        name: "b".into(),
    })
    .unwrap();
    let tx = next(&s);
    assert!(tx.ops.iter().any(np_key), "b held it: {:?}", tx.ops);
}
