//! `cargo bench --bench proxy -- shapes`: what the kernel's commit costs for three ruleset
//! shapes of the same Services, loaded with `nft -f` into fresh namespaces (the kernel's
//! work dominates; `nft` parses all three alike). It answers "which shape does the kernel
//! commit in near-linear time" before nanolet's builder changes shape:
//!
//! - `kube-proxy`: per Service a chain with an anonymous `numgen` verdict map and one chain
//!   per endpoint (nanolet's shape today);
//! - `anon-map`: per Service a chain that DNATs through an anonymous `numgen` map of
//!   `addr . port` (no endpoint chains; still one set per Service);
//! - `shared-map`: no per-Service chain or set: the Service verdict map jumps to one chain
//!   per endpoint count, which DNATs through one map keyed by `daddr . proto . dport .
//!   numgen`; hairpin masquerade through one set of `endpoint . endpoint . port`.
//!
//! Only the ClusterIP path (enough to compare costs): affinity and Local policies are not in
//! these texts.

use super::{ENDPOINTS, Netns, cluster_ip, endpoint};
use std::fmt::Write as _;
use std::time::Duration;

const HEAD: &str = "table ip pxshape {
 chain out { type nat hook output priority -100; policy accept;
  ip daddr . meta l4proto . th dport vmap @services
 }
 chain post { type nat hook postrouting priority srcnat; policy accept;
  meta mark & 0x4000 == 0x4000 masquerade
 }
";

fn services_map(n: u32, target: impl Fn(u32) -> String) -> String {
    let elems: Vec<String> = (0..n)
        .map(|i| format!("{} . tcp . 80 : goto {}", cluster_ip(i), target(i)))
        .collect();
    format!(
        " map services {{ type ipv4_addr . inet_proto . inet_service : verdict\n  elements = {{ {} }}\n }}\n",
        elems.join(", ")
    )
}

fn kube_proxy(n: u32) -> String {
    let mut t = String::from(HEAD);
    for i in 0..n {
        let vmap: Vec<String> = (0..ENDPOINTS)
            .map(|j| format!("{j} : goto ep-{i}-{j}"))
            .collect();
        let _ = writeln!(
            t,
            " chain svc-{i} {{\n  numgen random mod {ENDPOINTS} vmap {{ {} }}\n }}",
            vmap.join(", ")
        );
        for j in 0..ENDPOINTS {
            let ep = endpoint(i, j);
            let _ = writeln!(
                t,
                " chain ep-{i}-{j} {{\n  ip saddr {ep} meta mark set meta mark | 0x4000\n  meta l4proto tcp dnat ip to {ep}:8080\n }}"
            );
        }
    }
    t + &services_map(n, |i| format!("svc-{i}")) + "}\n"
}

fn anon_map(n: u32) -> String {
    let mut t = String::from(HEAD);
    for i in 0..n {
        let map: Vec<String> = (0..ENDPOINTS)
            .map(|j| format!("{j} : {} . 8080", endpoint(i, j)))
            .collect();
        let _ = writeln!(
            t,
            " chain svc-{i} {{\n  meta l4proto tcp dnat ip to numgen random mod {ENDPOINTS} map {{ {} }}\n }}",
            map.join(", ")
        );
    }
    t + &services_map(n, |i| format!("svc-{i}")) + "}\n"
}

fn shared_map(n: u32) -> String {
    let mut t = String::from(HEAD);
    let _ = writeln!(
        t,
        " chain dnat-{ENDPOINTS} {{\n  meta l4proto {{ tcp, udp, sctp }} dnat ip to ip daddr . meta l4proto . th dport . numgen random mod {ENDPOINTS} map @backends\n }}"
    );
    let (mut backends, mut hairpin) = (Vec::new(), Vec::new());
    for i in 0..n {
        for j in 0..ENDPOINTS {
            let ep = endpoint(i, j);
            backends.push(format!("{} . tcp . 80 . {j} : {ep} . 8080", cluster_ip(i)));
            hairpin.push(format!("{ep} . {ep} . 8080"));
        }
    }
    let _ = writeln!(
        t,
        " map backends {{ typeof ip daddr . meta l4proto . th dport . numgen random mod {ENDPOINTS} : ip daddr . th dport\n  elements = {{ {} }}\n }}",
        backends.join(", ")
    );
    let _ = writeln!(
        t,
        " set hairpin {{ type ipv4_addr . ipv4_addr . inet_service\n  elements = {{ {} }}\n }}\n chain hairpin {{ type nat hook postrouting priority srcnat + 1; policy accept;\n  ct status dnat ip saddr . ip daddr . th dport @hairpin masquerade\n }}",
        hairpin.join(", ")
    );
    t + &services_map(n, |_| format!("dnat-{ENDPOINTS}")) + "}\n"
}

/// Loads each shape for each count once and prints the wall time of `nft -f`.
pub fn shapes(counts: &[u32]) {
    type Shape = (&'static str, fn(u32) -> String);
    let shapes: [Shape; 3] = [
        ("kube-proxy", kube_proxy),
        ("anon-map", anon_map),
        ("shared-map", shared_map),
    ];
    for &n in counts {
        let mut line = format!("nft -f {n:>6} Services x {ENDPOINTS}:");
        let mut first: Option<Duration> = None;
        for (name, text) in shapes {
            let ns = Netns::new(&format!("shape{n}-{name}"));
            let t = ns.timed(&["nft", "-f", "-"], &text(n));
            let base = *first.get_or_insert(t);
            let _ = write!(
                line,
                " | {name} {:>8.1} ms ({:.2}x)",
                t.as_secs_f64() * 1000.0,
                t.as_secs_f64() / base.as_secs_f64()
            );
        }
        println!("{line}");
    }
}
