//! ctnetlink (`linux/netfilter/nfnetlink_conntrack.h`): list conntrack entries and delete the
//! UDP ones that still point at a backend that went away.
//!
//! UDP has no connection end: without this, a client that keeps sending from the same port
//! keeps reaching a removed endpoint through its old conntrack entry (kube-proxy deletes them
//! the same way, with `conntrack -D`). Entries are listed with a dump (`IPCTNL_MSG_CT_GET`,
//! `NLM_F_DUMP`) and each match deleted by its original tuple (`IPCTNL_MSG_CT_DELETE`).
//!
//! Layout: `nfgenmsg` (family, version, res_id) then `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY`
//! nests of `CTA_TUPLE_IP { src, dst }` and `CTA_TUPLE_PROTO { num, src port, dst port }`;
//! addresses and ports in network order.

use std::io;
use std::net::{IpAddr, SocketAddr};

use super::{Builder, Family, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Socket, attrs};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const IPPROTO_UDP: u8 = 17;

fn msg_type(m: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | m
}

fn family_byte(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 2,
        IpAddr::V6(_) => 10,
    }
}

/// The reply tuple's source (where the DNAT sent the flow) and protocol, and the raw
/// original-tuple nest to delete the entry by.
fn parse_entry(payload: &[u8]) -> Option<(u8, SocketAddr, Vec<u8>)> {
    let body = payload.get(4..)?;
    let mut orig = None;
    let mut reply = None;
    for (kind, value) in attrs(body) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(value),
            CTA_TUPLE_REPLY => reply = Some(value),
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    let mut src: Option<IpAddr> = None;
    let mut proto = 0u8;
    let mut port = 0u16;
    for (kind, value) in attrs(reply) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(value) {
                    match (k, v.len()) {
                        (CTA_IP_V4_SRC, 4) => {
                            src = Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?));
                        }
                        (CTA_IP_V6_SRC, 16) => {
                            src = Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?));
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(value) {
                    match k {
                        CTA_PROTO_NUM => proto = *v.first()?,
                        CTA_PROTO_SRC_PORT if v.len() == 2 => {
                            port = u16::from_be_bytes([v[0], v[1]])
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto, SocketAddr::new(src?, port), orig.to_vec()))
}

/// Deletes every UDP conntrack entry whose flow was translated to `backend` (its reply comes
/// from the backend's address and port). Returns how many were deleted.
pub fn delete_udp_to(backend: SocketAddr) -> io::Result<usize> {
    let mut sock = Socket::open(Family::Netfilter)?;
    let fam = family_byte(&backend.ip());
    let mut b = Builder::new();
    let seq = sock.next_seq();
    b.begin(msg_type(IPCTNL_MSG_CT_GET), NLM_F_REQUEST | NLM_F_DUMP, seq)
        .raw(&[fam, 0, 0, 0]);
    let entries = sock.dump(&b.finish())?;
    let mut deleted = 0;
    for (_, payload) in entries {
        let Some((proto, reply_src, orig)) = parse_entry(&payload) else {
            continue;
        };
        if proto != IPPROTO_UDP || reply_src != backend {
            continue;
        }
        let seq = sock.next_seq();
        let mut d = Builder::new();
        d.begin(
            msg_type(IPCTNL_MSG_CT_DELETE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        )
        .raw(&[fam, 0, 0, 0])
        .nest_begin(CTA_TUPLE_ORIG)
        .raw(&orig)
        .nest_end();
        match sock.request(&d.finish(), &[seq]) {
            Ok(()) => deleted += 1,
            // Gone meanwhile (expired, or deleted by someone else): what we wanted.
            Err(e) if e.error.raw_os_error() == Some(2) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(b: &mut Builder, kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) {
        b.nest_begin(kind)
            .nest_begin(CTA_TUPLE_IP)
            .attr(CTA_IP_V4_SRC, &src)
            .attr(2, &dst)
            .nest_end()
            .nest_begin(CTA_TUPLE_PROTO)
            .attr_u8(CTA_PROTO_NUM, IPPROTO_UDP)
            .attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes())
            .attr(3, &dport.to_be_bytes())
            .nest_end()
            .nest_end();
    }

    #[test]
    fn an_entry_yields_its_backend_and_original_tuple() {
        let mut b = Builder::new();
        b.begin(msg_type(IPCTNL_MSG_CT_GET), 0, 1)
            .raw(&[2, 0, 0, 0]);
        tuple(
            &mut b,
            CTA_TUPLE_ORIG,
            [10, 0, 0, 1],
            [10, 96, 0, 10],
            4000,
            53,
        );
        tuple(
            &mut b,
            CTA_TUPLE_REPLY,
            [10, 244, 1, 5],
            [10, 0, 0, 1],
            8053,
            4000,
        );
        let bytes = b.finish();
        let msg = super::super::messages(&bytes).next().unwrap().unwrap();
        let (proto, backend, orig) = parse_entry(msg.payload).unwrap();
        assert_eq!(proto, IPPROTO_UDP);
        assert_eq!(backend, "10.244.1.5:8053".parse().unwrap());
        let inner: Vec<u16> = attrs(&orig).map(|(k, _)| k).collect();
        assert_eq!(inner, vec![CTA_TUPLE_IP, CTA_TUPLE_PROTO]);
    }
}
