//! Lowers the typed ruleset ([`super::ruleset`]) into nf_tables messages
//! ([`crate::netlink::nftables`]): the same expressions `nft -f` of [`super::nft_text`]'s
//! output would send, so that `nft list table` shows the same rules either way.
//!
//! ```text
//!  Op (diff) ──► lower_ops ──► Batch: NEWTABLE, NEWSET+NEWSETELEM, NEWCHAIN, NEWRULE, DEL* …
//! ```
//!
//! Registers follow nft: a single value goes to `NFT_REG_1`; a concatenated key
//! (`daddr . l4proto . dport`) is loaded into consecutive 4-byte slots from `NFT_REG_1`.
//! `numgen random mod N vmap { … }` becomes an anonymous constant verdict map declared just
//! before its rule, as nft does.
//!
//! This module must never do I/O: it only appends to a [`Batch`].

use std::net::IpAddr;

use crate::netlink::nftables::{
    BYTEORDER_BIG_ENDIAN, BYTEORDER_HOST, BaseChainSpec, Batch, CmpOp, DynsetOp, Element, Expr,
    Family, Hook as NlHook, NF_NAT_RANGE_PROTO_RANDOM_FULLY, NF_NAT_RANGE_PROTO_SPECIFIED,
    NFT_DATA_VERDICT, NFT_FIB_RESULT_ADDRTYPE, NFT_REG_1, NFT_REG_VERDICT, NFT_REJECT_ICMP_UNREACH,
    NFT_SET_ANONYMOUS, NFT_SET_CONSTANT, NFT_SET_EVAL, NFTA_FIB_F_SADDR, NatType, PayloadBase,
    RTN_LOCAL, SetRef, SetSpec, Verdict, ct, datatype, meta, reg_at,
};

use super::lower_dnat::{add_endpoints, dnat_map_exprs, dnat_map_spec, hairpin_lookup};
use super::model::{Cidr, IpFamily, Protocol};
use super::ruleset::{
    Action, AddrMatch, BaseChain, ChainType, Hook, Key, KeyPart, KeyType, LookupKey, Map,
    MapVerdict, Match, Op, Rule, Set, TABLE, Table,
};

/// Appends the messages of `ops` (one transaction) to `batch`.
pub fn lower_ops<'a>(ops: impl IntoIterator<Item = &'a Op>, batch: &mut Batch) {
    for op in ops {
        lower_op(op, batch);
    }
}

pub(super) fn family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ipv4,
        IpFamily::V6 => Family::Ipv6,
    }
}

/// Appends the messages of one operation to `b`.
pub fn lower_op(op: &Op, b: &mut Batch) {
    match op {
        Op::AddTable(t) => add_table(t, b),
        // `add` first: deleting a table that does not exist would fail the batch.
        Op::DeleteTable(f) => {
            b.add_table(family(*f), TABLE);
            b.delete_table(family(*f), TABLE);
        }
        Op::AddSet(f, name, set) => {
            let r = b.add_set(family(*f), TABLE, &set_spec(*f, name, set));
            add_set_elements(*f, &r, set, b);
        }
        Op::AddMap(f, name, map) => {
            let r = b.add_set(family(*f), TABLE, &map_spec(*f, name, map));
            add_map_elements(&r, *f, map, b);
        }
        Op::AddChain(f, name, base) => {
            b.add_chain(
                family(*f),
                TABLE,
                name,
                base.as_ref().map(base_spec).as_ref(),
            );
        }
        Op::AddDnatMap(f, name, map) => {
            let r = b.add_set(family(*f), TABLE, &dnat_map_spec(*f, name, map));
            add_endpoints(*f, &r, &map.elements, b);
        }
        Op::AddEndpoints(f, name, elements) => {
            let els: std::collections::BTreeMap<Key, std::net::SocketAddr> =
                elements.iter().cloned().collect();
            add_endpoints(*f, &SetRef::named(name), &els, b);
        }
        Op::FlushChain(f, name) => b.flush_chain(family(*f), TABLE, name),
        Op::AddRule(f, chain, rule) => add_rule(*f, chain, rule, b),
        Op::AddElements(f, name, elements) => {
            let els: Vec<Element> = elements
                .iter()
                .map(|(k, v)| Element {
                    key: key_bytes(k),
                    verdict: v.as_ref().map(map_verdict),
                    data: None,
                })
                .collect();
            b.add_elements(family(*f), TABLE, &SetRef::named(name), &els);
        }
        Op::DeleteElements(f, name, keys) => {
            let els: Vec<Element> = keys
                .iter()
                .map(|k| Element {
                    key: key_bytes(k),
                    verdict: None,
                    data: None,
                })
                .collect();
            b.delete_elements(family(*f), TABLE, &SetRef::named(name), &els);
        }
        Op::DeleteChain(f, name) => b.delete_chain(family(*f), TABLE, name),
        Op::DeleteSet(f, name) | Op::DeleteMap(f, name) => b.delete_set(family(*f), TABLE, name),
    }
}

/// A whole table, in nft's order: every chain, then sets and maps with their elements (map
/// elements name chains), then the rules, which may refer to any of them.
fn add_table(t: &Table, b: &mut Batch) {
    let f = t.family;
    b.add_table(family(f), TABLE);
    // Chains first: map elements jump to them.
    for (name, chain) in &t.chains {
        b.add_chain(
            family(f),
            TABLE,
            name,
            chain.base.as_ref().map(base_spec).as_ref(),
        );
    }
    for (name, set) in &t.sets {
        let r = b.add_set(family(f), TABLE, &set_spec(f, name, set));
        add_set_elements(f, &r, set, b);
    }
    for (name, map) in &t.maps {
        let r = b.add_set(family(f), TABLE, &map_spec(f, name, map));
        add_map_elements(&r, f, map, b);
    }
    for (name, map) in &t.dnat_maps {
        let r = b.add_set(family(f), TABLE, &dnat_map_spec(f, name, map));
        add_endpoints(f, &r, &map.elements, b);
    }
    for (name, chain) in &t.chains {
        for rule in &chain.rules {
            add_rule(f, name, rule, b);
        }
    }
}

fn add_set_elements(f: IpFamily, r: &SetRef, set: &Set, b: &mut Batch) {
    if set.elements.is_empty() {
        return;
    }
    let els: Vec<Element> = set
        .elements
        .iter()
        .map(|k| Element {
            key: key_bytes(k),
            verdict: None,
            data: None,
        })
        .collect();
    b.add_elements(family(f), TABLE, r, &els);
}

fn add_map_elements(r: &SetRef, f: IpFamily, map: &Map, b: &mut Batch) {
    if map.elements.is_empty() {
        return;
    }
    let els: Vec<Element> = map
        .elements
        .iter()
        .map(|(k, v)| Element {
            key: key_bytes(k),
            verdict: Some(map_verdict(v)),
            data: None,
        })
        .collect();
    b.add_elements(family(f), TABLE, r, &els);
}

fn base_spec(base: &BaseChain) -> BaseChainSpec {
    BaseChainSpec {
        chain_type: match base.chain_type {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        },
        hook: match base.hook {
            Hook::Prerouting => NlHook::Prerouting,
            Hook::Input => NlHook::Input,
            Hook::Forward => NlHook::Forward,
            Hook::Output => NlHook::Output,
            Hook::Postrouting => NlHook::Postrouting,
        },
        priority: base.priority,
        accept: true,
    }
}

/// Key type id, key length and byte order of a (possibly concatenated) key.
pub(super) fn key_decl(f: IpFamily, key: &[KeyType]) -> (u32, u32, u32) {
    let types: Vec<u32> = key
        .iter()
        .map(|k| match (k, f) {
            (KeyType::Addr, IpFamily::V4) => datatype::IPADDR,
            (KeyType::Addr, IpFamily::V6) => datatype::IP6ADDR,
            (KeyType::Proto, _) => datatype::INET_PROTOCOL,
            (KeyType::Port, _) => datatype::INET_SERVICE,
            (KeyType::Index, _) => datatype::INTEGER,
        })
        .collect();
    let len: u32 = key
        .iter()
        .map(|k| match (k, f) {
            (KeyType::Addr, IpFamily::V6) => 16,
            _ => 4,
        })
        .sum();
    // nft records big endian for a single address; a concatenation's order is "invalid" (0),
    // and each component's datatype says how to print it.
    let order = if key.len() == 1 {
        match key[0] {
            KeyType::Proto => BYTEORDER_HOST,
            _ => BYTEORDER_BIG_ENDIAN,
        }
    } else {
        0
    };
    (datatype::concat(&types), len, order)
}

fn set_spec(f: IpFamily, name: &str, set: &Set) -> SetSpec {
    let (key_type, key_len, key_byteorder) = key_decl(f, &set.key);
    SetSpec {
        name: name.to_string(),
        flags: if set.timeout_seconds.is_some() {
            NFT_SET_EVAL
        } else {
            0
        },
        key_type,
        key_len,
        key_byteorder,
        data_type: None,
        data_len: 0,
        typeof_udata: Vec::new(),
        timeout_ms: set.timeout_seconds.map(|s| u64::from(s) * 1000),
        size: None,
        comment: set.comment.clone(),
    }
}

fn map_spec(f: IpFamily, name: &str, map: &Map) -> SetSpec {
    let (key_type, key_len, key_byteorder) = key_decl(f, &map.key);
    SetSpec {
        name: name.to_string(),
        flags: 0,
        key_type,
        key_len,
        key_byteorder,
        data_type: Some(NFT_DATA_VERDICT),
        data_len: 0,
        typeof_udata: Vec::new(),
        timeout_ms: None,
        size: None,
        comment: map.comment.clone(),
    }
}

/// Key bytes: each component in network order, padded to 4 bytes.
pub(super) fn key_bytes(k: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(k.len() * 4);
    for part in k {
        match part {
            KeyPart::Addr(a) => out.extend_from_slice(&addr_bytes(a)),
            KeyPart::Proto(p) => out.extend_from_slice(&[proto_number(*p), 0, 0, 0]),
            KeyPart::Port(n) => {
                out.extend_from_slice(&n.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            // numgen writes a host-order u32.
            KeyPart::Index(i) => out.extend_from_slice(&i.to_ne_bytes()),
        }
    }
    out
}

pub(super) fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// IANA protocol numbers.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn map_verdict(v: &MapVerdict) -> Verdict {
    match v {
        MapVerdict::Goto(c) => Verdict::Goto(c.clone()),
        MapVerdict::Drop => Verdict::Drop,
    }
}

/// Offsets of the source and destination address in the network header, and their length.
pub(super) fn addr_layout(f: IpFamily) -> (u32, u32, u32) {
    match f {
        IpFamily::V4 => (12, 16, 4),
        IpFamily::V6 => (8, 24, 16),
    }
}

pub(super) fn load_addr(f: IpFamily, dst: bool, dreg: u32) -> Expr {
    let (s, d, len) = addr_layout(f);
    Expr::Payload {
        base: PayloadBase::Network,
        offset: if dst { d } else { s },
        len,
        dreg,
    }
}

pub(super) fn load_l4proto(dreg: u32) -> Expr {
    Expr::Meta {
        key: meta::L4PROTO,
        dreg,
    }
}

/// `th dport`: two bytes at offset 2 of the transport header (TCP, UDP and SCTP alike).
pub(super) fn load_dport(dreg: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Transport,
        offset: 2,
        len: 2,
        dreg,
    }
}

fn cmp(op: CmpOp, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data,
    }
}

fn u32_ne(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn addr_match(f: IpFamily, dst: bool, m: &AddrMatch, out: &mut Vec<Expr>) {
    match m {
        AddrMatch::Is(a) => {
            out.push(load_addr(f, dst, NFT_REG_1));
            out.push(cmp(CmpOp::Eq, addr_bytes(a)));
        }
        AddrMatch::In(c) => prefix_match(f, dst, c, CmpOp::Eq, out),
        AddrMatch::NotIn(c) => prefix_match(f, dst, c, CmpOp::Neq, out),
        AddrMatch::InSet(s) => {
            out.push(load_addr(f, dst, NFT_REG_1));
            out.push(Expr::Lookup {
                sreg: NFT_REG_1,
                set: SetRef::named(s),
                dreg: None,
            });
        }
    }
}

/// A prefix on a byte boundary loads only the prefix bytes (as nft does); otherwise the
/// whole address is masked.
fn prefix_match(f: IpFamily, dst: bool, c: &Cidr, op: CmpOp, out: &mut Vec<Expr>) {
    let (s, d, len) = addr_layout(f);
    let bytes = addr_bytes(&c.addr);
    let prefix = u32::from(c.prefix_len);
    if prefix.is_multiple_of(8) {
        let n = prefix / 8;
        out.push(Expr::Payload {
            base: PayloadBase::Network,
            offset: if dst { d } else { s },
            len: n.max(1),
            dreg: NFT_REG_1,
        });
        out.push(cmp(op, bytes[..n.max(1) as usize].to_vec()));
        return;
    }
    let mask: Vec<u8> = (0..len)
        .map(|i| {
            let bits = prefix.saturating_sub(i * 8).min(8);
            (0xffu16 << (8 - bits)) as u8
        })
        .collect();
    out.push(load_addr(f, dst, NFT_REG_1));
    out.push(Expr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        mask,
        xor: vec![0; len as usize],
    });
    out.push(cmp(op, bytes));
}

fn match_exprs(f: IpFamily, m: &Match, out: &mut Vec<Expr>) {
    match m {
        Match::Saddr(a) => addr_match(f, false, a, out),
        Match::Daddr(a) => addr_match(f, true, a, out),
        Match::Dport(p, port) => {
            out.push(load_l4proto(NFT_REG_1));
            out.push(cmp(CmpOp::Eq, vec![proto_number(*p)]));
            out.push(load_dport(NFT_REG_1));
            out.push(cmp(CmpOp::Eq, port.to_be_bytes().to_vec()));
        }
        Match::FibSaddrLocal => {
            out.push(Expr::Fib {
                flags: NFTA_FIB_F_SADDR,
                result: NFT_FIB_RESULT_ADDRTYPE,
                dreg: NFT_REG_1,
            });
            out.push(cmp(CmpOp::Eq, u32_ne(RTN_LOCAL)));
        }
        Match::CtStateNew => {
            out.push(Expr::Ct {
                key: ct::STATE,
                dreg: NFT_REG_1,
            });
            out.push(Expr::Bitwise {
                sreg: NFT_REG_1,
                dreg: NFT_REG_1,
                mask: u32_ne(ct::STATE_NEW),
                xor: u32_ne(0),
            });
            out.push(cmp(CmpOp::Neq, u32_ne(0)));
        }
        Match::L4Proto(p) => {
            out.push(load_l4proto(NFT_REG_1));
            out.push(cmp(CmpOp::Eq, vec![proto_number(*p)]));
        }
        Match::HairpinInSet(s) => hairpin_lookup(f, s, out),
        Match::MarkBitClear(bit) => {
            out.push(Expr::Meta {
                key: meta::MARK,
                dreg: NFT_REG_1,
            });
            out.push(Expr::Bitwise {
                sreg: NFT_REG_1,
                dreg: NFT_REG_1,
                mask: u32_ne(*bit),
                xor: u32_ne(0),
            });
            out.push(cmp(CmpOp::Eq, u32_ne(0)));
        }
    }
}

/// Loads a lookup key into consecutive registers from `NFT_REG_1`; returns its length.
pub(super) fn load_key(f: IpFamily, key: LookupKey, out: &mut Vec<Expr>) -> u32 {
    match key {
        LookupKey::DaddrProtoPort => {
            let alen = addr_layout(f).2;
            out.push(load_addr(f, true, NFT_REG_1));
            out.push(load_l4proto(reg_at(alen)));
            out.push(load_dport(reg_at(alen + 4)));
            alen + 8
        }
        LookupKey::ProtoPort => {
            out.push(load_l4proto(NFT_REG_1));
            out.push(load_dport(reg_at(4)));
            8
        }
    }
}

/// `meta mark set (meta mark & mask) ^ xor`.
fn set_mark(mask: u32, xor: u32, out: &mut Vec<Expr>) {
    out.push(Expr::Meta {
        key: meta::MARK,
        dreg: NFT_REG_1,
    });
    out.push(Expr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        mask: u32_ne(mask),
        xor: u32_ne(xor),
    });
    out.push(Expr::MetaSet {
        key: meta::MARK,
        sreg: NFT_REG_1,
    });
}

fn vmap(set: SetRef) -> Expr {
    Expr::Lookup {
        sreg: NFT_REG_1,
        set,
        dreg: Some(NFT_REG_VERDICT),
    }
}

fn action_exprs(f: IpFamily, a: &Action, b: &mut Batch, out: &mut Vec<Expr>) {
    match a {
        Action::Jump(c) => out.push(Expr::Verdict(Verdict::Jump(c.clone()))),
        Action::Goto(c) => out.push(Expr::Verdict(Verdict::Goto(c.clone()))),
        Action::Return => out.push(Expr::Verdict(Verdict::Return)),
        Action::Drop => out.push(Expr::Verdict(Verdict::Drop)),
        Action::Reject => out.push(Expr::Reject {
            kind: NFT_REJECT_ICMP_UNREACH,
            // ICMP port unreachable (3); ICMPv6 port unreachable (4).
            code: match f {
                IpFamily::V4 => 3,
                IpFamily::V6 => 4,
            },
        }),
        Action::Vmap { key, map } => {
            load_key(f, *key, out);
            out.push(vmap(SetRef::named(map)));
        }
        Action::DnatMap { key, modulus, map } => dnat_map_exprs(f, *key, *modulus, map, out),
        Action::NumgenGoto(targets) => {
            let n = targets.len() as u32;
            let spec = SetSpec {
                name: "__map%d".to_string(),
                flags: NFT_SET_ANONYMOUS | NFT_SET_CONSTANT,
                key_type: datatype::INTEGER,
                key_len: 4,
                key_byteorder: BYTEORDER_HOST,
                data_type: Some(NFT_DATA_VERDICT),
                data_len: 0,
                typeof_udata: Vec::new(),
                timeout_ms: None,
                size: Some(n),
                comment: None,
            };
            let r = b.add_set(family(f), TABLE, &spec);
            let els: Vec<Element> = targets
                .iter()
                .enumerate()
                .map(|(i, t)| Element {
                    key: u32_ne(i as u32),
                    verdict: Some(Verdict::Goto(t.clone())),
                    data: None,
                })
                .collect();
            b.add_elements(family(f), TABLE, &r, &els);
            out.push(Expr::NumgenRandom {
                dreg: NFT_REG_1,
                modulus: n,
            });
            out.push(vmap(r));
        }
        Action::SetMarkBit(bit) => set_mark(!bit, *bit, out),
        Action::ToggleMarkBit(bit) => set_mark(u32::MAX, *bit, out),
        Action::Masquerade => out.push(Expr::Masq {
            flags: NF_NAT_RANGE_PROTO_RANDOM_FULLY,
        }),
        Action::Dnat(p, addr) => {
            out.push(load_l4proto(NFT_REG_1));
            out.push(cmp(CmpOp::Eq, vec![proto_number(*p)]));
            out.push(Expr::Immediate {
                dreg: NFT_REG_1,
                value: addr_bytes(&addr.ip()),
            });
            out.push(Expr::Immediate {
                dreg: crate::netlink::nftables::NFT_REG_2,
                value: addr.port().to_be_bytes().to_vec(),
            });
            out.push(Expr::Nat {
                nat_type: NatType::Dnat,
                family: family(f),
                addr_reg: Some(NFT_REG_1),
                proto_reg: Some(crate::netlink::nftables::NFT_REG_2),
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            });
        }
        Action::UpdateSetWithSaddr(s) => {
            out.push(load_addr(f, false, NFT_REG_1));
            out.push(Expr::Dynset {
                op: DynsetOp::Update,
                sreg_key: NFT_REG_1,
                set: SetRef::named(s),
            });
        }
    }
}

/// The expressions of one rule (declaring its anonymous map first when it has one).
pub fn rule_exprs(f: IpFamily, rule: &Rule, b: &mut Batch) -> Vec<Expr> {
    let mut out = Vec::new();
    for m in &rule.matches {
        match_exprs(f, m, &mut out);
    }
    action_exprs(f, &rule.action, b, &mut out);
    out
}

fn add_rule(f: IpFamily, chain: &str, rule: &Rule, b: &mut Batch) {
    let exprs = rule_exprs(f, rule, b);
    b.add_rule(family(f), TABLE, chain, &exprs, rule.comment.as_deref());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Cidr;

    fn exprs(f: IpFamily, rule: &Rule) -> Vec<Expr> {
        let mut b = Batch::new(1);
        rule_exprs(f, rule, &mut b)
    }

    #[test]
    fn byte_aligned_prefixes_load_only_the_prefix_like_nft() {
        let c = Cidr::parse("10.96.0.0/16").unwrap();
        let e = exprs(
            IpFamily::V4,
            &Rule::new(vec![Match::Daddr(AddrMatch::In(c))], Action::Drop),
        );
        assert_eq!(
            e[0],
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 2,
                dreg: NFT_REG_1
            }
        );
        assert_eq!(e[1], cmp(CmpOp::Eq, vec![10, 96]));
    }

    #[test]
    fn other_prefixes_are_masked() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        let e = exprs(
            IpFamily::V4,
            &Rule::new(vec![Match::Saddr(AddrMatch::NotIn(c))], Action::Drop),
        );
        let Expr::Bitwise { mask, .. } = &e[1] else {
            panic!("{e:?}")
        };
        assert_eq!(mask, &vec![255, 240, 0, 0]);
        assert_eq!(e[2], cmp(CmpOp::Neq, vec![10, 96, 0, 0]));
    }

    #[test]
    fn concatenated_keys_use_consecutive_registers() {
        let r = Rule::always(Action::Vmap {
            key: LookupKey::DaddrProtoPort,
            map: "service-ips".into(),
        });
        let regs = |f| {
            exprs(f, &r)
                .iter()
                .filter_map(|e| match e {
                    Expr::Payload { dreg, .. } | Expr::Meta { dreg, .. } => Some(*dreg),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // As `nft --debug=netlink` shows: reg 1, 9, 10 for IPv4; reg 1, 2, 13 for IPv6.
        assert_eq!(regs(IpFamily::V4), vec![1, 9, 10]);
        assert_eq!(regs(IpFamily::V6), vec![1, 2, 13]);
    }

    #[test]
    fn keys_are_padded_per_component() {
        let k = vec![
            KeyPart::Addr("10.96.0.10".parse().unwrap()),
            KeyPart::Proto(Protocol::Udp),
            KeyPart::Port(53),
        ];
        assert_eq!(key_bytes(&k), vec![10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0]);
        let (t, len, _) = key_decl(
            IpFamily::V4,
            &[KeyType::Addr, KeyType::Proto, KeyType::Port],
        );
        assert_eq!((t, len), (0x730d, 12));
    }
}
