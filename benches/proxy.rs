//! `cargo bench --bench proxy` (root): the Service proxy against the kernel, in network
//! namespaces created here and removed at the end.
//!
//! 1. Cold sync of 1 000 and 10 000 Services × 10 endpoints: nanolet's netlink batch (lower +
//!    send + commit, in-process) against `nft -f` of the same ruleset's text (the process,
//!    as kube-proxy's nftables mode runs it) and `iptables-restore` of a kube-proxy-style
//!    iptables ruleset for the same Services (KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-*).
//! 2. Adding one Service to a table of 100, 1 000 and 10 000, as the agent does it: the
//!    state's incremental transaction (rebuild and diff of the dirty Service) + batch + commit.
//! 3. The agent's RSS (VmHWM, peak) after it synced 10 000 Services from `services/`.
//! 4. TCP connect+first-byte latency through a ClusterIP with 100 and with 10 000 Services
//!    in the table (a client in the node namespace, an echo server behind a veth).
//!
//! 5. `shapes` (only when named): `nft -f` of three ruleset shapes of the same Services, to see
//!    which one the kernel commits in near-linear time (see `proxy/shapes.rs`).
//!
//! 6. `iptables` (only when named): the iptables fallback vs the nftables mode (see
//!    `proxy/iptables_mode.rs`).
//!
//! 7. `phases`: the agent's heap phase by phase at 10 000 Services (source, store,
//!    transaction, batch), and how a commit's time splits between `sendmsg` and the answer.
//!
//! 8. `validate` (only when named): one element added to a verdict map and to a data map of
//!    100 and 100 000 elements, to show where add-one's kernel time grows (see
//!    `proxy/validate.rs`).
//!
//! Parts can be picked: `cargo bench --bench proxy -- cold add phases rss latency shapes iptables validate`.
//! Medians of several runs (one run for the 10 000-Service cold loads); ratios against the baselines measured in the same run. No
//! assertions: the numbers are for the reader. Targets (issue #6): cold sync <= 0.5x nft;
//! adding one Service <= 5 ms and flat; RSS <= 16 MiB; latency at 10 000 within 10 % of 100.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nanolet::netlink::nftables::{self, Batch};
use nanolet::proxy::build::build;
use nanolet::proxy::lower::{lower_op, lower_ops};
use nanolet::proxy::model::{Cidr, EndpointSlice, NodeConfig, Service};
use nanolet::proxy::nft_text::render_replace;
use nanolet::proxy::ruleset::{Op, Ruleset};
use nanolet::proxy::state::{Event, NextSync, ProxyState};
use serde_json::{Value, json};

#[path = "proxy/phases.rs"]
mod phases;
#[path = "proxy/shapes.rs"]
mod shapes;

#[path = "proxy/iptables_mode.rs"]
mod iptables_mode;
#[path = "proxy/validate.rs"]
mod validate;

const ENDPOINTS: u32 = 10;

fn node() -> NodeConfig {
    NodeConfig {
        node_name: "bench".into(),
        node_ips: vec!["10.201.1.1".parse().unwrap()],
        cluster_cidrs: vec![Cidr::parse("10.128.0.0/9").unwrap()],
        service_cidrs: vec![Cidr::parse("10.96.0.0/16").unwrap()],
        masquerade_bit: 0x4000,
    }
}

fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn endpoint(i: u32, j: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0000 + i * ENDPOINTS + j + 1)
}

fn service_json(i: u32) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": format!("svc-{i}"), "namespace": "default" },
            "spec": { "clusterIP": cluster_ip(i).to_string(),
                      "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }] } })
}

fn slice_json(i: u32, endpoints: Vec<Ipv4Addr>) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({ "addresses": [a.to_string()], "nodeName": "other" }))
        .collect();
    json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("svc-{i}-1"), "namespace": "default",
                          "labels": { "kubernetes.io/service-name": format!("svc-{i}") } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": eps })
}

fn world(n: u32) -> (Vec<Value>, Vec<Value>) {
    let services = (0..n).map(service_json).collect();
    let slices = (0..n)
        .map(|i| slice_json(i, (0..ENDPOINTS).map(|j| endpoint(i, j)).collect()))
        .collect();
    (services, slices)
}

fn ruleset(services: &[Value], slices: &[Value]) -> Ruleset {
    let s: Vec<Service> = services
        .iter()
        .map(|v| Service::from_json(v).unwrap().unwrap())
        .collect();
    let e: Vec<EndpointSlice> = slices
        .iter()
        .map(|v| EndpointSlice::from_json(v).unwrap().unwrap())
        .collect();
    build(&s, &e, &node()).ruleset
}

fn replace_ops(r: &Ruleset) -> Vec<Op> {
    let mut ops: Vec<Op> = r.tables.iter().map(|t| Op::DeleteTable(t.family)).collect();
    ops.extend(r.tables.iter().cloned().map(Op::AddTable));
    ops
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("pxb-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn enter(&self) {
        let fd = fs::File::open(format!("/var/run/netns/{}", self.0)).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Runs a command inside the namespace with `input` on stdin; returns its wall time.
    fn timed(&self, cmd: &[&str], input: &str) -> Duration {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let t = start.elapsed();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn netlink_apply(ops: &[Op]) -> Duration {
    let start = Instant::now();
    let mut sock = nftables::open().unwrap();
    let mut batch = Batch::new(1);
    lower_ops(ops, &mut batch);
    nftables::apply(&mut sock, batch).unwrap();
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// kube-proxy's iptables mode for the same Services: one KUBE-SVC chain per Service port
/// with `statistic random` rules, one KUBE-SEP chain per endpoint.
fn iptables_text(n: u32) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    let mut rules = String::from(
        "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
    );
    for i in 0..n {
        let svc = format!("KUBE-SVC-{i:012}");
        chains.push_str(&format!(":{svc} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j {svc}\n",
            cluster_ip(i)
        ));
        for j in 0..ENDPOINTS {
            let sep = format!("KUBE-SEP-{i:08}{j:04}");
            chains.push_str(&format!(":{sep} - [0:0]\n"));
            let left = ENDPOINTS - j;
            if left > 1 {
                rules.push_str(&format!(
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}\n",
                    1.0 / f64::from(left)
                ));
            } else {
                rules.push_str(&format!("-A {svc} -j {sep}\n"));
            }
            let ep = endpoint(i, j);
            rules.push_str(&format!(
                "-A {sep} -s {ep}/32 -j KUBE-MARK-MASQ\n-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}:8080\n"
            ));
        }
    }
    format!("{chains}{rules}COMMIT\n")
}

/// A synced state holding the world of `n` Services, nothing applied yet.
fn synced_state(n: u32) -> ProxyState {
    let (services, slices) = world(n);
    let mut state = ProxyState::default();
    let events = services
        .into_iter()
        .map(Event::ServiceApplied)
        .chain(slices.into_iter().map(Event::EndpointSliceApplied))
        .chain([Event::ServicesSynced, Event::EndpointSlicesSynced]);
    for e in events {
        state.apply(e).unwrap();
    }
    state
}

/// The agent's full sync: each Service's operations made from the store and encoded as they
/// come, then committed (in-process here).
fn stream_apply(state: &ProxyState) -> Duration {
    let start = Instant::now();
    let Some(NextSync::Full(full)) = state.next_sync(&node()) else {
        panic!("nothing applied: a full sync");
    };
    let mut sock = nftables::open().unwrap();
    let mut batch = Batch::new(1);
    for op in full {
        lower_op(&op, &mut batch);
    }
    nftables::apply(&mut sock, batch).unwrap();
    start.elapsed()
}

fn cold_sync(n: u32, runs: usize) {
    let (services, slices) = world(n);
    let r = ruleset(&services, &slices);
    let ops = replace_ops(&r);
    let text = render_replace(&r);
    let ipt = iptables_text(n);
    let state = synced_state(n);
    let (mut ours, mut nft, mut iptables) = (Vec::new(), Vec::new(), Vec::new());
    let mut streamed = Vec::new();
    for k in 0..runs {
        let ns = Netns::new(&format!("cold{n}-{k}"));
        ours.push(ns.run(|| netlink_apply(&ops)));
        let ns = Netns::new(&format!("strm{n}-{k}"));
        streamed.push(ns.run(|| stream_apply(&state)));
        let ns = Netns::new(&format!("nft{n}-{k}"));
        nft.push(ns.timed(&["nft", "-f", "-"], &text));
        let ns = Netns::new(&format!("ipt{n}-{k}"));
        iptables.push(ns.timed(&["iptables-restore"], &ipt));
    }
    let (o, f, i) = (median(ours), median(nft), median(iptables));
    let st = median(streamed);
    println!(
        "cold sync {n:>6} Services, the agent's streamed full sync (store -> fragments -> batch -> commit): {:>8.1} ms ({:.2}x nft -f)",
        ms(st),
        st.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "cold sync {n:>6} Services x {ENDPOINTS}: netlink {:>8.1} ms | nft -f {:>8.1} ms ({:.2}x) | iptables-restore {:>8.1} ms ({:.2}x)",
        ms(o),
        ms(f),
        o.as_secs_f64() / f.as_secs_f64(),
        ms(i),
        o.as_secs_f64() / i.as_secs_f64()
    );
}

fn add_one(n: u32, runs: u32) -> Duration {
    let mut state = synced_state(n);
    let ns = Netns::new(&format!("add{n}"));
    ns.run(|| {
        let full = state.next_transaction(&node()).unwrap();
        netlink_apply(&full.ops);
        state.committed(full);
        let mut times = Vec::new();
        for k in 0..runs {
            let i = n + k;
            state.apply(Event::ServiceApplied(service_json(i))).unwrap();
            let eps = (0..ENDPOINTS).map(|j| endpoint(i, j)).collect();
            state
                .apply(Event::EndpointSliceApplied(slice_json(i, eps)))
                .unwrap();
            let start = Instant::now();
            let tx = state.next_transaction(&node()).unwrap();
            let build_and_diff = start.elapsed();
            let write = netlink_apply(&tx.ops);
            times.push((build_and_diff + write, build_and_diff, write, tx.ops.len()));
            state.committed(tx);
        }
        times.sort();
        let (t, b, w, n_ops) = times[times.len() / 2];
        println!(
            "add one Service to {n:>6}: {:>8.2} ms = build+diff {:>7.2} ms + netlink commit {:>8.2} ms ({n_ops} operations)",
            ms(t),
            ms(b),
            ms(w)
        );
        t
    })
}

/// A config dir whose `services/all.yaml` holds `n` Services and their EndpointSlices.
fn services_dir(n: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("nanolet-bench-proxy-")
        .tempdir()
        .unwrap();
    fs::create_dir_all(dir.path().join("services")).unwrap();
    let (services, slices) = world(n);
    let mut text = String::new();
    for (s, e) in services.iter().zip(&slices) {
        text.push_str(&serde_json::to_string(s).unwrap());
        text.push_str("\n---\n");
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push_str("\n---\n");
    }
    fs::write(dir.path().join("services/all.yaml"), text).unwrap();
    dir
}

/// Writes the Services as manifests, runs the agent in a namespace until the table has all
/// of them, and reads its peak RSS.
/// `NANOLET_BENCH_AGENT` names another nanolet binary to measure (a baseline build).
fn agent_rss(n: u32) {
    let ns = Netns::new("rss");
    let dir = services_dir(n);
    let root = dir.path();
    fs::create_dir_all(root.join("manifests")).unwrap();
    fs::write(
        root.join("nanolet.yaml"),
        format!(
            "nodeName: bench\ndataDir: {d}/data\nrunDir: {d}/run\npodLogsDir: {d}/logs\ncgroupParent: nanolet-bench-proxy-{p}\nproxy:\n  clusterCIDR: 10.128.0.0/9\n  serviceCIDR: 10.96.0.0/16\n  nodeIPs: [10.201.1.1]\n  syncPeriod: 1h\n",
            d = root.display(),
            p = std::process::id()
        ),
    )
    .unwrap();
    let exe = std::env::var("NANOLET_BENCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_nanolet").to_string());
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &ns.0, &exe, "agent", "--config-dir"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    // The commit child's peak (kB), sampled while it lives.
    let mut child_hwm = 0u64;
    // The last Service's element in the service map (a Service has no chain of its own).
    let want = format!("{} . tcp . 80 :", cluster_ip(n - 1));
    let synced = loop {
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.id()))
            .unwrap_or_default();
        for pid in children.split_whitespace() {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            child_hwm = child_hwm.max(kb);
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "nft",
                "list",
                "map",
                "ip",
                "nanolet",
                "service-ips",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&want) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let status = fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "agent with {n} Services: synced {synced}; VmHWM {} (peak), VmRSS {} (after sync: RssAnon {}, RssFile {}); commit child VmHWM {child_hwm} kB (sampled); {exe}",
        field("VmHWM:"),
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:")
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = fs::remove_dir(format!(
        "/sys/fs/cgroup/nanolet-bench-proxy-{}",
        std::process::id()
    ));
}

/// Median TCP connect + first byte through ClusterIP 10.96.0.1 (Service 0) with `n`
/// Services in the table; the endpoint is an echo server in a second namespace.
fn latency(n: u32, rounds: u32) -> Duration {
    let node_ns = Netns::new(&format!("lat{n}"));
    let ep_ns = Netns::new(&format!("ep{n}"));
    let (a, b) = (
        format!("pxl{n}a{}", std::process::id() % 10000),
        format!("pxl{n}b{}", std::process::id() % 10000),
    );
    sh(&[
        "ip", "link", "add", &a, "netns", &node_ns.0, "type", "veth", "peer", "name", &b, "netns",
        &ep_ns.0,
    ]);
    sh(&[
        "ip",
        "-n",
        &node_ns.0,
        "addr",
        "add",
        "10.128.0.254/9",
        "dev",
        &a,
    ]);
    sh(&[
        "ip",
        "-n",
        &ep_ns.0,
        "addr",
        "add",
        "10.128.0.1/9",
        "dev",
        &b,
    ]);
    sh(&["ip", "-n", &node_ns.0, "link", "set", &a, "up"]);
    sh(&["ip", "-n", &ep_ns.0, "link", "set", &b, "up"]);
    sh(&[
        "ip",
        "-n",
        &node_ns.0,
        "route",
        "add",
        "10.96.0.0/16",
        "dev",
        &a,
    ]);
    // Service 0 gets one endpoint: the server; the others keep their (unreachable) ten.
    let (services, mut slices) = world(n);
    slices[0] = slice_json(0, vec![Ipv4Addr::new(10, 128, 0, 1)]);
    let r = ruleset(&services, &slices);
    node_ns.run(|| netlink_apply(&replace_ops(&r)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ep_name = ep_ns.0.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        Netns(ep_name).enter_and_forget();
        let l = TcpListener::bind("10.128.0.1:8080").unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"x");
                }
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    rx.recv().unwrap();
    let to: SocketAddr = "10.96.0.1:80".parse().unwrap();
    let t = node_ns.run(|| {
        let mut times = Vec::new();
        for _ in 0..rounds {
            let start = Instant::now();
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            times.push(start.elapsed());
        }
        median(times)
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().unwrap();
    println!(
        "connect latency through a ClusterIP with {n:>6} Services: {:>7.1} us (median of {rounds})",
        t.as_secs_f64() * 1e6
    );
    t
}

impl Netns {
    /// Enters the namespace on this thread without owning it (the caller removes it).
    fn enter_and_forget(self) {
        self.enter();
        std::mem::forget(self);
    }
}

fn main() {
    if !rustix::process::geteuid().is_root()
        || Command::new("nft").arg("--version").output().is_err()
    {
        println!("proxy bench skipped: needs root and nft (nftables)");
        return;
    }
    // `cargo bench --bench proxy -- [cold] [add] [rss] [latency]`: all when none is named.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    if want("cold") {
        println!("== cold sync (ratio = netlink time / baseline time, target <= 0.5 vs nft)");
        cold_sync(1_000, 3);
        // 10 000 Services take minutes per load on this kernel: one run each.
        cold_sync(10_000, 1);
    }
    if want("add") {
        println!("== adding one Service (median of 5; target <= 5 ms and flat)");
        let base = add_one(100, 5);
        add_one(1_000, 5);
        let big = add_one(10_000, 5);
        println!(
            "   10 000 vs 100: {:.2}x",
            big.as_secs_f64() / base.as_secs_f64()
        );
    }
    if want("phases") {
        println!("== where the memory goes (heap by phase) and where a commit's time goes");
        let dir = services_dir(10_000);
        phases::memory(10_000, &dir.path().join("services"), &node());
        let (services, slices) = world(1_000);
        let ops = replace_ops(&ruleset(&services, &slices));
        Netns::new("split").run(|| phases::commit_split(&ops, 1_000));
        let exe = env!("CARGO_BIN_EXE_nanolet");
        Netns::new("child").run(|| phases::child_overhead(exe, 21));
    }
    if want("rss") {
        println!("== agent memory (target <= 16 MiB)");
        agent_rss(10_000);
    }
    if args.iter().any(|a| a == "shapes") {
        println!("== ruleset shapes through `nft -f` (ratio to kube-proxy's shape)");
        // kube-proxy's shape takes minutes at 10 000 on this kernel: stop at 4 000.
        shapes::shapes(&[1_000, 4_000]);
    }
    if args.iter().any(|a| a == "iptables") {
        println!("== iptables fallback (ratios to the nftables mode in the same run)");
        iptables_mode::iptables_mode(1_000, 3);
    }
    if args.iter().any(|a| a == "validate") {
        println!("== one element added to a verdict map vs a data map, small and large");
        validate::validate(15);
    }
    if want("latency") {
        println!("== connection latency (target: 10 000 within 10 % of 100)");
        let small = latency(100, 2000);
        let large = latency(10_000, 2000);
        println!(
            "   10 000 vs 100: {:.3}x",
            large.as_secs_f64() / small.as_secs_f64()
        );
    }
}
