//! A packet tracer over the typed [`Ruleset`]: where would the kernel send this packet?
//!
//! It walks the same hooks, base chains (by priority), jumps, gotos, verdict maps and sets the
//! kernel would, for the first packet of a connection (`ct state new`):
//!
//! ```text
//!  from another host/pod:  prerouting ─► (route) ─► input | forward ─► postrouting
//!  from this host:         output ─► postrouting ─► input, when the destination is local
//! ```
//!
//! `numgen random` is not sampled: every arm is followed, so the trace lists *every* endpoint
//! the packet may reach. Dynamic sets (session affinity) start empty; [`Tracer::remember`]
//! adds the entries a previous packet would have left, so affinity can be tested without a clock.
//!
//! This module must never do I/O; it reads the ruleset and never changes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::model::{IpFamily, Protocol};
use super::ruleset::{
    Action, AddrMatch, Hook, Key, KeyPart, LookupKey, MapVerdict, Match, Ruleset, Table,
};

/// How deep jumps may nest before the trace gives up (the kernel's limit is 16).
const MAX_DEPTH: usize = 16;

/// The ruleset refers to something it does not have, or loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceError {
    UnknownChain(String),
    UnknownMap(String),
    UnknownSet(String),
    TooDeep(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::UnknownChain(c) => write!(f, "chain {c}: jumped to but not defined"),
            TraceError::UnknownMap(m) => write!(f, "map {m}: looked up but not defined"),
            TraceError::UnknownSet(s) => write!(f, "set {s}: looked up but not defined"),
            TraceError::TooDeep(c) => {
                write!(f, "chain {c}: jumps nest deeper than {MAX_DEPTH} (a loop?)")
            }
        }
    }
}

impl std::error::Error for TraceError {}

/// The first packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub dport: u16,
    /// Sent by a process on this host (not a pod, not another machine).
    pub is_from_local: bool,
}

/// Where one possible path of a packet ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Rewritten to this endpoint.
    Dnat {
        endpoint: SocketAddr,
        masquerade: bool,
        /// The affinity set this connection's client is remembered in.
        remembered_in: Option<String>,
    },
    Drop,
    Reject,
    /// Untouched by the proxy.
    NotService {
        masquerade: bool,
    },
}

/// The summary a user reads: where the packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// To one of these endpoints (several when the endpoint is chosen at random).
    Dnat(BTreeSet<SocketAddr>),
    Drop,
    Reject,
    NotService,
    /// Paths end differently (never for rulesets from [`super::build`]).
    Mixed,
}

/// Every possible end of a packet's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub outcomes: BTreeSet<Outcome>,
}

impl Trace {
    pub fn verdict(&self) -> Verdict {
        let mut endpoints = BTreeSet::new();
        let mut others = BTreeSet::new();
        for o in &self.outcomes {
            match o {
                Outcome::Dnat { endpoint, .. } => {
                    endpoints.insert(*endpoint);
                }
                Outcome::Drop => {
                    others.insert(0);
                }
                Outcome::Reject => {
                    others.insert(1);
                }
                Outcome::NotService { .. } => {
                    others.insert(2);
                }
            }
        }
        match (endpoints.is_empty(), others.len()) {
            (false, 0) => Verdict::Dnat(endpoints),
            (true, 1) if others.contains(&0) => Verdict::Drop,
            (true, 1) if others.contains(&1) => Verdict::Reject,
            (true, 1) => Verdict::NotService,
            _ => Verdict::Mixed,
        }
    }

    /// Is the packet masqueraded on every path?
    pub fn is_masqueraded(&self) -> bool {
        !self.outcomes.is_empty()
            && self.outcomes.iter().all(|o| match o {
                Outcome::Dnat { masquerade, .. } | Outcome::NotService { masquerade } => {
                    *masquerade
                }
                Outcome::Drop | Outcome::Reject => false,
            })
    }

    /// Is the packet masqueraded when it goes to this endpoint?
    pub fn is_masqueraded_to(&self, to: SocketAddr) -> Option<bool> {
        self.outcomes.iter().find_map(|o| match o {
            Outcome::Dnat {
                endpoint,
                masquerade,
                ..
            } if *endpoint == to => Some(*masquerade),
            _ => None,
        })
    }
}

/// The tracer: a ruleset, the host's own addresses (for routing) and dynamic set contents.
#[derive(Debug, Clone)]
pub struct Tracer<'a> {
    ruleset: &'a Ruleset,
    local_addrs: Vec<IpAddr>,
    dynamic: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// The packet as the rules see it along one path.
#[derive(Debug, Clone)]
struct State {
    daddr: IpAddr,
    dport: u16,
    mark: u32,
    dnat: Option<SocketAddr>,
    masquerade: bool,
    remembered_in: Option<String>,
}

/// How the evaluation of a chain ended on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Fell off the end or returned: the caller continues.
    Continue,
    Accept,
    Drop,
    Reject,
}

impl<'a> Tracer<'a> {
    /// `local_addrs`: the node's own addresses; a packet to one of them is delivered locally.
    pub fn new(ruleset: &'a Ruleset, local_addrs: &[IpAddr]) -> Tracer<'a> {
        Tracer {
            ruleset,
            local_addrs: local_addrs.to_vec(),
            dynamic: BTreeMap::new(),
        }
    }

    /// Records that `client` is in the dynamic set `set`, as an earlier connection would have.
    pub fn remember(&mut self, set: &str, client: IpAddr) {
        self.dynamic
            .entry(set.to_string())
            .or_default()
            .insert(client);
    }

    /// Follows the packet through the table of its family. No table: untouched.
    pub fn trace(&self, p: &Packet) -> Result<Trace, TraceError> {
        let mut outcomes = BTreeSet::new();
        let Some(table) = self.ruleset.table(IpFamily::of(&p.dst)) else {
            outcomes.insert(Outcome::NotService { masquerade: false });
            return Ok(Trace { outcomes });
        };
        let start = State {
            daddr: p.dst,
            dport: p.dport,
            mark: 0,
            dnat: None,
            masquerade: false,
            remembered_in: None,
        };
        let first = if p.is_from_local {
            Hook::Output
        } else {
            Hook::Prerouting
        };
        for (end, st) in self.run_hook(table, first, p, start)? {
            if end != End::Continue {
                outcomes.insert(outcome(end, st));
                continue;
            }
            // Routing, on the address after DNAT.
            let is_local = self.local_addrs.contains(&st.daddr) || st.daddr.is_loopback();
            let hooks: &[Hook] = match (p.is_from_local, is_local) {
                (false, true) => &[Hook::Input],
                (false, false) => &[Hook::Forward, Hook::Postrouting],
                (true, true) => &[Hook::Postrouting, Hook::Input],
                (true, false) => &[Hook::Postrouting],
            };
            let mut paths = vec![(End::Continue, st)];
            for hook in hooks {
                let mut next = Vec::new();
                for (end, st) in paths {
                    if end == End::Continue {
                        next.extend(self.run_hook(table, *hook, p, st)?);
                    } else {
                        next.push((end, st));
                    }
                }
                paths = next;
            }
            outcomes.extend(paths.into_iter().map(|(end, st)| outcome(end, st)));
        }
        Ok(Trace { outcomes })
    }

    /// All base chains of one hook, by priority. Accept ends a chain, not the hook.
    fn run_hook(
        &self,
        table: &Table,
        hook: Hook,
        p: &Packet,
        st: State,
    ) -> Result<Vec<(End, State)>, TraceError> {
        let mut bases: Vec<(&String, i32)> = table
            .chains
            .iter()
            .filter_map(|(n, c)| c.base.filter(|b| b.hook == hook).map(|b| (n, b.priority)))
            .collect();
        bases.sort_by_key(|(n, prio)| (*prio, (*n).clone()));
        let mut paths = vec![(End::Continue, st)];
        for (name, _) in bases {
            let mut next = Vec::new();
            for (end, st) in paths {
                match end {
                    End::Continue | End::Accept => {
                        for (e, s) in self.run_chain(table, name, 0, p, st, 0)? {
                            // A base chain's accept or end passes the packet to the next one.
                            let e = if e == End::Accept { End::Continue } else { e };
                            next.push((e, s));
                        }
                    }
                    End::Drop | End::Reject => next.push((end, st)),
                }
            }
            paths = next;
        }
        Ok(paths)
    }

    /// Runs `chain` from rule `from`; returns every way it can end.
    fn run_chain(
        &self,
        table: &Table,
        chain: &str,
        from: usize,
        p: &Packet,
        mut st: State,
        depth: usize,
    ) -> Result<Vec<(End, State)>, TraceError> {
        if depth > MAX_DEPTH {
            return Err(TraceError::TooDeep(chain.to_string()));
        }
        let c = table
            .chains
            .get(chain)
            .ok_or_else(|| TraceError::UnknownChain(chain.to_string()))?;
        for (i, rule) in c.rules.iter().enumerate().skip(from) {
            let mut holds = true;
            for m in &rule.matches {
                if !self.matches(table, m, p, &st)? {
                    holds = false;
                    break;
                }
            }
            if !holds {
                continue;
            }
            // Where control goes: a callee (jump: then back here), a tail call, or an end.
            let (callee, is_jump) = match &rule.action {
                Action::Jump(c) => (vec![c.clone()], true),
                Action::Goto(c) => (vec![c.clone()], false),
                Action::NumgenGoto(targets) => (targets.clone(), false),
                Action::Vmap { key, map } => {
                    match self.lookup(table, map, &vmap_key(*key, p, &st))? {
                        None => continue,
                        Some(MapVerdict::Drop) => return Ok(vec![(End::Drop, st)]),
                        Some(MapVerdict::Goto(c)) => (vec![c.clone()], false),
                    }
                }
                Action::Return => return Ok(vec![(End::Continue, st)]),
                Action::Drop => return Ok(vec![(End::Drop, st)]),
                Action::Reject => return Ok(vec![(End::Reject, st)]),
                Action::SetMarkBit(b) => {
                    st.mark |= b;
                    continue;
                }
                Action::ToggleMarkBit(b) => {
                    st.mark ^= b;
                    continue;
                }
                Action::UpdateSetWithSaddr(s) => {
                    st.remembered_in = Some(s.clone());
                    continue;
                }
                Action::Masquerade => {
                    st.masquerade = true;
                    return Ok(vec![(End::Accept, st)]);
                }
                Action::Dnat(_, to) => {
                    st.dnat = Some(*to);
                    st.daddr = to.ip();
                    st.dport = to.port();
                    return Ok(vec![(End::Accept, st)]);
                }
                Action::DnatMap { key, modulus, map } => {
                    let m = table
                        .dnat_maps
                        .get(map)
                        .ok_or_else(|| TraceError::UnknownMap(map.clone()))?;
                    let base = vmap_key(*key, p, &st);
                    let mut out = Vec::new();
                    let mut missing = false;
                    for n in 0..*modulus {
                        let mut k = base.clone();
                        k.push(KeyPart::Index(n));
                        match m.elements.get(&k) {
                            Some(to) => {
                                let mut s = st.clone();
                                s.dnat = Some(*to);
                                s.daddr = to.ip();
                                s.dport = to.port();
                                out.push((End::Accept, s));
                            }
                            None => missing = true,
                        }
                    }
                    // No element for a value: the rule does not match; the chain goes on.
                    if missing {
                        out.extend(self.run_chain(table, chain, i + 1, p, st, depth)?);
                    }
                    return Ok(out);
                }
            };
            let mut out = Vec::new();
            for target in callee {
                for (end, s) in self.run_chain(table, &target, 0, p, st.clone(), depth + 1)? {
                    if is_jump && end == End::Continue {
                        out.extend(self.run_chain(table, chain, i + 1, p, s, depth)?);
                    } else {
                        out.push((end, s));
                    }
                }
            }
            return Ok(out);
        }
        Ok(vec![(End::Continue, st)])
    }

    fn matches(&self, t: &Table, m: &Match, p: &Packet, st: &State) -> Result<bool, TraceError> {
        Ok(match m {
            Match::Saddr(a) => self.addr_matches(t, a, p.src)?,
            Match::Daddr(a) => self.addr_matches(t, a, st.daddr)?,
            Match::Dport(proto, port) => p.protocol == *proto && st.dport == *port,
            Match::FibSaddrLocal => p.is_from_local,
            Match::CtStateNew => true,
            Match::MarkBitClear(b) => st.mark & b == 0,
            Match::L4Proto(proto) => p.protocol == *proto,
            Match::HairpinInSet(name) => {
                let set = t
                    .sets
                    .get(name)
                    .ok_or_else(|| TraceError::UnknownSet(name.clone()))?;
                let key = vec![
                    KeyPart::Addr(p.src),
                    KeyPart::Addr(st.daddr),
                    KeyPart::Port(st.dport),
                ];
                set.elements.contains(&key)
            }
        })
    }

    fn addr_matches(&self, t: &Table, m: &AddrMatch, addr: IpAddr) -> Result<bool, TraceError> {
        Ok(match m {
            AddrMatch::Is(a) => *a == addr,
            AddrMatch::In(c) => c.contains(&addr),
            AddrMatch::NotIn(c) => !c.contains(&addr),
            AddrMatch::InSet(name) => {
                let set = t
                    .sets
                    .get(name)
                    .ok_or_else(|| TraceError::UnknownSet(name.clone()))?;
                set.elements.contains(&vec![KeyPart::Addr(addr)])
                    || self.dynamic.get(name).is_some_and(|d| d.contains(&addr))
            }
        })
    }

    fn lookup<'t>(
        &self,
        t: &'t Table,
        map: &str,
        key: &Key,
    ) -> Result<Option<&'t MapVerdict>, TraceError> {
        let m = t
            .maps
            .get(map)
            .ok_or_else(|| TraceError::UnknownMap(map.to_string()))?;
        Ok(m.elements.get(key))
    }
}

fn vmap_key(key: LookupKey, p: &Packet, st: &State) -> Key {
    let proto_port = [KeyPart::Proto(p.protocol), KeyPart::Port(st.dport)];
    match key {
        LookupKey::DaddrProtoPort => {
            let mut k = vec![KeyPart::Addr(st.daddr)];
            k.extend(proto_port);
            k
        }
        LookupKey::ProtoPort => proto_port.to_vec(),
    }
}

fn outcome(end: End, st: State) -> Outcome {
    match end {
        End::Drop => Outcome::Drop,
        End::Reject => Outcome::Reject,
        End::Continue | End::Accept => match st.dnat {
            Some(endpoint) => Outcome::Dnat {
                endpoint,
                masquerade: st.masquerade,
                remembered_in: st.remembered_in,
            },
            None => Outcome::NotService {
                masquerade: st.masquerade,
            },
        },
    }
}
