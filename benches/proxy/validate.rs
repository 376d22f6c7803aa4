//! `cargo bench --bench proxy -- validate` (only when named): why the kernel's commit of one
//! added Service grows with the table. One element added with `nft add element` to a verdict
//! map whose elements `jump` to a chain, and to a data map of the same key, each holding 100
//! and then 100 000 elements. A transaction that adds a jump makes nf_tables validate the
//! table's jumps, which walks the verdict map; a data element needs no validation. The `nft`
//! process costs the same in every case, so the difference is the kernel's.

use super::Netns;
use std::fmt::Write as _;
use std::time::Duration;

/// `10.x.y.z . 80` for element `i`.
fn key(i: u32) -> String {
    format!("10.{}.{}.{} . 80", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// A table with a verdict map `vm` and a data map `dm`, `n` elements each.
fn table(n: u32) -> String {
    let mut t = String::from(
        "table ip pxvalidate {\n chain target { }\n\
         map vm { type ipv4_addr . inet_service : verdict; }\n\
         map dm { type ipv4_addr . inet_service : ipv4_addr; }\n\
         chain pre { type nat hook prerouting priority 0; policy accept;\n\
          ip daddr . tcp dport vmap @vm\n  dnat to ip daddr . tcp dport map @dm\n }\n}\n",
    );
    for start in (0..n).step_by(1000) {
        let end = n.min(start + 1000);
        let vm: Vec<String> = (start..end)
            .map(|i| format!("{} : jump target", key(i)))
            .collect();
        let dm: Vec<String> = (start..end)
            .map(|i| format!("{} : 10.200.0.1", key(i)))
            .collect();
        let _ = writeln!(t, "add element ip pxvalidate vm {{ {} }}", vm.join(", "));
        let _ = writeln!(t, "add element ip pxvalidate dm {{ {} }}", dm.join(", "));
    }
    t
}

/// Median of `runs` single-element additions to `map`, each a new key beyond the table's.
fn add_one(ns: &Netns, map: &str, value: &str, runs: u32) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|k| {
            let line = format!(
                "add element ip pxvalidate {map} {{ 10.250.{}.{} . 80 : {value} }}\n",
                k / 250,
                k % 250 + 1
            );
            ns.timed(&["nft", "-f", "-"], &line)
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Prints the median time of one added jump element and one added data element, at 100 and
/// 100 000 elements per map.
pub fn validate(runs: u32) {
    let mut at = Vec::new();
    for n in [100u32, 100_000] {
        let ns = Netns::new("validate");
        ns.timed(&["nft", "-f", "-"], &table(n));
        let jump = add_one(&ns, "vm", "jump target", runs);
        let data = add_one(&ns, "dm", "10.200.0.1", runs);
        println!(
            "one element added to maps of {n:>6}: jump {:>8.2} ms | data {:>8.2} ms (median of {runs}, `nft` process included)",
            jump.as_secs_f64() * 1e3,
            data.as_secs_f64() * 1e3
        );
        at.push((jump, data));
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "   100 000 vs 100: jump element {:.2}x, data element {:.2}x",
        ratio(at[1].0, at[0].0),
        ratio(at[1].1, at[0].1)
    );
}
