//! Services through the real kernel: nanolet's agent runs in a network namespace of its own
//! (the "node"), endpoints are TCP and UDP echo servers in two more namespaces behind veth
//! pairs, and clients connect from the node namespace (locally generated traffic takes the
//! `nat-output` path). Nothing leaves these namespaces: the node namespace has no route out,
//! and the Service and NodePort ranges are routed to a blackhole there.
//!
//! ```text
//!   netns node (nanolet agent, client)       netns ep1 (10.201.1.2)   netns ep2 (10.201.2.2)
//!     veth 10.201.1.1/24 ───────────────────── veth
//!     veth 10.201.2.1/24 ──────────────────────────────────────────── veth
//!     10.96.0.0/16 on-link on the first veth (nobody answers ARP: goes nowhere)
//! ```
//!
//! Root tests (`root_or_skip`): they need root, `ip` and the kernel's nf_tables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::Duration;

const MODE: Mode = Mode::Nftables;

#[path = "common/proxy_world.rs"]
mod proxy_world;

use proxy_world::{Mode, World, many_services, root_or_skip, service, slice};

impl World {
    fn nft_list(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.node, "nft", "list", "table", "ip", "nanolet",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn a_cluster_ip_spreads_over_endpoints_follows_removals_and_refuses_without_endpoints() {
    if !root_or_skip(MODE) {
        return;
    }
    let mut w = World::new(MODE);
    w.start_servers();
    w.write_services(
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "10.96.0.10", ""),
            slice("web", &["10.201.1.2", "10.201.2.2"])
        ),
    );
    w.start_agent();
    w.wait_until("the clusterIP answers", || w.tcp("10.96.0.10:80").is_ok());

    // A roughly even spread over 200 connections (each endpoint p=0.5: 60..140 is > 6 sigma).
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..200 {
        *seen.entry(w.tcp("10.96.0.10:80").unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| (60..=140).contains(n)), "{seen:?}");
    assert!(
        w.udp("10.96.0.10:53").is_some(),
        "UDP through the clusterIP"
    );

    // Removing an endpoint takes effect.
    w.write_services(
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "10.96.0.10", ""),
            slice("web", &["10.201.2.2"])
        ),
    );
    w.wait_until("only ep2 answers", || {
        (0..20).all(|_| w.tcp("10.96.0.10:80").as_deref() == Ok("ep2"))
    });

    // No endpoints: connection refused (an ICMP port unreachable from the reject rule).
    w.write_services(
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "10.96.0.10", ""),
            slice("web", &[])
        ),
    );
    w.wait_until("connection refused", || {
        w.tcp("10.96.0.10:80") == Err(std::io::ErrorKind::ConnectionRefused)
    });
    // An unallocated address in the Service range is dropped, not refused.
    assert!(matches!(
        w.tcp("10.96.0.99:80"),
        Err(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
    ));
    // route_localnet stays 0.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.node,
            "cat",
            "/proc/sys/net/ipv4/conf/all/route_localnet",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

#[test]
fn session_affinity_sticks_and_nodeports_answer() {
    if !root_or_skip(MODE) {
        return;
    }
    let mut w = World::new(MODE);
    w.start_servers();
    let sticky = service(
        "sticky",
        "10.96.0.20",
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
    );
    let np = "apiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.30\n  ports:\n  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}\n";
    let np_slice =
        slice("np", &["10.201.2.2"]).replace("- {name: udp, port: 8080, protocol: UDP}\n", "");
    w.write_services(
        "all.yaml",
        &format!(
            "{sticky}---\n{}---\n{np}---\n{np_slice}",
            slice("sticky", &["10.201.1.2", "10.201.2.2"])
        ),
    );
    w.start_agent();
    w.wait_until("the clusterIP answers", || w.tcp("10.96.0.20:80").is_ok());
    let first = w.tcp("10.96.0.20:80").unwrap();
    for _ in 0..30 {
        assert_eq!(w.tcp("10.96.0.20:80").unwrap(), first, "session affinity");
    }
    w.wait_until("the NodePort answers", || {
        w.tcp("10.201.1.1:30080").as_deref() == Ok("ep2")
    });
}

#[test]
fn restart_and_sigkill_keep_flows_and_a_whole_ruleset() {
    if !root_or_skip(MODE) {
        return;
    }
    let mut w = World::new(MODE);
    w.start_servers();
    w.write_services(
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "10.96.0.10", ""),
            slice("web", &["10.201.1.2", "10.201.2.2"])
        ),
    );
    w.start_agent();
    w.wait_until("the clusterIP answers", || w.tcp("10.96.0.10:80").is_ok());

    // An established flow, held open across a SIGKILL and a restart of nanolet.
    let flow = w.hold_flow("10.96.0.10:80");
    flow.exchange(
        "before
",
    )
    .unwrap();

    // SIGKILL while it writes (a large change in flight): the kernel holds the old or the new
    // ruleset, never a mix: either way every chain the maps name exists and `nft` lists it.
    let many = many_services(300);
    w.write_services("many.yaml", &many);
    std::thread::sleep(Duration::from_millis(30));
    w.kill_agent();
    let listing = w.nft_list();
    assert!(listing.contains("chain services"), "{listing}\n{}", w.log());
    // Two ports per Service, one @service-ips element each.
    let ports = listing.matches(": goto clusterip-").count();
    assert!(
        ports == 2 || ports == 602,
        "old (2) or new (602) service ports, got {ports}"
    );
    flow.exchange("after kill\n").unwrap();

    // Restart: the full sync replaces the table; the established flow carries on.
    fs::remove_file(w.path("services/many.yaml")).unwrap();
    w.start_agent();
    w.wait_until("the restarted agent wrote its ruleset", || {
        w.nft_list().matches(": goto clusterip-").count() == 2
    });
    flow.exchange("after restart\n").unwrap();
    assert!(w.tcp("10.96.0.10:80").is_ok());
}

#[test]
fn udp_flows_to_a_removed_endpoint_are_flushed() {
    if !root_or_skip(MODE) {
        return;
    }
    let mut w = World::new(MODE);
    w.start_servers();
    w.write_services(
        "dns.yaml",
        &format!(
            "{}---\n{}",
            service("dns", "10.96.0.10", ""),
            slice("dns", &["10.201.1.2", "10.201.2.2"])
        ),
    );
    w.start_agent();
    // Every datagram from one client port shares one conntrack entry, so one endpoint.
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    w.wait_until("the clusterIP answers UDP", || {
        w.udp_from(port, "10.96.0.10:53").is_some()
    });
    let first = w.udp_from(port, "10.96.0.10:53").unwrap();
    for _ in 0..5 {
        assert_eq!(
            w.udp_from(port, "10.96.0.10:53").unwrap(),
            first,
            "one flow, one endpoint"
        );
    }
    let (gone, stays) = if first == "ep1" {
        ("10.201.1.2", "10.201.2.2")
    } else {
        ("10.201.2.2", "10.201.1.2")
    };
    w.write_services(
        "dns.yaml",
        &format!(
            "{}---\n{}",
            service("dns", "10.96.0.10", ""),
            slice("dns", &[stays])
        ),
    );
    w.wait_until("the endpoint left the ruleset", || {
        !w.nft_list().contains(&format!("{gone} . 8080"))
    });
    // The removed endpoint's server still runs: only the flush moves the flow.
    let want = if first == "ep1" { "ep2" } else { "ep1" };
    w.wait_until("the same flow reaches the other endpoint", || {
        w.udp_from(port, "10.96.0.10:53").as_deref() == Some(want)
    });
}
