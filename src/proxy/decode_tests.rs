//! An independent decoder reads the bytes nanolet writes: `netlink-packet-netfilter` (a
//! dev-dependency, written from the same uapi headers by other people) must parse every
//! message of a full sync, and find in it the tables, sets and expressions we meant.

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload, Parseable};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

use super::*;
use crate::netlink::nftables::Batch;
use crate::proxy::lower::lower_ops;

/// Every message of one full sync of `shape`, decoded, as `Debug` text.
fn decoded(shape: &str) -> Vec<String> {
    let r = built(shape).ruleset;
    let mut ops: Vec<Op> = r.tables.iter().map(|t| Op::DeleteTable(t.family)).collect();
    ops.extend(r.tables.iter().cloned().map(Op::AddTable));
    let mut batch = Batch::new(1);
    lower_ops(&ops, &mut batch);
    let (bytes, _, _) = batch.finish();
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let frame: &[u8] = &rest[..len];
        let msg = NetlinkMessage::<NetfilterMessage>::parse(&NetlinkBuffer::new(&frame))
            .unwrap_or_else(|e| panic!("{shape}: message {} does not decode: {e}", out.len()));
        let NetlinkPayload::InnerMessage(nf) = msg.payload else {
            panic!("{shape}: not a netfilter message: {msg:?}")
        };
        out.push(format!("{:?}", nf.inner));
        if let NetfilterMessageInner::NfTables(m) = &nf.inner {
            assert!(
                !matches!(m, NfTablesMessage::Other { .. }),
                "{shape}: unknown message {m:?}"
            );
        }
        rest = &rest[(len + 3) & !3..];
    }
    out
}

#[test]
fn every_message_of_every_golden_shape_decodes() {
    for s in SHAPES {
        let msgs = decoded(s);
        assert!(msgs.len() > 20, "{s}: {} messages", msgs.len());
        for m in &msgs {
            // Attributes the decoder does not know would come back as `Other(DefaultNla …)`.
            assert!(!m.contains("Other(DefaultNla"), "{s}: {m}");
        }
    }
}

#[test]
fn the_decoder_sees_the_service_map_and_its_lookup() {
    let msgs = decoded("clusterip");
    let print = || msgs.join("\n");
    let set = msgs
        .iter()
        .find(|m| m.contains("NewSet") && m.contains("Name(\"service-ips\")"))
        .unwrap_or_else(|| panic!("{}", print()));
    // ipv4_addr . inet_proto . inet_service, 12 bytes, verdict data.
    assert!(set.contains("KeyType(29453)"), "{set}");
    assert!(set.contains("KeyLen(12)"), "{set}");
    assert!(set.contains("DataType(4294967040)"), "{set}");
    let rule = msgs
        .iter()
        .find(|m| m.contains("NewRule") && m.contains("Chain(\"services\"), Expressions"))
        .unwrap_or_else(|| panic!("{}", print()));
    assert!(rule.contains("Set(\"service-ips\")"), "{rule}");
    assert!(rule.contains("DestinationRegister(Verdict)"), "{rule}");
    assert!(rule.contains("DestinationRegister(Reg32_01)"), "{rule}");
    assert!(rule.contains("DestinationRegister(Reg32_02)"), "{rule}");
}
