//! Per-Service fragments of the ruleset, and the incremental transaction between two sets of
//! them: what [`super::state`] keeps instead of a whole applied ruleset.
//!
//! ```text
//!  build([service]) − skeleton ──► Fragment { chains, own sets, elements }
//!  Applied { fragments, users of each shared chain / set / set element, owners of map keys }
//!  plan(applied, rebuilt fragments of the dirty Services) ──► ops + Pending ──commit──► Applied
//!  full sync: Applied::adopt(each fragment) ──► a new Applied + the desired ruleset (merge)
//! ```
//!
//! A Service's fragment is the part of the ruleset that building it alone adds to the
//! skeleton (the base chains, the maps and sets every table has): the chains it uses (the
//! shared per-endpoint-count chains, or its own when it has session affinity), its affinity
//! sets, and its elements. Shared chains, own sets and set elements are counted by users: a
//! chain is created with its first user and deleted with its last. A map key belongs to one
//! Service: a second Service claiming it is told so and left out of that key, and tried
//! again whenever a Service gives keys up.
//!
//! This module must never do I/O.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::build::{BuildError, build};
use super::model::{EndpointSlice, IpFamily, NodeConfig, Protocol, Service};
use super::ruleset::{Action, Chain, Key, KeyPart, MapVerdict, Op, Rule, Ruleset, Set};

mod names;
use names::{describe, intern, is_service_key, is_shared};

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
type Name = Cow<'static, str>;

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
}

/// The skeleton: the ruleset without Services.
pub fn skeleton(node: &NodeConfig) -> Ruleset {
    build(&[], &[], node).ruleset
}

/// Builds one Service alone and keeps what it adds to `skeleton`.
pub fn fragment(
    svc: &Service,
    slices: &[EndpointSlice],
    node: &NodeConfig,
    skeleton: &Ruleset,
) -> (Fragment, Vec<BuildError>) {
    let built = build(std::slice::from_ref(svc), slices, node);
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

/// What the kernel holds beyond the skeleton, by Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub skeleton: Ruleset,
    fragments: BTreeMap<String, Fragment>,
    chain_users: BTreeMap<ObjectId, usize>,
    set_users: BTreeMap<ObjectId, usize>,
    member_users: BTreeMap<ElementId, usize>,
    /// Each map key's Service (one shared name per Service, not a copy per key).
    owners: BTreeMap<ElementId, Arc<str>>,
    /// Services that lost a map key to another one.
    conflicted: BTreeSet<String>,
}

/// The changes of one transaction, recorded once the kernel accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The Services' new fragments (as accepted: keys claimed by others left out); `None`
    /// for a Service that is gone.
    fragments: Vec<(String, Option<Fragment>)>,
    conflicted: BTreeSet<String>,
}

impl Pending {
    pub fn fragments(&self) -> &[(String, Option<Fragment>)] {
        &self.fragments
    }
}

impl Applied {
    /// Nothing applied beyond `skeleton`.
    pub fn new(skeleton: Ruleset) -> Applied {
        Applied {
            skeleton,
            ..Applied::default()
        }
    }

    /// Services that lost a key and should be tried again when keys are given up.
    pub fn conflicted(&self) -> &BTreeSet<String> {
        &self.conflicted
    }

    /// Every endpoint UDP traffic is DNATed to.
    pub fn udp_backends(&self) -> BTreeSet<SocketAddr> {
        self.fragments
            .values()
            .flat_map(Fragment::udp_backends)
            .collect()
    }

    /// Records a committed transaction.
    pub fn commit(&mut self, pending: Pending) {
        for (name, new) in pending.fragments {
            if let Some(old) = self.fragments.remove(&name) {
                self.release(&name, &old);
            }
            if let Some(new) = new {
                self.keep(name, new);
            }
        }
        self.conflicted = pending.conflicted;
    }

    /// Counts and keeps a Service's fragment.
    fn keep(&mut self, name: String, mut new: Fragment) {
        self.hold(&name, &new);
        // A shared chain's rules follow from its name: not kept once per Service.
        for ((_, chain), c) in new.chains.iter_mut() {
            if is_shared(chain) {
                c.rules = Vec::new();
            }
        }
        self.fragments.insert(name, new);
    }

    /// The full sync's way in, Services in name order: merges `name`'s fragment into
    /// `desired` and keeps it as if committed, leaving out (and reporting) map keys a Service
    /// before it holds. Nothing is copied but the desired ruleset's share: no delta, no ops.
    pub fn adopt(
        &mut self,
        name: String,
        mut new: Fragment,
        desired: &mut Ruleset,
        problems: &mut Vec<BuildError>,
    ) {
        let taken: Vec<ElementId> = new
            .entries
            .keys()
            .filter(|id| self.owners.contains_key(*id))
            .cloned()
            .collect();
        leave_out(&name, &mut new, &taken, problems);
        if !taken.is_empty() {
            self.conflicted.insert(name.clone());
        }
        merge(desired, &new);
        self.keep(name, new);
    }

    fn release(&mut self, name: &str, f: &Fragment) {
        for id in f.chains.keys() {
            decrement(&mut self.chain_users, id);
        }
        for id in f.sets.keys() {
            decrement(&mut self.set_users, id);
        }
        for id in &f.members {
            decrement(&mut self.member_users, id);
        }
        for id in f.entries.keys() {
            if self.owners.get(id).is_some_and(|o| &**o == name) {
                self.owners.remove(id);
            }
        }
    }

    fn hold(&mut self, name: &str, f: &Fragment) {
        for id in f.chains.keys() {
            *self.chain_users.entry(id.clone()).or_default() += 1;
        }
        for id in f.sets.keys() {
            *self.set_users.entry(id.clone()).or_default() += 1;
        }
        for id in &f.members {
            *self.member_users.entry(id.clone()).or_default() += 1;
        }
        let owner: Arc<str> = Arc::from(name);
        for id in f.entries.keys() {
            self.owners.insert(id.clone(), owner.clone());
        }
    }
}

fn decrement<K: Ord + Clone>(m: &mut BTreeMap<K, usize>, id: &K) {
    if let Some(n) = m.get_mut(id) {
        *n -= 1;
        if *n == 0 {
            m.remove(id);
        }
    }
}

/// Counts before and after, and the new content of shared objects.
#[derive(Default)]
struct Delta<'a> {
    chains: BTreeMap<ObjectId, (i64, Option<&'a Chain>)>,
    sets: BTreeMap<ObjectId, (i64, Option<&'a Set>)>,
    members: BTreeMap<ElementId, i64>,
    /// Map keys given up (with their old value) and claimed (with the new one).
    released: BTreeMap<ElementId, Value>,
    claimed: BTreeMap<ElementId, Value>,
}

/// The operations that replace the fragments of the `rebuilt` Services (`None`: gone) in
/// `applied`, changing only what changed, and what to record once they are committed.
pub fn plan(
    applied: &Applied,
    rebuilt: Vec<(String, Option<Fragment>)>,
    problems: &mut Vec<BuildError>,
) -> (Vec<Op>, Pending) {
    let mut delta = Delta::default();
    let names: BTreeSet<String> = rebuilt.iter().map(|(n, _)| n.clone()).collect();
    // 1. Give up the old fragments.
    for (name, _) in &rebuilt {
        let Some(old) = applied.fragments.get(name) else {
            continue;
        };
        for id in old.chains.keys() {
            delta.chains.entry(id.clone()).or_default().0 -= 1;
        }
        for id in old.sets.keys() {
            delta.sets.entry(id.clone()).or_default().0 -= 1;
        }
        for id in &old.members {
            *delta.members.entry(id.clone()).or_default() -= 1;
        }
        for (id, v) in &old.entries {
            delta.released.insert(id.clone(), v.clone());
        }
    }
    // 2. Claim the new ones, in name order; a key another Service holds is left out.
    let mut accepted = Vec::new();
    let mut conflicted: BTreeSet<String> = applied
        .conflicted
        .iter()
        .filter(|n| !names.contains(*n))
        .cloned()
        .collect();
    let mut claimed_now: BTreeSet<ElementId> = BTreeSet::new();
    for (name, new) in rebuilt {
        let Some(mut new) = new else {
            accepted.push((name, None));
            continue;
        };
        let taken: Vec<ElementId> = new
            .entries
            .keys()
            .filter(|id| {
                claimed_now.contains(*id)
                    || applied
                        .owners
                        .get(*id)
                        .is_some_and(|o| !names.contains(&**o))
            })
            .cloned()
            .collect();
        leave_out(&name, &mut new, &taken, problems);
        if !taken.is_empty() {
            conflicted.insert(name.clone());
        }
        claimed_now.extend(new.entries.keys().cloned());
        accepted.push((name, Some(new)));
    }
    for (_, new) in &accepted {
        let Some(new) = new else { continue };
        for (id, c) in &new.chains {
            let e = delta.chains.entry(id.clone()).or_default();
            e.0 += 1;
            e.1 = Some(c);
        }
        for (id, s) in &new.sets {
            let e = delta.sets.entry(id.clone()).or_default();
            e.0 += 1;
            e.1 = Some(s);
        }
        for id in &new.members {
            *delta.members.entry(id.clone()).or_default() += 1;
        }
        for (id, v) in &new.entries {
            delta.claimed.insert(id.clone(), v.clone());
        }
    }
    let ops = delta.ops(applied, &accepted);
    (
        ops,
        Pending {
            fragments: accepted,
            conflicted,
        },
    )
}

/// Leaves the map keys another Service holds out of `name`'s fragment, and says so.
fn leave_out(name: &str, new: &mut Fragment, taken: &[ElementId], problems: &mut Vec<BuildError>) {
    for id in taken {
        new.entries.remove(id);
        if is_service_key(&id.1) {
            problems.push(BuildError {
                object: format!("service {name}"),
                problem: format!(
                    "{} is already used by another service, skipped",
                    describe(&id.2)
                ),
            });
            // The key's endpoints go with it.
            let prefix = &id.2;
            new.entries
                .retain(|(f, _, k), _| !(*f == id.0 && k.starts_with(prefix)));
        }
    }
}

impl Delta<'_> {
    fn ops(&self, applied: &Applied, accepted: &[(String, Option<Fragment>)]) -> Vec<Op> {
        let mut ops = Vec::new();
        let users = |m: &BTreeMap<ObjectId, usize>, id: &ObjectId| m.get(id).copied().unwrap_or(0);
        // 1. Declare new sets and chains.
        for (id, (d, set)) in &self.sets {
            let before = users(&applied.set_users, id) as i64;
            if let (true, Some(s)) = (before == 0 && before + d > 0, set) {
                ops.push(Op::AddSet(id.0, id.1.clone(), (*s).clone()));
            }
        }
        let mut refill = Vec::new();
        let mut doomed = Vec::new();
        for (id, (d, chain)) in &self.chains {
            let before = users(&applied.chain_users, id) as i64;
            let after = before + d;
            match (before > 0, after > 0) {
                (false, true) => {
                    ops.push(Op::AddChain(id.0, id.1.clone(), None));
                    refill.push((id, *chain, false));
                }
                (true, true) if differs(applied, accepted, id, *chain) => {
                    refill.push((id, *chain, true));
                }
                (true, false) => doomed.push(id),
                _ => {}
            }
        }
        // 2. Rules.
        for (id, chain, flush) in refill {
            if flush {
                ops.push(Op::FlushChain(id.0, id.1.clone()));
            }
            for r in chain.map(|c| c.rules.as_slice()).unwrap_or_default() {
                ops.push(Op::AddRule(id.0, id.1.clone(), Rule::clone(r)));
            }
        }
        // 3. Elements: deletions first (a changed value is deleted, then added).
        self.element_ops(applied, &mut ops);
        // 4. Remove what nothing uses any more: empty the chains first (they may jump to
        //    each other), then delete them, then their sets.
        for id in &doomed {
            ops.push(Op::FlushChain(id.0, id.1.clone()));
        }
        for id in doomed {
            ops.push(Op::DeleteChain(id.0, id.1.clone()));
        }
        for (id, (d, _)) in &self.sets {
            let before = users(&applied.set_users, id) as i64;
            if before > 0 && before + d <= 0 {
                ops.push(Op::DeleteSet(id.0, id.1.clone()));
            }
        }
        ops
    }

    /// The element deletions, then additions, of the transaction.
    fn element_ops(&self, applied: &Applied, ops: &mut Vec<Op>) {
        let mut deletes: BTreeMap<ObjectId, Vec<Key>> = BTreeMap::new();
        let mut adds: BTreeMap<ObjectId, Vec<(Key, Value)>> = BTreeMap::new();
        for (id, d) in &self.members {
            let before = applied.member_users.get(id).copied().unwrap_or(0) as i64;
            let after = before + d;
            let obj = (id.0, id.1.to_string());
            if before > 0 && after <= 0 {
                deletes.entry(obj).or_default().push(id.2.clone());
            } else if before <= 0 && after > 0 {
                adds.entry(obj)
                    .or_default()
                    .push((id.2.clone(), Value::Member));
            }
        }
        for (id, old) in &self.released {
            if self.claimed.get(id) != Some(old) {
                deletes
                    .entry((id.0, id.1.to_string()))
                    .or_default()
                    .push(id.2.clone());
            }
        }
        for (id, new) in &self.claimed {
            if self.released.get(id) != Some(new) {
                adds.entry((id.0, id.1.to_string()))
                    .or_default()
                    .push((id.2.clone(), new.clone()));
            }
        }
        for ((fam, name), keys) in deletes {
            ops.push(Op::DeleteElements(fam, name, keys));
        }
        for ((fam, name), els) in adds {
            let endpoints: Vec<(Key, SocketAddr)> = els
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Endpoint(e) => Some((k.clone(), *e)),
                    _ => None,
                })
                .collect();
            if !endpoints.is_empty() {
                ops.push(Op::AddEndpoints(fam, name.clone(), endpoints));
            }
            let others: Vec<(Key, Option<MapVerdict>)> = els
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::Member => Some((k, None)),
                    Value::Verdict(v) => Some((k, Some(v))),
                    Value::Endpoint(_) => None,
                })
                .collect();
            if !others.is_empty() {
                ops.push(Op::AddElements(fam, name, others));
            }
        }
    }
}

/// Does the chain's new content differ from what the kernel holds (the old fragments of the
/// rebuilt Services say what it holds)?
fn differs(
    applied: &Applied,
    accepted: &[(String, Option<Fragment>)],
    id: &ObjectId,
    new: Option<&Chain>,
) -> bool {
    if is_shared(&id.1) {
        return false;
    }
    let old = accepted
        .iter()
        .find_map(|(n, _)| applied.fragments.get(n).and_then(|f| f.chains.get(id)));
    match (old, new) {
        (Some(o), Some(n)) => o != n,
        _ => false,
    }
}

/// Merges one fragment into a ruleset.
fn merge(r: &mut Ruleset, f: &Fragment) {
    {
        for t in &mut r.tables {
            let fam = t.family;
            for ((cf, name), c) in &f.chains {
                if *cf == fam {
                    t.chains.insert(name.clone(), c.clone());
                }
            }
            for ((sf, name), s) in &f.sets {
                if *sf == fam {
                    t.sets.insert(name.clone(), s.clone());
                }
            }
            for (ef, name, k) in &f.members {
                if let (true, Some(s)) = (*ef == fam, t.sets.get_mut(name.as_ref())) {
                    s.elements.insert(k.clone());
                }
            }
            for ((ef, name, k), v) in &f.entries {
                if *ef != fam {
                    continue;
                }
                match v {
                    Value::Verdict(v) => {
                        if let Some(m) = t.maps.get_mut(name.as_ref()) {
                            m.elements.insert(k.clone(), v.clone());
                        }
                    }
                    Value::Endpoint(e) => {
                        if let Some(m) = t.dnat_maps.get_mut(name.as_ref()) {
                            m.elements.insert(k.clone(), *e);
                        }
                    }
                    Value::Member => {}
                }
            }
        }
    }
}
