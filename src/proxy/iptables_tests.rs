//! Tests of the iptables rendering as a user sees it: the restore text for each Service shape
//! (goldens in `tests/golden/proxy-iptables/<shape>.rules`, refreshed with
//! `NANOLET_UPDATE_GOLDEN=1 cargo test proxy::iptables`), kube-proxy's chain names, the
//! endpoint spread, and the restore input that replaces what the kernel held before.

use std::collections::BTreeMap;

use super::super::iptables_text::*;
use super::super::tests::{SHAPES, flows_world, shape};
use super::*;

fn rendered(shape_name: &str) -> Rendered {
    let (services, slices, node) = shape(shape_name);
    let services: Vec<&Service> = services.iter().collect();
    let slices: Vec<&EndpointSlice> = slices.iter().collect();
    render(&services, &slices, &node)
}

fn world() -> Rendered {
    let (services, slices, node) = flows_world();
    let services: Vec<&Service> = services.iter().collect();
    let slices: Vec<&EndpointSlice> = slices.iter().collect();
    render(&services, &slices, &node)
}

fn v4(r: &Rendered) -> &FamilyRules {
    r.families
        .iter()
        .find(|f| f.family == IpFamily::V4)
        .unwrap()
}

/// The rules of one chain of the nat table whose rules mention `needle`, e.g. the
/// `NANOLET-SERVICES` rule of one clusterIP.
fn nat_rule<'a>(f: &'a FamilyRules, chain: &str, needle: &str) -> &'a str {
    f.nat.chains[chain]
        .iter()
        .find(|r| r.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {chain}: {:?}", f.nat.chains))
}

/// The chain a rule jumps to.
fn target(rule: &str) -> &str {
    let words: Vec<&str> = rule.split(' ').collect();
    let at = words.iter().rposition(|w| *w == "-j").unwrap();
    words[at + 1]
}

#[test]
fn golden_restore_texts_match() {
    let update = std::env::var_os("NANOLET_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/proxy-iptables");
    let mut stale = Vec::new();
    for name in SHAPES {
        let r = rendered(name);
        assert_eq!(r.problems, vec![], "{name}");
        let text = render_text(&r);
        let path = dir.join(format!("{name}.rules"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(format!("{} differs:\n{text}", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nrefresh with NANOLET_UPDATE_GOLDEN=1 cargo test proxy::iptables",
        stale.join("\n")
    );
}

#[test]
fn chain_names_are_kube_proxys_hashes_with_nanolets_prefix() {
    // From kube-proxy's own tests: ns1/svc1:p80 over TCP, endpoint 10.180.0.1:80.
    assert_eq!(
        port_chain("SVC", "ns1/svc1:p80", Protocol::Tcp),
        "NANOLET-SVC-XPGD46QRK7WJZT7O"
    );
    assert_eq!(
        endpoint_chain(
            "ns1/svc1:p80",
            Protocol::Tcp,
            &"10.180.0.1:80".parse().unwrap()
        ),
        "NANOLET-SEP-SXIVWICOYRO3J4NJ"
    );
    // Every chain fits iptables' 28 characters, even for 63-character names.
    let long = "a".repeat(63);
    let name = format!("{long}/{long}:{long}");
    assert_eq!(port_chain("SVL", &name, Protocol::Sctp).len(), 28);
    for f in &world().families {
        for c in f.nat.chains.keys().chain(f.filter.chains.keys()) {
            assert!(c.len() <= 28 && c.starts_with(PREFIX), "{c}");
        }
    }
}

#[test]
fn endpoints_are_chosen_with_equal_probability() {
    // Five endpoints: rule i of 5 matches with 1/(5-i) of what reaches it, so each gets 1/5.
    let (mut services, mut slices, node) = shape("clusterip");
    let eps: Vec<serde_json::Value> = (1..=5)
        .map(|i| serde_json::json!({ "addresses": [format!("10.244.1.{i}")] }))
        .collect();
    let mut v = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "web-five", "namespace": "default",
                      "labels": { "kubernetes.io/service-name": "web" } },
        "addressType": "IPv4", "ports": [{ "name": "http", "port": 8080 }] });
    v["endpoints"] = serde_json::Value::Array(eps);
    slices.clear();
    slices.push(EndpointSlice::from_json(&v).unwrap().unwrap());
    let svc = services.remove(0);
    let r = render(&[&svc], &[&slices[0]], &node);
    let f = v4(&r);
    let svc_chain = target(nat_rule(f, SERVICES, "10.96.0.10/32"));
    let rules = &f.nat.chains[svc_chain];
    let probabilities: Vec<f64> = rules
        .iter()
        .filter(|r| r.contains("-j NANOLET-SEP-"))
        .map(|r| {
            r.split("--probability ")
                .nth(1)
                .map_or(1.0, |p| p.split(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(probabilities.len(), 5, "{rules:?}");
    let mut left = 1.0;
    for p in probabilities {
        let share = left * p;
        assert!((share - 0.2).abs() < 1e-9, "{share}");
        left -= share;
    }
    assert!(rules.last().unwrap().starts_with("-j NANOLET-SEP-"));
}

#[test]
fn services_without_endpoints_are_rejected_and_local_ones_dropped_in_the_filter_table() {
    let r = world();
    let f = v4(&r);
    let filter = &f.filter.chains[SERVICES];
    let empty = filter
        .iter()
        .find(|r| r.contains("-d 10.96.0.19/32"))
        .unwrap();
    assert!(
        empty.ends_with("-j REJECT --reject-with icmp-port-unreachable"),
        "{empty}"
    );
    // internalTrafficPolicy Local with only remote endpoints: dropped, not refused.
    let itp = filter
        .iter()
        .find(|r| r.contains("-d 10.96.0.17/32"))
        .unwrap();
    assert!(
        itp.contains("has no local endpoints") && itp.ends_with("-j DROP"),
        "{itp}"
    );
    // externalTrafficPolicy Local without local endpoints: its NodePort drops on the node IP.
    let np = &f.filter.chains[NODEPORTS];
    assert!(
        np.iter().any(|r| r.contains("-d 192.168.1.10/32")
            && r.contains("--dport 30082")
            && r.ends_with("-j DROP")),
        "{np:?}"
    );
    // A NodePort Service without endpoints: refused.
    assert!(
        np.iter()
            .any(|r| r.contains("--dport 30083") && r.contains("-j REJECT")),
        "{np:?}"
    );
    // Nothing of those reaches the nat table.
    let nat = &f.nat.chains[SERVICES];
    assert!(
        !nat.iter()
            .any(|r| r.contains("10.96.0.19/32") || r.contains("10.96.0.17/32"))
    );
    // Unallocated clusterIPs: the service CIDR is dropped after every clusterIP is rejected.
    let check = &f.filter.chains[CLUSTER_IPS_CHECK];
    assert!(
        check.last().unwrap().starts_with("-d 10.96.0.0/16")
            && check.last().unwrap().ends_with("-j DROP")
    );
    assert!(
        check
            .iter()
            .any(|r| r.starts_with("-d 10.96.0.19/32") && r.contains("REJECT"))
    );
}

#[test]
fn ready_endpoints_win_over_terminating_ones_and_local_policies_keep_to_this_node() {
    let r = world();
    let f = v4(&r);
    let dnats = |chain: &str| -> Vec<String> {
        f.nat.chains[chain]
            .iter()
            .filter(|r| r.starts_with("-m statistic") || r.starts_with("-j NANOLET-SEP-"))
            .map(|r| {
                let sep = target(r);
                let dnat = f.nat.chains[sep].last().unwrap();
                dnat.rsplit(' ').next().unwrap().to_string()
            })
            .collect()
    };
    // web: two ready, one not ready, one serving+terminating: only the ready ones.
    let web = target(nat_rule(f, SERVICES, "-d 10.96.0.10/32"));
    assert_eq!(dnats(web), vec!["10.244.1.5:8080", "10.244.2.6:8080"]);
    // term: no ready endpoint: the serving and terminating one.
    let term = target(nat_rule(f, SERVICES, "-d 10.96.0.20/32"));
    assert_eq!(dnats(term), vec!["10.244.1.90:8080"]);
    // itp: internal traffic only to this node's endpoint, through an SVL chain.
    let itp = target(nat_rule(f, SERVICES, "-d 10.96.0.16/32"));
    assert!(itp.starts_with("NANOLET-SVL-"), "{itp}");
    assert_eq!(dnats(itp), vec!["10.244.1.60:8080"]);
    // etp: the NodePort's EXT chain sends pods and the host to all, others to local only.
    let ext = target(nat_rule(f, NODEPORTS, "--dport 30081"));
    let rules = &f.nat.chains[ext];
    assert!(
        rules[0].starts_with("-s 10.244.0.0/16") && target(&rules[0]).starts_with("NANOLET-SVC-")
    );
    assert!(rules[1].contains("--src-type LOCAL") && rules[1].ends_with(MARK_MASQ));
    let local = target(rules.last().unwrap());
    assert!(local.starts_with("NANOLET-SVL-"));
    assert_eq!(dnats(local), vec!["10.244.1.40:8080"]);
}

#[test]
fn session_affinity_checks_recent_lists_before_the_random_choice() {
    let r = rendered("affinity");
    let f = v4(&r);
    let svc = target(nat_rule(f, SERVICES, "-d 10.96.0.10/32"));
    let rules = &f.nat.chains[svc];
    assert!(rules[0].contains("masquerade traffic from outside the cluster"));
    for (i, sep) in rules[1..3].iter().enumerate() {
        assert!(
            sep.starts_with("-m recent --rcheck --seconds 600 --reap --name NANOLET-SEP-"),
            "{i}: {sep}"
        );
        let chain = target(sep);
        assert!(f.nat.chains[chain][1].contains(&format!("-m recent --set --name {chain} ")));
    }
    assert!(rules[3].starts_with("-m statistic"));
}

#[test]
fn udp_backends_are_listed_for_the_conntrack_flush() {
    let r = rendered("multi-port");
    let udp: Vec<String> = r.udp_backends().iter().map(ToString::to_string).collect();
    assert_eq!(udp, vec!["10.244.1.5:5353", "10.244.2.6:5353"]);
}

#[test]
fn claims_follow_the_nftables_builder_first_service_wins() {
    // A second Service with np's clusterIP and NodePort, and endpoints of its own.
    let (services, slices, node) = flows_world();
    let mut taken = services.iter().find(|s| s.name == "np").unwrap().clone();
    taken.name = "zzz-np".into();
    let mut its_slice = slices
        .iter()
        .find(|s| s.service_name == "np")
        .unwrap()
        .clone();
    its_slice.service_name = "zzz-np".into();
    its_slice.name = "zzz-np-1".into();
    let mut all: Vec<&Service> = services.iter().collect();
    all.push(&taken);
    let mut slices: Vec<&EndpointSlice> = slices.iter().collect();
    slices.push(&its_slice);
    let r = render(&all, &slices, &node);
    let nft = crate::proxy::build::build(
        &all.iter().map(|s| (*s).clone()).collect::<Vec<_>>(),
        &slices.iter().map(|s| (*s).clone()).collect::<Vec<_>>(),
        &node,
    );
    assert_eq!(r.problems, nft.problems);
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    let f = v4(&r);
    let np = target(nat_rule(f, NODEPORTS, "--dport 30080"));
    assert_eq!(np, port_chain("EXT", "default/np:http", Protocol::Tcp));
}

#[test]
fn problems_match_the_nftables_builder_for_the_bad_externalips() {
    let (mut services, slices, node) = shape("externalips");
    services[0].external_ips = vec![
        "192.168.1.10".parse().unwrap(),
        "10.96.0.77".parse().unwrap(),
    ]
    .into();
    let r = render(&[&services[0]], &[&slices[0]], &node);
    let nft = crate::proxy::build::build(&services, &slices, &node);
    assert_eq!(r.problems, nft.problems);
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert!(
        !render_text(&r).contains(
            "192.168.1.10/32 -p tcp -m comment --comment \"default/web:http external IP\""
        )
    );
}

#[test]
fn render_is_deterministic_whatever_the_input_order() {
    let (services, slices, node) = flows_world();
    let mut s: Vec<&Service> = services.iter().collect();
    let mut e: Vec<&EndpointSlice> = slices.iter().collect();
    let a = render_text(&render(&s, &e, &node));
    s.reverse();
    e.reverse();
    assert_eq!(a, render_text(&render(&s, &e, &node)));
}

const SAVED: &str = "# Generated by iptables-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:NANOLET-SERVICES - [0:0]
:OTHER - [0:0]
-A INPUT -j OTHER
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"nanolet service portals\" -j NANOLET-SERVICES
-A NANOLET-SERVICES -d 10.96.0.11/32 -p tcp -j REJECT --reject-with icmp-port-unreachable
-A OTHER -j NANOLET-SERVICES
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:NANOLET-SEP-OLD - [0:0]
:NANOLET-SERVICES - [0:0]
-A PREROUTING -m comment --comment \"nanolet service portals\" -j NANOLET-SERVICES
-A NANOLET-SERVICES -j NANOLET-SEP-OLD
COMMIT
";

#[test]
fn the_restore_input_replaces_only_nanolets_chains_and_jumps() {
    let have = parse_save(SAVED);
    assert_eq!(
        have["filter"].jumps,
        vec![(
            "OUTPUT".to_string(),
            "-m conntrack --ctstate NEW -m comment --comment \"nanolet service portals\" -j NANOLET-SERVICES".to_string()
        )],
        "a jump from a chain that is not built in (OTHER) is not ours to move"
    );
    assert_eq!(have["nat"].chains.len(), 2);
    let r = rendered("clusterip");
    let text = restore_input(v4(&r), &have);
    let lines: Vec<&str> = text.lines().collect();
    // The stale chain is declared (flushed) and deleted after the new rules.
    let decl = lines
        .iter()
        .position(|l| *l == ":NANOLET-SEP-OLD - [0:0]")
        .unwrap();
    let del = lines
        .iter()
        .position(|l| *l == "-X NANOLET-SEP-OLD")
        .unwrap();
    assert!(decl < del);
    assert!(
        lines[..del]
            .iter()
            .any(|l| l.starts_with("-A NANOLET-SERVICES"))
    );
    // Old jumps go, new ones come first in their built-in chains, in order.
    assert!(lines.contains(
        &"-D PREROUTING -m comment --comment \"nanolet service portals\" -j NANOLET-SERVICES"
    ));
    assert!(lines.contains(
        &"-I PREROUTING 1 -m comment --comment \"nanolet service portals\" -j NANOLET-SERVICES"
    ));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-I OUTPUT 2 ") && l.ends_with(CLUSTER_IPS_CHECK))
    );
    // Nothing but nanolet's chains and the built-in chains' jumps is named.
    for l in &lines {
        assert!(
            !l.contains("OTHER") && (l.starts_with('*') || *l == "COMMIT" || l.contains(PREFIX)),
            "{l}"
        );
    }
    // Both tables, each committed on its own.
    assert_eq!(lines.iter().filter(|l| **l == "COMMIT").count(), 2);
}

#[test]
fn a_fresh_render_saves_as_written() {
    // The rendered rules are in iptables-save's canonical form: what parse_save reads back
    // from a kernel holding them is the same list.
    let r = world();
    let f = v4(&r);
    let mut saved = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n");
    for c in f.nat.chains.keys() {
        saved.push_str(&format!(":{c} - [0:0]\n"));
    }
    for l in saved_rules(&f.nat) {
        saved.push_str(&l);
        saved.push('\n');
    }
    saved.push_str("COMMIT\n");
    let have: BTreeMap<String, Existing> = parse_save(&saved);
    assert_eq!(have["nat"].rules, saved_rules(&f.nat));
    assert_eq!(have["nat"].chains.len(), f.nat.chains.len());
}
