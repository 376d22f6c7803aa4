//! The iptables fallback (`proxy.mode: iptables`) through the real kernel, with the harness of
//! `tests/proxy_kernel.rs`: nanolet's agent runs in a network namespace of its own (the
//! "node") and writes its rules with `iptables-legacy-restore` (the kernel's legacy xtables,
//! what a kernel without nf_tables has); endpoints are TCP and UDP echo servers in two more
//! namespaces behind veth pairs, and clients connect from the node namespace (locally
//! generated traffic takes the `nat OUTPUT` path). Nothing leaves these namespaces: the node
//! namespace has no route out, and the Service range goes on-link nowhere there.
//!
//! ```text
//!   netns node (nanolet agent, client)       netns ep1 (10.201.1.2)   netns ep2 (10.201.2.2)
//!     veth 10.201.1.1/24 ───────────────────── veth
//!     veth 10.201.2.1/24 ──────────────────────────────────────────── veth
//!     10.96.0.0/16 on-link on the first veth (nobody answers ARP: goes nowhere)
//! ```
//!
//! Root tests (`root_or_skip`): they need root, `ip` and `iptables-legacy-restore` (Debian's
//! `iptables`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

const MODE: Mode = Mode::Iptables;

#[path = "common/proxy_world.rs"]
mod proxy_world;

use proxy_world::{Mode, NEXT, World, many_services, root_or_skip, service, sh, slice};

impl World {
    /// `iptables-legacy-save` in the node namespace.
    fn save(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node, "iptables-legacy-save"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nanolet proxy dump --mode iptables` of the config dir: what the agent should write.
    fn dump(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_nanolet"))
            .args(["proxy", "dump", "--mode", "iptables", "--config-dir"])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// nanolet's rules (`-A NANOLET-…`) in an iptables-save or restore text, sorted.
fn nanolet_rules(text: &str) -> Vec<String> {
    let mut rules: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("-A NANOLET-"))
        .map(str::to_string)
        .collect();
    rules.sort();
    rules
}

/// How many rules of built-in chains jump to nanolet's chains.
fn jumps(save: &str) -> usize {
    save.lines()
        .filter(|l| {
            l.starts_with("-A ") && !l.starts_with("-A NANOLET-") && l.contains("-j NANOLET-")
        })
        .count()
}

#[test]
fn iptables_mode_spreads_over_endpoints_follows_removals_and_refuses_without_endpoints() {
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

    // The kernel holds exactly what `proxy dump --mode iptables` renders, in the legacy
    // tables, with one jump per built-in chain (3 in nat, 6 in filter), and no nftables table.
    w.wait_until("the kernel holds the rendered rules", || {
        nanolet_rules(&w.save()) == nanolet_rules(&w.dump())
    });
    assert_eq!(jumps(&w.save()), 9, "{}", w.save());
    let tables = Command::new("ip")
        .args(["netns", "exec", &w.node, "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("nanolet"),
        "iptables mode wrote no nftables table"
    );

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

    // Removing an endpoint takes effect (the stale endpoint chains go).
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
    w.wait_until("the removed endpoint's chains are gone", || {
        !w.save().contains("10.201.1.2") && nanolet_rules(&w.save()) == nanolet_rules(&w.dump())
    });

    // No endpoints: connection refused (REJECT in the filter table).
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

    // A restarted agent replaces its rules without doubling its jumps.
    w.kill_agent();
    w.write_services(
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "10.96.0.10", ""),
            slice("web", &["10.201.1.2"])
        ),
    );
    w.start_agent();
    w.wait_until("the restarted agent's endpoint answers", || {
        w.tcp("10.96.0.10:80").as_deref() == Ok("ep1")
    });
    assert_eq!(jumps(&w.save()), 9, "{}", w.save());
}

#[test]
fn iptables_mode_nodeports_answer_and_session_affinity_sticks() {
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
    let empty_np = "apiVersion: v1\nkind: Service\nmetadata: {name: np-empty, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.31\n  ports:\n  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30081}\n";
    w.write_services(
        "all.yaml",
        &format!(
            "{sticky}---\n{}---\n{np}---\n{np_slice}---\n{empty_np}",
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
    // A NodePort without endpoints is refused on the node's address.
    assert_eq!(
        w.tcp("10.201.1.1:30081"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
}

#[test]
fn iptables_mode_flushes_udp_flows_to_a_removed_endpoint() {
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
    let port = 40_000 + (std::process::id() % 20_000) as u16 + 1;
    w.wait_until("the clusterIP answers UDP", || {
        w.udp_from(port, "10.96.0.10:53").is_some()
    });
    let first = w.udp_from(port, "10.96.0.10:53").unwrap();
    let (gone, stays, want) = if first == "ep1" {
        ("10.201.1.2", "10.201.2.2", "ep2")
    } else {
        ("10.201.2.2", "10.201.1.2", "ep1")
    };
    w.write_services(
        "dns.yaml",
        &format!(
            "{}---\n{}",
            service("dns", "10.96.0.10", ""),
            slice("dns", &[stays])
        ),
    );
    w.wait_until("the endpoint left the rules", || {
        !w.save().contains(&format!("--to-destination {gone}:8080"))
    });
    // The removed endpoint's server still runs: only the flush moves the flow.
    w.wait_until("the same flow reaches the other endpoint", || {
        w.udp_from(port, "10.96.0.10:53").as_deref() == Some(want)
    });
}

/// Every golden shape (`tests/golden/proxy-iptables/`) loads into a fresh namespace with the
/// legacy programs of its family, and the kernel then lists exactly the rules of the golden.
#[test]
fn every_golden_loads_and_saves_as_rendered() {
    if !root_or_skip(MODE) {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/proxy-iptables");
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for path in names {
        let text = fs::read_to_string(&path).unwrap();
        let ns = format!(
            "ipg{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &ns]);
        let result = std::panic::catch_unwind(|| {
            for part in text.split("# IPv").skip(1) {
                let part = format!("# IPv{part}");
                let (tool, save) = if part.starts_with("# IPv6") {
                    ("ip6tables-legacy-restore", "ip6tables-legacy-save")
                } else {
                    ("iptables-legacy-restore", "iptables-legacy-save")
                };
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &ns, tool, "-w", "5", "--noflush"])
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(part.as_bytes())
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}: {tool}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let saved = Command::new("ip")
                    .args(["netns", "exec", &ns, save])
                    .output()
                    .unwrap();
                assert_eq!(
                    nanolet_rules(&String::from_utf8_lossy(&saved.stdout)),
                    nanolet_rules(&part),
                    "{}",
                    path.display()
                );
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn iptables_mode_sigkill_mid_sync_leaves_old_or_new_rules_and_flows_survive_a_restart() {
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

    // SIGKILL while a large change is on its way: each table is the old or the new one (the
    // restore child, if it was running, finishes on its own), never a mix.
    let many = many_services(300);
    w.write_services("many.yaml", &many);
    std::thread::sleep(Duration::from_millis(30));
    w.kill_agent();
    std::thread::sleep(Duration::from_millis(500));
    let save = w.save();
    let nat = save.split("*nat").nth(1).unwrap_or_default();
    // Two ports per Service, one SVC chain each.
    let chains = nat.matches(":NANOLET-SVC-").count();
    assert!(
        chains == 2 || chains == 602,
        "old (2) or new (602) chains, got {chains}\n{}",
        w.log()
    );
    flow.exchange("after kill\n").unwrap();

    // Restart: the full sync rewrites the rules; the established flow carries on.
    fs::remove_file(w.path("services/many.yaml")).unwrap();
    w.start_agent();
    w.wait_until("the restarted agent wrote its rules", || {
        let save = w.save();
        let nat = save.split("*nat").nth(1).unwrap_or_default().to_string();
        nat.matches(":NANOLET-SVC-").count() == 2
    });
    assert_eq!(jumps(&w.save()), 9);
    flow.exchange("after restart\n").unwrap();
    assert!(w.tcp("10.96.0.10:80").is_ok());
}
