//! What the proxy knows and what it has applied: the store the watch loop feeds, the
//! "nothing until both have synced" gate, and the next transaction to send.
//!
//! ```text
//!  Waiting { services_synced, slices_synced } ──(both synced)──► Synced { applied: None }
//!  Synced { applied: None } ──(next_transaction: every Service, the tables replaced whole)─┐
//!  Synced { applied: Some } ──(next_transaction: only the dirty Services' fragments)───────┤
//!                           ◄──(committed(transaction): the fragments the kernel accepted)─┘
//! ```
//!
//! Events go into the [`Store`] and mark Services dirty (an EndpointSlice its Service, by
//! `kubernetes.io/service-name`, before and after the change); the next transaction rebuilds
//! only those and diffs only their [`fragments`](super::fragments). What was applied is kept
//! as the fragments, never as a second whole ruleset.
//!
//! Objects that fail validation are reported (by the caller, at `warn!`) and left out; a
//! deletion removes whatever the store held under that name.
//! This module must never do I/O: the caller writes the transaction and reports success.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::Value;

use super::build::BuildError;
use super::fragments::{Applied, Fragment, Pending, fragment, plan, skeleton};
use super::model::{EndpointSlice, ModelError, NodeConfig, Service};
use super::ruleset::{Op, Ruleset};
use super::store::Store;

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
        applied: Option<Box<Applied>>,
    },
}

/// What a transaction changes in what was applied, once committed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Commit {
    /// The tables were replaced whole.
    Full(Box<Applied>),
    Incremental(Pending),
}

/// The next thing to write to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Empty when nothing changed. After a restart (nothing applied yet) this replaces the
    /// tables whole.
    pub ops: Vec<Op>,
    /// Objects (or parts of them) left out, to be logged.
    pub problems: Vec<BuildError>,
    commit: Commit,
}

impl Transaction {
    /// Does it replace the tables whole?
    pub fn is_full(&self) -> bool {
        matches!(self.commit, Commit::Full { .. })
    }
}

/// The store, the sync gate and what was applied.
#[derive(Debug, Clone)]
pub struct ProxyState {
    store: Store,
    /// Services changed since the last committed transaction.
    dirty: BTreeSet<String>,
    phase: Phase,
}

impl Default for ProxyState {
    fn default() -> Self {
        ProxyState {
            store: Store::default(),
            dirty: BTreeSet::new(),
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
            Event::ServiceApplied(v) => self.store.put_service(&v, &mut self.dirty)?,
            Event::ServiceDeleted { namespace, name } => {
                let key = format!("{namespace}/{name}");
                self.store.delete_service(&key);
                self.dirty.insert(key);
            }
            Event::EndpointSliceApplied(v) => self.store.put_slice(&v, &mut self.dirty)?,
            Event::EndpointSliceDeleted { namespace, name } => {
                self.store
                    .delete_slice(&format!("{namespace}/{name}"), &mut self.dirty);
            }
            Event::ServicesSynced => self.mark_synced(true, false),
            Event::EndpointSlicesSynced => self.mark_synced(false, true),
        }
        Ok(())
    }

    /// One Service's fragment, built from its own slices only.
    fn fragment_of(
        &self,
        name: &str,
        node: &NodeConfig,
        skeleton: &Ruleset,
        problems: &mut Vec<BuildError>,
    ) -> Option<Fragment> {
        let svc = self.store.service(name)?;
        let slices = self.store.slices_for(name);
        let (f, p) = fragment(svc, slices, node, skeleton);
        problems.extend(p);
        Some(f)
    }

    /// Every endpoint UDP traffic is DNATed to, in what was committed.
    pub fn udp_backends(&self) -> BTreeSet<SocketAddr> {
        match &self.phase {
            Phase::Synced {
                applied: Some(applied),
            } => applied.udp_backends(),
            _ => BTreeSet::new(),
        }
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
        let skeleton = skeleton(node);
        let mut problems = Vec::new();
        if let Some(applied) = applied.as_deref().filter(|a| a.skeleton == skeleton) {
            let mut names = self.dirty.clone();
            if !names.is_empty() {
                // A Service that lost a key may win it now.
                names.extend(applied.conflicted().iter().cloned());
            }
            let rebuilt: Vec<(String, Option<Fragment>)> = names
                .into_iter()
                .map(|n| {
                    let f = self.fragment_of(&n, node, &skeleton, &mut problems);
                    (n, f)
                })
                .collect();
            let (ops, pending) = plan(applied, rebuilt, &mut problems);
            return Some(Transaction {
                ops,
                problems,
                commit: Commit::Incremental(pending),
            });
        }
        // Unknown kernel state (or a new node configuration): replace the tables whole.
        // One Service at a time, straight into what will be applied and the desired ruleset:
        // no second set of fragments, no delta against an empty state.
        let mut desired = skeleton.clone();
        let mut next = Applied::new(skeleton);
        for n in self.store.service_keys() {
            if let Some(f) = self.fragment_of(n, node, &next.skeleton, &mut problems) {
                next.adopt(n.clone(), f, &mut desired, &mut problems);
            }
        }
        let mut ops: Vec<Op> = desired
            .tables
            .iter()
            .map(|t| Op::DeleteTable(t.family))
            .collect();
        ops.extend(desired.tables.into_iter().map(Op::AddTable));
        Some(Transaction {
            ops,
            problems,
            commit: Commit::Full(Box::new(next)),
        })
    }

    /// Records that a transaction was committed: the next one is a diff against it.
    pub fn committed(&mut self, tx: Transaction) {
        // Synced → Synced { applied }: only after the kernel accepted the batch.
        let Phase::Synced { applied } = &mut self.phase else {
            return;
        };
        match tx.commit {
            Commit::Full(next) => {
                *applied = Some(next);
                self.dirty.clear();
            }
            Commit::Incremental(pending) => {
                let Some(a) = applied else {
                    return;
                };
                for (name, _) in pending.fragments() {
                    self.dirty.remove(name);
                }
                a.commit(pending);
            }
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
        self.is_synced().then(|| self.store.objects())
    }
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
        s.committed(first);
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
        let Some(Op::AddTable(v4)) = t.ops.get(1) else {
            panic!("{:?}", t.ops)
        };
        assert!(v4.maps.values().all(|m| m.elements.is_empty()));
    }
}
