//! The store the watches feed: every valid Service and EndpointSlice, one entry per Service
//! key `namespace/name` holding the Service and its slices (by the
//! `kubernetes.io/service-name` label), so the proxy reads a Service and its slices with one
//! lookup and keeps no second key per slice.
//!
//! ```text
//!  entries: "default/web" ─► Entry { service: Some(web), slices: [web-abc12, web-xyz89] }
//!           "default/db"  ─► Entry { service: None,      slices: [db-1] }   (slices first)
//!  odd:     "default/mirror-1" ─► "default/web"   (a slice whose name does not say its Service)
//! ```
//!
//! A deletion names a slice, not its Service. The EndpointSlice controller names a slice
//! `<service-name>-<suffix>`, so the owner is found among the prefixes of the slice's name
//! that end before a `-`; the few slices named otherwise are listed in `odd`. The names many
//! objects repeat (namespaces, port names, node names) are held once, in an [`Interner`].
//!
//! Each change names the Services it touched (an EndpointSlice its Service, before and after
//! the change) in the caller's dirty set. An object that fails validation is dropped (an update
//! that breaks a Service stops it being proxied) and its error returned; a deletion removes
//! whatever the store held under that name.
//! This module must never do I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::model::{EndpointSlice, Few, Interner, ModelError, Service, object_key};

/// Services and EndpointSlices, validated.
#[derive(Debug, Clone, Default)]
pub struct Store {
    /// By Service key; boxed, so that the map's nodes stay small.
    entries: BTreeMap<String, Box<Entry>>,
    /// The slices whose name does not start with `<service-name>-`: slice key → Service key.
    odd: BTreeMap<String, String>,
    names: Interner,
}

/// One Service key's Service (once seen) and slices (sorted by name).
#[derive(Debug, Clone, Default)]
struct Entry {
    service: Option<Service>,
    slices: Few<EndpointSlice>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.service.is_none() && self.slices.is_empty()
    }
}

impl Store {
    /// A Service was added or modified (a v1 Service object).
    pub fn put_service(
        &mut self,
        v: &Value,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ModelError> {
        let key = object_key(v);
        self.delete_service(&key);
        dirty.insert(key.clone());
        if let Some(mut s) = Service::from_json(v)? {
            self.names.intern(&mut s.namespace);
            s.ports
                .iter_mut()
                .for_each(|p| self.names.intern(&mut p.name));
            self.entries.entry(key).or_default().service = Some(s);
        }
        Ok(())
    }

    /// Forgets the Service `namespace/name`.
    pub fn delete_service(&mut self, key: &str) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let Some(old) = entry.service.take() {
            self.names.release(&old.namespace);
            old.ports.iter().for_each(|p| self.names.release(&p.name));
        }
        if entry.is_empty() {
            self.entries.remove(key);
        }
    }

    /// An EndpointSlice was added or modified.
    pub fn put_slice(&mut self, v: &Value, dirty: &mut BTreeSet<String>) -> Result<(), ModelError> {
        let key = object_key(v);
        self.delete_slice(&key, dirty);
        let Some(mut s) = EndpointSlice::from_json(v)? else {
            return Ok(());
        };
        self.names.intern(&mut s.namespace);
        s.ports
            .iter_mut()
            .for_each(|p| self.names.intern(&mut p.name));
        s.endpoints.intern(&mut self.names);
        let owner = owner_key(&s);
        if !is_named_after_its_service(&s) {
            self.odd.insert(key, owner.clone());
        }
        let entry = self.entries.entry(owner.clone()).or_default();
        let mut slices = Vec::from(std::mem::take(&mut entry.slices));
        let at = slices.partition_point(|o| o.name < s.name);
        slices.insert(at, s);
        entry.slices = slices.into();
        dirty.insert(owner);
        Ok(())
    }

    /// Forgets a slice and marks the Service it belonged to dirty.
    pub fn delete_slice(&mut self, key: &str, dirty: &mut BTreeSet<String>) {
        let Some((owner, at)) = self.find_slice(key) else {
            return;
        };
        self.odd.remove(key);
        let Some(entry) = self.entries.get_mut(&owner) else {
            return;
        };
        let mut slices = Vec::from(std::mem::take(&mut entry.slices));
        let old = slices.remove(at);
        entry.slices = slices.into();
        if entry.is_empty() {
            self.entries.remove(&owner);
        }
        self.names.release(&old.namespace);
        old.ports.iter().for_each(|p| self.names.release(&p.name));
        old.endpoints.release(&mut self.names);
        dirty.insert(owner);
    }

    /// The Service key holding the slice `key` (`namespace/name`), and its index there.
    fn find_slice(&self, key: &str) -> Option<(String, usize)> {
        let (ns, name) = key.split_once('/')?;
        let index_in = |owner: &str| {
            let slices = &self.entries.get(owner)?.slices;
            slices.binary_search_by(|s| s.name.as_str().cmp(name)).ok()
        };
        if let Some(owner) = self.odd.get(key) {
            return index_in(owner).map(|i| (owner.clone(), i));
        }
        // `<service-name>-<suffix>`: the Service's name is the name up to one of its dashes.
        name.match_indices('-').find_map(|(dash, _)| {
            let owner = format!("{ns}/{}", &name[..dash]);
            index_in(&owner).map(|i| (owner, i))
        })
    }

    /// The Service `namespace/name`.
    pub fn service(&self, key: &str) -> Option<&Service> {
        self.entries.get(key)?.service.as_ref()
    }

    /// The EndpointSlice `namespace/name`.
    pub fn slice(&self, key: &str) -> Option<&EndpointSlice> {
        let (owner, i) = self.find_slice(key)?;
        self.entries.get(&owner)?.slices.get(i)
    }

    /// The slices of the Service `namespace/name`, in name order.
    pub fn slices_for(&self, key: &str) -> &[EndpointSlice] {
        self.entries.get(key).map_or(&[], |e| &e.slices)
    }

    /// Every Service's key, in order.
    pub fn service_keys(&self) -> impl Iterator<Item = &String> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.service.as_ref().map(|_| k))
    }

    /// Every Service and every EndpointSlice (the slices grouped by Service key).
    pub fn objects(&self) -> (Vec<&Service>, Vec<&EndpointSlice>) {
        (
            self.entries
                .values()
                .filter_map(|e| e.service.as_ref())
                .collect(),
            self.entries
                .values()
                .flat_map(|e| e.slices.iter())
                .collect(),
        )
    }
}

/// `namespace/service-name` of a slice.
fn owner_key(s: &EndpointSlice) -> String {
    format!("{}/{}", s.namespace, s.service_name)
}

/// Does the slice's name start with `<service-name>-`, as the EndpointSlice controller names
/// it? Then [`Store::find_slice`] finds it without an index.
fn is_named_after_its_service(s: &EndpointSlice) -> bool {
    s.name
        .strip_prefix(s.service_name.as_str())
        .is_some_and(|rest| rest.starts_with('-'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn service(name: &str) -> Value {
        json!({ "metadata": { "name": name, "namespace": "prod" },
                "spec": { "clusterIP": "10.96.0.10", "ports": [{ "name": "http", "port": 80 }] } })
    }

    fn slice(name: &str, service: &str, addr: &str) -> Value {
        json!({ "metadata": { "name": name, "namespace": "prod",
                              "labels": { "kubernetes.io/service-name": service } },
                "addressType": "IPv4",
                "ports": [{ "name": "http", "port": 8080 }],
                "endpoints": [{ "addresses": [addr], "nodeName": "node-a" }] })
    }

    fn names(store: &Store, service: &str) -> Vec<String> {
        store
            .slices_for(service)
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    #[test]
    fn slices_are_found_by_their_service_whatever_their_names() {
        let mut store = Store::default();
        let mut dirty = BTreeSet::new();
        store.put_service(&service("web"), &mut dirty).unwrap();
        // The controller's names, one that says another Service's name, and one that says none.
        for (name, svc) in [
            ("web-abc12", "web"),
            ("web-api-1", "web"),
            ("mirror", "web"),
            ("web-api-2", "web-api"),
        ] {
            store
                .put_slice(&slice(name, svc, "10.0.0.1"), &mut dirty)
                .unwrap();
        }
        assert_eq!(
            names(&store, "prod/web"),
            ["mirror", "web-abc12", "web-api-1"]
        );
        assert_eq!(names(&store, "prod/web-api"), ["web-api-2"]);
        assert_eq!(
            store.service_keys().collect::<Vec<_>>(),
            ["prod/web"],
            "slices alone make no Service"
        );
        // An update moves a slice to the Service its label now names.
        store
            .put_slice(&slice("web-api-1", "web-api", "10.0.0.2"), &mut dirty)
            .unwrap();
        assert_eq!(names(&store, "prod/web"), ["mirror", "web-abc12"]);
        assert_eq!(names(&store, "prod/web-api"), ["web-api-1", "web-api-2"]);
        for name in ["mirror", "web-abc12", "web-api-1", "web-api-2"] {
            let mut touched = BTreeSet::new();
            store.delete_slice(&format!("prod/{name}"), &mut touched);
            assert_eq!(touched.len(), 1, "{name}: its Service is marked dirty");
        }
        assert!(store.slices_for("prod/web").is_empty());
        assert!(store.odd.is_empty());
        store.delete_service("prod/web");
        assert!(store.entries.is_empty());
        assert!(
            store.names.is_empty(),
            "no name is kept for objects that are gone"
        );
    }

    #[test]
    fn a_broken_update_drops_the_old_object_and_names_the_problem() {
        let mut store = Store::default();
        let mut dirty = BTreeSet::new();
        store
            .put_slice(&slice("web-1", "web", "10.0.0.1"), &mut dirty)
            .unwrap();
        let err = store
            .put_slice(&slice("web-1", "web", "10.0.0.01"), &mut dirty)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpointslice prod/web-1: endpoints[0].addresses[0]: \"10.0.0.01\": IPv4 address must not have leading zeros"
        );
        assert!(store.slices_for("prod/web").is_empty());
        assert_eq!(dirty, BTreeSet::from(["prod/web".to_string()]));
    }
}
