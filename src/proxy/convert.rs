//! From the API server's objects to the proxy's events (pure).
//!
//! ```text
//!  Services (core/v1) ───────────────────────────────┐
//!  EndpointSlices discovery.k8s.io/v1 ───────────────┤
//!  EndpointSlices discovery.k8s.io/v1beta1 ─ v1 form ┼─► Feed (object → the proxy keys it made)
//!  Endpoints (core/v1) ─ one v1 slice per subset ────┘     └► Vec<Event> for ProxyState
//!                        and address family
//! ```
//!
//! [`SliceApi`] is where endpoints come from: `discovery.k8s.io/v1`, and when the server does
//! not serve it (404, as a v1.20 server answers), `v1beta1`, then core/v1 Endpoints, as
//! kube-proxy falls back. Whatever the source, the proxy sees v1 EndpointSlices, with
//! kube-proxy's semantics: an Endpoints' `notReadyAddresses` are not ready (and not serving).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::model::namespace_name;
use super::state::Event;
use crate::source::api::watcher::Output;

/// Where endpoints come from, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceApi {
    V1,
    V1Beta1,
    Endpoints,
}

impl SliceApi {
    /// The next source to try when the server does not serve this one.
    pub fn fallback(self) -> Option<SliceApi> {
        match self {
            SliceApi::V1 => Some(SliceApi::V1Beta1),
            SliceApi::V1Beta1 => Some(SliceApi::Endpoints),
            SliceApi::Endpoints => None,
        }
    }

    /// The API prefix and resource (`/apis/discovery.k8s.io/v1`, `endpointslices`).
    pub fn path(self) -> (&'static str, &'static str) {
        match self {
            SliceApi::V1 => ("/apis/discovery.k8s.io/v1", "endpointslices"),
            SliceApi::V1Beta1 => ("/apis/discovery.k8s.io/v1beta1", "endpointslices"),
            SliceApi::Endpoints => ("/api/v1", "endpoints"),
        }
    }

    /// The group/version and resource, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            SliceApi::V1 => "endpointslices.discovery.k8s.io/v1",
            SliceApi::V1Beta1 => "endpointslices.discovery.k8s.io/v1beta1",
            SliceApi::Endpoints => "endpoints/v1",
        }
    }
}

/// What one watch feeds: Services, or endpoints from one [`SliceApi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Services,
    Slices(SliceApi),
}

/// `namespace/name` of an object, owned.
fn key_of(v: &Value) -> (String, String) {
    let (ns, name) = namespace_name(v);
    (ns.to_string(), name.to_string())
}

/// A v1beta1 EndpointSlice in v1 form: `topology["kubernetes.io/hostname"]` becomes
/// `nodeName` where it is not set, `topology` goes (v1 calls it `deprecatedTopology`).
/// The conditions mean the same in both versions.
pub fn slice_from_v1beta1(mut slice: Value) -> Value {
    slice["apiVersion"] = json!("discovery.k8s.io/v1");
    if let Some(eps) = slice.get_mut("endpoints").and_then(Value::as_array_mut) {
        for e in eps {
            let Some(obj) = e.as_object_mut() else {
                continue;
            };
            let topology = obj.remove("topology");
            let host = topology
                .as_ref()
                .and_then(|t| t.get("kubernetes.io/hostname"))
                .cloned();
            if !obj.get("nodeName").is_some_and(Value::is_string)
                && let Some(host) = host
            {
                obj.insert("nodeName".into(), host);
            }
        }
    }
    slice
}

/// The v1 EndpointSlices for a core/v1 Endpoints object: one per subset and address family
/// (a slice has one port list and one family), named `<endpoints>-<subset>-<ipv4|ipv6>` and
/// labelled with the Service's name. `addresses` are ready; `notReadyAddresses` are neither
/// ready nor serving (kube-proxy's reading of Endpoints); none are terminating.
pub fn slices_from_endpoints(endpoints: &Value) -> Vec<Value> {
    let (namespace, name) = key_of(endpoints);
    let mut out = Vec::new();
    let subsets = endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, subset) in subsets.iter().enumerate() {
        let ports: Vec<Value> = subset
            .get("ports")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let mut port = Map::new();
                        for field in ["name", "port", "protocol", "appProtocol"] {
                            if let Some(v) = p.get(field) {
                                port.insert(field.into(), v.clone());
                            }
                        }
                        Value::Object(port)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut by_family: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (field, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            let addresses = subset
                .get(field)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for a in addresses {
                // The model reports a missing or bad address; keep it so it can.
                let ip = a.get("ip").cloned().unwrap_or(Value::Null);
                let family = match ip.as_str() {
                    Some(s) if s.contains(':') => "IPv6",
                    _ => "IPv4",
                };
                let mut e = json!({
                    "addresses": [ip],
                    "conditions": { "ready": ready, "serving": ready, "terminating": false },
                });
                if let Some(node) = a.get("nodeName") {
                    e["nodeName"] = node.clone();
                }
                by_family.entry(family).or_default().push(e);
            }
        }
        for (family, eps) in by_family {
            let suffix = if family == "IPv6" { "ipv6" } else { "ipv4" };
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{i}-{suffix}"),
                    "namespace": namespace,
                    "labels": { "kubernetes.io/service-name": name },
                },
                "addressType": family,
                "ports": ports,
                "endpoints": eps,
            }));
        }
    }
    out
}

/// One watch's bookkeeping: for each object it saw (`namespace/name`), the proxy objects it
/// turned into (several slices for one Endpoints), so that an update or a deletion removes
/// exactly what the object had made.
#[derive(Debug, Clone)]
pub struct Feed {
    kind: Kind,
    /// By `namespace/name`; what an object made is always in its own namespace.
    made: BTreeMap<Box<str>, Made>,
    /// While a paged list is delivered: the objects its pages had so far.
    listed: Option<BTreeSet<Box<str>>>,
}

/// The names of the proxy objects one API object made. Services and v1 slices make
/// themselves: that costs no list per object (10 000 Services, 10 000 slices).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Made {
    Itself,
    Others(Box<[Box<str>]>),
}

impl Made {
    fn names(&self, key: &str) -> Vec<(String, String)> {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        match self {
            Made::Itself => vec![(ns.to_string(), name.to_string())],
            Made::Others(names) => names
                .iter()
                .map(|n| (ns.to_string(), n.to_string()))
                .collect(),
        }
    }
}

impl Feed {
    pub fn new(kind: Kind) -> Feed {
        Feed {
            kind,
            made: BTreeMap::new(),
            listed: None,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The proxy objects (v1 Services or v1 EndpointSlices) for one API object.
    fn convert(&self, object: Value) -> Vec<Value> {
        match self.kind {
            Kind::Services | Kind::Slices(SliceApi::V1) => vec![object],
            Kind::Slices(SliceApi::V1Beta1) => vec![slice_from_v1beta1(object)],
            Kind::Slices(SliceApi::Endpoints) => slices_from_endpoints(&object),
        }
    }

    fn applied(&self, v: Value) -> Event {
        match self.kind {
            Kind::Services => Event::ServiceApplied(v),
            Kind::Slices(_) => Event::EndpointSliceApplied(v),
        }
    }

    fn deleted(&self, (namespace, name): (String, String)) -> Event {
        match self.kind {
            Kind::Services => Event::ServiceDeleted { namespace, name },
            Kind::Slices(_) => Event::EndpointSliceDeleted { namespace, name },
        }
    }

    fn synced(&self) -> Event {
        match self.kind {
            Kind::Services => Event::ServicesSynced,
            Kind::Slices(_) => Event::EndpointSlicesSynced,
        }
    }

    /// Applies one object; the events delete what it made before and no longer makes.
    fn apply(&mut self, object: Value, out: &mut Vec<Event>) {
        let (ns, name) = key_of(&object);
        let key = format!("{ns}/{name}");
        let made: Vec<Value> = self.convert(object);
        let keys: Vec<(String, String)> = made.iter().map(key_of).collect();
        if let Some(old) = self.made.remove(key.as_str()) {
            for k in old.names(&key).into_iter().filter(|k| !keys.contains(k)) {
                out.push(self.deleted(k));
            }
        }
        out.extend(made.into_iter().map(|v| self.applied(v)));
        let made = if keys == [(ns, name)] {
            Made::Itself
        } else {
            Made::Others(keys.into_iter().map(|(_, n)| n.into()).collect())
        };
        self.made.insert(key.into(), made);
    }

    /// One page of a full list (a whole list is one page, first and last): its objects are
    /// applied at once; after the last page, what no page had was deleted while nobody watched.
    fn page(&mut self, items: Vec<Value>, first: bool, last: bool, out: &mut Vec<Event>) {
        if first {
            self.listed = None;
        }
        let listed = self.listed.get_or_insert_with(BTreeSet::new);
        for item in &items {
            let (ns, name) = key_of(item);
            listed.insert(format!("{ns}/{name}").into());
        }
        for item in items {
            self.apply(item, out);
        }
        if !last {
            return;
        }
        let listed = self.listed.take().unwrap_or_default();
        let gone: Vec<Box<str>> = self
            .made
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(made) = self.made.remove(&k) {
                for m in made.names(&k) {
                    out.push(self.deleted(m));
                }
            }
        }
        out.push(self.synced());
    }

    /// The proxy's events for the watcher's outputs; warnings come back as log lines.
    pub fn events(&mut self, outputs: Vec<Output>) -> (Vec<Event>, Vec<String>) {
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        for o in outputs {
            match o {
                Output::Snapshot(items) => self.page(items, true, true, &mut out),
                Output::Page { items, first, last } => self.page(items, first, last, &mut out),
                Output::Applied(object) => self.apply(object, &mut out),
                Output::Deleted(object) => {
                    let (ns, name) = key_of(&object);
                    let key = format!("{ns}/{name}");
                    if let Some(made) = self.made.remove(key.as_str()) {
                        for m in made.names(&key) {
                            out.push(self.deleted(m));
                        }
                    }
                }
                Output::Warning(w) => warnings.push(w),
            }
        }
        (out, warnings)
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
