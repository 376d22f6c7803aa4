//! The store the watches feed: every valid Service and EndpointSlice, keyed `namespace/name`,
//! and each Service's slices (by the `kubernetes.io/service-name` label).
//!
//! Each change names the Services it touched (an EndpointSlice its Service, before and after
//! the change) in the caller's dirty set. An object that fails validation is dropped (an update
//! that breaks a Service stops it being proxied) and its error returned; a deletion removes
//! whatever the store held under that name.
//! This module must never do I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::model::{EndpointSlice, ModelError, Service};

/// Services and EndpointSlices, validated.
#[derive(Debug, Clone, Default)]
pub struct Store {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    /// Each Service's slices (`namespace/service-name` → slice keys).
    slices_of: BTreeMap<String, BTreeSet<String>>,
}

impl Store {
    /// A Service was added or modified (a v1 Service object).
    pub fn put_service(
        &mut self,
        v: &Value,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ModelError> {
        let key = key_of(v);
        self.services.remove(&key);
        dirty.insert(key.clone());
        if let Some(s) = Service::from_json(v)? {
            self.services.insert(key, s);
        }
        Ok(())
    }

    /// Forgets the Service `namespace/name`.
    pub fn delete_service(&mut self, key: &str) {
        self.services.remove(key);
    }

    /// An EndpointSlice was added or modified.
    pub fn put_slice(&mut self, v: &Value, dirty: &mut BTreeSet<String>) -> Result<(), ModelError> {
        let key = key_of(v);
        self.delete_slice(&key, dirty);
        if let Some(s) = EndpointSlice::from_json(v)? {
            let owner = format!("{}/{}", s.namespace, s.service_name);
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            dirty.insert(owner);
            self.slices.insert(key, s);
        }
        Ok(())
    }

    /// Forgets a slice and marks the Service it belonged to dirty.
    pub fn delete_slice(&mut self, key: &str, dirty: &mut BTreeSet<String>) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        let owner = format!("{}/{}", old.namespace, old.service_name);
        if let Some(keys) = self.slices_of.get_mut(&owner) {
            keys.remove(key);
            if keys.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        dirty.insert(owner);
    }

    /// The Service `namespace/name`.
    pub fn service(&self, key: &str) -> Option<&Service> {
        self.services.get(key)
    }

    /// The EndpointSlice `namespace/name`.
    pub fn slice(&self, key: &str) -> Option<&EndpointSlice> {
        self.slices.get(key)
    }

    /// The slices of the Service `namespace/name`.
    pub fn slices_for(&self, key: &str) -> Vec<EndpointSlice> {
        self.slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).cloned())
            .collect()
    }

    /// Every Service's key, in order.
    pub fn service_keys(&self) -> impl Iterator<Item = &String> {
        self.services.keys()
    }

    /// Every Service and every EndpointSlice.
    pub fn objects(&self) -> (Vec<&Service>, Vec<&EndpointSlice>) {
        (
            self.services.values().collect(),
            self.slices.values().collect(),
        )
    }
}

fn key_of(v: &Value) -> String {
    let ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("{ns}/{name}")
}
