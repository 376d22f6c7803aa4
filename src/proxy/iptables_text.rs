//! The text side of the iptables fallback (pure): rules in `iptables-save`'s canonical form,
//! what `iptables-save` says the kernel holds of nanolet ([`parse_save`]), and the
//! `iptables-restore --noflush` input that replaces it with what [`super::iptables`] rendered
//! ([`restore_input`]).
//!
//! ```text
//!  *nat
//!  :NANOLET-… - [0:0]        every chain of nanolet's, wanted or stale: declared = flushed
//!  -D PREROUTING …           the jumps into nanolet's chains found by iptables-save
//!  -I PREROUTING 1 …         the new jumps, at the top of the built-in chains, in order
//!  -A NANOLET-… …            the rules
//!  -X NANOLET-…              the stale chains, now empty and unreferenced
//!  COMMIT                    the kernel swaps the whole table at once
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::iptables::{FamilyRules, PREFIX, Rendered, TableRules};
use super::model::{IpFamily, Protocol};

/// An address as a one-host prefix, as `iptables-save` prints it.
pub(super) fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// One rule in `iptables-save`'s canonical order: source, destination, protocol, then the
/// matches in the order given, then the target.
#[derive(Debug, Default)]
pub(super) struct Rule {
    src: Option<(bool, String)>,
    dst: Option<String>,
    proto: Option<Protocol>,
    comment: Option<String>,
    dport: Option<u16>,
    matches: Vec<String>,
}

impl Rule {
    pub(super) fn new() -> Rule {
        Rule::default()
    }

    pub(super) fn src(mut self, negated: bool, prefix: String) -> Rule {
        self.src = Some((negated, prefix));
        self
    }

    pub(super) fn dst(mut self, prefix: String) -> Rule {
        self.dst = Some(prefix);
        self
    }

    pub(super) fn port(mut self, proto: Protocol, dport: u16) -> Rule {
        self.proto = Some(proto);
        self.dport = Some(dport);
        self
    }

    pub(super) fn proto(mut self, proto: Protocol) -> Rule {
        self.proto = Some(proto);
        self
    }

    pub(super) fn comment(mut self, c: &str) -> Rule {
        self.comment = Some(c.to_string());
        self
    }

    pub(super) fn matching(mut self, m: String) -> Rule {
        self.matches.push(m);
        self
    }

    /// The rule with its target (`-j` and the target's options).
    pub(super) fn to(self, target: &str) -> String {
        let mut s = String::new();
        let mut word = |w: &str| {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(w);
        };
        if let Some((negated, prefix)) = &self.src {
            word(&format!("{}-s {prefix}", if *negated { "! " } else { "" }));
        }
        if let Some(d) = &self.dst {
            word(&format!("-d {d}"));
        }
        if let Some(p) = self.proto {
            word(&format!("-p {}", p.as_nft()));
        }
        if let Some(c) = &self.comment {
            word(&format!("-m comment --comment \"{c}\""));
        }
        if let (Some(p), Some(port)) = (self.proto, self.dport) {
            word(&format!("-m {} --dport {port}", p.as_nft()));
        }
        for m in &self.matches {
            word(m);
        }
        word(&format!("-j {target}"));
        s
    }
}

/// What one table of the kernel holds that concerns nanolet, read from `iptables-save`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// nanolet's chains (named [`PREFIX`]…).
    pub chains: BTreeSet<String>,
    /// Rules in built-in chains that jump to one of nanolet's chains: (chain, rule spec).
    pub jumps: Vec<(String, String)>,
    /// Every rule of nanolet's chains, as saved (`-A CHAIN …`), for comparisons.
    pub rules: Vec<String>,
}

/// Parses `iptables-save` output into what each table (`nat`, `filter`, …) holds of nanolet.
pub fn parse_save(text: &str) -> BTreeMap<String, Existing> {
    let mut out: BTreeMap<String, Existing> = BTreeMap::new();
    let mut table: Option<String> = None;
    let mut builtin: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.to_string());
            builtin.clear();
            out.entry(name.to_string()).or_default();
            continue;
        }
        let Some(t) = table.as_ref().and_then(|t| out.get_mut(t)) else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let (Some(name), Some(policy)) = (words.next(), words.next()) else {
                continue;
            };
            if policy != "-" {
                builtin.insert(name.to_string());
            } else if name.starts_with(PREFIX) {
                t.chains.insert(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let Some((chain, spec)) = rule.split_once(' ') else {
                continue;
            };
            if chain.starts_with(PREFIX) {
                t.rules.push(line.to_string());
            } else if builtin.contains(chain) && jumps_to_nanolet(spec) {
                t.jumps.push((chain.to_string(), spec.to_string()));
            }
        } else if line == "COMMIT" {
            table = None;
        }
    }
    out
}

fn jumps_to_nanolet(spec: &str) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(PREFIX))
}

/// The `iptables-restore --noflush` input that makes `table` hold exactly `want` of nanolet,
/// whatever it held before (`have`): every chain of nanolet is declared (which flushes it),
/// the old jumps from built-in chains are deleted and the new ones inserted at their tops,
/// and chains nanolet no longer wants are deleted. The kernel commits one table at once.
pub fn restore_table(table: &str, want: &TableRules, have: &Existing) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "*{table}");
    let stale: Vec<&String> = have
        .chains
        .iter()
        .filter(|c| !want.chains.contains_key(*c))
        .collect();
    for chain in want.chains.keys().chain(stale.iter().copied()) {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    for (chain, spec) in &have.jumps {
        let _ = writeln!(s, "-D {chain} {spec}");
    }
    let mut position: BTreeMap<&str, usize> = BTreeMap::new();
    for (chain, spec) in &want.jumps {
        let n = position.entry(chain).or_insert(0);
        *n += 1;
        let _ = writeln!(s, "-I {chain} {n} {spec}");
    }
    for (chain, rules) in &want.chains {
        for r in rules {
            let _ = writeln!(s, "-A {chain} {r}");
        }
    }
    for chain in stale {
        let _ = writeln!(s, "-X {chain}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The whole `iptables-restore --noflush` input of one family.
pub fn restore_input(rules: &FamilyRules, have: &BTreeMap<String, Existing>) -> String {
    let empty = Existing::default();
    let mut s = restore_table("nat", &rules.nat, have.get("nat").unwrap_or(&empty));
    s.push_str(&restore_table(
        "filter",
        &rules.filter,
        have.get("filter").unwrap_or(&empty),
    ));
    s
}

/// What a table should list in `iptables-save` once written: nanolet's rules, `-A CHAIN …`.
pub fn saved_rules(t: &TableRules) -> Vec<String> {
    t.chains
        .iter()
        .flat_map(|(c, rules)| rules.iter().map(move |r| format!("-A {c} {r}")))
        .collect()
}

/// The rules as text (`nanolet proxy dump --mode iptables`, goldens): each family's restore
/// input for tables that hold nothing of nanolet yet.
pub fn render_text(r: &Rendered) -> String {
    let mut s = String::new();
    for f in &r.families {
        let tool = match f.family {
            IpFamily::V4 => "iptables-restore",
            IpFamily::V6 => "ip6tables-restore",
        };
        let _ = writeln!(s, "# {}: {tool} --noflush", f.family.as_kubernetes());
        s.push_str(&restore_input(f, &BTreeMap::new()));
    }
    s
}
