//! What the proxy knows and what it has applied: the store the watch loop feeds, the
//! "nothing until both have synced" gate, and the next transaction to send.
//!
//! ```text
//!  Waiting { services_synced, slices_synced } ──(both synced)──► Synced { applied: None }
//!  Synced { applied } ──(next_transaction: diff against applied)──► caller writes it
//!                     ──(committed(ruleset))──► Synced { applied: Some(ruleset) }
//! ```
//!
//! Objects that fail validation are reported (by the caller, at `warn!`) and left out; a
//! deletion removes whatever the store held under that name.
//! This module must never do I/O: the caller writes the transaction and reports success.

use std::collections::BTreeMap;

use serde_json::Value;

use super::build::{BuildError, build};
use super::model::{EndpointSlice, ModelError, NodeConfig, Service};
use super::ruleset::{Op, Ruleset, diff};

/// One change from the API server's watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A Service was added or modified (a v1 Service object).
    ServiceApplied(Value),
    ServiceDeleted {
        namespace: String,
        name: String,
    },
    /// The initial list of Services has been delivered in full.
    ServicesSynced,
    /// An EndpointSlice was added or modified.
    EndpointSliceApplied(Value),
    EndpointSliceDeleted {
        namespace: String,
        name: String,
    },
    EndpointSlicesSynced,
}

/// Where the proxy is; the sync flags live inside the state that needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Waiting {
        services_synced: bool,
        slices_synced: bool,
    },
    Synced {
        applied: Option<Ruleset>,
    },
}

/// The next thing to write to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The ruleset the kernel will hold once `ops` are committed.
    pub desired: Ruleset,
    /// Empty when nothing changed. After a restart (nothing applied yet) this replaces the
    /// tables whole.
    pub ops: Vec<Op>,
    /// Objects (or parts of them) left out, to be logged.
    pub problems: Vec<BuildError>,
}

/// The proxy's store of Services and EndpointSlices, keyed `namespace/name`.
#[derive(Debug, Clone)]
pub struct ProxyState {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    phase: Phase,
}

impl Default for ProxyState {
    fn default() -> Self {
        ProxyState {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            phase: Phase::Waiting {
                services_synced: false,
                slices_synced: false,
            },
        }
    }
}

impl ProxyState {
    /// Have both Services and EndpointSlices delivered their first full list?
    pub fn is_synced(&self) -> bool {
        matches!(self.phase, Phase::Synced { .. })
    }

    /// Applies one watch event. An invalid object is dropped from the store (an update that
    /// breaks a Service stops it being proxied) and its error returned.
    pub fn apply(&mut self, event: Event) -> Result<(), ModelError> {
        match event {
            Event::ServiceApplied(v) => {
                let key = key_of(&v);
                self.services.remove(&key);
                if let Some(s) = Service::from_json(&v)? {
                    self.services.insert(key, s);
                }
            }
            Event::ServiceDeleted { namespace, name } => {
                self.services.remove(&format!("{namespace}/{name}"));
            }
            Event::EndpointSliceApplied(v) => {
                let key = key_of(&v);
                self.slices.remove(&key);
                if let Some(s) = EndpointSlice::from_json(&v)? {
                    self.slices.insert(key, s);
                }
            }
            Event::EndpointSliceDeleted { namespace, name } => {
                self.slices.remove(&format!("{namespace}/{name}"));
            }
            Event::ServicesSynced => self.mark_synced(true, false),
            Event::EndpointSlicesSynced => self.mark_synced(false, true),
        }
        Ok(())
    }

    fn mark_synced(&mut self, services: bool, slices: bool) {
        if let Phase::Waiting {
            services_synced,
            slices_synced,
        } = &mut self.phase
        {
            *services_synced |= services;
            *slices_synced |= slices;
            // Waiting → Synced: both lists are complete, the ruleset may now be written.
            if *services_synced && *slices_synced {
                self.phase = Phase::Synced { applied: None };
            }
        }
    }

    /// The transaction that brings the kernel to the desired state; `None` until both
    /// sources have synced (writing earlier would drop traffic to Services not yet seen).
    pub fn next_transaction(&self, node: &NodeConfig) -> Option<Transaction> {
        let Phase::Synced { applied } = &self.phase else {
            return None;
        };
        let services: Vec<Service> = self.services.values().cloned().collect();
        let slices: Vec<EndpointSlice> = self.slices.values().cloned().collect();
        let built = build(&services, &slices, node);
        let ops = match applied {
            Some(old) => diff(old, &built.ruleset),
            // Unknown kernel state: replace the tables whole.
            None => {
                let mut ops: Vec<Op> = built
                    .ruleset
                    .tables
                    .iter()
                    .map(|t| Op::DeleteTable(t.family))
                    .collect();
                ops.extend(built.ruleset.tables.iter().cloned().map(Op::AddTable));
                ops
            }
        };
        Some(Transaction {
            desired: built.ruleset,
            ops,
            problems: built.problems,
        })
    }

    /// Records that a transaction was committed: the next one is a diff against it.
    pub fn committed(&mut self, ruleset: Ruleset) {
        // Synced → Synced { applied }: only after the kernel accepted the batch.
        if let Phase::Synced { applied } = &mut self.phase {
            *applied = Some(ruleset);
        }
    }

    /// Forgets what was applied (after a failed write): the next transaction replaces all.
    pub fn forget_applied(&mut self) {
        if let Phase::Synced { applied } = &mut self.phase {
            *applied = None;
        }
    }

    /// The Services and EndpointSlices in the store, once both have synced (`None` before):
    /// the iptables backend renders them itself instead of taking a transaction.
    pub fn objects(&self) -> Option<(Vec<&Service>, Vec<&EndpointSlice>)> {
        self.is_synced().then(|| {
            (
                self.services.values().collect(),
                self.slices.values().collect(),
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeConfig {
        NodeConfig {
            node_name: "node-a".to_string(),
            node_ips: vec!["192.168.1.10".parse().unwrap()],
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            masquerade_bit: 0x4000,
        }
    }

    fn web(port: u16) -> Value {
        json!({ "metadata": { "name": "web", "namespace": "default" },
                "spec": { "clusterIP": "10.96.0.10", "ports": [{ "port": port }] } })
    }

    #[test]
    fn nothing_is_written_until_services_and_slices_have_both_synced() {
        let orders: [&[Event]; 3] = [
            &[Event::ServicesSynced],
            &[Event::EndpointSlicesSynced],
            &[Event::ServicesSynced, Event::ServicesSynced],
        ];
        for events in orders {
            let mut s = ProxyState::default();
            s.apply(Event::ServiceApplied(web(80))).unwrap();
            for e in events {
                s.apply(e.clone()).unwrap();
            }
            assert!(!s.is_synced());
            assert_eq!(s.next_transaction(&node()), None, "{events:?}");
        }
        let mut s = ProxyState::default();
        s.apply(Event::EndpointSlicesSynced).unwrap();
        s.apply(Event::ServicesSynced).unwrap();
        assert!(s.is_synced());
        assert!(s.next_transaction(&node()).is_some());
    }

    #[test]
    fn the_first_write_replaces_then_only_changes_are_sent() {
        let mut s = ProxyState::default();
        for e in [
            Event::ServiceApplied(web(80)),
            Event::ServicesSynced,
            Event::EndpointSlicesSynced,
        ] {
            s.apply(e).unwrap();
        }
        let first = s.next_transaction(&node()).unwrap();
        assert!(matches!(first.ops.first(), Some(Op::DeleteTable(_))));
        s.committed(first.desired);
        assert_eq!(s.next_transaction(&node()).unwrap().ops, vec![]);
        s.apply(Event::ServiceApplied(web(81))).unwrap();
        let second = s.next_transaction(&node()).unwrap();
        assert!(!second.ops.is_empty());
        assert!(
            !second
                .ops
                .iter()
                .any(|op| matches!(op, Op::DeleteTable(_) | Op::AddTable(_)))
        );
    }

    #[test]
    fn an_invalid_update_stops_the_service_and_says_why() {
        let mut s = ProxyState::default();
        s.apply(Event::ServiceApplied(web(80))).unwrap();
        let err = s.apply(Event::ServiceApplied(web(0))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service default/web: spec.ports[0].port: port 0 must be 1..=65535"
        );
        s.apply(Event::ServicesSynced).unwrap();
        s.apply(Event::EndpointSlicesSynced).unwrap();
        let t = s.next_transaction(&node()).unwrap();
        let v4 = t.desired.table(super::super::model::IpFamily::V4).unwrap();
        assert!(v4.maps.values().all(|m| m.elements.is_empty()));
    }
}
