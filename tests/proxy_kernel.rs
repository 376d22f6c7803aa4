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
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

fn root_or_skip() -> bool {
    let ok = rustix::process::geteuid().is_root() && Command::new("ip").arg("-V").output().is_ok();
    if !ok && std::env::var_os("NANOLET_REQUIRE_ROOT_TESTS").is_some() {
        panic!("root tests are required here but cannot run: need root and ip");
    }
    if !ok {
        eprintln!("skipped: needs root and ip");
    }
    ok
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node namespace, two endpoint namespaces, and a config dir; all removed on drop.
struct World {
    id: String,
    node: String,
    eps: Vec<String>,
    dir: tempfile::TempDir,
    agent: Option<Child>,
    stop: Arc<AtomicBool>,
}

impl World {
    fn new() -> World {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("nanolet-proxy-")
            .tempdir()
            .unwrap();
        // Constructed first, so that a failing setup step still cleans up on drop.
        let w = World {
            node: format!("pxn{id}"),
            eps: vec![format!("pxa{id}"), format!("pxb{id}")],
            id,
            dir,
            agent: None,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (id, node) = (&w.id, &w.node);
        for ns in std::iter::once(node).chain(&w.eps) {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (i, ep) in w.eps.iter().enumerate() {
            let (a, b) = (format!("pv{id}{i}"), format!("pe{id}{i}"));
            sh(&[
                "ip", "link", "add", &a, "netns", node, "type", "veth", "peer", "name", &b,
                "netns", ep,
            ]);
            let net = i + 1;
            sh(&[
                "ip",
                "-n",
                node,
                "addr",
                "add",
                &format!("10.201.{net}.1/24"),
                "dev",
                &a,
            ]);
            sh(&[
                "ip",
                "-n",
                ep,
                "addr",
                "add",
                &format!("10.201.{net}.2/24"),
                "dev",
                &b,
            ]);
            sh(&["ip", "-n", node, "link", "set", &a, "up"]);
            sh(&["ip", "-n", ep, "link", "set", &b, "up"]);
            sh(&[
                "ip",
                "-n",
                ep,
                "route",
                "add",
                "default",
                "via",
                &format!("10.201.{net}.1"),
            ]);
        }
        // Service addresses nanolet fails to translate go nowhere: on-link on a veth where
        // nobody answers ARP for them (a blackhole route would fail `connect` before
        // nat-output could translate the address). The namespace has no way out anyway.
        sh(&[
            "ip",
            "-n",
            node,
            "route",
            "add",
            "10.96.0.0/16",
            "dev",
            &format!("pv{id}0"),
        ]);
        let root = w.dir.path();
        fs::create_dir_all(root.join("manifests")).unwrap();
        fs::create_dir_all(root.join("services")).unwrap();
        let config = format!(
            "nodeName: node-{id}\ndataDir: {d}/state/data\nrunDir: {d}/state/run\npodLogsDir: {d}/state/logs\ncgroupParent: nanolet-proxy-test-{id}\nlogLevel: debug\nproxy:\n  clusterCIDR: 10.201.0.0/16\n  serviceCIDR: 10.96.0.0/16\n  nodeIPs: [10.201.1.1]\n  syncPeriod: 2s\n",
            d = root.display()
        );
        fs::write(root.join("nanolet.yaml"), config).unwrap();
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn start_agent(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node, env!("CARGO_BIN_EXE_nanolet")])
            .args(["agent", "--config-dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    fn write_services(&self, file: &str, text: &str) {
        let tmp = self.path(&format!("services/.{file}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.path(&format!("services/{file}"))).unwrap();
    }

    /// Runs `f` on a thread inside namespace `ns`.
    fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let fd = fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// TCP and UDP echo servers on port 8080 of every endpoint; each answers its own name.
    fn start_servers(&self) {
        for (i, ep) in self.eps.iter().enumerate() {
            let name = format!("ep{}", i + 1);
            let addr: SocketAddr = format!("10.201.{}.2:8080", i + 1).parse().unwrap();
            let (tx, rx) = mpsc::channel();
            let path = format!("/var/run/netns/{ep}");
            let stop = self.stop.clone();
            std::thread::spawn(move || {
                let fd = fs::File::open(&path).unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&fd),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                let tcp = TcpListener::bind(addr).unwrap();
                let udp = UdpSocket::bind(addr).unwrap();
                tx.send(()).unwrap();
                let n2 = name.clone();
                let stop2 = stop.clone();
                std::thread::spawn(move || {
                    udp.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut buf = [0u8; 64];
                    while !stop2.load(Ordering::SeqCst) {
                        if let Ok((_, from)) = udp.recv_from(&mut buf) {
                            let _ = udp.send_to(n2.as_bytes(), from);
                        }
                    }
                });
                tcp.set_nonblocking(true).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match tcp.accept() {
                        Ok((mut s, _)) => {
                            let name = name.clone();
                            std::thread::spawn(move || {
                                s.set_nonblocking(false).unwrap();
                                // Echo lines prefixed with our name until the client closes.
                                let mut buf = [0u8; 256];
                                let _ = s.write_all(format!("{name}\n").as_bytes());
                                while let Ok(n) = s.read(&mut buf) {
                                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            rx.recv().unwrap();
        }
    }

    /// One TCP connection from the node namespace: the name of the endpoint that answered,
    /// or the error.
    fn tcp(&self, to: &str) -> Result<String, std::io::ErrorKind> {
        let to: SocketAddr = to.parse().unwrap();
        World::in_ns(&self.node, move || {
            let mut s =
                TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.kind())?;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).map_err(|e| e.kind())?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })
    }

    fn udp(&self, to: &str) -> Option<String> {
        self.udp_from(0, to)
    }

    /// One datagram from local port `port` (0: any), so that several share a conntrack entry.
    fn udp_from(&self, port: u16, to: &str) -> Option<String> {
        let to: SocketAddr = to.parse().unwrap();
        World::in_ns(&self.node, move || {
            let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s.send_to(b"hi", to).unwrap();
            let mut buf = [0u8; 16];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).to_string())
        })
    }

    /// Polls `check` (bounded in time); panics with the agent's log.
    fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\nagent log:\n{}", self.log());
    }

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

impl Drop for World {
    fn drop(&mut self) {
        self.kill_agent();
        self.stop.store(true, Ordering::SeqCst);
        for ns in std::iter::once(&self.node).chain(&self.eps) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = fs::remove_dir(format!("/sys/fs/cgroup/nanolet-proxy-test-{}", self.id));
    }
}

fn service(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}\n  - {{name: udp, port: 53, targetPort: 8080, protocol: UDP}}\n{extra}"
    )
}

fn slice(service: &str, endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| {
            format!("- {{addresses: [\"{a}\"], conditions: {{ready: true}}, nodeName: other}}")
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports:\n- {{name: tcp, port: 8080, protocol: TCP}}\n- {{name: udp, port: 8080, protocol: UDP}}\nendpoints:\n{}\n",
        eps.join("\n")
    )
}

#[test]
fn a_cluster_ip_spreads_over_endpoints_follows_removals_and_refuses_without_endpoints() {
    if !root_or_skip() {
        return;
    }
    let mut w = World::new();
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
    if !root_or_skip() {
        return;
    }
    let mut w = World::new();
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
    if !root_or_skip() {
        return;
    }
    let mut w = World::new();
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
    let (tx, rx) = mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = mpsc::channel::<Result<(), String>>();
    let node = w.node.clone();
    std::thread::spawn(move || {
        let fd = fs::File::open(format!("/var/run/netns/{node}")).unwrap();
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let mut s = TcpStream::connect("10.96.0.10:80").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).unwrap();
        while let Ok(line) = rx.recv() {
            let r = s
                .write_all(line.as_bytes())
                .and_then(|()| s.read(&mut buf).map(|_| ()))
                .map_err(|e| e.to_string());
            done_tx.send(r).unwrap();
        }
    });
    tx.send("before\n").unwrap();
    done_rx.recv().unwrap().unwrap();

    // SIGKILL while it writes (a large change in flight): the kernel holds the old or the new
    // ruleset, never a mix: either way every chain the maps name exists and `nft` lists it.
    let many: String = (0..300)
        .map(|i| {
            format!(
                "{}---\n{}---\n",
                service(
                    &format!("s{i}"),
                    &format!("10.96.{}.{}", 1 + i / 250, i % 250 + 1),
                    ""
                ),
                slice(&format!("s{i}"), &["10.201.1.2"])
            )
        })
        .collect();
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
    tx.send("after kill\n").unwrap();
    done_rx.recv().unwrap().unwrap();

    // Restart: the full sync replaces the table; the established flow carries on.
    fs::remove_file(w.path("services/many.yaml")).unwrap();
    w.start_agent();
    w.wait_until("the restarted agent wrote its ruleset", || {
        w.nft_list().matches(": goto clusterip-").count() == 2
    });
    tx.send("after restart\n").unwrap();
    done_rx.recv().unwrap().unwrap();
    assert!(w.tcp("10.96.0.10:80").is_ok());
}

#[test]
fn udp_flows_to_a_removed_endpoint_are_flushed() {
    if !root_or_skip() {
        return;
    }
    let mut w = World::new();
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
