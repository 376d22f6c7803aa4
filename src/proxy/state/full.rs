//! The full sync, streamed: the tables replaced whole without the desired ruleset, its
//! elements or a list of operations ever held at once.
//!
//! ```text
//!  DeleteTable per family, AddTable(skeleton) per family
//!  per Service, in name order: build its fragment (keys held by an earlier Service left
//!     out) ─► adopt it into the counts so far ─► chains, sets, rules at once; elements
//!     gathered ─► every FLUSH_ELEMENTS elements: AddElements / AddEndpoints per set or map
//!  finish ─► the Transaction whose commit records the counts and owners (the next Applied)
//! ```
//!
//! A chain or set is declared with its first user, before any element that refers to it is
//! given out. The writer lowers each operation into the batch as it takes it, and hands the
//! batch on 1 MiB at a time, so a full sync holds one Service's fragment, the gathered
//! elements and the counts it builds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use super::super::build::BuildError;
use super::super::fragments::{Applied, Name, Value};
use super::super::model::{IpFamily, NodeConfig};
use super::super::ruleset::{Key, MapVerdict, Op};
use super::super::store::Store;
use super::{Commit, Transaction, render};

/// Elements gathered before they are given out as operations.
const FLUSH_ELEMENTS: usize = 2048;

/// A set or map of one family's table (one of the skeleton's: a borrowed name).
type Target = (IpFamily, Name);

/// The operations of a full sync, made as they are taken.
pub struct FullSync<'a> {
    store: &'a Store,
    names: Box<dyn Iterator<Item = &'a String> + 'a>,
    next: Box<Applied>,
    started: bool,
    done: bool,
    queue: VecDeque<Op>,
    elements: BTreeMap<Target, Vec<(Key, Option<MapVerdict>)>>,
    endpoints: BTreeMap<Target, Vec<(Key, SocketAddr)>>,
    gathered: usize,
    problems: Vec<BuildError>,
    conflicted: BTreeSet<String>,
}

impl<'a> FullSync<'a> {
    pub(super) fn new(store: &'a Store, node: &NodeConfig) -> FullSync<'a> {
        FullSync {
            store,
            names: Box::new(store.service_keys()),
            next: Box::new(Applied::new(node.clone())),
            started: false,
            done: false,
            queue: VecDeque::new(),
            elements: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            gathered: 0,
            problems: Vec::new(),
            conflicted: BTreeSet::new(),
        }
    }

    /// The transaction to record once the kernel accepted every operation (any not yet
    /// taken are made and dropped first). Its `ops` are empty: they were streamed.
    pub fn finish(mut self) -> Transaction {
        for _ in self.by_ref() {}
        self.next.set_conflicted(self.conflicted);
        Transaction {
            ops: Vec::new(),
            problems: self.problems,
            commit: Commit::Full(self.next),
        }
    }

    fn step(&mut self) {
        if !self.started {
            self.started = true;
            let tables = &self.next.skeleton.tables;
            self.queue
                .extend(tables.iter().map(|t| Op::DeleteTable(t.family)));
            self.queue.extend(tables.iter().cloned().map(Op::AddTable));
            return;
        }
        match self.names.next() {
            Some(name) => self.add_service(name),
            None => {
                self.flush();
                self.done = true;
            }
        }
    }

    /// One Service: the keys an earlier one holds are left out.
    fn add_service(&mut self, name: &str) {
        let next = &self.next;
        let taken = |f: IpFamily, m: &str, k: &Key| next.owner(f, m, k).is_some();
        let (new, problems, lost) = render(self.store, name, &next.node, &next.skeleton, &taken);
        self.problems.extend(problems);
        let Some(new) = new else {
            return;
        };
        if lost {
            self.conflicted.insert(name.to_string());
        }
        let queue = &mut self.queue;
        let (elements, endpoints) = (&mut self.elements, &mut self.endpoints);
        let gathered = &mut self.gathered;
        self.next.adopt(
            name,
            new,
            &mut |op| queue.push_back(op),
            &mut |f, target, key, value| {
                *gathered += 1;
                match value {
                    Value::Endpoint(e) => endpoints.entry((f, target)).or_default().push((key, e)),
                    Value::Verdict(v) => elements
                        .entry((f, target))
                        .or_default()
                        .push((key, Some(v))),
                    Value::Member => elements.entry((f, target)).or_default().push((key, None)),
                }
            },
        );
        if self.gathered >= FLUSH_ELEMENTS {
            self.flush();
        }
    }

    /// Gives out the gathered elements.
    fn flush(&mut self) {
        for ((f, map), els) in std::mem::take(&mut self.endpoints) {
            self.queue
                .push_back(Op::AddEndpoints(f, map.into_owned(), els));
        }
        for ((f, set), els) in std::mem::take(&mut self.elements) {
            self.queue
                .push_back(Op::AddElements(f, set.into_owned(), els));
        }
        self.gathered = 0;
    }
}

impl Iterator for FullSync<'_> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        loop {
            if let Some(op) = self.queue.pop_front() {
                return Some(op);
            }
            if self.done {
                return None;
            }
            self.step();
        }
    }
}
