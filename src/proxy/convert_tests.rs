#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::proxy::model::{Conditions, EndpointSlice, IpFamily};
use crate::source::api::watcher::tests::{request_and_body, transcript};

fn slice_model(v: &Value) -> EndpointSlice {
    EndpointSlice::from_json(v).unwrap().unwrap()
}

fn cond(ready: bool, serving: bool, terminating: bool) -> Conditions {
    Conditions {
        ready,
        serving,
        terminating,
    }
}

#[test]
fn a_v1beta1_slice_from_a_v1_20_server_reads_as_v1() {
    // Transcript 23: what a v1.20 server answers for a v1beta1 slice.
    let (_, body) = request_and_body(&transcript("23-endpointslice-create.http"));
    let beta: Value = serde_json::from_str(&body).unwrap();
    let s = slice_model(&slice_from_v1beta1(beta));
    assert_eq!(
        (
            s.namespace.as_str(),
            s.name.as_str(),
            s.service_name.as_str()
        ),
        ("default", "web-abc", "web")
    );
    assert_eq!(s.address_type, IpFamily::V4);
    assert_eq!(s.ports[0].port, 8080);
    assert_eq!(s.endpoints.get(0).unwrap().address.to_string(), "10.88.0.5");
    assert_eq!(
        s.endpoints.get(0).unwrap().conditions,
        cond(true, true, false)
    );
}

#[test]
fn v1beta1_topology_hostname_becomes_the_node_name_and_conditions_keep_their_meaning() {
    let beta = json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x", "namespace": "prod",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv6",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["fd00::5"], "conditions": {"ready": false, "serving": true, "terminating": true},
             "topology": {"kubernetes.io/hostname": "edge-1", "topology.kubernetes.io/zone": "a"}},
            {"addresses": ["fd00::6"], "nodeName": "edge-2",
             "topology": {"kubernetes.io/hostname": "elsewhere"}}
        ]
    });
    let v1 = slice_from_v1beta1(beta);
    assert!(v1["endpoints"][0].get("topology").is_none());
    let s = slice_model(&v1);
    assert_eq!(s.endpoints.get(0).unwrap().node_name, Some("edge-1"));
    assert_eq!(
        s.endpoints.get(0).unwrap().conditions,
        cond(false, true, true)
    );
    assert_eq!(
        s.endpoints.get(1).unwrap().node_name,
        Some("edge-2"),
        "an explicit nodeName wins over the topology"
    );
    assert_eq!(
        s.endpoints.get(1).unwrap().conditions,
        cond(true, true, false)
    );
}

#[test]
fn endpoints_become_one_slice_per_subset_and_family_with_not_ready_addresses_not_ready() {
    let eps = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "prod"},
        "subsets": [
            {"addresses": [{"ip": "10.88.0.5", "nodeName": "edge-1"}, {"ip": "fd00::5"}],
             "notReadyAddresses": [{"ip": "10.88.0.6"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
            {"addresses": [{"ip": "10.88.0.7"}],
             "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        ]
    });
    let slices: Vec<EndpointSlice> = slices_from_endpoints(&eps)
        .iter()
        .map(slice_model)
        .collect();
    let names: Vec<&str> = slices.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web-0-ipv4", "web-0-ipv6", "web-1-ipv4"]);
    assert!(
        slices
            .iter()
            .all(|s| s.service_name == "web" && s.namespace == "prod")
    );
    let v4 = &slices[0];
    assert_eq!(v4.endpoints.len(), 2);
    assert_eq!(
        v4.endpoints.get(0).unwrap().conditions,
        cond(true, true, false)
    );
    assert_eq!(v4.endpoints.get(0).unwrap().node_name, Some("edge-1"));
    assert_eq!(
        v4.endpoints.get(1).unwrap().address.to_string(),
        "10.88.0.6"
    );
    assert_eq!(
        v4.endpoints.get(1).unwrap().conditions,
        cond(false, false, false)
    );
    assert_eq!(slices[1].address_type, IpFamily::V6);
    assert_eq!(slices[2].ports[0].port, 53);
    // Transcript 25: an Endpoints without subsets (no pods yet) makes no slice.
    let (_, body) = request_and_body(&transcript("25-endpoints-list.http"));
    let list: Value = serde_json::from_str(&body).unwrap();
    assert!(slices_from_endpoints(&list["items"][0]).is_empty());
}

#[test]
fn a_bad_endpoints_address_is_reported_by_the_model_naming_the_slice() {
    let eps = json!({"metadata": {"name": "web", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "010.1.2.3"}], "ports": [{"port": 80}]}]});
    let slices = slices_from_endpoints(&eps);
    let err = EndpointSlice::from_json(&slices[0])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("endpointslice default/web-0-ipv4: "),
        "{err}"
    );
}

fn endpoints(subsets: Value) -> Value {
    json!({"metadata": {"name": "web", "namespace": "default"}, "subsets": subsets})
}

fn deleted(name: &str) -> Event {
    Event::EndpointSliceDeleted {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn a_feed_removes_what_an_object_made_on_update_deletion_and_relist() {
    let mut feed = Feed::new(Kind::Slices(SliceApi::Endpoints));
    let two = endpoints(json!([
        {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]},
        {"addresses": [{"ip": "10.0.0.2"}], "ports": [{"port": 81}]}
    ]));
    let (events, _) = feed.events(vec![Output::Snapshot(vec![two.clone()])]);
    assert_eq!(events.len(), 3);
    assert_eq!(events[2], Event::EndpointSlicesSynced);
    // The second subset goes: its slice is deleted, the first is applied again.
    let one = endpoints(json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]));
    let (events, _) = feed.events(vec![Output::Applied(one.clone())]);
    assert_eq!(events[0], deleted("web-1-ipv4"));
    assert!(
        matches!(&events[1], Event::EndpointSliceApplied(v) if v["metadata"]["name"] == "web-0-ipv4")
    );
    assert_eq!(events.len(), 2);
    // Deletion removes every slice it made.
    let (events, _) = feed.events(vec![Output::Deleted(one.clone())]);
    assert_eq!(events, vec![deleted("web-0-ipv4")]);
    // A relist without the object deletes what it made while the watch was down.
    feed.events(vec![Output::Applied(two)]);
    let (events, warnings) =
        feed.events(vec![Output::Warning("w".into()), Output::Snapshot(vec![])]);
    assert_eq!(
        events,
        vec![
            deleted("web-0-ipv4"),
            deleted("web-1-ipv4"),
            Event::EndpointSlicesSynced
        ]
    );
    assert_eq!(warnings, ["w"]);
}

#[test]
fn list_pages_are_applied_as_they_come_and_the_last_one_deletes_what_no_page_had() {
    let svc = |name: &str| json!({"metadata": {"name": name, "namespace": "default"}});
    let applied = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ServiceApplied(v) => Some(v["metadata"]["name"].as_str()?.to_string()),
                _ => None,
            })
            .collect()
    };
    let page = |items: Vec<Value>, first: bool, last: bool| Output::Page { items, first, last };
    let mut feed = Feed::new(Kind::Services);
    feed.events(vec![Output::Snapshot(vec![svc("a"), svc("b"), svc("c")])]);
    // A relist: its first page is applied at once; nothing is deleted or synced yet.
    let (events, _) = feed.events(vec![page(vec![svc("a")], true, false)]);
    assert_eq!(applied(&events), ["a"]);
    assert_eq!(events.len(), 1);
    // The list starts over (an expired continue token): the unfinished list's pages no longer count.
    feed.events(vec![page(vec![svc("b")], true, false)]);
    let (events, _) = feed.events(vec![page(vec![svc("c")], false, true)]);
    assert_eq!(applied(&events), ["c"]);
    assert_eq!(
        events[1..],
        [
            Event::ServiceDeleted {
                namespace: "default".into(),
                name: "a".into()
            },
            Event::ServicesSynced
        ]
    );
}

#[test]
fn services_pass_through_and_sync_their_own_flag() {
    let (_, body) = request_and_body(&transcript("26-services-list.http"));
    let list: Value = serde_json::from_str(&body).unwrap();
    let items = list["items"].as_array().unwrap().clone();
    let n = items.len();
    let mut feed = Feed::new(Kind::Services);
    let (events, _) = feed.events(vec![Output::Snapshot(items)]);
    assert_eq!(events.len(), n + 1);
    assert!(
        matches!(&events[0], Event::ServiceApplied(v) if v["metadata"]["name"] == "kubernetes")
    );
    assert_eq!(events[n], Event::ServicesSynced);
    let svc = crate::proxy::model::Service::from_json(match &events[0] {
        Event::ServiceApplied(v) => v,
        _ => unreachable!(),
    })
    .unwrap()
    .unwrap();
    assert_eq!(svc.cluster_ips[0].to_string(), "10.96.0.1");
}

#[test]
fn the_fallback_order_is_kube_proxys() {
    assert_eq!(SliceApi::V1.fallback(), Some(SliceApi::V1Beta1));
    assert_eq!(SliceApi::V1Beta1.fallback(), Some(SliceApi::Endpoints));
    assert_eq!(SliceApi::Endpoints.fallback(), None);
    // Transcript 24: the request a v1.20 server answers with 404.
    let (request, _) = request_and_body(&transcript("24-endpointslice-v1-not-served.http"));
    let (prefix, plural) = SliceApi::V1.path();
    assert_eq!(request, format!("GET {prefix}/{plural}"));
}
