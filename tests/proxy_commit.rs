//! The proxy's kernel commit does not block the agent's thread: the batch goes to a child
//! (`nanolet internal-nft-commit`) and the executor runs other tasks until its verdict. One
//! test process of its own, because the test installs the agent's child reaper (which reaps
//! every child of the process).
//!
//! Root test (`root_or_skip`): it needs root, `ip`, `nft` and the kernel's nf_tables; it
//! works in a network namespace it creates and removes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use async_executor::LocalExecutor;
use async_io::Timer;
use nanolet::proxy::apply::{Netlink, Ops, Writer};
use nanolet::proxy::build::build;
use nanolet::proxy::model::{Cidr, EndpointSlice, NodeConfig, Service};
use nanolet::proxy::ruleset::Op;
use nanolet::sys::reaper::Reaper;
use serde_json::json;

fn root_or_skip() -> bool {
    let ok = rustix::process::geteuid().is_root()
        && Command::new("ip").arg("-V").output().is_ok()
        && Command::new("nft").arg("--version").output().is_ok();
    if !ok && std::env::var_os("NANOLET_REQUIRE_ROOT_TESTS").is_some() {
        panic!("root tests are required here but cannot run: need root, ip and nft");
    }
    if !ok {
        eprintln!("skipped: needs root, ip and nft");
    }
    ok
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("pxc-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        Netns(name)
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let fd = std::fs::File::open(format!("/var/run/netns/{}", self.0)).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `n` ClusterIP Services with 10 endpoints each, replacing the tables (a full sync).
fn full_sync_ops(n: u32) -> Vec<Op> {
    let node = NodeConfig {
        node_name: "node-a".into(),
        node_ips: vec!["10.202.1.1".parse().unwrap()],
        cluster_cidrs: vec![Cidr::parse("10.128.0.0/9").unwrap()],
        service_cidrs: vec![Cidr::parse("10.96.0.0/16").unwrap()],
        masquerade_bit: 0x4000,
    };
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let v = json!({ "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": format!("svc-{i}"), "namespace": "default" },
            "spec": { "clusterIP": ip, "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] } });
        services.push(Service::from_json(&v).unwrap().unwrap());
        let eps: Vec<_> = (0..10)
            .map(|j| json!({ "addresses": [format!("10.130.{}.{}", i / 25, (i % 25) * 10 + j + 1)] }))
            .collect();
        let v = json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("svc-{i}-1"), "namespace": "default",
                          "labels": { "kubernetes.io/service-name": format!("svc-{i}") } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": eps });
        slices.push(EndpointSlice::from_json(&v).unwrap().unwrap());
    }
    let r = build(&services, &slices, &node).ruleset;
    let mut ops: Vec<Op> = r.tables.iter().map(|t| Op::DeleteTable(t.family)).collect();
    ops.extend(r.tables.iter().cloned().map(Op::AddTable));
    ops
}

#[test]
fn other_tasks_run_while_a_large_batch_commits_and_refusals_are_named() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_nanolet"));
    let ops = full_sync_ops(500);
    let (ticks_during, refused) = std::thread::scope(|s| {
        s.spawn(|| {
            // The child inherits this thread's network namespace.
            ns.enter();
            let (reaper, signals) = Reaper::install().unwrap();
            let ex = LocalExecutor::new();
            ex.spawn(reaper.clone().run(signals)).detach();
            let ticks = Rc::new(Cell::new(0u64));
            let counter = ticks.clone();
            ex.spawn(async move {
                loop {
                    Timer::after(Duration::from_millis(1)).await;
                    counter.set(counter.get() + 1);
                }
            })
            .detach();
            let mut writer = Netlink::open(exe.clone(), reaper).unwrap();
            async_io::block_on(ex.run(async {
                let before = ticks.get();
                // Streamed, as the agent's full sync hands its operations over.
                let mut stream = ops.clone().into_iter();
                writer.write(Ops::Streamed(&mut stream)).await.unwrap();
                let during = ticks.get() - before;
                // A rule for a chain that does not exist: the kernel refuses the batch.
                let bad = match &ops[1] {
                    Op::AddTable(t) => {
                        let rule = t.chains.values().find_map(|c| c.rules.first()).unwrap();
                        Op::AddRule(t.family, "no-such-chain".into(), rule.clone())
                    }
                    other => panic!("expected the table after its delete: {other:?}"),
                };
                (during, writer.write(Ops::Listed(vec![bad])).await)
            }))
        })
        .join()
        .unwrap()
    });
    assert!(
        ticks_during >= 1,
        "the counter task never ran while the batch committed"
    );
    // The last Service (svc-499, 10.96.1.250) is an element of the service map.
    let service_map = [
        "ip",
        "netns",
        "exec",
        &ns.0,
        "nft",
        "list",
        "map",
        "ip",
        "nanolet",
        "service-ips",
    ];
    let listed = sh(&service_map);
    assert!(
        listed.contains("10.96.1.250 . tcp . 80 :"),
        "the table is incomplete:\n{listed}"
    );
    let err = refused.unwrap_err();
    assert!(
        err.contains("refused") && err.contains("No such file or directory"),
        "{err}"
    );
    let after = sh(&service_map);
    assert_eq!(listed, after, "a refused batch changed the kernel's table");

    // Input that is not a batch is named (here, with the reaper's task gone, `wait` is ours).
    let mut child = Command::new(&exe)
        .arg("internal-nft-commit")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"not a batch").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stdin does not hold a whole nf_tables batch"),
        "{stderr}"
    );
}
