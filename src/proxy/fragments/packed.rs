//! Element ids packed into integers, for what [`super::Applied`] keeps per element at 10 000
//! Services (map-key owners, shared set members' user counts): an IPv4 id is one `u64`, an
//! IPv6 id a `u128` and a `u32`, instead of a `Vec<KeyPart>` on the heap per id. Pure.
//!
//! ```text
//!  u64 (IPv4):       address (32) | name (4) shape (4) protocol (8) port (16)
//!  (u128, u32) (IPv6): address     | name (4) shape (4) protocol (8) port (16)
//!  shape: 0 [addr]  1 [addr, proto, port]  2 [proto, port]  3 [addr, addr, port] (same addr)
//! ```
//!
//! Ids that fit no shape (another set's name, another key) are kept as they are: correct,
//! only not compact.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
#[cfg(test)]
use std::net::{Ipv4Addr, Ipv6Addr};

use super::super::model::{IpFamily, Protocol};
use super::super::ruleset::KeyPart;
use super::ElementId;
use super::names::SHARED_NAMES;

enum Packed {
    V4(u64),
    V6(u128, u32),
    Other,
}

fn proto_code(p: Protocol) -> u32 {
    match p {
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
        Protocol::Sctp => 3,
    }
}

#[cfg(test)]
fn proto_of(code: u32) -> Protocol {
    match code {
        2 => Protocol::Udp,
        3 => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn pack(id: &ElementId) -> Packed {
    pack_parts(id.0, &id.1, &id.2)
}

fn pack_parts(fam: IpFamily, name: &str, key: &[KeyPart]) -> Packed {
    let Some(n) = SHARED_NAMES.iter().position(|s| *s == name) else {
        return Packed::Other;
    };
    let (shape, addr, proto, port) = match key {
        [KeyPart::Addr(a)] => (0, Some(a), 0, 0),
        [KeyPart::Addr(a), KeyPart::Proto(p), KeyPart::Port(n)] => (1, Some(a), proto_code(*p), *n),
        [KeyPart::Proto(p), KeyPart::Port(n)] => (2, None, proto_code(*p), *n),
        [KeyPart::Addr(a), KeyPart::Addr(b), KeyPart::Port(n)] if a == b => (3, Some(a), 0, *n),
        _ => return Packed::Other,
    };
    let low = (n as u32) << 28 | shape << 24 | proto << 16 | u32::from(port);
    match (fam, addr) {
        (IpFamily::V4, Some(IpAddr::V4(a))) => {
            Packed::V4(u64::from(u32::from(*a)) << 32 | u64::from(low))
        }
        (IpFamily::V4, None) => Packed::V4(u64::from(low)),
        (IpFamily::V6, Some(IpAddr::V6(a))) => Packed::V6(u128::from(*a), low),
        (IpFamily::V6, None) => Packed::V6(0, low),
        _ => Packed::Other,
    }
}

#[cfg(test)]
fn unpack(fam: IpFamily, addr: IpAddr, low: u32) -> ElementId {
    let name = SHARED_NAMES[(low >> 28) as usize % SHARED_NAMES.len()];
    let proto = proto_of((low >> 16) & 0xff);
    let port = (low & 0xffff) as u16;
    let key = match (low >> 24) & 0xf {
        0 => vec![KeyPart::Addr(addr)],
        1 => vec![
            KeyPart::Addr(addr),
            KeyPart::Proto(proto),
            KeyPart::Port(port),
        ],
        2 => vec![KeyPart::Proto(proto), KeyPart::Port(port)],
        _ => vec![
            KeyPart::Addr(addr),
            KeyPart::Addr(addr),
            KeyPart::Port(port),
        ],
    };
    (fam, Cow::Borrowed(name), key)
}

/// A map from element ids to `V`, keyed by packed ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PackedMap<V> {
    v4: BTreeMap<u64, V>,
    v6: BTreeMap<(u128, u32), V>,
    other: BTreeMap<ElementId, V>,
}

impl<V> Default for PackedMap<V> {
    fn default() -> Self {
        PackedMap {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }
}

impl<V> PackedMap<V> {
    pub(super) fn get(&self, id: &ElementId) -> Option<&V> {
        match pack(id) {
            Packed::V4(k) => self.v4.get(&k),
            Packed::V6(a, l) => self.v6.get(&(a, l)),
            Packed::Other => self.other.get(id),
        }
    }

    /// [`PackedMap::get`] without an [`ElementId`] at hand.
    pub(super) fn get_parts(&self, fam: IpFamily, name: &str, key: &[KeyPart]) -> Option<&V> {
        match pack_parts(fam, name, key) {
            Packed::V4(k) => self.v4.get(&k),
            Packed::V6(a, l) => self.v6.get(&(a, l)),
            Packed::Other => {
                let id = (fam, Cow::Owned(name.to_string()), key.to_vec());
                self.other.get(&id)
            }
        }
    }

    #[cfg(test)]
    pub(super) fn contains(&self, id: &ElementId) -> bool {
        self.get(id).is_some()
    }

    pub(super) fn insert(&mut self, id: &ElementId, v: V) -> Option<V> {
        match pack(id) {
            Packed::V4(k) => self.v4.insert(k, v),
            Packed::V6(a, l) => self.v6.insert((a, l), v),
            Packed::Other => self.other.insert(id.clone(), v),
        }
    }

    pub(super) fn remove(&mut self, id: &ElementId) -> Option<V> {
        match pack(id) {
            Packed::V4(k) => self.v4.remove(&k),
            Packed::V6(a, l) => self.v6.remove(&(a, l)),
            Packed::Other => self.other.remove(id),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.other.len()
    }

    /// Every id (unpacked) and its value.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (ElementId, &V)> {
        let v4 = self.v4.iter().map(|(k, v)| {
            let addr = IpAddr::V4(Ipv4Addr::from((k >> 32) as u32));
            (unpack(IpFamily::V4, addr, *k as u32), v)
        });
        let v6 = self
            .v6
            .iter()
            .map(|((a, l), v)| (unpack(IpFamily::V6, IpAddr::V6(Ipv6Addr::from(*a)), *l), v));
        v4.chain(v6)
            .chain(self.other.iter().map(|(k, v)| (k.clone(), v)))
    }
}

impl PackedMap<u32> {
    /// Adds `delta` to an id's count; a count that reaches 0 is removed.
    pub(super) fn count(&mut self, id: &ElementId, delta: i64) {
        let now = i64::from(self.get(id).copied().unwrap_or(0)) + delta;
        if now <= 0 {
            self.remove(id);
        } else {
            self.insert(id, u32::try_from(now).unwrap_or(u32::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_packs_and_unpacks_to_the_same_id() {
        let a4: IpAddr = "10.96.0.10".parse().unwrap();
        let a6: IpAddr = "fd00::10".parse().unwrap();
        let mut ids = Vec::new();
        for (fam, a) in [(IpFamily::V4, a4), (IpFamily::V6, a6)] {
            for (name, key) in [
                ("cluster-ips", vec![KeyPart::Addr(a)]),
                (
                    "service-ips",
                    vec![
                        KeyPart::Addr(a),
                        KeyPart::Proto(Protocol::Sctp),
                        KeyPart::Port(65535),
                    ],
                ),
                (
                    "service-nodeports",
                    vec![KeyPart::Proto(Protocol::Udp), KeyPart::Port(30080)],
                ),
                (
                    "hairpin",
                    vec![KeyPart::Addr(a), KeyPart::Addr(a), KeyPart::Port(8080)],
                ),
                // Fits no shape: kept as it is.
                (
                    "hairpin",
                    vec![KeyPart::Addr(a), KeyPart::Addr(a4), KeyPart::Port(1)],
                ),
                ("affinity-x", vec![KeyPart::Addr(a)]),
            ] {
                ids.push((fam, Cow::Owned(name.to_string()), key));
            }
        }
        let mut m = PackedMap::default();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.insert(id, i), None);
        }
        assert_eq!(m.len(), ids.len());
        let mut back: Vec<ElementId> = m.iter().map(|(id, _)| id).collect();
        back.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(back, want);
        for id in &ids {
            assert!(m.contains(id));
            m.remove(id);
        }
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn counts_go_away_at_zero() {
        let id = (
            IpFamily::V4,
            Cow::Borrowed("cluster-ips"),
            vec![KeyPart::Addr("10.0.0.1".parse().unwrap())],
        );
        let mut m = PackedMap::default();
        m.count(&id, 1);
        m.count(&id, 1);
        assert_eq!(m.get(&id), Some(&2));
        m.count(&id, -2);
        assert_eq!(m.len(), 0);
    }
}
