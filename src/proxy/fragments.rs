//! Per-Service fragments of the ruleset, what [`super::state`] keeps of what it applied, and
//! the incremental transaction between two sets of fragments.
//!
//! ```text
//!  build_service(service, keys held elsewhere) − skeleton ──► Fragment (one Service, transient)
//!  Applied { users of each shared chain / set / set element, owner of each Service port key,
//!            users of each UDP backend }          (no fragment, no element of a Service kept)
//!  plan(applied, [(name, old fragment, new fragment)]) ──► ops + Pending ──commit──► Applied
//!  full sync: Applied::adopt(each fragment) ──► its declarations and rules, its elements moved out
//! ```
//!
//! A Service's fragment is the part of the ruleset that building it alone adds to the
//! skeleton (the base chains, the maps and sets every table has): the chains it uses (the
//! shared per-endpoint-count chains, or its own when it has session affinity), its affinity
//! sets, and its elements. Shared chains, own sets and set elements are counted by users: a
//! chain is created with its first user and deleted with its last.
//!
//! A Service port's map key (`clusterIP . proto . port`, `proto . nodePort`, in the map for
//! ports with endpoints or in its no-endpoint twin alike) belongs to one Service: the first by `namespace/name` that claims it, as in a fresh build of the whole
//! ruleset (which builds in name order). Another claimant is told so and left out of that key
//! (and of its endpoints); it is rebuilt whenever keys change hands.
//!
//! What was applied is not kept as fragments: a Service's applied fragment is rebuilt from
//! the inputs that produced it (the caller's store, unchanged since) and the owners, when the
//! Service changes; the state keeps the counts and owners, with packed keys
//! (`fragments/packed.rs`).
//!
//! This module must never do I/O.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::build::{BuildError, Taken, build, build_service};
use super::model::{EndpointSlice, IpFamily, NodeConfig, Protocol, Service};
use super::ruleset::{Action, Chain, Key, KeyPart, MapVerdict, Op, Ruleset, Set};

mod names;
mod packed;
mod plan;
use names::{claim_map, intern, is_service_key};
use packed::PackedMap;
pub use plan::plan;

/// What one element holds: nothing (a set), a verdict or an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Member,
    Verdict(MapVerdict),
    Endpoint(SocketAddr),
}

/// One element's place: family, set or map name, key. The name is one of the skeleton's
/// (borrowed from [`names::SHARED_NAMES`], not a copy per element).
type ElementId = (IpFamily, Name, Key);
pub type Name = Cow<'static, str>;

type ObjectId = (IpFamily, String);

/// What one Service adds to the skeleton.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    chains: BTreeMap<ObjectId, Chain>,
    sets: BTreeMap<ObjectId, Set>,
    /// Elements of the skeleton's sets (shared, counted).
    members: BTreeSet<ElementId>,
    /// Elements of the skeleton's maps (owned by one Service).
    entries: BTreeMap<ElementId, Value>,
}

impl Fragment {
    /// The endpoints UDP traffic of this Service is DNATed to.
    fn udp_backends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let udp = KeyPart::Proto(Protocol::Udp);
        let in_maps = self
            .entries
            .iter()
            .filter_map(move |((_, _, k), v)| match v {
                Value::Endpoint(e) if k.contains(&udp) => Some(*e),
                _ => None,
            });
        let in_chains =
            self.chains
                .values()
                .flat_map(|c| &c.rules)
                .filter_map(|r| match r.action {
                    Action::Dnat(Protocol::Udp, e) => Some(e),
                    _ => None,
                });
        in_maps.chain(in_chains)
    }

    /// The Service port keys this fragment holds (`@service-ips`, `@service-nodeports` and
    /// their no-endpoint kin).
    pub fn service_keys(&self) -> impl Iterator<Item = (IpFamily, &str, &Key)> + '_ {
        self.entries
            .keys()
            .filter(|(_, m, _)| is_service_key(m))
            .map(|(f, m, k)| (*f, m.as_ref(), k))
    }
}

/// The skeleton: the ruleset without Services.
pub fn skeleton(node: &NodeConfig) -> Ruleset {
    build(&[], &[], node).ruleset
}

/// Builds one Service alone and keeps what it adds to `skeleton`; the map keys `taken` says
/// are held elsewhere are left out (and reported), with their endpoints.
pub fn fragment(
    svc: &Service,
    slices: &[EndpointSlice],
    node: &NodeConfig,
    skeleton: &Ruleset,
    taken: Taken<'_>,
) -> (Fragment, Vec<BuildError>) {
    let built = build_service(svc, slices, node, skeleton, taken);
    let mut f = Fragment::default();
    for t in built.ruleset.tables {
        let fam = t.family;
        let Some(base) = skeleton.table(fam) else {
            continue;
        };
        for (name, chain) in t.chains {
            if !base.chains.contains_key(&name) {
                f.chains.insert((fam, name), chain);
            }
        }
        for (name, set) in t.sets {
            match base.sets.get(&name) {
                Some(b) => {
                    let id = intern(&name);
                    for k in set.elements.difference(&b.elements) {
                        f.members.insert((fam, id.clone(), k.clone()));
                    }
                }
                None => {
                    f.sets.insert((fam, name), set);
                }
            }
        }
        for (name, map) in t.maps {
            let id = intern(&name);
            for (k, v) in map.elements {
                f.entries.insert((fam, id.clone(), k), Value::Verdict(v));
            }
        }
        for (name, map) in t.dnat_maps {
            let id = intern(&name);
            for (k, v) in map.elements {
                f.entries.insert((fam, id.clone(), k), Value::Endpoint(v));
            }
        }
    }
    (f, built.problems)
}

/// What the kernel holds beyond the skeleton, as counts and owners: no Service's elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The node configuration the tables were built for.
    pub node: NodeConfig,
    pub skeleton: Ruleset,
    chain_users: BTreeMap<ObjectId, u32>,
    set_users: BTreeMap<ObjectId, u32>,
    member_users: PackedMap<u32>,
    /// Each Service port key's Service (one shared name per Service, not a copy per key).
    owners: PackedMap<Arc<str>>,
    /// Each UDP endpoint's users: when the last goes, its conntrack entries are flushed.
    udp_users: BTreeMap<SocketAddr, u32>,
    /// Services that lost a map key to another one.
    conflicted: BTreeSet<String>,
}

/// One Service in a transaction: the fragment the kernel holds and the one it will hold
/// (`None`: none, the Service is new or gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub old: Option<Fragment>,
    pub new: Option<Fragment>,
}

/// The changes of one transaction, recorded once the kernel accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    changes: Vec<Change>,
    conflicted: BTreeSet<String>,
}

impl Pending {
    /// `changes`, and the Services that lose a key once they are committed.
    pub fn new(changes: Vec<Change>, conflicted: BTreeSet<String>) -> Pending {
        Pending {
            changes,
            conflicted,
        }
    }

    /// The Services this transaction rebuilt.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.changes.iter().map(|c| c.name.as_str())
    }
}

impl Applied {
    /// Nothing applied beyond the skeleton of `node`.
    pub fn new(node: NodeConfig) -> Applied {
        Applied {
            skeleton: skeleton(&node),
            node,
            chain_users: BTreeMap::new(),
            set_users: BTreeMap::new(),
            member_users: PackedMap::default(),
            owners: PackedMap::default(),
            udp_users: BTreeMap::new(),
            conflicted: BTreeSet::new(),
        }
    }

    /// Services that lost a key and should be tried again when keys change hands.
    pub fn conflicted(&self) -> &BTreeSet<String> {
        &self.conflicted
    }

    /// Records the Services that lost a key in a full sync.
    pub fn set_conflicted(&mut self, conflicted: BTreeSet<String>) {
        self.conflicted = conflicted;
    }

    /// Every endpoint UDP traffic is DNATed to.
    pub fn udp_backends(&self) -> BTreeSet<SocketAddr> {
        self.udp_users.keys().copied().collect()
    }

    /// The Service holding a Service port key.
    pub fn owner(&self, fam: IpFamily, map: &str, key: &Key) -> Option<&str> {
        self.owners
            .get_parts(fam, claim_map(map), key)
            .map(|o| &**o)
    }

    /// How many elements' users and owners are kept (for tests and benches).
    pub fn kept(&self) -> usize {
        self.member_users.len() + self.owners.len()
    }

    /// Records a committed transaction.
    pub fn commit(&mut self, pending: Pending) {
        for c in &pending.changes {
            if let Some(old) = &c.old {
                self.release(&c.name, old);
            }
        }
        for c in &pending.changes {
            if let Some(new) = &c.new {
                self.hold(&c.name, new);
            }
        }
        self.conflicted = pending.conflicted;
    }

    /// Counts a Service's fragment as applied.
    fn hold(&mut self, name: &str, f: &Fragment) {
        for id in f.chains.keys() {
            *self.chain_users.entry(id.clone()).or_default() += 1;
        }
        for id in f.sets.keys() {
            *self.set_users.entry(id.clone()).or_default() += 1;
        }
        for id in &f.members {
            self.member_users.count(id, 1);
        }
        let mut owner: Option<Arc<str>> = None;
        for id in f.entries.keys().filter(|id| is_service_key(&id.1)) {
            let o = owner.get_or_insert_with(|| Arc::from(name));
            self.owners.insert(&claim_id(id), o.clone());
        }
        for e in f.udp_backends() {
            *self.udp_users.entry(e).or_default() += 1;
        }
    }

    /// The full sync's way in: counts `f` (built against what is counted so far) as
    /// applied, gives the declarations and rules of what it is the first to use to `op`, and
    /// its elements (moved, not copied) to `element`.
    pub fn adopt(
        &mut self,
        name: &str,
        f: Fragment,
        op: &mut impl FnMut(Op),
        element: &mut impl FnMut(IpFamily, Name, Key, Value),
    ) {
        for (id, s) in &f.sets {
            if self.set_users(id) == 0 {
                op(Op::AddSet(id.0, id.1.clone(), s.clone()));
            }
        }
        let first: Vec<&ObjectId> = f
            .chains
            .keys()
            .filter(|id| self.chain_users(id) == 0)
            .collect();
        for id in &first {
            op(Op::AddChain(id.0, id.1.clone(), None));
        }
        for id in first {
            for r in f
                .chains
                .get(id)
                .map(|c| c.rules.as_slice())
                .unwrap_or_default()
            {
                op(Op::AddRule(id.0, id.1.clone(), r.clone()));
            }
        }
        let new_members: Vec<bool> = f
            .members
            .iter()
            .map(|id| self.member_users(id) == 0)
            .collect();
        self.hold(name, &f);
        for ((fam, set, key), is_new) in f.members.into_iter().zip(new_members) {
            if is_new {
                element(fam, set, key, Value::Member);
            }
        }
        for ((fam, map, key), v) in f.entries {
            element(fam, map, key, v);
        }
    }

    fn release(&mut self, name: &str, f: &Fragment) {
        for id in f.chains.keys() {
            decrement(&mut self.chain_users, id);
        }
        for id in f.sets.keys() {
            decrement(&mut self.set_users, id);
        }
        for id in &f.members {
            self.member_users.count(id, -1);
        }
        for id in f.entries.keys().filter(|id| is_service_key(&id.1)) {
            let id = claim_id(id);
            if self.owners.get(&id).is_some_and(|o| &**o == name) {
                self.owners.remove(&id);
            }
        }
        for e in f.udp_backends() {
            decrement(&mut self.udp_users, &e);
        }
    }

    fn chain_users(&self, id: &ObjectId) -> u32 {
        self.chain_users.get(id).copied().unwrap_or(0)
    }

    fn set_users(&self, id: &ObjectId) -> u32 {
        self.set_users.get(id).copied().unwrap_or(0)
    }

    fn member_users(&self, id: &ElementId) -> u32 {
        self.member_users.get(id).copied().unwrap_or(0)
    }
}

/// A Service port key's id as its owner is recorded (see [`names::claim_map`]).
fn claim_id(id: &ElementId) -> ElementId {
    (id.0, Cow::Borrowed(claim_map(&id.1)), id.2.clone())
}

fn decrement<K: Ord>(m: &mut BTreeMap<K, u32>, id: &K) {
    if let Some(n) = m.get_mut(id) {
        *n -= 1;
        if *n == 0 {
            m.remove(id);
        }
    }
}

/// A set of Service port keys being claimed (packed like the owners).
#[derive(Default)]
pub struct Claimed(PackedMap<()>);

impl Claimed {
    pub fn contains(&self, fam: IpFamily, map: &str, key: &Key) -> bool {
        self.0.get_parts(fam, claim_map(map), key).is_some()
    }

    /// Adds the Service port keys of `f`.
    pub fn add(&mut self, f: &Fragment) {
        for id in f.entries.keys().filter(|id| is_service_key(&id.1)) {
            self.0.insert(&claim_id(id), ());
        }
    }
}
