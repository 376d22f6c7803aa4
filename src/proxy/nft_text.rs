//! Renders a [`Ruleset`] (or a [`diff`](super::ruleset::diff)) as `nft -f` text.
//!
//! The layout follows `nft list table`: sets, then maps, then chains, one rule a line, tabs
//! for indentation. It is what `nanolet proxy dump` prints and what the golden files hold, and
//! it loads with `nft -f` (checked against nftables 1.0.6 in a throwaway network namespace).
//! Numbers are printed as numbers (`priority -110`) rather than nft's symbolic names, so the
//! text does not depend on the nft version.
//!
//! This module must never do I/O: it returns strings.

use std::fmt::Write;

use super::model::IpFamily;
use super::ruleset::{
    Action, AddrMatch, BaseChain, Chain, ChainType, DnatMap, Hook, Key, KeyPart, KeyType,
    LookupKey, Map, MapVerdict, Match, Op, Rule, Ruleset, Set, TABLE, Table,
};

/// The whole ruleset as `table … { … }` blocks, IPv4 first.
pub fn render(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    for (i, t) in ruleset.tables.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_table(&mut out, t);
    }
    out
}

/// A script that replaces nanolet's tables whole, atomically (`nft -f` is one transaction):
/// `add table` makes the `delete` safe when the table does not exist yet.
pub fn render_replace(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    for t in &ruleset.tables {
        let f = family_word(t.family);
        let _ = writeln!(out, "add table {f} {TABLE}\ndelete table {f} {TABLE}");
    }
    out.push_str(&render(ruleset));
    out
}

/// The operations of one incremental update, one `nft` command a line.
pub fn render_ops(ops: &[Op]) -> String {
    let mut out = String::new();
    for op in ops {
        render_op(&mut out, op);
    }
    out
}

fn family_word(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

fn render_table(out: &mut String, t: &Table) {
    let _ = writeln!(out, "table {} {TABLE} {{", family_word(t.family));
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push('\n');
        }
        first = false;
    };
    for (name, set) in &t.sets {
        sep(out);
        let _ = writeln!(out, "\tset {name} {{");
        for line in set_decl(t.family, set) {
            let _ = writeln!(out, "\t\t{line}");
        }
        if !set.elements.is_empty() {
            let items: Vec<String> = set.elements.iter().map(key).collect();
            write_elements(out, &items);
        }
        out.push_str("\t}\n");
    }
    for (name, map) in &t.maps {
        sep(out);
        let _ = writeln!(out, "\tmap {name} {{");
        for line in map_decl(t.family, map) {
            let _ = writeln!(out, "\t\t{line}");
        }
        if !map.elements.is_empty() {
            let items: Vec<String> = map
                .elements
                .iter()
                .map(|(k, v)| format!("{} : {}", key(k), map_verdict(v)))
                .collect();
            write_elements(out, &items);
        }
        out.push_str("\t}\n");
    }
    for (name, map) in &t.dnat_maps {
        sep(out);
        let _ = writeln!(out, "\tmap {name} {{");
        for line in dnat_map_decl(t.family, map) {
            let _ = writeln!(out, "\t\t{line}");
        }
        if !map.elements.is_empty() {
            let items: Vec<String> = map
                .elements
                .iter()
                .map(|(k, v)| endpoint_element(k, v))
                .collect();
            write_elements(out, &items);
        }
        out.push_str("\t}\n");
    }
    for (name, chain) in &t.chains {
        sep(out);
        render_chain(out, t.family, name, chain);
    }
    out.push_str("}\n");
}

fn write_elements(out: &mut String, items: &[String]) {
    out.push_str("\t\telements = { ");
    out.push_str(&items.join(",\n\t\t\t     "));
    out.push_str(" }\n");
}

fn render_chain(out: &mut String, fam: IpFamily, name: &str, chain: &Chain) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(base) = &chain.base {
        let _ = writeln!(out, "\t\t{}", base_decl(base));
    }
    for r in &chain.rules {
        let _ = writeln!(out, "\t\t{}", rule(fam, r));
    }
    out.push_str("\t}\n");
}

fn base_decl(b: &BaseChain) -> String {
    let t = match b.chain_type {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
    };
    let h = match b.hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    };
    format!("type {t} hook {h} priority {}; policy accept;", b.priority)
}

fn key_type(fam: IpFamily, keys: &[KeyType]) -> String {
    keys.iter()
        .map(|k| match (k, fam) {
            (KeyType::Addr, IpFamily::V4) => "ipv4_addr",
            (KeyType::Addr, IpFamily::V6) => "ipv6_addr",
            (KeyType::Proto, _) => "inet_proto",
            (KeyType::Port, _) => "inet_service",
            (KeyType::Index, _) => "integer",
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

fn set_decl(fam: IpFamily, set: &Set) -> Vec<String> {
    let mut lines = vec![format!("type {}", key_type(fam, &set.key))];
    if let Some(t) = set.timeout_seconds {
        lines.push("flags dynamic,timeout".to_string());
        lines.push(format!("timeout {t}s"));
    }
    if let Some(c) = &set.comment {
        lines.push(format!("comment {}", quote(c)));
    }
    lines
}

/// The modulus written in a [`DnatMap`]'s `typeof` (only its type matters: every `numgen`
/// modulus looks it up).
pub const TYPEOF_MODULUS: u32 = 65536;

/// `ip daddr . meta l4proto . th dport` (or `meta l4proto . th dport`).
fn lookup_key(ip: &str, key: LookupKey) -> String {
    match key {
        LookupKey::DaddrProtoPort => format!("{ip} daddr . meta l4proto . th dport"),
        LookupKey::ProtoPort => "meta l4proto . th dport".to_string(),
    }
}

fn dnat_map_decl(fam: IpFamily, map: &DnatMap) -> Vec<String> {
    let ip = family_word(fam);
    let mut lines = vec![format!(
        "typeof {} . numgen random mod {TYPEOF_MODULUS} : {ip} daddr . th dport",
        lookup_key(ip, map.key)
    )];
    if let Some(c) = &map.comment {
        lines.push(format!("comment {}", quote(c)));
    }
    lines
}

fn endpoint_element(k: &Key, v: &std::net::SocketAddr) -> String {
    format!("{} : {} . {}", key(k), v.ip(), v.port())
}

fn map_decl(fam: IpFamily, map: &Map) -> Vec<String> {
    let mut lines = vec![format!("type {} : verdict", key_type(fam, &map.key))];
    if let Some(c) = &map.comment {
        lines.push(format!("comment {}", quote(c)));
    }
    lines
}

/// nft strings are double-quoted and cannot contain a double quote; our comments are ours.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

fn key(k: &Key) -> String {
    k.iter()
        .map(|p| match p {
            KeyPart::Addr(a) => a.to_string(),
            KeyPart::Proto(p) => p.as_nft().to_string(),
            KeyPart::Port(n) => n.to_string(),
            KeyPart::Index(n) => n.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

fn map_verdict(v: &MapVerdict) -> String {
    match v {
        MapVerdict::Goto(c) => format!("goto {c}"),
        MapVerdict::Drop => "drop".to_string(),
    }
}

/// One rule as nft writes it: matches, then the action, then the comment.
pub fn rule(fam: IpFamily, r: &Rule) -> String {
    let ip = family_word(fam);
    let mut parts: Vec<String> = r.matches.iter().map(|m| match_expr(ip, m)).collect();
    parts.push(action(ip, &r.action));
    if let Some(c) = &r.comment {
        parts.push(format!("comment {}", quote(c)));
    }
    parts.join(" ")
}

fn addr_match(ip: &str, dir: &str, m: &AddrMatch) -> String {
    match m {
        AddrMatch::Is(a) => format!("{ip} {dir} {a}"),
        AddrMatch::In(c) => format!("{ip} {dir} {c}"),
        AddrMatch::NotIn(c) => format!("{ip} {dir} != {c}"),
        AddrMatch::InSet(s) => format!("{ip} {dir} @{s}"),
    }
}

fn match_expr(ip: &str, m: &Match) -> String {
    match m {
        Match::Saddr(a) => addr_match(ip, "saddr", a),
        Match::Daddr(a) => addr_match(ip, "daddr", a),
        Match::Dport(p, n) => format!("{} dport {n}", p.as_nft()),
        Match::FibSaddrLocal => "fib saddr type local".to_string(),
        Match::CtStateNew => "ct state new".to_string(),
        Match::MarkBitClear(b) => format!("meta mark & {b:#010x} == 0x00000000"),
        Match::L4Proto(p) => format!("meta l4proto {}", p.as_nft()),
        Match::HairpinInSet(s) => format!("{ip} saddr . {ip} daddr . th dport @{s}"),
    }
}

fn action(ip: &str, a: &Action) -> String {
    match a {
        Action::Jump(c) => format!("jump {c}"),
        Action::Goto(c) => format!("goto {c}"),
        Action::Return => "return".to_string(),
        Action::Drop => "drop".to_string(),
        Action::Reject => "reject".to_string(),
        Action::Vmap { key, map } => format!("{} vmap @{map}", lookup_key(ip, *key)),
        Action::DnatMap { key, modulus, map } => format!(
            "dnat {ip} to {} . numgen random mod {modulus} map @{map}",
            lookup_key(ip, *key)
        ),
        Action::NumgenGoto(targets) => {
            let arms: Vec<String> = targets
                .iter()
                .enumerate()
                .map(|(i, t)| format!("{i} : goto {t}"))
                .collect();
            format!(
                "numgen random mod {} vmap {{ {} }}",
                targets.len(),
                arms.join(", ")
            )
        }
        Action::SetMarkBit(b) => format!("meta mark set meta mark | {b:#010x}"),
        Action::ToggleMarkBit(b) => format!("meta mark set meta mark ^ {b:#010x}"),
        Action::Masquerade => "masquerade fully-random".to_string(),
        Action::Dnat(p, addr) => format!("meta l4proto {} dnat to {addr}", p.as_nft()),
        Action::UpdateSetWithSaddr(s) => format!("update @{s} {{ {ip} saddr }}"),
    }
}

fn render_op(out: &mut String, op: &Op) {
    let t = |f: &IpFamily| format!("{} {TABLE}", family_word(*f));
    let _ = match op {
        Op::AddTable(table) => {
            let _ = writeln!(out, "add table {}", t(&table.family));
            render_table(out, table);
            Ok(())
        }
        // `add table` first: deleting a table that does not exist would fail the batch.
        Op::DeleteTable(f) => writeln!(out, "add table {0}\ndelete table {0}", t(f)),
        Op::AddSet(f, name, set) => writeln!(
            out,
            "add set {} {name} {{ {}; }}",
            t(f),
            set_decl(*f, set).join("; ")
        ),
        Op::AddMap(f, name, map) => writeln!(
            out,
            "add map {} {name} {{ {}; }}",
            t(f),
            map_decl(*f, map).join("; ")
        ),
        Op::AddDnatMap(f, name, map) => writeln!(
            out,
            "add map {} {name} {{ {}; }}",
            t(f),
            dnat_map_decl(*f, map).join("; ")
        ),
        Op::AddEndpoints(f, name, elements) => {
            let items: Vec<String> = elements
                .iter()
                .map(|(k, v)| endpoint_element(k, v))
                .collect();
            writeln!(
                out,
                "add element {} {name} {{ {} }}",
                t(f),
                items.join(", ")
            )
        }
        Op::AddChain(f, name, None) => writeln!(out, "add chain {} {name}", t(f)),
        Op::AddChain(f, name, Some(base)) => {
            writeln!(out, "add chain {} {name} {{ {} }}", t(f), base_decl(base))
        }
        Op::FlushChain(f, name) => writeln!(out, "flush chain {} {name}", t(f)),
        Op::AddRule(f, chain, r) => writeln!(out, "add rule {} {chain} {}", t(f), rule(*f, r)),
        Op::AddElements(f, name, elements) => {
            let items: Vec<String> = elements
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{} : {}", key(k), map_verdict(v)),
                    None => key(k),
                })
                .collect();
            writeln!(
                out,
                "add element {} {name} {{ {} }}",
                t(f),
                items.join(", ")
            )
        }
        Op::DeleteElements(f, name, keys) => {
            let items: Vec<String> = keys.iter().map(key).collect();
            writeln!(
                out,
                "delete element {} {name} {{ {} }}",
                t(f),
                items.join(", ")
            )
        }
        Op::DeleteChain(f, name) => writeln!(out, "delete chain {} {name}", t(f)),
        Op::DeleteSet(f, name) => writeln!(out, "delete set {} {name}", t(f)),
        Op::DeleteMap(f, name) => writeln!(out, "delete map {} {name}", t(f)),
    };
}
