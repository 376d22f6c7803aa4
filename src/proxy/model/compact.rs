//! The model's compact storage: names without spare capacity, names many objects repeat
//! shared once, and an EndpointSlice's endpoints packed into a few bytes each.
//!
//! The store holds every Service and EndpointSlice for as long as the agent runs: 10 000
//! Services with 100 000 endpoints must fit in a few MiB. So:
//! - [`Name`]: a name held by one object (`metadata.name`): a `Box<str>`, no capacity slack.
//! - [`Shared`]: a name many objects repeat (namespaces, node names, port names): an
//!   `Arc<str>` that the store's [`Interner`] makes one allocation for all of them.
//! - [`Endpoints`]: per endpoint the address bytes and one `u16` (three condition bits and the
//!   index of its node name in the slice's own small table), 6 bytes for IPv4, 18 for IPv6,
//!   instead of an `IpAddr`, three `bool`s and an `Option<String>` (48 bytes and a heap block).
//!   Reading one gives an [`Endpoint`] value that borrows its node name.
//! - [`Few`]: a list that almost always has one item (a clusterIP, a port, a Service's slice)
//!   keeps it inline: no heap block of its own.
//!
//! Every heap block costs the allocator's header and rounding on top of its bytes (a 7-byte
//! name takes 32 bytes of glibc's heap), so fewer blocks count as much as fewer bytes.
//!
//! This module must never do I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::sync::Arc;

use super::{Conditions, IpFamily, MAX_ENDPOINTS_PER_SLICE};

/// A name one object holds (`metadata.name`, the `kubernetes.io/service-name` label).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Box<str>);

/// A name many objects repeat (namespace, node name, port name): shared once interned.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shared(Arc<str>);

macro_rules! str_like {
    ($t:ty) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

str_like!(Name);
str_like!(Shared);

/// A list that almost always holds one item (a Service's clusterIP and port, a slice's port,
/// a Service's slice): that one is kept inline, more in a boxed slice. Reads as a slice.
#[derive(Clone, PartialEq, Eq)]
pub enum Few<T> {
    One(T),
    Many(Box<[T]>),
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few::Many(Box::default())
    }
}

impl<T> Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::One(one) => std::slice::from_ref(one),
            Few::Many(many) => many,
        }
    }
}

impl<T> std::ops::DerefMut for Few<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Few::One(one) => std::slice::from_mut(one),
            Few::Many(many) => many,
        }
    }
}

impl<T> From<Vec<T>> for Few<T> {
    fn from(mut v: Vec<T>) -> Self {
        match v.pop() {
            Some(one) if v.is_empty() => Few::One(one),
            Some(last) => {
                v.push(last);
                Few::Many(v.into_boxed_slice())
            }
            None => Few::default(),
        }
    }
}

impl<T> From<Few<T>> for Vec<T> {
    fn from(few: Few<T>) -> Vec<T> {
        match few {
            Few::One(one) => vec![one],
            Few::Many(many) => many.into_vec(),
        }
    }
}

impl<'a, T> IntoIterator for &'a Few<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for Few<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// One allocation per distinct [`Shared`] name across the whole store.
#[derive(Debug, Clone, Default)]
pub struct Interner(BTreeSet<Arc<str>>);

impl Interner {
    /// Points `name` at the store's copy, which it becomes if there is none yet.
    pub fn intern(&mut self, name: &mut Shared) {
        match self.0.get(&*name.0) {
            Some(held) => name.0 = Arc::clone(held),
            None => {
                self.0.insert(Arc::clone(&name.0));
            }
        }
    }

    /// Called before `name` is dropped: forgets the name when nothing else holds it.
    pub fn release(&mut self, name: &Shared) {
        // The interner's own reference and `name`'s: nobody else.
        if Arc::strong_count(&name.0) == 2
            && self
                .0
                .get(&*name.0)
                .is_some_and(|held| Arc::ptr_eq(held, &name.0))
        {
            self.0.remove(&*name.0);
        }
    }

    /// How many distinct names are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One endpoint of an EndpointSlice (its first address), as read from [`Endpoints`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'a> {
    pub address: IpAddr,
    pub conditions: Conditions,
    /// `nodeName`: an endpoint on this node is local (traffic policy Local).
    pub node_name: Option<&'a str>,
}

const READY: u16 = 1;
const SERVING: u16 = 2;
const TERMINATING: u16 = 4;
/// Bits above the conditions: the node's index in the slice's table plus one (0: none).
const NODE_SHIFT: u32 = 3;
// A slice has at most MAX_ENDPOINTS_PER_SLICE endpoints, so at most as many node names.
const _: () = assert!(MAX_ENDPOINTS_PER_SLICE < (1 << (16 - NODE_SHIFT)));

#[derive(Clone, PartialEq, Eq)]
enum Packed {
    V4(Box<[([u8; 4], u16)]>),
    V6(Box<[([u8; 16], u16)]>),
}

/// An EndpointSlice's endpoints, packed (see the module doc); all of the slice's family.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoints {
    packed: Packed,
    /// The distinct node names of these endpoints (mostly one).
    nodes: Few<Shared>,
}

impl Endpoints {
    pub fn len(&self) -> usize {
        match &self.packed {
            Packed::V4(v) => v.len(),
            Packed::V6(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th endpoint, in the slice's order.
    pub fn get(&self, i: usize) -> Option<Endpoint<'_>> {
        let (address, bits) = match &self.packed {
            Packed::V4(v) => v
                .get(i)
                .map(|(a, b)| (IpAddr::V4(Ipv4Addr::from(*a)), *b))?,
            Packed::V6(v) => v
                .get(i)
                .map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(*a)), *b))?,
        };
        let node = usize::from(bits >> NODE_SHIFT);
        Some(Endpoint {
            address,
            conditions: Conditions {
                ready: bits & READY != 0,
                serving: bits & SERVING != 0,
                terminating: bits & TERMINATING != 0,
            },
            node_name: node
                .checked_sub(1)
                .and_then(|n| self.nodes.get(n))
                .map(Shared::as_str),
        })
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            endpoints: self,
            next: 0,
        }
    }

    /// Points the node names at the store's copies.
    pub(crate) fn intern(&mut self, interner: &mut Interner) {
        self.nodes.iter_mut().for_each(|n| interner.intern(n));
    }

    /// Before these endpoints are dropped from the store.
    pub(crate) fn release(&self, interner: &mut Interner) {
        self.nodes.iter().for_each(|n| interner.release(n));
    }
}

/// The endpoints of a slice, in order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    endpoints: &'a Endpoints,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Endpoint<'a>;

    fn next(&mut self) -> Option<Endpoint<'a>> {
        let e = self.endpoints.get(self.next)?;
        self.next += 1;
        Some(e)
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = Endpoint<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Collects the endpoints of one slice (of one family: the caller checks every address).
pub(crate) struct EndpointsBuilder {
    v4: Vec<([u8; 4], u16)>,
    v6: Vec<([u8; 16], u16)>,
    family: IpFamily,
    nodes: Vec<Shared>,
}

impl EndpointsBuilder {
    pub(crate) fn new(family: IpFamily, capacity: usize) -> EndpointsBuilder {
        let (v4, v6) = match family {
            IpFamily::V4 => (Vec::with_capacity(capacity), Vec::new()),
            IpFamily::V6 => (Vec::new(), Vec::with_capacity(capacity)),
        };
        EndpointsBuilder {
            v4,
            v6,
            family,
            nodes: Vec::new(),
        }
    }

    /// Adds one endpoint; an address of the other family is a caller's bug and is left out.
    /// At most [`MAX_ENDPOINTS_PER_SLICE`] endpoints (the caller checks), so the node index fits.
    pub(crate) fn push(&mut self, address: IpAddr, c: Conditions, node_name: Option<&str>) {
        let node = match node_name {
            None => 0,
            Some(n) => match self.nodes.iter().position(|m| m.as_str() == n) {
                Some(i) => i + 1,
                None => {
                    self.nodes.push(Shared::from(n));
                    self.nodes.len()
                }
            },
        };
        let flag = |on: bool, bit: u16| if on { bit } else { 0 };
        let bits = flag(c.ready, READY)
            | flag(c.serving, SERVING)
            | flag(c.terminating, TERMINATING)
            | (u16::try_from(node).unwrap_or(0) << NODE_SHIFT);
        match (address, self.family) {
            (IpAddr::V4(a), IpFamily::V4) => self.v4.push((a.octets(), bits)),
            (IpAddr::V6(a), IpFamily::V6) => self.v6.push((a.octets(), bits)),
            _ => {}
        }
    }

    pub(crate) fn finish(self) -> Endpoints {
        Endpoints {
            packed: match self.family {
                IpFamily::V4 => Packed::V4(self.v4.into_boxed_slice()),
                IpFamily::V6 => Packed::V6(self.v6.into_boxed_slice()),
            },
            nodes: self.nodes.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(ready: bool, serving: bool, terminating: bool) -> Conditions {
        Conditions {
            ready,
            serving,
            terminating,
        }
    }

    #[test]
    fn packed_endpoints_read_back_as_written() {
        let mut b = EndpointsBuilder::new(IpFamily::V6, 3);
        b.push("fd00::1".parse().unwrap(), c(true, true, false), Some("a"));
        b.push("fd00::2".parse().unwrap(), c(false, true, true), None);
        b.push(
            "fd00::3".parse().unwrap(),
            c(false, false, false),
            Some("a"),
        );
        let e = b.finish();
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.address.to_string(), e.conditions, e.node_name))
            .collect();
        assert_eq!(
            got,
            vec![
                ("fd00::1".to_string(), c(true, true, false), Some("a")),
                ("fd00::2".to_string(), c(false, true, true), None),
                ("fd00::3".to_string(), c(false, false, false), Some("a")),
            ]
        );
        assert_eq!(e.nodes.len(), 1, "one copy of a node name per slice");
    }

    #[test]
    fn few_reads_as_the_list_it_was_made_from() {
        for v in [vec![], vec![1], vec![1, 2, 3]] {
            let few = Few::from(v.clone());
            assert_eq!(&*few, &v[..]);
            assert_eq!(matches!(few, Few::One(_)), v.len() == 1);
            assert_eq!(Vec::from(few), v);
        }
    }

    #[test]
    fn the_interner_keeps_one_copy_and_forgets_names_nobody_holds() {
        let mut i = Interner::default();
        let (mut a, mut b) = (Shared::from("node-a"), Shared::from("node-a"));
        i.intern(&mut a);
        i.intern(&mut b);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        i.release(&b);
        drop(b);
        assert_eq!(i.len(), 1, "a still holds it");
        i.release(&a);
        drop(a);
        assert!(i.is_empty());
    }
}
