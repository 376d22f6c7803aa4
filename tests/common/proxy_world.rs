//! The network-namespace world of the proxy's kernel tests (`tests/proxy_kernel.rs` for the
//! nftables mode, `tests/proxy_iptables.rs` for the iptables fallback): nanolet's agent runs in a
//! namespace of its own (the "node"), endpoints are TCP and UDP echo servers in two more
//! namespaces behind veth pairs, and clients connect from the node namespace. Nothing leaves
//! these namespaces: the node namespace has no route out, and the Service range goes on-link
//! nowhere there.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Which proxy mode the agent runs in, and what its tests need beside root and `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Iptables,
}

impl Mode {
    /// (temp dir prefix, namespace/link tag, cgroup parent prefix, config lines, what is needed)
    fn names(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ) {
        match self {
            Mode::Nftables => (
                "nanolet-proxy-",
                "p",
                "nanolet-proxy-test-",
                "",
                "root and ip",
            ),
            Mode::Iptables => (
                "nanolet-ipt-",
                "i",
                "nanolet-ipt-test-",
                "  mode: iptables\n",
                "root, ip and iptables-legacy",
            ),
        }
    }
}

pub fn root_or_skip(mode: Mode) -> bool {
    let needs = mode.names().4;
    let ok = rustix::process::geteuid().is_root()
        && Command::new("ip").arg("-V").output().is_ok()
        && (mode == Mode::Nftables
            || Command::new("iptables-legacy-save")
                .arg("-V")
                .output()
                .is_ok());
    if !ok && std::env::var_os("NANOLET_REQUIRE_ROOT_TESTS").is_some() {
        panic!("root tests are required here but cannot run: need {needs}");
    }
    if !ok {
        eprintln!("skipped: needs {needs}");
    }
    ok
}

pub static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node namespace, two endpoint namespaces, and a config dir; all removed on drop.
pub struct World {
    pub id: String,
    pub node: String,
    pub eps: Vec<String>,
    pub dir: tempfile::TempDir,
    pub agent: Option<Child>,
    pub stop: Arc<AtomicBool>,
    cgroup_prefix: &'static str,
}

impl World {
    pub fn new(mode: Mode) -> World {
        let (prefix, tag, cgroup_prefix, mode_config, _) = mode.names();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        // Constructed first, so that a failing setup step still cleans up on drop.
        let w = World {
            node: format!("{tag}xn{id}"),
            eps: vec![format!("{tag}xa{id}"), format!("{tag}xb{id}")],
            id,
            dir,
            agent: None,
            stop: Arc::new(AtomicBool::new(false)),
            cgroup_prefix,
        };
        let (id, node) = (&w.id, &w.node);
        for ns in std::iter::once(node).chain(&w.eps) {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (i, ep) in w.eps.iter().enumerate() {
            let (a, b) = (format!("{tag}v{id}{i}"), format!("{tag}e{id}{i}"));
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
            &format!("{tag}v{id}0"),
        ]);
        let root = w.dir.path();
        fs::create_dir_all(root.join("manifests")).unwrap();
        fs::create_dir_all(root.join("services")).unwrap();
        let config = format!(
            "nodeName: node-{id}\ndataDir: {d}/state/data\nrunDir: {d}/state/run\npodLogsDir: {d}/state/logs\ncgroupParent: {cgroup_prefix}{id}\nlogLevel: debug\nproxy:\n  clusterCIDR: 10.201.0.0/16\n  serviceCIDR: 10.96.0.0/16\n  nodeIPs: [10.201.1.1]\n  syncPeriod: 2s\n{mode_config}",
            d = root.display()
        );
        fs::write(root.join("nanolet.yaml"), config).unwrap();
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn start_agent(&mut self) {
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

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    pub fn write_services(&self, file: &str, text: &str) {
        let tmp = self.path(&format!("services/.{file}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.path(&format!("services/{file}"))).unwrap();
    }

    /// Runs `f` on a thread inside namespace `ns`.
    pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .unwrap()
    }

    /// Opens a TCP connection to `to` from the node namespace (reading the endpoint's greeting)
    /// and holds it open.
    pub fn hold_flow(&self, to: &str) -> HeldFlow {
        let to: SocketAddr = to.parse().unwrap();
        let (lines, rx) = mpsc::channel::<&'static str>();
        let (done_tx, answers) = mpsc::channel::<Result<(), String>>();
        let path = format!("/var/run/netns/{}", self.node);
        std::thread::spawn(move || {
            enter_netns(&path);
            let mut s = TcpStream::connect(to).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).unwrap();
            while let Ok(line) = rx.recv() {
                let r = s
                    .write_all(line.as_bytes())
                    .and_then(|()| s.read(&mut buf).map(|_| ()))
                    .map_err(|e| e.to_string());
                if done_tx.send(r).is_err() {
                    break;
                }
            }
        });
        HeldFlow { lines, answers }
    }

    /// TCP and UDP echo servers on port 8080 of every endpoint; each answers its own name.
    pub fn start_servers(&self) {
        for (i, ep) in self.eps.iter().enumerate() {
            let name = format!("ep{}", i + 1);
            let addr: SocketAddr = format!("10.201.{}.2:8080", i + 1).parse().unwrap();
            let (tx, rx) = mpsc::channel();
            let path = format!("/var/run/netns/{ep}");
            let stop = self.stop.clone();
            std::thread::spawn(move || {
                enter_netns(&path);
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
    pub fn tcp(&self, to: &str) -> Result<String, std::io::ErrorKind> {
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

    pub fn udp(&self, to: &str) -> Option<String> {
        self.udp_from(0, to)
    }

    /// One datagram from local port `port` (0: any), so that several share a conntrack entry.
    pub fn udp_from(&self, port: u16, to: &str) -> Option<String> {
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
    pub fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\nagent log:\n{}", self.log());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_agent();
        self.stop.store(true, Ordering::SeqCst);
        for ns in std::iter::once(&self.node).chain(&self.eps) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = fs::remove_dir(format!("/sys/fs/cgroup/{}{}", self.cgroup_prefix, self.id));
    }
}

/// `n` one-endpoint Services `s0`, `s1`, … (ClusterIPs from 10.96.1.1) with their slices: a
/// change large enough to be in flight when the agent is killed.
pub fn many_services(n: u32) -> String {
    (0..n)
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
        .collect()
}

/// A TCP connection from the node namespace held open on its own thread, to show that an
/// established flow survives what happens to the agent meanwhile.
pub struct HeldFlow {
    lines: mpsc::Sender<&'static str>,
    answers: mpsc::Receiver<Result<(), String>>,
}

impl HeldFlow {
    /// Sends `line` on the flow and waits for its echo.
    pub fn exchange(&self, line: &'static str) -> Result<(), String> {
        self.lines.send(line).map_err(|e| e.to_string())?;
        self.answers.recv().map_err(|e| e.to_string())?
    }
}

pub fn service(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}\n  - {{name: udp, port: 53, targetPort: 8080, protocol: UDP}}\n{extra}"
    )
}

pub fn slice(service: &str, endpoints: &[&str]) -> String {
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

/// Moves the calling thread into the network namespace at `path` (`/var/run/netns/<name>`).
fn enter_netns(path: &str) {
    let fd = fs::File::open(path).unwrap();
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&fd),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}
