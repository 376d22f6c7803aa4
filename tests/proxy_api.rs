//! The proxy fed by the API server: nanolet's agent runs in a network namespace of its own with
//! a kubeconfig pointing at the fake API server, which listens on that namespace's loopback.
//! Services and EndpointSlices created in the fake show up in the kernel's nftables table of
//! that namespace (`nft list table ip nanolet`), changes are applied, and older servers work
//! through the fallback: v1.20 (EndpointSlices v1beta1 only, transcript 24) and a server with
//! core/v1 Endpoints only.
//!
//! ```text
//!   netns node: nanolet agent ── http://127.0.0.1:<port> ── fake API server (a thread of this
//!               nft table ip nanolet                        test, its socket in that netns)
//! ```
//!
//! Nothing leaves the namespace: it has only `lo` and no route out; no traffic is sent, the
//! test reads the table the agent wrote.
//!
//! Root tests (`root_or_skip`): they need root, `ip`, `nft` and the kernel's nf_tables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::apiserver::ApiServer;
use common::root_or_skip;
use serde_json::{Value, json};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node namespace with the fake API server on its loopback, a config dir, the agent.
struct World {
    node: String,
    id: String,
    dir: tempfile::TempDir,
    api: Option<ApiServer>,
    agent: Option<Child>,
}

impl World {
    /// `faults` sets which API versions the fake serves before the agent starts.
    fn start(faults: impl FnOnce(&mut common::apiserver::Faults)) -> World {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("nanolet-proxy-api-")
            .tempdir()
            .unwrap();
        let mut w = World {
            node: format!("pan{id}"),
            id,
            dir,
            api: None,
            agent: None,
        };
        sh(&["ip", "netns", "add", &w.node]);
        sh(&["ip", "-n", &w.node, "link", "set", "lo", "up"]);
        // The fake's listening socket is made inside the namespace: the agent reaches it on
        // its own loopback; the test drives it in-process.
        let path = format!("/var/run/netns/{}", w.node);
        let api = std::thread::spawn(move || {
            let fd = fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            ApiServer::start()
        })
        .join()
        .unwrap();
        api.faults(faults);
        let root = w.dir.path();
        fs::create_dir_all(root.join("manifests")).unwrap();
        // A services/ folder with a Service of its own: with a kubeconfig it is not read.
        fs::create_dir_all(root.join("services")).unwrap();
        fs::write(
            root.join("services/folder.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: folder}\nspec: {clusterIP: 10.96.9.9, ports: [{port: 80}]}\n",
        )
        .unwrap();
        api.write_kubeconfig(root, None);
        let config = format!(
            "nodeName: node-{id}\ndataDir: {d}/state/data\nrunDir: {d}/state/run\npodLogsDir: {d}/state/logs\ncgroupParent: nanolet-proxy-api-test-{id}\nlogLevel: debug\nproxy:\n  clusterCIDR: 10.201.0.0/16\n  serviceCIDR: 10.96.0.0/16\n  nodeIPs: [10.201.1.1]\n  syncPeriod: 30s\n",
            id = w.id,
            d = root.display()
        );
        fs::write(root.join("nanolet.yaml"), config).unwrap();
        w.api = Some(api);
        let log = fs::File::create(root.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &w.node, env!("CARGO_BIN_EXE_nanolet")])
            .args(["agent", "--config-dir"])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        w.agent = Some(child);
        w
    }

    fn api(&self) -> &ApiServer {
        self.api.as_ref().unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `nft list table ip nanolet` in the node namespace (empty while there is none).
    fn table(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .args(["nft", "list", "table", "ip", "nanolet"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the table until `check` holds (bounded in time); panics with table and log.
    fn wait_table(&self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if check(&self.table()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\ntable:\n{}\nagent log:\n{}",
            self.table(),
            self.log()
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.api.take();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node])
            .output();
        let _ = fs::remove_dir(format!("/sys/fs/cgroup/nanolet-proxy-api-test-{}", self.id));
    }
}

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn slice(api_version: &str, service: &str, endpoints: &[(&str, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(a, ready)| json!({"addresses": [a], "conditions": {"ready": ready}}))
        .collect();
    json!({"apiVersion": api_version, "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-abc"),
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": eps})
}

#[test]
fn services_and_v1_slices_from_the_api_server_reach_the_kernel_and_follow_changes() {
    if !root_or_skip() {
        return;
    }
    let w = World::start(|f| f.endpointslices_v1 = true);
    let api = w.api();
    api.create("services", Some("default"), service("web", "10.96.0.10"));
    let eps = [("10.201.1.2", true), ("10.201.1.3", true)];
    api.create(
        "endpointslices/v1",
        Some("default"),
        slice("discovery.k8s.io/v1", "web", &eps),
    );
    w.wait_table("the Service and both endpoints", |t| {
        t.contains("10.96.0.10")
            && t.contains("10.201.1.2 . 8080")
            && t.contains("10.201.1.3 . 8080")
    });
    assert!(
        !w.table().contains("10.96.9.9"),
        "with a kubeconfig the services/ folder is not read"
    );
    // An endpoint goes away: its DNAT goes, the other stays.
    api.patch(
        "endpointslices/v1",
        Some("default"),
        "web-abc",
        json!({"endpoints": [{"addresses": ["10.201.1.2"], "conditions": {"ready": true}}]}),
    );
    w.wait_table("the removal of 10.201.1.3", |t| {
        !t.contains("10.201.1.3") && t.contains("10.201.1.2 . 8080")
    });
    // History compacted (ERROR 410 in both watches): the agent relists and still follows.
    api.expire();
    api.create("services", Some("default"), service("db", "10.96.0.11"));
    w.wait_table("the second Service", |t| t.contains("10.96.0.11"));
    api.delete("services", Some("default"), "web");
    w.wait_table("the deleted Service gone", |t| {
        !t.contains("10.96.0.10") && t.contains("10.96.0.11")
    });
    let log = w.log();
    assert!(
        !log.contains("does not serve"),
        "a current server needs no fallback:\n{log}"
    );
    assert!(log.contains("(410); listing again"), "{log}");
}

#[test]
fn nothing_is_written_until_services_and_endpoint_slices_have_both_synced() {
    if !root_or_skip() {
        return;
    }
    // The first three EndpointSlice lists fail (back-off: seconds): Services sync, slices do not.
    let w = World::start(|f| {
        f.endpointslices_v1 = true;
        for _ in 0..3 {
            f.fail.push_back(common::apiserver::Fail {
                status: 503,
                retry_after: None,
                path_contains: Some("endpointslices".into()),
                method: None,
            });
        }
    });
    let api = w.api();
    api.create("services", Some("default"), service("web", "10.96.0.40"));
    let synced = api.wait_for(Duration::from_secs(20), |s| {
        let listed = |part: &str, status: u16| {
            s.requests
                .iter()
                .any(|r| r.path.contains(part) && r.status == status && !r.query.contains("watch"))
        };
        listed("/services", 200) && listed("/endpointslices", 503)
    });
    assert!(synced, "services listed, slices failed:\n{}", w.log());
    assert_eq!(w.table(), "", "nothing written before the slices synced");
    w.wait_table("the table once the slices list answers", |t| {
        t.contains("10.96.0.40 . tcp . 80 : goto reject-chain")
    });
}

#[test]
fn a_v1_20_server_without_v1_endpointslices_works_through_v1beta1() {
    if !root_or_skip() {
        return;
    }
    // The fake's default: a v1.20 server, which answers 404 for discovery.k8s.io/v1.
    let w = World::start(|_| {});
    let api = w.api();
    api.create("services", Some("default"), service("web", "10.96.0.20"));
    let eps = [("10.201.1.5", true), ("10.201.1.6", false)];
    api.create(
        "endpointslices/v1beta1",
        Some("default"),
        slice("discovery.k8s.io/v1beta1", "web", &eps),
    );
    w.wait_table("the v1beta1 endpoint", |t| {
        t.contains("10.96.0.20") && t.contains("10.201.1.5 . 8080")
    });
    assert!(
        !w.table().contains("10.201.1.6"),
        "a not-ready endpoint gets no traffic"
    );
    let log = w.log();
    assert!(
        log.contains("does not serve endpointslices.discovery.k8s.io/v1 (404); using endpointslices.discovery.k8s.io/v1beta1"),
        "{log}"
    );
}

#[test]
fn a_server_with_endpoints_only_works_and_not_ready_addresses_get_no_traffic() {
    if !root_or_skip() {
        return;
    }
    let w = World::start(|f| f.no_endpointslices_v1beta1 = true);
    let api = w.api();
    api.create("services", Some("default"), service("web", "10.96.0.30"));
    api.create(
        "endpoints",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
               "subsets": [{"addresses": [{"ip": "10.201.1.7"}],
                            "notReadyAddresses": [{"ip": "10.201.1.8"}],
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
    );
    w.wait_table("the Endpoints' ready address", |t| {
        t.contains("10.96.0.30") && t.contains("10.201.1.7 . 8080")
    });
    assert!(!w.table().contains("10.201.1.8"));
    // The Endpoints lose their address: the Service has no endpoints left (reject).
    api.patch("endpoints", Some("default"), "web", json!({"subsets": []}));
    w.wait_table("the address gone", |t| {
        !t.contains("10.201.1.7") && t.contains("10.96.0.30 . tcp . 80 : goto reject-chain")
    });
    let log = w.log();
    assert!(log.contains("using endpoints/v1"), "{log}");
}

#[test]
fn a_list_longer_than_a_page_reaches_the_kernel_whole() {
    if !root_or_skip() {
        return;
    }
    // The Services list fails until every object exists, so that the agent's first good list
    // holds all of them: 600 Services, several pages, each handed on alone.
    let services_list_fails = || common::apiserver::Fail {
        status: 503,
        retry_after: None,
        path_contains: Some("/services".into()),
        method: None,
    };
    let w = World::start(|f| {
        f.endpointslices_v1 = true;
        f.fail.extend((0..100).map(|_| services_list_fails()));
    });
    let api = w.api();
    let ip = |i: u32| format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250);
    for i in 0..600 {
        api.create(
            "services",
            Some("default"),
            service(&format!("s{i}"), &ip(i)),
        );
    }
    let eps = [("10.201.1.9", true)];
    api.create(
        "endpointslices/v1",
        Some("default"),
        slice("discovery.k8s.io/v1", "s599", &eps),
    );
    api.faults(|f| f.fail.clear());
    w.wait_table("the first and the last of 600 Services", |t| {
        t.contains(&format!("{} . tcp . 80 : goto reject-chain", ip(0)))
            && t.contains(&format!("{} . tcp . 80 :", ip(599)))
            && t.contains("10.201.1.9 . 8080")
    });
    let table = w.table();
    let programmed = (0..600)
        .filter(|i| table.contains(&format!("{} . tcp . 80 :", ip(*i))))
        .count();
    assert_eq!(programmed, 600, "every Service of every page");
    let paged = api.wait_for(Duration::from_secs(1), |s| {
        s.requests.iter().any(|r| {
            r.path.ends_with("/services") && r.status == 200 && r.query.contains("continue=")
        })
    });
    assert!(paged, "the Services were listed in pages:\n{}", w.log());
}
