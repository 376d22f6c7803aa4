//! Lowering of the shared endpoint maps ([`DnatMap`]) and the hairpin set lookup: the parts
//! of the shared-map shape that [`super::lower`]'s verdict maps do not cover.
//!
//! ```text
//!  dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map @service-backends
//!    payload daddr => reg 1; meta l4proto => reg 9; payload dport => reg 10;
//!    numgen random mod N => reg 11; lookup reg 1 set service-backends dreg 1;
//!    nat dnat ip addr_min reg 1 proto_min reg 9
//! ```
//!
//! A `numgen` value has no type of its own (`integer`), so the map is declared with nft's
//! `typeof`: user data describing the key's and the data's expressions, as nft 1.0.6 sends
//! it (captured with `nft --debug=mnl`), so that `nft list` prints the elements.
//!
//! This module must never do I/O: it only appends to a [`Batch`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::netlink::nftables::{
    Batch, Element, Expr, NFT_REG_1, NatType, SetRef, SetSpec, datatype, reg_at,
};

use super::lower::{addr_bytes, addr_layout, family, key_bytes, key_decl, load_addr, load_key};
use super::model::IpFamily;
use super::nft_text::TYPEOF_MODULUS;
use super::ruleset::{DnatMap, Key, LookupKey, TABLE};

/// nftables' `enum expr_types` values used in `typeof` user data.
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;
/// nftables' protocol descriptions and their header fields.
const PROTO_DESC_TH: u32 = 11;
const PROTO_DESC_IP: u32 = 12;
const PROTO_DESC_IP6: u32 = 13;
const IPHDR_DADDR: u32 = 12;
const IP6HDR_DADDR: u32 = 9;
const THDR_DPORT: u32 = 2;
/// `meta l4proto`; `numgen random`.
const META_L4PROTO: u32 = 16;
const NFT_NG_RANDOM: u32 = 1;
/// `NFTNL_UDATA_SET_KEY_TYPEOF`, `…_DATA_TYPEOF`, `…_DATA_INTERVAL`.
const UDATA_KEY_TYPEOF: u8 = 3;
const UDATA_DATA_TYPEOF: u8 = 4;
const UDATA_DATA_INTERVAL: u8 = 6;

fn tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    // Our descriptions are at most ~100 bytes: they fit nftnl's u8 length.
    out.push(tag);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

fn tlv_u32(out: &mut Vec<u8>, tag: u8, v: u32) {
    tlv(out, tag, &v.to_ne_bytes());
}

/// One expression of a `typeof`: its type and its description.
enum Part {
    Payload(u32, u32),
    Meta(u32),
    Numgen,
}

/// A concatenation's `typeof` description (`{0: concat, 1: {i: {0: type, 1: data}}}`).
fn concat_typeof(parts: &[Part]) -> Vec<u8> {
    let mut list = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let mut data = Vec::new();
        let etype = match p {
            Part::Payload(desc, field) => {
                tlv_u32(&mut data, 0, *desc);
                tlv_u32(&mut data, 1, *field);
                EXPR_PAYLOAD
            }
            Part::Meta(key) => {
                tlv_u32(&mut data, 0, *key);
                EXPR_META
            }
            Part::Numgen => {
                tlv_u32(&mut data, 0, NFT_NG_RANDOM);
                tlv_u32(&mut data, 1, TYPEOF_MODULUS);
                tlv_u32(&mut data, 2, 0);
                EXPR_NUMGEN
            }
        };
        let mut nest = Vec::new();
        tlv_u32(&mut nest, 0, etype);
        tlv(&mut nest, 1, &data);
        tlv(&mut list, i as u8, &nest);
    }
    let mut out = Vec::new();
    tlv_u32(&mut out, 0, EXPR_CONCAT);
    tlv(&mut out, 1, &list);
    out
}

fn daddr_part(f: IpFamily) -> Part {
    match f {
        IpFamily::V4 => Part::Payload(PROTO_DESC_IP, IPHDR_DADDR),
        IpFamily::V6 => Part::Payload(PROTO_DESC_IP6, IP6HDR_DADDR),
    }
}

/// The user data nft sends after the byte orders for
/// `typeof <key> . numgen random mod M : ip daddr . th dport`.
fn typeof_udata(f: IpFamily, key: LookupKey) -> Vec<u8> {
    let dport = || Part::Payload(PROTO_DESC_TH, THDR_DPORT);
    let mut key_parts = match key {
        LookupKey::DaddrProtoPort => vec![daddr_part(f), Part::Meta(META_L4PROTO), dport()],
        LookupKey::ProtoPort => vec![Part::Meta(META_L4PROTO), dport()],
    };
    key_parts.push(Part::Numgen);
    let mut out = Vec::new();
    tlv(&mut out, UDATA_KEY_TYPEOF, &concat_typeof(&key_parts));
    tlv(
        &mut out,
        UDATA_DATA_TYPEOF,
        &concat_typeof(&[daddr_part(f), dport()]),
    );
    tlv_u32(&mut out, UDATA_DATA_INTERVAL, 0);
    out
}

/// The declaration of a [`DnatMap`].
pub(super) fn dnat_map_spec(f: IpFamily, name: &str, map: &DnatMap) -> SetSpec {
    let (key_type, key_len, key_byteorder) = key_decl(f, &map.key_types());
    let (addr_type, addr_len) = match f {
        IpFamily::V4 => (datatype::IPADDR, 4),
        IpFamily::V6 => (datatype::IP6ADDR, 16),
    };
    SetSpec {
        name: name.to_string(),
        flags: 0,
        key_type,
        key_len,
        key_byteorder,
        data_type: Some(datatype::concat(&[addr_type, datatype::INET_SERVICE])),
        data_len: addr_len + 4,
        typeof_udata: typeof_udata(f, map.key),
        timeout_ms: None,
        size: None,
        comment: map.comment.clone(),
    }
}

/// Endpoint bytes: the address, then the port padded to 4 bytes.
fn endpoint_bytes(e: &SocketAddr) -> Vec<u8> {
    let mut out = addr_bytes(&e.ip());
    out.extend_from_slice(&e.port().to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

pub(super) fn add_endpoints(
    f: IpFamily,
    r: &SetRef,
    elements: &BTreeMap<Key, SocketAddr>,
    b: &mut Batch,
) {
    if elements.is_empty() {
        return;
    }
    let els: Vec<Element> = elements
        .iter()
        .map(|(k, e)| Element {
            key: key_bytes(k),
            verdict: None,
            data: Some(endpoint_bytes(e)),
        })
        .collect();
    b.add_elements(family(f), TABLE, r, &els);
}

/// `dnat <fam> to <key> . numgen random mod N map @map`.
pub(super) fn dnat_map_exprs(
    f: IpFamily,
    key: LookupKey,
    modulus: u32,
    map: &str,
    out: &mut Vec<Expr>,
) {
    let len = load_key(f, key, out);
    out.push(Expr::NumgenRandom {
        dreg: reg_at(len),
        modulus,
    });
    out.push(Expr::Lookup {
        sreg: NFT_REG_1,
        set: SetRef::named(map),
        dreg: Some(NFT_REG_1),
    });
    out.push(Expr::Nat {
        nat_type: NatType::Dnat,
        family: family(f),
        addr_reg: Some(NFT_REG_1),
        proto_reg: Some(reg_at(addr_layout(f).2)),
        flags: 0,
    });
}

/// `ip saddr . ip daddr . th dport @set`.
pub(super) fn hairpin_lookup(f: IpFamily, set: &str, out: &mut Vec<Expr>) {
    let alen = addr_layout(f).2;
    out.push(load_addr(f, false, NFT_REG_1));
    out.push(load_addr(f, true, reg_at(alen)));
    out.push(super::lower::load_dport(reg_at(2 * alen)));
    out.push(Expr::Lookup {
        sreg: NFT_REG_1,
        set: SetRef::named(set),
        dreg: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typeof_user_data_is_what_nft_sends() {
        // `nft --debug=mnl` of `typeof ip daddr . meta l4proto . th dport . numgen random
        // mod 2 : ip daddr . th dport` (the modulus byte patched to ours, 65536).
        let want = "03600004 0d000000 01580014 00040700 0000010c 00040c00 00000104 0c000000 \
                    010e0004 09000000 01060004 10000000 02140004 07000000 010c0004 0b000000 \
                    01040200 0000031a 00041700 00000112 00040100 00000104 00000100 02040000 \
                    00000434 00040d00 0000012c 00140004 07000000 010c0004 0c000000 01040c00 \
                    00000114 00040700 0000010c 00040b00 00000104 02000000 06040000 0000";
        let want: Vec<u8> = want
            .split_whitespace()
            .collect::<String>()
            .as_bytes()
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect();
        let got = typeof_udata(IpFamily::V4, LookupKey::DaddrProtoPort);
        if cfg!(target_endian = "little") {
            assert_eq!(got, want);
        }
    }
}
