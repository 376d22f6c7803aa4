//! What the proxy knows and what it has applied: the store the watch loop feeds, the
//! "nothing until both have synced" gate, and the next transaction to send.
//!
//! ```text
//!  Waiting { services_synced, slices_synced } ──(both synced)──► Synced { applied: None }
//!  Synced { applied: None } ──(next_sync: FullSync, every Service streamed, tables replaced)─┐
//!  Synced { applied: Some } ──(next_sync: a Transaction of the dirty Services' fragments)───┤
//!                           ◄──(committed(transaction): counts and owners the kernel holds)──┘
//! ```
//!
//! Events go into the [`Store`] and mark Services dirty (an EndpointSlice its Service, by
//! `kubernetes.io/service-name`, before and after the change). What was applied is kept as
//! counts and owners ([`Applied`]), never as elements: a Service's applied fragment is rebuilt
//! from the store, which holds what produced it until an event changes it. So the first event
//! that touches a Service after a commit first rebuilds what it had applied (its "stash"),
//! then changes the store; the next transaction diffs the stash against the new fragment.
//!
//! A Service port key held by two Services goes to the first by `namespace/name`, in the
//! full sync (which builds in name order) and in the incremental one alike: a Service that
//! claims a key a later one holds takes it over, and the later one is rebuilt without it.
//!
//! Objects that fail validation are reported (by the caller, at `warn!`) and left out; a
//! deletion removes whatever the store held under that name.
//! This module must never do I/O: the caller writes the transaction and reports success.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde_json::Value;

use super::build::{BuildError, Taken};
use super::fragments::{Applied, Change, Claimed, Fragment, Pending, fragment, plan};
use super::model::{EndpointSlice, IpFamily, ModelError, NodeConfig, Service, object_key};
use super::ruleset::{Key, Op, Ruleset};
use super::store::Store;

mod full;
pub use full::FullSync;

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

/// What the next sync writes: a listed transaction, or a full sync whose operations are made
/// one Service at a time as the writer takes them ([`FullSync::finish`] gives its
/// transaction once they are all taken).
pub enum NextSync<'a> {
    Incremental(Transaction),
    Full(FullSync<'a>),
}

/// The most Services changed between two transactions whose applied fragments are kept for
/// an incremental one; more, and the next sync replaces the tables whole.
pub const STASH_MAX: usize = 512;

/// The store, the sync gate and what was applied.
#[derive(Debug, Clone)]
pub struct ProxyState {
    store: Store,
    /// Services changed since the last committed transaction.
    dirty: BTreeSet<String>,
    /// The applied fragment of each Service an event touched since the last commit (`None`:
    /// it had none), rebuilt before the event changed the store.
    stash: BTreeMap<String, Option<Fragment>>,
    phase: Phase,
}

impl Default for ProxyState {
    fn default() -> Self {
        ProxyState {
            store: Store::default(),
            dirty: BTreeSet::new(),
            stash: BTreeMap::new(),
            phase: Phase::Waiting {
                services_synced: false,
                slices_synced: false,
            },
        }
    }
}

/// One Service's fragment from `store`, with the keys `taken` says are held elsewhere left
/// out; its problems, and whether a key was left out.
fn render(
    store: &Store,
    name: &str,
    node: &NodeConfig,
    skeleton: &Ruleset,
    taken: Taken<'_>,
) -> (Option<Fragment>, Vec<BuildError>, bool) {
    let Some(svc) = store.service(name) else {
        return (None, Vec::new(), false);
    };
    let slices = store.slices_for(name);
    let lost = Cell::new(false);
    let watch = |f: IpFamily, m: &str, k: &Key| {
        let t = taken(f, m, k);
        lost.set(lost.get() || t);
        t
    };
    let (f, p) = fragment(svc, slices, node, skeleton, &watch);
    (Some(f), p, lost.get())
}

impl ProxyState {
    /// Have both Services and EndpointSlices delivered their first full list?
    pub fn is_synced(&self) -> bool {
        matches!(self.phase, Phase::Synced { .. })
    }

    /// Applies one watch event. An invalid object is dropped from the store (an update that
    /// breaks a Service stops it being proxied) and its error returned.
    pub fn apply(&mut self, event: Event) -> Result<(), ModelError> {
        self.stash_touched(&event);
        let result = match event {
            Event::ServiceApplied(v) => self.store.put_service(&v, &mut self.dirty),
            Event::ServiceDeleted { namespace, name } => {
                let key = format!("{namespace}/{name}");
                self.store.delete_service(&key);
                self.dirty.insert(key);
                Ok(())
            }
            Event::EndpointSliceApplied(v) => self.store.put_slice(&v, &mut self.dirty),
            Event::EndpointSliceDeleted { namespace, name } => {
                self.store
                    .delete_slice(&format!("{namespace}/{name}"), &mut self.dirty);
                Ok(())
            }
            Event::ServicesSynced => {
                self.mark_synced(true, false);
                Ok(())
            }
            Event::EndpointSlicesSynced => {
                self.mark_synced(false, true);
                Ok(())
            }
        };
        self.forget_dirty_unless_applied();
        result
    }

    /// Dirty names matter only against what was applied: with nothing applied the next sync
    /// is a full one, which covers every Service (at the first sync of 10 000 Services the
    /// names would be ~0.6 MiB held through it).
    fn forget_dirty_unless_applied(&mut self) {
        if !matches!(self.phase, Phase::Synced { applied: Some(_) }) {
            self.dirty.clear();
        }
    }

    /// The Services an event may change: the Service itself, or a slice's Service before
    /// and after.
    fn touched_by(&self, event: &Event) -> Vec<String> {
        let owner = |slice: &str| {
            self.store
                .slice(slice)
                .map(|s| format!("{}/{}", s.namespace, s.service_name))
        };
        match event {
            Event::ServiceApplied(v) => vec![object_key(v)],
            Event::ServiceDeleted { namespace, name } => vec![format!("{namespace}/{name}")],
            Event::EndpointSliceApplied(v) => {
                let label = v
                    .pointer("/metadata/labels/kubernetes.io~1service-name")
                    .and_then(Value::as_str);
                let ns = v
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let after = label.map(|l| format!("{ns}/{l}"));
                owner(&object_key(v)).into_iter().chain(after).collect()
            }
            Event::EndpointSliceDeleted { namespace, name } => {
                owner(&format!("{namespace}/{name}")).into_iter().collect()
            }
            Event::ServicesSynced | Event::EndpointSlicesSynced => Vec::new(),
        }
    }

    /// Rebuilds what the Services `event` touches have applied, before the store changes.
    /// Past [`STASH_MAX`] Services (a relist sends every object again) what was applied is
    /// forgotten instead: the next sync is a full one, streamed, rather than a stash of
    /// every Service.
    fn stash_touched(&mut self, event: &Event) {
        if self.stash.len() >= STASH_MAX {
            self.forget_applied();
        }
        let Phase::Synced {
            applied: Some(applied),
        } = &self.phase
        else {
            return;
        };
        for name in self.touched_by(event) {
            if !self.stash.contains_key(&name) {
                let old = self.applied_fragment(applied, &name);
                self.stash.insert(name, old);
            }
        }
    }

    /// What a Service that no event touched since the last commit has applied: its fragment
    /// from the store, without the keys others hold.
    fn applied_fragment(&self, applied: &Applied, name: &str) -> Option<Fragment> {
        let taken =
            |f: IpFamily, m: &str, k: &Key| applied.owner(f, m, k).is_some_and(|o| o != name);
        render(&self.store, name, &applied.node, &applied.skeleton, &taken).0
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

    /// What brings the kernel to the desired state; `None` until both sources have synced
    /// (writing earlier would drop traffic to Services not yet seen).
    pub fn next_sync(&self, node: &NodeConfig) -> Option<NextSync<'_>> {
        let Phase::Synced { applied } = &self.phase else {
            return None;
        };
        if let Some(applied) = applied.as_deref().filter(|a| a.node == *node)
            && let Some(tx) = self.incremental(applied)
        {
            return Some(NextSync::Incremental(tx));
        }
        // Unknown kernel state (or a new node configuration): replace the tables whole.
        Some(NextSync::Full(FullSync::new(&self.store, node)))
    }

    /// [`ProxyState::next_sync`] with a full sync's operations listed (tests, benches).
    pub fn next_transaction(&self, node: &NodeConfig) -> Option<Transaction> {
        match self.next_sync(node)? {
            NextSync::Incremental(tx) => Some(tx),
            NextSync::Full(mut full) => {
                let ops: Vec<Op> = full.by_ref().collect();
                let mut tx = full.finish();
                tx.ops = ops;
                Some(tx)
            }
        }
    }

    /// The transaction of the dirty Services against `applied`; `None` when a dirty Service
    /// has no stash (what it applied is unknown: only a full sync is safe).
    fn incremental(&self, applied: &Applied) -> Option<Transaction> {
        if self.dirty.iter().any(|n| !self.stash.contains_key(n)) {
            return None;
        }
        let mut names: BTreeSet<String> = self.stash.keys().cloned().collect();
        if names.is_empty() {
            return Some(Transaction {
                ops: Vec::new(),
                problems: Vec::new(),
                commit: Commit::Incremental(Pending::new(Vec::new(), applied.conflicted().clone())),
            });
        }
        // A Service that lost a key may win it now.
        names.extend(applied.conflicted().iter().cloned());
        let rebuilt = self.claim(applied, &mut names);
        let mut problems = Vec::new();
        let mut conflicted: BTreeSet<String> = applied
            .conflicted()
            .iter()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        let changes: Vec<Change> = rebuilt
            .into_iter()
            .map(|(name, new, p, lost)| {
                problems.extend(p);
                if lost {
                    conflicted.insert(name.clone());
                }
                let old = match self.stash.get(&name) {
                    Some(old) => old.clone(),
                    None => self.applied_fragment(applied, &name),
                };
                Change { name, old, new }
            })
            .collect();
        Some(Transaction {
            ops: plan(applied, &changes),
            problems,
            commit: Commit::Incremental(Pending::new(changes, conflicted)),
        })
    }

    /// Rebuilds `names` in name order, each key going to the first claimant by name; a
    /// Service outside `names` that loses a key to one of them joins them (and all are
    /// rebuilt again). Returns each one's fragment, problems and whether it lost a key.
    #[allow(clippy::type_complexity)]
    fn claim(
        &self,
        applied: &Applied,
        names: &mut BTreeSet<String>,
    ) -> Vec<(String, Option<Fragment>, Vec<BuildError>, bool)> {
        loop {
            let mut claimed = Claimed::default();
            let mut displaced = BTreeSet::new();
            let mut rebuilt = Vec::new();
            for name in names.iter() {
                let (new, problems, lost) = {
                    let taken = |f: IpFamily, m: &str, k: &Key| {
                        claimed.contains(f, m, k)
                            || applied
                                .owner(f, m, k)
                                .is_some_and(|o| o < name.as_str() && !names.contains(o))
                    };
                    render(&self.store, name, &applied.node, &applied.skeleton, &taken)
                };
                if let Some(f) = &new {
                    for (fam, m, k) in f.service_keys() {
                        if let Some(o) = applied.owner(fam, m, k)
                            && o > name.as_str()
                            && !names.contains(o)
                        {
                            displaced.insert(o.to_string());
                        }
                    }
                    claimed.add(f);
                }
                rebuilt.push((name.clone(), new, problems, lost));
            }
            if displaced.is_empty() {
                return rebuilt;
            }
            names.extend(displaced);
        }
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
                self.stash.clear();
            }
            Commit::Incremental(pending) => {
                let Some(a) = applied else {
                    return;
                };
                for name in pending.names() {
                    self.dirty.remove(name);
                    self.stash.remove(name);
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
        self.stash.clear();
        self.dirty.clear();
    }

    /// The Services and EndpointSlices in the store, once both have synced (`None` before):
    /// the iptables backend renders them itself instead of taking a transaction.
    pub fn objects(&self) -> Option<(Vec<&Service>, Vec<&EndpointSlice>)> {
        self.is_synced().then(|| self.store.objects())
    }

    /// How many element users and owners what was applied keeps (benches).
    pub fn applied_size(&self) -> usize {
        match &self.phase {
            Phase::Synced {
                applied: Some(applied),
            } => applied.kept(),
            _ => 0,
        }
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
