//! nf_tables over nfnetlink (`linux/netfilter/nf_tables.h`, `linux/netfilter/nfnetlink.h`):
//! tables, chains, sets, maps, elements and rules, written as one atomic batch.
//!
//! This file knows nftables' wire format, not Kubernetes. Callers describe what they want
//! with a small IR ([`Expr`], [`Verdict`], [`SetSpec`], [`BaseChainSpec`]) and append
//! operations to a [`Batch`]; [`apply`] sends the batch as one transaction and reports the
//! first message the kernel refused.
//!
//! ```text
//!  Batch::new ─ add_table / add_chain / add_set / add_elements / add_rule / delete_* ─► finish
//!     NFNL_MSG_BATCH_BEGIN, NFT_MSG_NEW*/DEL* …, NFNL_MSG_BATCH_END      (one sendmsg)
//! ```
//!
//! Layout, as in `nft` 1.0.6 (checked with `nft --debug=netlink,mnl`):
//! - every message is `nlmsghdr` + `nfgenmsg { family, version 0, res_id (big endian) }` +
//!   attributes; numbers inside nf_tables attributes are big endian;
//! - expressions are `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { … } }`;
//! - registers: 16-byte registers `NFT_REG_1..4` or 4-byte `NFT_REG32_00..15`; concatenated
//!   keys are loaded into consecutive 4-byte slots, each component padded to 4 bytes;
//! - set and rule "userdata" is nftnl's TLV (`u8 type, u8 len, value`), which `nft list`
//!   reads back for comments and for how to print keys.
//!
//! Size: a batch is one datagram (nfnetlink processes a batch within one skb), so [`apply`]
//! raises the socket's send buffer to the batch size (`SO_SNDBUFFORCE`, as `nft` does).
//! Element lists are split into several `NEWSETELEM` messages because a nested attribute's
//! length is 16 bits.
//!
//! Only the last message of a batch asks for an acknowledgement: the kernel reports every
//! refused message anyway, and 100 000 acks would overflow the receive buffer.

use std::io;

use super::{
    Builder, Family as SocketFamily, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use super::{NLMSG_ERROR, Socket, messages};

// nfnetlink.h
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

// enum nf_tables_msg_types
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_DELSET: u16 = 11;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_DELSETELEM: u16 = 14;

/// The message type on the wire: subsystem in the high byte.
pub fn msg_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A table's family (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ipv4 = 2,
    Ipv6 = 10,
}

// Attribute numbers, by object.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// `enum nft_set_flags`.
pub const NFT_SET_ANONYMOUS: u32 = 0x1;
pub const NFT_SET_CONSTANT: u32 = 0x2;
pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_MAP: u32 = 0x8;
pub const NFT_SET_TIMEOUT: u32 = 0x10;
pub const NFT_SET_EVAL: u32 = 0x20;

/// `NFT_DATA_VERDICT`: the data type of a verdict map.
pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// nft's data type ids (`enum datatypes` in nftables' datatype.h); a concatenation packs
/// them 6 bits each, first component highest.
pub mod datatype {
    pub const INTEGER: u32 = 4;
    pub const IPADDR: u32 = 7;
    pub const IP6ADDR: u32 = 8;
    pub const INET_PROTOCOL: u32 = 12;
    pub const INET_SERVICE: u32 = 13;

    /// The key type of a concatenation of `parts`.
    pub fn concat(parts: &[u32]) -> u32 {
        parts.iter().fold(0, |acc, t| (acc << 6) | t)
    }
}

/// nftnl userdata tags for sets and rules.
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_COMMENT: u8 = 7;
const UDATA_RULE_COMMENT: u8 = 0;
/// nft's `enum byteorder`.
pub const BYTEORDER_HOST: u32 = 1;
pub const BYTEORDER_BIG_ENDIAN: u32 = 2;

/// Register numbers (`enum nft_registers`).
pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG_2: u32 = 2;
pub const NFT_REG32_00: u32 = 8;

/// The register holding byte `offset` of the register file, as nft numbers it: a 16-byte
/// register when the offset is 16-aligned, else the 4-byte one.
pub fn reg_at(offset: u32) -> u32 {
    if offset.is_multiple_of(16) {
        NFT_REG_1 + offset / 16
    } else {
        NFT_REG32_00 + offset / 4
    }
}

/// Netfilter hooks (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChainSpec {
    /// `filter`, `nat` or `route`.
    pub chain_type: &'static str,
    pub hook: Hook,
    pub priority: i32,
    /// `true` for policy accept, `false` for drop.
    pub accept: bool,
}

/// A verdict, in a rule (`immediate`) or as a map element's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }

    fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// Where a payload expression reads (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Link = 0,
    Network = 1,
    Transport = 2,
}

/// `enum nft_meta_keys` (the ones in use).
pub mod meta {
    pub const MARK: u32 = 3;
    pub const L4PROTO: u32 = 16;
}

/// `enum nft_ct_keys` (the ones in use).
pub mod ct {
    pub const STATE: u32 = 0;
    /// `NF_CT_STATE_NEW_BIT`.
    pub const STATE_NEW: u32 = 8;
}

/// Comparison operators (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// `nat` expression kind (`enum nft_nat_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatType {
    Snat = 0,
    Dnat = 1,
}

/// `NF_NAT_RANGE_*` flags.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
pub const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

/// `dynset` operations (`enum nft_dynset_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynsetOp {
    Add = 0,
    Update = 1,
}

/// `fib` result and flags.
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub const NFTA_FIB_F_SADDR: u32 = 1;
/// `RTN_LOCAL`, the address type `fib … type local` compares with.
pub const RTN_LOCAL: u32 = 2;

/// `reject` types; the code is ICMP's (3 port unreachable) or ICMPv6's (4).
pub const NFT_REJECT_ICMP_UNREACH: u32 = 0;

/// A set named by the rule that refers to it, or (for an anonymous set added in the same
/// batch) by its batch-local id as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRef {
    pub name: String,
    pub id: Option<u32>,
}

impl SetRef {
    pub fn named(name: &str) -> SetRef {
        SetRef {
            name: name.to_string(),
            id: None,
        }
    }
}

/// One expression of a rule, with its registers spelled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `payload load LEN @ BASE + OFFSET => dreg`.
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `meta load KEY => dreg`.
    Meta { key: u32, dreg: u32 },
    /// `meta set KEY with sreg`.
    MetaSet { key: u32, sreg: u32 },
    /// `ct load KEY => dreg`.
    Ct { key: u32, dreg: u32 },
    /// `cmp OP sreg DATA`.
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `lookup sreg set S [dreg D]`: a set membership test, or a map lookup into `dreg`
    /// (`NFT_REG_VERDICT` for a verdict map).
    Lookup {
        sreg: u32,
        set: SetRef,
        dreg: Option<u32>,
    },
    /// `immediate dreg VALUE`.
    Immediate { dreg: u32, value: Vec<u8> },
    /// `immediate reg 0 VERDICT`.
    Verdict(Verdict),
    /// `numgen dreg = random mod MODULUS`.
    NumgenRandom { dreg: u32, modulus: u32 },
    /// `nat TYPE FAMILY addr_min reg proto_min reg flags`.
    Nat {
        nat_type: NatType,
        family: Family,
        addr_reg: Option<u32>,
        proto_reg: Option<u32>,
        flags: u32,
    },
    /// `masq flags F`.
    Masq { flags: u32 },
    /// `reject type T code C`.
    Reject { kind: u32, code: u8 },
    /// `dynset OP reg_key R set S`.
    Dynset {
        op: DynsetOp,
        sreg_key: u32,
        set: SetRef,
    },
    /// `fib FLAGS RESULT => dreg`.
    Fib { flags: u32, result: u32, dreg: u32 },
    /// `counter`.
    Counter,
}

/// A set or map declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// The nft data type id of the key ([`datatype::concat`] for a concatenation).
    pub key_type: u32,
    /// Key length in bytes (components padded to 4 bytes each).
    pub key_len: u32,
    /// How `nft list` should print keys: [`BYTEORDER_BIG_ENDIAN`] for addresses and ports,
    /// [`BYTEORDER_HOST`] for `numgen` values, 0 for a mixed concatenation.
    pub key_byteorder: u32,
    /// Verdict maps: `Some(NFT_DATA_VERDICT)`; data maps: the data's type id.
    pub data_type: Option<u32>,
    /// Data length in bytes of a data map (0 for a verdict map).
    pub data_len: u32,
    /// nft's `typeof` description (user data TLVs, sent after the byte orders): how `nft
    /// list` prints keys whose type alone does not say (a `numgen` value).
    pub typeof_udata: Vec<u8>,
    /// Default element timeout (`NFT_SET_TIMEOUT`).
    pub timeout_ms: Option<u64>,
    /// Number of elements, sent for anonymous (constant) sets as nft does.
    pub size: Option<u32>,
    pub comment: Option<String>,
}

/// One element: its key bytes (already padded per component) and, for a map, the verdict
/// (verdict map) or the data bytes (data map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub verdict: Option<Verdict>,
    pub data: Option<Vec<u8>>,
}

/// Largest element list put in one `NEWSETELEM` message (a nest's length is a u16).
const MAX_ELEMENTS_BYTES: usize = 48 * 1024;

/// A batch of nf_tables messages under construction: one transaction.
#[derive(Debug)]
pub struct Batch {
    b: Builder,
    first_seq: u32,
    seq: u32,
    next_set_id: u32,
    spill: Option<Spill>,
}

/// Where a spilling batch writes its finished messages ([`Batch::spill_to`]).
struct Spill {
    out: Box<dyn io::Write>,
    chunk: usize,
    error: Option<io::Error>,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("chunk", &self.chunk)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// Opens a batch whose messages are numbered from `first_seq`.
    pub fn new(first_seq: u32) -> Batch {
        let mut b = Builder::new();
        b.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq)
            .raw(&nfgenmsg(0, NFNL_SUBSYS_NFTABLES));
        Batch {
            b,
            first_seq,
            seq: first_seq,
            next_set_id: 1,
            spill: None,
        }
    }

    /// Writes the finished messages to `out` whenever `chunk` bytes of them are held, so a
    /// large batch is never held whole here (the proxy streams it to the child that commits
    /// it). Close such a batch with [`Batch::finish_spilled`].
    pub fn spill_to(&mut self, out: Box<dyn io::Write>, chunk: usize) {
        self.spill = Some(Spill {
            out,
            chunk,
            error: None,
        });
    }

    /// Hands the finished messages on when the spill's chunk is full.
    fn maybe_spill(&mut self) {
        let Some(spill) = &mut self.spill else {
            return;
        };
        if self.b.len() < spill.chunk {
            return;
        }
        if spill.error.is_none()
            && let Err(e) = spill.out.write_all(self.b.finished_bytes())
        {
            spill.error = Some(e);
        }
        self.b.clear();
    }

    /// Closes a batch made with [`Batch::spill_to`]: writes the rest and returns the sequence
    /// numbers [`Batch::finish`] would (the first write error, if one failed).
    pub fn finish_spilled(mut self) -> io::Result<(u32, u32)> {
        let spill = self.spill.take();
        let (rest, first, last) = self.finish();
        let Some(mut spill) = spill else {
            return Err(io::Error::other(
                "finish_spilled: the batch was not spilling",
            ));
        };
        if let Some(e) = spill.error.take() {
            return Err(e);
        }
        spill.out.write_all(&rest)?;
        spill.out.flush()?;
        Ok((first, last))
    }

    /// Messages in the batch so far, the begin marker included.
    pub fn len(&self) -> u32 {
        self.seq - self.first_seq + 1
    }

    /// Is it only the begin marker?
    pub fn is_empty(&self) -> bool {
        self.seq == self.first_seq
    }

    fn msg(&mut self, kind: u16, flags: u16, family: Family) -> &mut Builder {
        self.maybe_spill();
        self.seq = self.seq.wrapping_add(1);
        self.b
            .begin(msg_type(kind), NLM_F_REQUEST | flags, self.seq)
            .raw(&nfgenmsg(family as u8, 0))
    }

    /// `add table` (no error when it exists).
    pub fn add_table(&mut self, family: Family, name: &str) {
        self.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, family)
            .attr_str(NFTA_TABLE_NAME, name)
            .attr_u32_be(NFTA_TABLE_FLAGS, 0);
    }

    /// `delete table` with everything in it. Fails the batch when the table does not exist:
    /// precede it with [`Batch::add_table`] to delete whether or not it exists.
    pub fn delete_table(&mut self, family: Family, name: &str) {
        self.msg(NFT_MSG_DELTABLE, 0, family)
            .attr_str(NFTA_TABLE_NAME, name);
    }

    /// `add chain`, a base chain when `base` is given.
    pub fn add_chain(
        &mut self,
        family: Family,
        table: &str,
        name: &str,
        base: Option<&BaseChainSpec>,
    ) {
        let b = self.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family);
        b.attr_str(NFTA_CHAIN_TABLE, table)
            .attr_str(NFTA_CHAIN_NAME, name);
        if let Some(base) = base {
            b.attr_str(NFTA_CHAIN_TYPE, base.chain_type)
                .attr_u32_be(NFTA_CHAIN_POLICY, u32::from(base.accept))
                .nest_begin(NFTA_CHAIN_HOOK)
                .attr_u32_be(NFTA_HOOK_HOOKNUM, base.hook as u32)
                .attr_u32_be(NFTA_HOOK_PRIORITY, base.priority as u32)
                .nest_end();
        }
    }

    /// `flush chain`: deletes every rule of the chain (a `DELRULE` without a handle).
    pub fn flush_chain(&mut self, family: Family, table: &str, name: &str) {
        self.msg(NFT_MSG_DELRULE, 0, family)
            .attr_str(NFTA_RULE_TABLE, table)
            .attr_str(NFTA_RULE_CHAIN, name);
    }

    /// `delete chain` (it must be empty and unreferenced by then).
    pub fn delete_chain(&mut self, family: Family, table: &str, name: &str) {
        self.msg(NFT_MSG_DELCHAIN, 0, family)
            .attr_str(NFTA_CHAIN_TABLE, table)
            .attr_str(NFTA_CHAIN_NAME, name);
    }

    /// `add set` / `add map`. Returns the reference rules use (with a batch-local id, so that
    /// rules in the same batch may refer to an anonymous set).
    pub fn add_set(&mut self, family: Family, table: &str, spec: &SetSpec) -> SetRef {
        let id = self.next_set_id;
        self.next_set_id += 1;
        let mut udata = Vec::new();
        udata_u32(&mut udata, UDATA_SET_KEYBYTEORDER, spec.key_byteorder);
        if spec.data_type.is_some() {
            udata_u32(&mut udata, UDATA_SET_DATABYTEORDER, 0);
        }
        udata.extend_from_slice(&spec.typeof_udata);
        if let Some(c) = &spec.comment {
            udata_str(&mut udata, UDATA_SET_COMMENT, c);
        }
        let mut flags = spec.flags;
        if spec.data_type.is_some() {
            flags |= NFT_SET_MAP;
        }
        if spec.timeout_ms.is_some() {
            flags |= NFT_SET_TIMEOUT;
        }
        let b = self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, family);
        b.attr_str(NFTA_SET_TABLE, table)
            .attr_str(NFTA_SET_NAME, &spec.name)
            .attr_u32_be(NFTA_SET_FLAGS, flags)
            .attr_u32_be(NFTA_SET_KEY_TYPE, spec.key_type)
            .attr_u32_be(NFTA_SET_KEY_LEN, spec.key_len);
        if let Some(t) = spec.data_type {
            b.attr_u32_be(NFTA_SET_DATA_TYPE, t)
                .attr_u32_be(NFTA_SET_DATA_LEN, spec.data_len);
        }
        if let Some(ms) = spec.timeout_ms {
            b.attr_u64_be(NFTA_SET_TIMEOUT, ms);
        }
        b.attr_u32_be(NFTA_SET_ID, id);
        if let Some(size) = spec.size {
            b.nest_begin(NFTA_SET_DESC)
                .attr_u32_be(NFTA_SET_DESC_SIZE, size)
                .nest_end();
        }
        b.attr(NFTA_SET_USERDATA, &udata);
        SetRef {
            name: spec.name.clone(),
            id: Some(id),
        }
    }

    /// `delete set` / `delete map`.
    pub fn delete_set(&mut self, family: Family, table: &str, name: &str) {
        self.msg(NFT_MSG_DELSET, 0, family)
            .attr_str(NFTA_SET_TABLE, table)
            .attr_str(NFTA_SET_NAME, name);
    }

    /// `add element`: as many messages as the list needs.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &SetRef,
        elements: &[Element],
    ) {
        self.elements(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            family,
            table,
            set,
            elements,
        );
    }

    /// `delete element` (keys only are used).
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &SetRef,
        elements: &[Element],
    ) {
        self.elements(NFT_MSG_DELSETELEM, 0, family, table, set, elements);
    }

    fn elements(
        &mut self,
        kind: u16,
        flags: u16,
        family: Family,
        table: &str,
        set: &SetRef,
        elements: &[Element],
    ) {
        let with_data = kind == NFT_MSG_NEWSETELEM;
        let mut rest = elements;
        while !rest.is_empty() {
            let mut bytes = 0;
            let n = rest
                .iter()
                .take_while(|e| {
                    bytes += 64
                        + e.key.len()
                        + e.data.as_ref().map_or(0, Vec::len)
                        + e.verdict
                            .as_ref()
                            .and_then(Verdict::chain)
                            .map_or(0, str::len);
                    bytes <= MAX_ELEMENTS_BYTES
                })
                .count()
                .max(1);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let b = self.msg(kind, flags, family);
            b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
                .attr_str(NFTA_SET_ELEM_LIST_SET, &set.name);
            if let Some(id) = set.id {
                b.attr_u32_be(NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            b.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in chunk {
                b.nest_begin(NFTA_LIST_ELEM)
                    .nest_begin(NFTA_SET_ELEM_KEY)
                    .attr(NFTA_DATA_VALUE, &e.key)
                    .nest_end();
                if let (true, Some(v)) = (with_data, &e.verdict) {
                    b.nest_begin(NFTA_SET_ELEM_DATA);
                    verdict_data(b, v);
                    b.nest_end();
                }
                if let (true, Some(d)) = (with_data, &e.data) {
                    data_value(b, NFTA_SET_ELEM_DATA, d);
                }
                b.nest_end();
            }
            b.nest_end();
        }
    }

    /// `add rule` (appended to the chain) with an optional comment.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr],
        comment: Option<&str>,
    ) {
        let b = self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family);
        b.attr_str(NFTA_RULE_TABLE, table)
            .attr_str(NFTA_RULE_CHAIN, chain)
            .nest_begin(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            b.nest_begin(NFTA_LIST_ELEM)
                .attr_str(NFTA_EXPR_NAME, expr_name(e))
                .nest_begin(NFTA_EXPR_DATA);
            expr_data(b, e);
            b.nest_end().nest_end();
        }
        b.nest_end();
        if let Some(c) = comment {
            let mut udata = Vec::new();
            udata_str(&mut udata, UDATA_RULE_COMMENT, c);
            b.attr(NFTA_RULE_USERDATA, &udata);
        }
    }

    /// Closes the batch: the last message asks for an acknowledgement, then the end marker.
    /// Returns the bytes and the sequence number whose acknowledgement ends the exchange.
    pub fn finish(mut self) -> (Vec<u8>, u32, u32) {
        let last = self.seq;
        self.b.end();
        let mut bytes = self.b.finish();
        set_ack_flag(&mut bytes, last);
        let mut end = Builder::new();
        end.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last.wrapping_add(1))
            .raw(&nfgenmsg(0, NFNL_SUBSYS_NFTABLES));
        bytes.extend_from_slice(&end.finish());
        (bytes, self.first_seq, last)
    }
}

/// Sets `NLM_F_ACK` on the message numbered `seq` in a finished buffer.
fn set_ack_flag(bytes: &mut [u8], seq: u32) {
    let mut off = 0;
    while off + super::HEADER_LEN <= bytes.len() {
        let len = u32::from_ne_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
            as usize;
        let s = u32::from_ne_bytes([
            bytes[off + 8],
            bytes[off + 9],
            bytes[off + 10],
            bytes[off + 11],
        ]);
        if s == seq {
            let flags = u16::from_ne_bytes([bytes[off + 6], bytes[off + 7]]) | NLM_F_ACK;
            bytes[off + 6..off + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        if len < super::HEADER_LEN {
            return;
        }
        off += (len + 3) & !3;
    }
}

/// `struct nfgenmsg`: family, version, res_id (big endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

fn udata_u32(out: &mut Vec<u8>, tag: u8, v: u32) {
    out.extend_from_slice(&[tag, 4]);
    out.extend_from_slice(&v.to_ne_bytes());
}

/// A NUL-terminated string; nftnl limits a TLV to 255 bytes, so longer strings are cut.
fn udata_str(out: &mut Vec<u8>, tag: u8, s: &str) {
    let mut end = s.len().min(254);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&[tag, (end + 1) as u8]);
    out.extend_from_slice(&s.as_bytes()[..end]);
    out.push(0);
}

fn verdict_data(b: &mut Builder, v: &Verdict) {
    b.nest_begin(NFTA_DATA_VERDICT)
        .attr_u32_be(NFTA_VERDICT_CODE, v.code() as u32);
    if let Some(c) = v.chain() {
        b.attr_str(NFTA_VERDICT_CHAIN, c);
    }
    b.nest_end();
}

fn data_value(b: &mut Builder, kind: u16, value: &[u8]) {
    b.nest_begin(kind).attr(NFTA_DATA_VALUE, value).nest_end();
}

fn expr_name(e: &Expr) -> &'static str {
    match e {
        Expr::Payload { .. } => "payload",
        Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
        Expr::Ct { .. } => "ct",
        Expr::Cmp { .. } => "cmp",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Lookup { .. } => "lookup",
        Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
        Expr::NumgenRandom { .. } => "numgen",
        Expr::Nat { .. } => "nat",
        Expr::Masq { .. } => "masq",
        Expr::Reject { .. } => "reject",
        Expr::Dynset { .. } => "dynset",
        Expr::Fib { .. } => "fib",
        Expr::Counter => "counter",
    }
}

/// The `NFTA_EXPR_DATA` attributes of each expression, numbered as in nf_tables.h.
fn expr_data(b: &mut Builder, e: &Expr) {
    match e {
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            b.attr_u32_be(1, *dreg) // NFTA_PAYLOAD_DREG
                .attr_u32_be(2, *base as u32) // BASE
                .attr_u32_be(3, *offset) // OFFSET
                .attr_u32_be(4, *len); // LEN
        }
        Expr::Meta { key, dreg } => {
            b.attr_u32_be(2, *key).attr_u32_be(1, *dreg); // NFTA_META_KEY, DREG
        }
        Expr::MetaSet { key, sreg } => {
            b.attr_u32_be(2, *key).attr_u32_be(3, *sreg); // NFTA_META_KEY, SREG
        }
        Expr::Ct { key, dreg } => {
            b.attr_u32_be(2, *key).attr_u32_be(1, *dreg); // NFTA_CT_KEY, DREG
        }
        Expr::Cmp { sreg, op, data } => {
            b.attr_u32_be(1, *sreg).attr_u32_be(2, *op as u32); // NFTA_CMP_SREG, OP
            data_value(b, 3, data); // NFTA_CMP_DATA
        }
        Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
        } => {
            b.attr_u32_be(1, *sreg) // NFTA_BITWISE_SREG
                .attr_u32_be(2, *dreg) // DREG
                .attr_u32_be(3, mask.len() as u32); // LEN
            data_value(b, 4, mask); // NFTA_BITWISE_MASK
            data_value(b, 5, xor); // NFTA_BITWISE_XOR
        }
        Expr::Lookup { sreg, set, dreg } => {
            b.attr_u32_be(2, *sreg); // NFTA_LOOKUP_SREG
            if let Some(d) = dreg {
                b.attr_u32_be(3, *d); // DREG
            }
            b.attr_str(1, &set.name); // NFTA_LOOKUP_SET
            if let Some(id) = set.id {
                b.attr_u32_be(4, id); // NFTA_LOOKUP_SET_ID
            }
        }
        Expr::Immediate { dreg, value } => {
            b.attr_u32_be(1, *dreg); // NFTA_IMMEDIATE_DREG
            data_value(b, 2, value); // NFTA_IMMEDIATE_DATA
        }
        Expr::Verdict(v) => {
            b.attr_u32_be(1, NFT_REG_VERDICT).nest_begin(2);
            verdict_data(b, v);
            b.nest_end();
        }
        Expr::NumgenRandom { dreg, modulus } => {
            b.attr_u32_be(1, *dreg) // NFTA_NG_DREG
                .attr_u32_be(2, *modulus) // MODULUS
                .attr_u32_be(3, 1) // TYPE: NFT_NG_RANDOM
                .attr_u32_be(4, 0); // OFFSET
        }
        Expr::Nat {
            nat_type,
            family,
            addr_reg,
            proto_reg,
            flags,
        } => {
            b.attr_u32_be(1, *nat_type as u32) // NFTA_NAT_TYPE
                .attr_u32_be(2, *family as u32); // FAMILY
            if let Some(r) = addr_reg {
                b.attr_u32_be(3, *r); // REG_ADDR_MIN
            }
            if let Some(r) = proto_reg {
                b.attr_u32_be(5, *r); // REG_PROTO_MIN
            }
            if *flags != 0 {
                b.attr_u32_be(7, *flags); // FLAGS
            }
        }
        Expr::Masq { flags } => {
            b.attr_u32_be(1, *flags); // NFTA_MASQ_FLAGS
        }
        Expr::Reject { kind, code } => {
            b.attr_u32_be(1, *kind).attr_u8(2, *code); // NFTA_REJECT_TYPE, ICMP_CODE
        }
        Expr::Dynset { op, sreg_key, set } => {
            b.attr_str(1, &set.name); // NFTA_DYNSET_SET_NAME
            if let Some(id) = set.id {
                b.attr_u32_be(2, id); // SET_ID
            }
            b.attr_u32_be(3, *op as u32) // OP
                .attr_u32_be(4, *sreg_key); // SREG_KEY
        }
        Expr::Fib {
            flags,
            result,
            dreg,
        } => {
            b.attr_u32_be(1, *dreg) // NFTA_FIB_DREG
                .attr_u32_be(2, *result) // RESULT
                .attr_u32_be(3, *flags); // FLAGS
        }
        Expr::Counter => {
            b.attr_u64_be(2, 0).attr_u64_be(1, 0); // NFTA_COUNTER_PACKETS, BYTES
        }
    }
}

/// A batch the kernel refused: the errno and the sequence number of the message it names
/// (the begin marker's when the commit itself failed).
#[derive(Debug)]
pub struct ApplyError {
    pub seq: Option<u32>,
    pub error: io::Error,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "nftables: message {seq} refused: {}", self.error),
            None => write!(f, "nftables: {}", self.error),
        }
    }
}

impl std::error::Error for ApplyError {}

impl From<io::Error> for ApplyError {
    fn from(error: io::Error) -> ApplyError {
        ApplyError { seq: None, error }
    }
}

/// Opens a netfilter netlink socket in the caller's network namespace.
pub fn open() -> io::Result<Socket> {
    Socket::open(SocketFamily::Netfilter)
}

/// Sends the batch as one transaction and waits for the kernel's verdict on it. Either every
/// message takes effect or none does.
pub fn apply(sock: &mut Socket, batch: Batch) -> Result<(), ApplyError> {
    let (bytes, first, last) = batch.finish();
    commit(sock, &bytes, first, last)
}

/// The sequence numbers `(first, last)` of a finished batch (as [`Batch::finish`] returns
/// them), read back from its bytes: the begin marker's, and the one before the end marker's.
/// `None` unless the bytes are a whole batch (begin marker first, end marker last).
pub fn batch_bounds(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut first = None;
    let mut end = None;
    for msg in messages(bytes) {
        let msg = msg.ok()?;
        if first.is_none() {
            if msg.kind != NFNL_MSG_BATCH_BEGIN {
                return None;
            }
            first = Some(msg.seq);
        }
        end = Some(msg);
    }
    let end = end?;
    if end.kind != NFNL_MSG_BATCH_END {
        return None;
    }
    Some((first?, end.seq.wrapping_sub(1)))
}

/// Sends a finished batch (`bytes`, numbered `first..=last`) and waits for the verdict.
///
/// The kernel does all of the work inside the `sendmsg` call: netlink hands a datagram to
/// nfnetlink in the sender's context, which checks, applies and commits (or aborts) the whole
/// batch before the call returns, queueing the answers on this socket. So this call blocks
/// for as long as the commit takes, whatever the socket's mode: the agent runs it in a child
/// process (`nanolet internal-nft-commit`, see `proxy::apply`).
pub fn commit(sock: &mut Socket, bytes: &[u8], first: u32, last: u32) -> Result<(), ApplyError> {
    // The whole batch is one datagram: make room for it (root may exceed wmem_max).
    let want = bytes.len() + 64 * 1024;
    if sock.set_send_buffer(want, true).is_err() {
        sock.set_send_buffer(want, false)?;
    }
    sock.send(bytes)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut first_error: Option<ApplyError> = None;
    loop {
        let n = sock.recv(&mut buf)?;
        for msg in messages(&buf[..n]) {
            let msg = msg?;
            if msg.kind != NLMSG_ERROR {
                continue;
            }
            let code = msg.error_code().unwrap_or(0);
            let seq = msg.error_seq().unwrap_or(msg.seq);
            if seq < first || seq > last {
                continue; // an answer to an earlier exchange
            }
            if code != 0 && first_error.is_none() {
                first_error = Some(ApplyError {
                    seq: Some(seq),
                    error: io::Error::from_raw_os_error(-code),
                });
            }
            // The last message's answer comes after the commit (or abort); a failed commit
            // is reported against the begin marker.
            if seq == last || (seq == first && code != 0) {
                return match first_error {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
        }
    }
}

#[cfg(test)]
#[path = "nftables_tests.rs"]
mod tests;
