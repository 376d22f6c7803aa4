//! The desired nftables ruleset as a typed value, and the diff between two of them.
//!
//! A [`Ruleset`] is one table per IP family (`table ip nanolet`, `table ip6 nanolet`), each
//! holding named chains, sets and verdict maps. Rules are typed expressions ([`Match`] and
//! [`Action`]), never strings: the renderer ([`super::nft_text`]), the packet tracer
//! ([`super::trace`]) and, later, the netlink encoder all read the same value. Everything is
//! kept in `BTreeMap`s so that equal inputs give byte-identical output.
//!
//! [`diff`] turns (old, new) into the ordered operations of one transaction that changes only
//! what changed: chains whose rules differ are flushed and refilled, map and set elements are
//! added and deleted one by one, and objects nothing refers to any more are removed last.
//!
//! This module must never do I/O, and knows nothing about Services: [`super::build`] does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::model::{Cidr, IpFamily, Protocol};

/// The one table nanolet owns, in each family.
pub const TABLE: &str = "nanolet";

/// The netfilter hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

/// What makes a chain a base chain: its type, hook and priority (policy is always accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// Netfilter's `dstnat` priority (-100); the filter checks run just before it.
pub const PRIORITY_DSTNAT: i32 = -100;
/// Netfilter's `srcnat` priority (100).
pub const PRIORITY_SRCNAT: i32 = 100;

/// An address match: `ip daddr 10.0.0.1`, `ip saddr != 10.244.0.0/16`, `ip daddr @cluster-ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    Is(IpAddr),
    In(Cidr),
    NotIn(Cidr),
    InSet(String),
}

/// One match expression; all matches of a rule must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `ip saddr …` / `ip6 saddr …`.
    Saddr(AddrMatch),
    /// `ip daddr …` / `ip6 daddr …`.
    Daddr(AddrMatch),
    /// `tcp dport 80`: implies the protocol.
    Dport(Protocol, u16),
    /// `fib saddr type local`: the packet comes from this host.
    FibSaddrLocal,
    /// `ct state new`.
    CtStateNew,
    /// `meta mark & BIT == 0`.
    MarkBitClear(u32),
    /// `meta l4proto tcp`.
    L4Proto(Protocol),
    /// `ip saddr . ip daddr . th dport @set`: the packet (after DNAT) goes from an endpoint
    /// back to itself.
    HairpinInSet(String),
}

/// The key a verdict map is looked up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKey {
    /// `ip daddr . meta l4proto . th dport`.
    DaddrProtoPort,
    /// `meta l4proto . th dport`.
    ProtoPort,
}

/// What a rule does once its matches hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Jump(String),
    Goto(String),
    Return,
    Drop,
    Reject,
    /// `<key> vmap @map`.
    Vmap {
        key: LookupKey,
        map: String,
    },
    /// `numgen random mod N vmap { 0 : goto a, 1 : goto b }`, one chain per value.
    NumgenGoto(Vec<String>),
    /// `meta mark set meta mark | BIT`.
    SetMarkBit(u32),
    /// `meta mark set meta mark ^ BIT` (clears a bit known to be set).
    ToggleMarkBit(u32),
    /// `masquerade fully-random`.
    Masquerade,
    /// `meta l4proto tcp dnat to 10.1.0.5:8080`.
    Dnat(Protocol, SocketAddr),
    /// `update @set { ip saddr }`: remember the client for session affinity.
    UpdateSetWithSaddr(String),
    /// `dnat ip to <key> . numgen random mod N map @map`: one of the N endpoints stored
    /// under the packet's key in a [`DnatMap`]; no element, no match.
    DnatMap {
        key: LookupKey,
        modulus: u32,
        map: String,
    },
}

/// One rule: matches, one action, an optional comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule {
            matches,
            action,
            comment: None,
        }
    }

    pub fn always(action: Action) -> Rule {
        Rule::new(Vec::new(), action)
    }

    pub fn with_comment(mut self, comment: &str) -> Rule {
        self.comment = Some(comment.to_string());
        self
    }
}

/// A chain: a base chain when `base` is set, otherwise a regular chain reached by jump/goto.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// The type of one component of a set or map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ipv4_addr` or `ipv6_addr`, by the table's family.
    Addr,
    /// `inet_proto`.
    Proto,
    /// `inet_service`.
    Port,
    /// A `numgen random` value (`typeof numgen random mod …`).
    Index,
}

/// One component of an element's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyPart {
    Addr(IpAddr),
    Proto(Protocol),
    Port(u16),
    Index(u32),
}

/// A set or map element's key: `10.96.0.10 . tcp . 80`.
pub type Key = Vec<KeyPart>;

/// The value of a verdict map element.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum MapVerdict {
    Goto(String),
    Drop,
}

/// A named set. Affinity sets are dynamic (filled from the packet path) with a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub key: Vec<KeyType>,
    /// `flags dynamic,timeout; timeout Ns` when set.
    pub timeout_seconds: Option<u32>,
    pub comment: Option<String>,
    pub elements: BTreeSet<Key>,
}

/// A named verdict map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub key: Vec<KeyType>,
    pub comment: Option<String>,
    pub elements: BTreeMap<Key, MapVerdict>,
}

/// A named data map from `<key> . index` to an endpoint: the Services' endpoints, all in
/// one map, so that a Service costs elements rather than chains and sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatMap {
    /// The packet part of the key; a `numgen` index follows it.
    pub key: LookupKey,
    pub comment: Option<String>,
    pub elements: BTreeMap<Key, SocketAddr>,
}

impl DnatMap {
    /// The key's components, the index included.
    pub fn key_types(&self) -> Vec<KeyType> {
        let mut k = match self.key {
            LookupKey::DaddrProtoPort => vec![KeyType::Addr, KeyType::Proto, KeyType::Port],
            LookupKey::ProtoPort => vec![KeyType::Proto, KeyType::Port],
        };
        k.push(KeyType::Index);
        k
    }
}

/// One family's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: IpFamily,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
    pub maps: BTreeMap<String, Map>,
    pub dnat_maps: BTreeMap<String, DnatMap>,
}

impl Table {
    pub fn new(family: IpFamily) -> Table {
        Table {
            family,
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            maps: BTreeMap::new(),
            dnat_maps: BTreeMap::new(),
        }
    }
}

/// The whole desired state: one table per family the node has, IPv4 first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    pub fn table(&self, family: IpFamily) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }
}

/// One step of an incremental update, in the order it must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add table`, then the whole table as in a full load.
    AddTable(Table),
    DeleteTable(IpFamily),
    /// Declares a set (its elements come in [`Op::AddElements`]).
    AddSet(IpFamily, String, Set),
    AddMap(IpFamily, String, Map),
    /// Declares a data map of endpoints (its elements come in [`Op::AddEndpoints`]).
    AddDnatMap(IpFamily, String, DnatMap),
    /// Declares a chain (its rules come in [`Op::AddRule`]).
    AddChain(IpFamily, String, Option<BaseChain>),
    FlushChain(IpFamily, String),
    AddRule(IpFamily, String, Rule),
    /// Elements of the named set or map; the verdict is `None` for a set.
    AddElements(IpFamily, String, Vec<(Key, Option<MapVerdict>)>),
    /// Elements of the named [`DnatMap`].
    AddEndpoints(IpFamily, String, Vec<(Key, SocketAddr)>),
    /// Deletes elements of a set, a map or a [`DnatMap`].
    DeleteElements(IpFamily, String, Vec<Key>),
    DeleteChain(IpFamily, String),
    DeleteSet(IpFamily, String),
    DeleteMap(IpFamily, String),
}

/// The operations that turn `old` into `new`, changing only what changed.
///
/// A table whose sets, maps or base chains were *redeclared* (a different key type, timeout,
/// hook or priority) cannot be changed in place while rules refer to them: that table is
/// replaced whole (`DeleteTable` + `AddTable`, still one transaction).
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<Op> {
    let mut ops = Vec::new();
    for t in &old.tables {
        if new.table(t.family).is_none() {
            ops.push(Op::DeleteTable(t.family));
        }
    }
    for t in &new.tables {
        match old.table(t.family) {
            None => ops.push(Op::AddTable(t.clone())),
            Some(o) if is_redeclared(o, t) => {
                ops.push(Op::DeleteTable(t.family));
                ops.push(Op::AddTable(t.clone()));
            }
            Some(o) => diff_table(o, t, &mut ops),
        }
    }
    ops
}

/// Did any object keep its name but change its declaration?
fn is_redeclared(old: &Table, new: &Table) -> bool {
    let sets = new.sets.iter().any(|(n, s)| {
        old.sets
            .get(n)
            .is_some_and(|o| o.key != s.key || o.timeout_seconds != s.timeout_seconds)
    });
    let maps = new
        .maps
        .iter()
        .any(|(n, m)| old.maps.get(n).is_some_and(|o| o.key != m.key));
    let dnat_maps = new
        .dnat_maps
        .iter()
        .any(|(n, m)| old.dnat_maps.get(n).is_some_and(|o| o.key != m.key));
    let chains = new
        .chains
        .iter()
        .any(|(n, c)| old.chains.get(n).is_some_and(|o| o.base != c.base));
    sets || maps || dnat_maps || chains
}

fn diff_table(old: &Table, new: &Table, ops: &mut Vec<Op>) {
    let fam = new.family;
    // 1. Declare new objects, so that rules and elements below may refer to them.
    for (name, set) in &new.sets {
        if !old.sets.contains_key(name) {
            let decl = Set {
                elements: BTreeSet::new(),
                ..set.clone()
            };
            ops.push(Op::AddSet(fam, name.clone(), decl));
        }
    }
    for (name, map) in &new.maps {
        if !old.maps.contains_key(name) {
            let decl = Map {
                elements: BTreeMap::new(),
                ..map.clone()
            };
            ops.push(Op::AddMap(fam, name.clone(), decl));
        }
    }
    for (name, map) in &new.dnat_maps {
        if !old.dnat_maps.contains_key(name) {
            let decl = DnatMap {
                elements: BTreeMap::new(),
                ..map.clone()
            };
            ops.push(Op::AddDnatMap(fam, name.clone(), decl));
        }
    }
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            ops.push(Op::AddChain(fam, name.clone(), chain.base));
        }
    }
    // 2. Refill chains whose rules changed.
    for (name, chain) in &new.chains {
        let before = old.chains.get(name);
        if before.is_some_and(|o| o.rules == chain.rules) {
            continue;
        }
        if before.is_some() {
            ops.push(Op::FlushChain(fam, name.clone()));
        }
        for rule in &chain.rules {
            ops.push(Op::AddRule(fam, name.clone(), rule.clone()));
        }
    }
    // 3. Elements: a map element whose verdict changed is deleted, then added again.
    for (name, set) in &new.sets {
        let before = old.sets.get(name).map(|s| &s.elements);
        let added: Vec<_> = set
            .elements
            .iter()
            .filter(|k| !before.is_some_and(|b| b.contains(*k)))
            .map(|k| (k.clone(), None))
            .collect();
        let removed: Vec<_> = before
            .into_iter()
            .flatten()
            .filter(|k| !set.elements.contains(*k))
            .cloned()
            .collect();
        push_elements(ops, fam, name, removed, added);
    }
    for (name, map) in &new.maps {
        let before = old.maps.get(name).map(|m| &m.elements);
        let added: Vec<_> = map
            .elements
            .iter()
            .filter(|(k, v)| before.and_then(|b| b.get(*k)) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        let removed: Vec<_> = before
            .into_iter()
            .flatten()
            .filter(|(k, v)| map.elements.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        push_elements(ops, fam, name, removed, added);
    }
    for (name, map) in &new.dnat_maps {
        let before = old.dnat_maps.get(name).map(|m| &m.elements);
        diff_endpoints(ops, fam, name, before, &map.elements);
    }
    // 4. Remove what nothing refers to any more: empty doomed chains first so that
    //    doomed chains jumping to each other can all be deleted.
    let doomed: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    for name in &doomed {
        ops.push(Op::FlushChain(fam, (*name).clone()));
    }
    for name in doomed {
        ops.push(Op::DeleteChain(fam, name.clone()));
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        ops.push(Op::DeleteSet(fam, name.clone()));
    }
    for name in old.maps.keys().filter(|n| !new.maps.contains_key(*n)) {
        ops.push(Op::DeleteMap(fam, name.clone()));
    }
    for name in old
        .dnat_maps
        .keys()
        .filter(|n| !new.dnat_maps.contains_key(*n))
    {
        ops.push(Op::DeleteMap(fam, name.clone()));
    }
}

/// The element operations that turn one [`DnatMap`]'s elements into another's: an element
/// whose endpoint changed is deleted, then added again.
pub fn diff_endpoints(
    ops: &mut Vec<Op>,
    fam: IpFamily,
    name: &str,
    before: Option<&BTreeMap<Key, SocketAddr>>,
    after: &BTreeMap<Key, SocketAddr>,
) {
    let removed: Vec<Key> = before
        .into_iter()
        .flatten()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let added: Vec<(Key, SocketAddr)> = after
        .iter()
        .filter(|(k, v)| before.and_then(|b| b.get(*k)) != Some(*v))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if !removed.is_empty() {
        ops.push(Op::DeleteElements(fam, name.to_string(), removed));
    }
    if !added.is_empty() {
        ops.push(Op::AddEndpoints(fam, name.to_string(), added));
    }
}

fn push_elements(
    ops: &mut Vec<Op>,
    fam: IpFamily,
    name: &str,
    removed: Vec<Key>,
    added: Vec<(Key, Option<MapVerdict>)>,
) {
    if !removed.is_empty() {
        ops.push(Op::DeleteElements(fam, name.to_string(), removed));
    }
    if !added.is_empty() {
        ops.push(Op::AddElements(fam, name.to_string(), added));
    }
}
