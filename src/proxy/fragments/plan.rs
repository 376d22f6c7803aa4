//! The operations of one transaction: the old fragments of some Services given up, their
//! new ones claimed, changing only what changed. Pure.
//!
//! ```text
//!  1. declare sets and chains gaining their first user, fill the new chains
//!  2. refill own chains whose rules changed
//!  3. elements: deletions, then additions (a changed value is deleted, then added)
//!  4. flush, then delete, the chains losing their last user; then their sets
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::super::ruleset::{Chain, Key, MapVerdict, Op, Rule, Set};
use super::names::is_shared;
use super::{Applied, Change, ElementId, ObjectId, Value};

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

/// The operations that replace each change's old fragment (what `applied` counts) with its
/// new one. The new fragments must not claim a key another Service keeps (the caller
/// decides who holds what).
pub fn plan(applied: &Applied, changes: &[Change]) -> Vec<Op> {
    let mut delta = Delta::default();
    for old in changes.iter().filter_map(|c| c.old.as_ref()) {
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
    for new in changes.iter().filter_map(|c| c.new.as_ref()) {
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
    delta.ops(applied, changes)
}

impl Delta<'_> {
    fn ops(&self, applied: &Applied, changes: &[Change]) -> Vec<Op> {
        let mut ops = Vec::new();
        // 1. Declare new sets and chains.
        for (id, (d, set)) in &self.sets {
            let before = i64::from(applied.set_users(id));
            if let (true, Some(s)) = (before == 0 && before + d > 0, set) {
                ops.push(Op::AddSet(id.0, id.1.clone(), (*s).clone()));
            }
        }
        let mut refill = Vec::new();
        let mut doomed = Vec::new();
        for (id, (d, chain)) in &self.chains {
            let before = i64::from(applied.chain_users(id));
            let after = before + d;
            match (before > 0, after > 0) {
                (false, true) => {
                    ops.push(Op::AddChain(id.0, id.1.clone(), None));
                    refill.push((id, *chain, false));
                }
                (true, true) if differs(changes, id, *chain) => {
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
            let before = i64::from(applied.set_users(id));
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
            let before = i64::from(applied.member_users(id));
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

/// Does an own chain's new content differ from what the kernel holds (the old fragments of
/// the changed Services say what it holds)?
fn differs(changes: &[Change], id: &ObjectId, new: Option<&Chain>) -> bool {
    if is_shared(&id.1) {
        return false;
    }
    let old = changes
        .iter()
        .find_map(|c| c.old.as_ref().and_then(|f| f.chains.get(id)));
    match (old, new) {
        (Some(o), Some(n)) => o != n,
        _ => false,
    }
}
