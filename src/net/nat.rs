//! The bridge network's NAT: one nftables table owned by nanolet (`ip nanolet-<bridge>`),
//! rebuilt whole and applied as one transaction whenever the host ports change, over netlink
//! with [`crate::netlink::nftables`]. Building the batch is pure ([`batch`]).
//!
//! ```text
//! table ip nanolet-<bridge> {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//!   chain output      { type nat hook output priority dstnat;     fib daddr type local jump hostports }
//!   chain hostports   { [ip daddr H] meta l4proto P th dport N dnat to <pod ip>:<containerPort> … }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ip saddr <podCIDR> ip daddr != <podCIDR> masquerade      # pod egress
//!                       ip saddr 127.0.0.0/8 ip daddr <podCIDR> masquerade }     # localhost → hostPort
//! }
//! ```
//!
//! What portmap and the CNI bridge plugin do with iptables, in one table. Reaching a hostPort
//! through 127.0.0.1 also needs `route_localnet` on the bridge, which [`apply`] sets.

use std::io;
use std::net::Ipv4Addr;

use super::ipam::Subnet;
use super::ports::{PortMapping, Protocol};
use crate::netlink::nftables::{
    self, BaseChainSpec, Batch, CmpOp, Expr, Family, Hook, NF_NAT_RANGE_PROTO_SPECIFIED,
    NFT_FIB_RESULT_ADDRTYPE, NFT_REG_1, NFT_REG_2, NatType, PayloadBase, RTN_LOCAL, Verdict, meta,
};

/// `NFTA_FIB_F_DADDR`: look up the destination address.
const NFTA_FIB_F_DADDR: u32 = 2;

/// The table's name for `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("nanolet-{bridge}")
}

/// A host port mapped to a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dnat {
    pub mapping: PortMapping,
    pub pod_ip: Ipv4Addr,
}

fn cmp(op: CmpOp, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data,
    }
}

/// `ip saddr|daddr [!=] subnet`.
fn addr_in(dst: bool, subnet: &Subnet, op: CmpOp, out: &mut Vec<Expr>) {
    out.push(Expr::Payload {
        base: PayloadBase::Network,
        offset: if dst { 16 } else { 12 },
        len: 4,
        dreg: NFT_REG_1,
    });
    let mask = if subnet.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(subnet.prefix))
    };
    if subnet.prefix < 32 {
        out.push(Expr::Bitwise {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            mask: mask.to_be_bytes().to_vec(),
            xor: vec![0; 4],
        });
    }
    out.push(cmp(op, subnet.network.octets().to_vec()));
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn dnat_rule(d: &Dnat) -> Vec<Expr> {
    let m = &d.mapping;
    let mut out = Vec::new();
    if let Some(host_ip) = m.host_ip {
        out.push(Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: NFT_REG_1,
        });
        out.push(cmp(CmpOp::Eq, host_ip.octets().to_vec()));
    }
    out.push(Expr::Meta {
        key: meta::L4PROTO,
        dreg: NFT_REG_1,
    });
    out.push(cmp(CmpOp::Eq, vec![proto_number(m.protocol)]));
    out.push(Expr::Payload {
        base: PayloadBase::Transport,
        offset: 2,
        len: 2,
        dreg: NFT_REG_1,
    });
    out.push(cmp(CmpOp::Eq, m.host_port.to_be_bytes().to_vec()));
    out.push(Expr::Immediate {
        dreg: NFT_REG_1,
        value: d.pod_ip.octets().to_vec(),
    });
    out.push(Expr::Immediate {
        dreg: NFT_REG_2,
        value: m.container_port.to_be_bytes().to_vec(),
    });
    out.push(Expr::Nat {
        nat_type: NatType::Dnat,
        family: Family::Ipv4,
        addr_reg: Some(NFT_REG_1),
        proto_reg: Some(NFT_REG_2),
        flags: NF_NAT_RANGE_PROTO_SPECIFIED,
    });
    out
}

/// The whole table as one batch: the old table (if any) goes, the new one comes, atomically.
pub fn batch(bridge: &str, subnet: &Subnet, dnats: &[Dnat], first_seq: u32) -> Batch {
    let table = table_name(bridge);
    let t = table.as_str();
    let f = Family::Ipv4;
    let mut b = Batch::new(first_seq);
    // `add` first, so that `delete` never fails on a table that is not there.
    b.add_table(f, t);
    b.delete_table(f, t);
    b.add_table(f, t);
    let nat = |hook, priority| BaseChainSpec {
        chain_type: "nat",
        hook,
        priority,
        accept: true,
    };
    b.add_chain(f, t, "hostports", None);
    b.add_chain(f, t, "prerouting", Some(&nat(Hook::Prerouting, -100)));
    b.add_chain(f, t, "output", Some(&nat(Hook::Output, -100)));
    b.add_chain(f, t, "postrouting", Some(&nat(Hook::Postrouting, 100)));
    let to_hostports = vec![
        Expr::Fib {
            flags: NFTA_FIB_F_DADDR,
            result: NFT_FIB_RESULT_ADDRTYPE,
            dreg: NFT_REG_1,
        },
        cmp(CmpOp::Eq, RTN_LOCAL.to_ne_bytes().to_vec()),
        Expr::Verdict(Verdict::Jump("hostports".into())),
    ];
    b.add_rule(f, t, "prerouting", &to_hostports, None);
    b.add_rule(f, t, "output", &to_hostports, None);
    for d in dnats {
        let comment = format!("{} → {}:{}", d.mapping, d.pod_ip, d.mapping.container_port);
        b.add_rule(f, t, "hostports", &dnat_rule(d), Some(&comment));
    }
    let mut egress = Vec::new();
    addr_in(false, subnet, CmpOp::Eq, &mut egress);
    addr_in(true, subnet, CmpOp::Neq, &mut egress);
    egress.push(Expr::Masq { flags: 0 });
    b.add_rule(f, t, "postrouting", &egress, Some("pod egress"));
    let loopback = Subnet {
        network: Ipv4Addr::new(127, 0, 0, 0),
        prefix: 8,
    };
    let mut local = Vec::new();
    addr_in(false, &loopback, CmpOp::Eq, &mut local);
    addr_in(true, subnet, CmpOp::Eq, &mut local);
    local.push(Expr::Masq { flags: 0 });
    b.add_rule(f, t, "postrouting", &local, Some("localhost to a hostPort"));
    b
}

/// Writes the table (and `route_localnet` on the bridge).
pub fn apply(bridge: &str, subnet: &Subnet, dnats: &[Dnat]) -> io::Result<()> {
    let mut sock = nftables::open()?;
    let seq = sock.next_seq();
    nftables::apply(&mut sock, batch(bridge, subnet, dnats, seq)).map_err(|e| {
        io::Error::new(e.error.kind(), format!("table {}: {e}", table_name(bridge)))
    })?;
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    std::fs::write(&path, b"1").map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// Deletes the table, if it is there.
pub fn remove(bridge: &str) -> io::Result<()> {
    let mut sock = nftables::open()?;
    let seq = sock.next_seq();
    let mut b = Batch::new(seq);
    b.add_table(Family::Ipv4, &table_name(bridge));
    b.delete_table(Family::Ipv4, &table_name(bridge));
    nftables::apply(&mut sock, b).map_err(|e| io::Error::new(e.error.kind(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::messages;

    #[test]
    fn the_table_is_replaced_whole_in_one_batch() {
        let subnet = Subnet::parse("10.88.0.0/24").unwrap();
        let dnat = Dnat {
            mapping: PortMapping {
                container: "app".into(),
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None,
            },
            pod_ip: "10.88.0.5".parse().unwrap(),
        };
        let (bytes, first, last) = batch("nanolet0", &subnet, &[dnat.clone(), dnat], 100).finish();
        let kinds: Vec<u16> = messages(&bytes).map(|m| m.unwrap().kind).collect();
        let t = nftables::msg_type;
        let mut want = vec![nftables::NFNL_MSG_BATCH_BEGIN];
        want.extend([t(0), t(2), t(0)]); // add, delete, add table
        want.extend([t(3); 4]); // hostports, prerouting, output, postrouting
        want.extend([t(6); 2 + 2 + 2]); // two jumps, two DNATs, two masquerades
        want.push(nftables::NFNL_MSG_BATCH_END);
        assert_eq!(kinds, want);
        assert_eq!((first, last), (100, 100 + want.len() as u32 - 2));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("nanolet-nanolet0") && text.contains("hostPort 8080/TCP"));
    }
}
