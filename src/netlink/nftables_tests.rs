//! Layout tests for the nf_tables encoder: the bytes match what `nft` 1.0.6 sends
//! (`nft --debug=mnl`), and the batch frames and acknowledgement flags are right.

use super::*;
use crate::netlink::{NLM_F_ACK, attrs, messages};

fn msgs(bytes: &[u8]) -> Vec<crate::netlink::Message<'_>> {
    messages(bytes).collect::<io::Result<_>>().unwrap()
}

#[test]
fn a_batch_is_framed_by_begin_and_end_and_only_the_last_message_asks_for_an_ack() {
    let mut b = Batch::new(100);
    b.add_table(Family::Ipv4, "t");
    b.add_chain(Family::Ipv4, "t", "c", None);
    let (bytes, first, last) = b.finish();
    assert_eq!((first, last), (100, 102));
    let m = msgs(&bytes);
    let kinds: Vec<u16> = m.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        vec![
            NFNL_MSG_BATCH_BEGIN,
            0x0a00 | NFT_MSG_NEWTABLE,
            0x0a00 | NFT_MSG_NEWCHAIN,
            NFNL_MSG_BATCH_END
        ]
    );
    // nfgenmsg of the begin marker: AF_UNSPEC, version 0, res_id NFNL_SUBSYS_NFTABLES (BE).
    assert_eq!(m[0].payload[..4], [0, 0, 0, 10]);
    assert_eq!(m[1].payload[..4], [2, 0, 0, 0]);
    let acks: Vec<bool> = m.iter().map(|m| m.flags & NLM_F_ACK != 0).collect();
    assert_eq!(acks, vec![false, false, true, false]);
    assert_eq!(m[3].seq, 103);
}

#[test]
fn a_base_chain_carries_type_policy_and_hook_like_nft() {
    let mut b = Batch::new(1);
    let base = BaseChainSpec {
        chain_type: "filter",
        hook: Hook::Forward,
        priority: -110,
        accept: true,
    };
    b.add_chain(Family::Ipv4, "nanolet", "filter-forward", Some(&base));
    let (bytes, _, _) = b.finish();
    let m = msgs(&bytes)[1];
    let a: Vec<(u16, &[u8])> = attrs(&m.payload[4..]).collect();
    assert_eq!(a[0], (NFTA_CHAIN_TABLE, &b"nanolet\0"[..]));
    assert_eq!(a[1], (NFTA_CHAIN_NAME, &b"filter-forward\0"[..]));
    assert_eq!(a[2], (NFTA_CHAIN_TYPE, &b"filter\0"[..]));
    assert_eq!(a[3], (NFTA_CHAIN_POLICY, &[0, 0, 0, 1][..]));
    let hook: Vec<(u16, &[u8])> = attrs(a[4].1).collect();
    assert_eq!(hook[0], (NFTA_HOOK_HOOKNUM, &[0, 0, 0, 2][..]));
    // -110 as nft sends it: ff ff ff 92.
    assert_eq!(hook[1], (NFTA_HOOK_PRIORITY, &[0xff, 0xff, 0xff, 0x92][..]));
}

#[test]
fn a_concatenated_verdict_map_matches_nfts_declaration() {
    let mut b = Batch::new(1);
    let spec = SetSpec {
        name: "service-ips".into(),
        flags: 0,
        key_type: datatype::concat(&[
            datatype::IPADDR,
            datatype::INET_PROTOCOL,
            datatype::INET_SERVICE,
        ]),
        key_len: 12,
        key_byteorder: 0,
        data_type: Some(NFT_DATA_VERDICT),
        data_len: 0,
        typeof_udata: Vec::new(),
        timeout_ms: None,
        size: None,
        comment: None,
    };
    let r = b.add_set(Family::Ipv4, "nanolet", &spec);
    b.add_elements(
        Family::Ipv4,
        "nanolet",
        &r,
        &[Element {
            key: vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0],
            verdict: Some(Verdict::Goto("svc".into())),
            data: None,
        }],
    );
    let (bytes, _, _) = b.finish();
    let m = msgs(&bytes);
    let set: Vec<(u16, &[u8])> = attrs(&m[1].payload[4..]).collect();
    let get = |k| set.iter().find(|(t, _)| *t == k).unwrap().1;
    assert_eq!(get(NFTA_SET_FLAGS), [0, 0, 0, 8]);
    assert_eq!(get(NFTA_SET_KEY_TYPE), [0, 0, 0x73, 0x0d]);
    assert_eq!(get(NFTA_SET_KEY_LEN), [0, 0, 0, 12]);
    assert_eq!(get(NFTA_SET_DATA_TYPE), [0xff, 0xff, 0xff, 0]);
    assert_eq!(get(NFTA_SET_ID), [0, 0, 0, 1]);
    let el: Vec<(u16, &[u8])> = attrs(&m[2].payload[4..]).collect();
    assert_eq!(el[2].0, NFTA_SET_ELEM_LIST_SET_ID);
    let list = attrs(el[3].1).next().unwrap().1;
    let parts: Vec<(u16, &[u8])> = attrs(list).collect();
    let key: Vec<(u16, &[u8])> = attrs(parts[0].1).collect();
    assert_eq!(key[0].1, [10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]);
    let verdict: Vec<(u16, &[u8])> = attrs(attrs(parts[1].1).next().unwrap().1).collect();
    assert_eq!(
        verdict[0],
        (NFTA_VERDICT_CODE, &[0xff, 0xff, 0xff, 0xfc][..])
    );
    assert_eq!(verdict[1], (NFTA_VERDICT_CHAIN, &b"svc\0"[..]));
}

#[test]
fn long_element_lists_are_split_into_several_messages() {
    let mut b = Batch::new(1);
    let els: Vec<Element> = (0..5000u32)
        .map(|i| Element {
            key: i.to_be_bytes().to_vec(),
            verdict: Some(Verdict::Goto(format!("service-chain-{i}"))),
            data: None,
        })
        .collect();
    b.add_elements(Family::Ipv4, "t", &SetRef::named("m"), &els);
    let (bytes, _, _) = b.finish();
    let m = msgs(&bytes);
    assert!(m.len() > 4, "{} messages", m.len());
    let mut seen = 0;
    for msg in &m[1..m.len() - 1] {
        assert!(msg.payload.len() < 65535);
        let list = attrs(&msg.payload[4..])
            .find(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
            .unwrap()
            .1;
        seen += attrs(list).count();
    }
    assert_eq!(seen, 5000);
}

#[test]
fn rule_comments_are_nftnl_userdata() {
    let mut b = Batch::new(1);
    b.add_rule(
        Family::Ipv4,
        "t",
        "c",
        &[Expr::Verdict(Verdict::Drop)],
        Some("drop it"),
    );
    let (bytes, _, _) = b.finish();
    let m = msgs(&bytes)[1];
    let a: Vec<(u16, &[u8])> = attrs(&m.payload[4..]).collect();
    assert_eq!(a[3], (NFTA_RULE_USERDATA, &b"\x00\x08drop it\x00"[..]));
    let exprs: Vec<(u16, &[u8])> = attrs(a[2].1).collect();
    let e: Vec<(u16, &[u8])> = attrs(exprs[0].1).collect();
    assert_eq!(e[0], (NFTA_EXPR_NAME, &b"immediate\0"[..]));
}

/// A `Write` into a shared buffer, to see what a spilling batch wrote and when.
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn many_chains(b: &mut Batch) {
    b.add_table(Family::Ipv4, "t");
    for i in 0..200 {
        b.add_chain(Family::Ipv4, "t", &format!("chain-{i}"), None);
    }
}

#[test]
fn a_spilling_batch_writes_the_same_bytes_in_parts_as_it_grows() {
    let mut whole = Batch::new(7);
    many_chains(&mut whole);
    let (expected, first, last) = whole.finish();

    let out = Shared::default();
    let mut spilled = Batch::new(7);
    spilled.spill_to(Box::new(out.clone()), 1024);
    many_chains(&mut spilled);
    let before_finish = out.0.borrow().len();
    assert!(
        before_finish > 0 && before_finish < expected.len(),
        "nothing was handed on before the end: {before_finish} of {}",
        expected.len()
    );
    assert_eq!(spilled.finish_spilled().unwrap(), (first, last));
    assert_eq!(*out.0.borrow(), expected);
    let acks = msgs(&expected)
        .iter()
        .filter(|m| m.flags & NLM_F_ACK != 0)
        .count();
    assert_eq!(acks, 1, "still one acknowledgement, on the last message");
}

#[test]
fn a_spilling_batch_reports_a_failed_write() {
    struct Broken;
    impl io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut b = Batch::new(1);
    b.spill_to(Box::new(Broken), 64);
    many_chains(&mut b);
    let err = b.finish_spilled().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}
