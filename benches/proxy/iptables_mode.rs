//! `cargo bench --bench proxy -- iptables`: the iptables fallback (`proxy.mode: iptables`) for
//! the same Services as the other parts, against the nftables mode in the same run:
//!
//! - render: nanolet's iptables rendering vs the nftables builder, in-process;
//! - cold load: `iptables-legacy-restore --noflush` of the rendered text into a fresh namespace
//!   vs `nft -f` of the nftables mode's text for the same Services;
//! - resync: what the agent does every `syncPeriod` in iptables mode (`iptables-legacy-save`,
//!   the restore input against what it lists, `iptables-legacy-restore`) vs the cold load.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use nanolet::proxy::build::build;
use nanolet::proxy::iptables::render;
use nanolet::proxy::iptables_text::{parse_save, restore_input};
use nanolet::proxy::model::{EndpointSlice, Service};
use nanolet::proxy::nft_text::render_replace;

use super::{Netns, median, ms, node, world};

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

pub fn iptables_mode(n: u32, runs: usize) {
    let restore = ["iptables-legacy-restore", "-w", "5", "--noflush"];
    let (services, slices) = world(n);
    let s: Vec<Service> = services
        .iter()
        .map(|v| Service::from_json(v).unwrap().unwrap())
        .collect();
    let e: Vec<EndpointSlice> = slices
        .iter()
        .map(|v| EndpointSlice::from_json(v).unwrap().unwrap())
        .collect();
    let (sr, er): (Vec<&Service>, Vec<&EndpointSlice>) = (s.iter().collect(), e.iter().collect());
    let (mut rendering, mut building) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(render(&sr, &er, &node()));
        rendering.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(build(&s, &e, &node()));
        building.push(t.elapsed());
    }
    let rendered = render(&sr, &er, &node());
    let family = &rendered.families[0];
    let cold_text = restore_input(family, &BTreeMap::new());
    let nft_text = render_replace(&build(&s, &e, &node()).ruleset);
    let (mut cold, mut resync, mut nft) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..runs {
        let ns = Netns::new(&format!("iptm{n}-{k}"));
        cold.push(ns.timed(&restore, &cold_text));
        let t = Instant::now();
        let saved = Command::new("ip")
            .args(["netns", "exec", &ns.0, "iptables-legacy-save"])
            .output()
            .unwrap();
        let input = restore_input(family, &parse_save(&String::from_utf8_lossy(&saved.stdout)));
        ns.timed(&restore, &input);
        resync.push(t.elapsed());
        let ns = Netns::new(&format!("iptn{n}-{k}"));
        nft.push(ns.timed(&["nft", "-f", "-"], &nft_text));
    }
    let (r, b) = (median(rendering), median(building));
    let (c, s, f) = (median(cold), median(resync), median(nft));
    println!(
        "iptables mode {n:>6} Services x {}: render {:>7.1} ms vs nftables build {:>7.1} ms ({:.2}x) | cold iptables-legacy-restore {:>8.1} ms vs nft -f {:>8.1} ms ({:.2}x) | resync (save + restore) {:>8.1} ms ({:.2}x of cold)",
        super::ENDPOINTS,
        ms(r),
        ms(b),
        ratio(r, b),
        ms(c),
        ms(f),
        ratio(c, f),
        ms(s),
        ratio(s, c)
    );
}
