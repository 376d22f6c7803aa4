//! Probes and lifecycle hooks end to end, as root, with real runc and busybox: liveness-driven
//! restarts, readiness in `nanolet ps -o json`, startup gating, exec/httpGet/tcpSocket probes,
//! postStart and preStop, and probes aimed at closed ports and at servers that hang.
//!
//! Pods use `hostNetwork: true`, so their probes go to 127.0.0.1 (pod IPs come with pod
//! networking). Ports are found free by binding `:0`; servers the test runs itself listen on
//! loopback only. See `tests/common/mod.rs` for the test node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Node, pod_yaml, root_or_skip};
use nanolet::pod::status::PodStatus;

const MINUTE: Duration = Duration::from_secs(60);

/// A hostNetwork busybox pod running `script`, with `container` (YAML at the container's
/// indentation, 4 spaces) added to its one container.
fn probed_pod(name: &str, script: &str, container: &str) -> String {
    format!(
        "{}{container}",
        pod_yaml(
            name,
            script,
            "  hostNetwork: true\n  terminationGracePeriodSeconds: 2\n"
        )
    )
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn condition(p: &PodStatus, kind: &str) -> String {
    p.conditions
        .iter()
        .find(|c| c.kind == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_failing_liveness_probe_restarts_the_container_with_back_off() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    // Healthy for a while, then not: the exec probe `cat /tmp/healthy` starts failing.
    node.write_manifest(
        "live.yaml",
        &probed_pod(
            "live",
            "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 1000",
            "    livenessProbe:\n      exec:\n        command: [cat, /tmp/healthy]\n      periodSeconds: 1\n      failureThreshold: 2\n      terminationGracePeriodSeconds: 1\n",
        ),
    );
    node.start();
    let first = node.wait_running("live");
    assert_eq!(first.container_statuses[0].restart_count, 0);
    let restarted = node.wait_for("a liveness restart", MINUTE, |s| {
        node.pod(s, "live")
            .filter(|p| {
                let c = &p.container_statuses[0];
                c.restart_count >= 1 && c.is_running()
            })
            .cloned()
    });
    let c = &restarted.container_statuses[0];
    let last = c.last_state.as_ref().expect("lastState after a restart");
    assert!(
        last.message.contains("Liveness probe failed") && last.message.contains("/tmp/healthy"),
        "{last:?}"
    );
    // `sleep` as pid 1 ignores SIGTERM: the probe's 1 s grace period ended with SIGKILL.
    assert_eq!(last.exit_code, 137, "{last:?}");
    assert!(node.agent_log().contains("Liveness probe failed"));
}

#[test]
fn readiness_follows_an_http_probe_and_shows_in_ps() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let port = free_port();
    // httpd serves /tmp/www; /ready exists from 2 s to 6 s.
    let script = format!(
        "mkdir -p /tmp/www; httpd -p 127.0.0.1:{port} -h /tmp/www; sleep 2; echo ok > /tmp/www/ready; sleep 4; rm /tmp/www/ready; exec sleep 1000"
    );
    node.write_manifest(
        "ready.yaml",
        &probed_pod(
            "ready",
            &script,
            &format!(
                "    readinessProbe:\n      httpGet:\n        port: web\n        path: /ready\n        httpHeaders:\n        - name: X-Probe\n          value: nanolet\n      periodSeconds: 1\n    ports:\n    - name: web\n      containerPort: {port}\n"
            ),
        ),
    );
    node.start();
    let running = node.wait_running("ready");
    assert!(
        !running.container_statuses[0].ready,
        "not ready before a probe succeeds"
    );
    assert_eq!(condition(&running, "Ready"), "False");
    let ready = node.wait_for("ready", MINUTE, |s| {
        node.pod(s, "ready")
            .filter(|p| p.container_statuses[0].ready)
            .cloned()
    });
    assert_eq!(condition(&ready, "Ready"), "True");
    assert_eq!(condition(&ready, "ContainersReady"), "True");
    // `nanolet ps -o json` shows it as well.
    let out = Command::new(env!("CARGO_BIN_EXE_nanolet"))
        .args(["ps", "-o", "json", "--config-dir"])
        .arg(node.dir.path())
        .output()
        .unwrap();
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = ps.to_string();
    assert!(text.contains("\"ready\":true"), "{text}");
    let ready_since = ready
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .unwrap()
        .last_transition_time;
    let unready = node.wait_for("not ready again", MINUTE, |s| {
        node.pod(s, "ready")
            .filter(|p| !p.container_statuses[0].ready)
            .cloned()
    });
    assert_eq!(condition(&unready, "Ready"), "False");
    let since = unready
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .unwrap()
        .last_transition_time;
    assert!(
        since >= ready_since,
        "lastTransitionTime moves with the status"
    );
    assert_eq!(
        unready.container_statuses[0].restart_count, 0,
        "readiness never restarts"
    );
}

#[test]
fn a_startup_probe_holds_liveness_back_until_it_succeeds_and_kills_when_it_never_does() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    // Slow to start: /tmp/started appears after 3 s. A liveness probe on the same file would
    // kill it if it ran before the startup probe succeeded.
    let probe = |kind: &str, failures: u32| {
        format!(
            "    {kind}:\n      exec:\n        command: [cat, /tmp/started]\n      periodSeconds: 1\n      failureThreshold: {failures}\n"
        )
    };
    node.write_manifest(
        "slow.yaml",
        &probed_pod(
            "slow",
            "sleep 3; touch /tmp/started; exec sleep 1000",
            &format!("{}{}", probe("startupProbe", 30), probe("livenessProbe", 1)),
        ),
    );
    node.write_manifest(
        "never.yaml",
        &probed_pod("never", "exec sleep 1000", &probe("startupProbe", 2)),
    );
    node.start();
    let slow = node.wait_running("slow");
    assert!(!slow.container_statuses[0].started);
    assert!(
        !slow.container_statuses[0].ready,
        "not ready before started"
    );
    let started = node.wait_for("slow started", MINUTE, |s| {
        node.pod(s, "slow")
            .filter(|p| p.container_statuses[0].started)
            .cloned()
    });
    assert!(
        started.container_statuses[0].ready,
        "no readiness probe: ready once started"
    );
    assert_eq!(started.container_statuses[0].restart_count, 0);
    let never = node.wait_for("never restarted", MINUTE, |s| {
        node.pod(s, "never")
            .filter(|p| p.container_statuses[0].restart_count >= 1)
            .cloned()
    });
    let last = never.container_statuses[0].last_state.clone().unwrap();
    assert!(last.message.contains("Startup probe failed"), "{last:?}");
    // Liveness never ran early on the slow pod.
    let s = node.snapshot().unwrap();
    assert_eq!(
        node.pod(&s, "slow").unwrap().container_statuses[0].restart_count,
        0
    );
}

#[test]
fn tcp_probes_see_listeners_and_closed_ports() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let open = free_port();
    let closed = free_port();
    node.write_manifest(
        "tcp.yaml",
        &probed_pod(
            "tcp",
            &format!("httpd -p 127.0.0.1:{open} -h /tmp; exec sleep 1000"),
            &format!(
                "    readinessProbe:\n      tcpSocket:\n        port: {open}\n      periodSeconds: 1\n"
            ),
        ),
    );
    node.write_manifest(
        "closed.yaml",
        &probed_pod(
            "closed",
            "exec sleep 1000",
            &format!(
                "    readinessProbe:\n      tcpSocket:\n        port: {closed}\n      periodSeconds: 1\n    livenessProbe:\n      tcpSocket:\n        host: 127.0.0.1\n        port: {closed}\n      periodSeconds: 1\n      failureThreshold: 2\n      terminationGracePeriodSeconds: 1\n"
            ),
        ),
    );
    node.start();
    node.wait_for("tcp ready", MINUTE, |s| {
        node.pod(s, "tcp")
            .filter(|p| p.container_statuses[0].ready)
            .map(|_| ())
    });
    let closed_pod = node.wait_for("closed restarted", MINUTE, |s| {
        node.pod(s, "closed")
            .filter(|p| p.container_statuses[0].restart_count >= 1)
            .cloned()
    });
    let last = closed_pod.container_statuses[0].last_state.clone().unwrap();
    assert!(
        last.message.contains("connection refused"),
        "kubelet's words for a closed port: {last:?}"
    );
    assert!(!closed_pod.container_statuses[0].ready);
}

#[test]
fn probes_of_servers_that_hang_time_out_and_leak_no_fds() {
    if !root_or_skip() {
        return;
    }
    // Accepts connections (the kernel's backlog) and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hang.local_addr().unwrap().port();
    let mut node = Node::new("");
    let probes = format!(
        "    readinessProbe:\n      httpGet:\n        port: {port}\n      periodSeconds: 1\n      timeoutSeconds: 1\n    livenessProbe:\n      tcpSocket:\n        port: {}\n      periodSeconds: 1\n      failureThreshold: 1000000\n    startupProbe:\n      exec:\n        command: [\"true\"]\n      periodSeconds: 1\n",
        free_port()
    );
    node.write_manifest("hang.yaml", &probed_pod("hang", "exec sleep 1000", &probes));
    // The liveness probe that times out on the hanging server kills the container.
    node.write_manifest(
        "hang-live.yaml",
        &probed_pod(
            "hang-live",
            "exec sleep 1000",
            &format!(
                "    livenessProbe:\n      httpGet:\n        port: {port}\n      periodSeconds: 1\n      timeoutSeconds: 1\n      failureThreshold: 2\n      terminationGracePeriodSeconds: 1\n"
            ),
        ),
    );
    node.start();
    let pid = node.agent_pid().unwrap();
    let restarted = node.wait_for("hang-live restarted", MINUTE, |s| {
        node.pod(s, "hang-live")
            .filter(|p| p.container_statuses[0].restart_count >= 1)
            .cloned()
    });
    let last = restarted.container_statuses[0].last_state.clone().unwrap();
    assert!(
        last.message.contains("context deadline exceeded"),
        "{last:?}"
    );
    // Let both pods go on probing; then compare open fds over ~8 more periods of probes.
    node.wait_for("hang started", MINUTE, |s| {
        node.pod(s, "hang")
            .filter(|p| p.container_statuses[0].started)
            .map(|_| ())
    });
    let before = fd_count(pid);
    let log_len = node.agent_log().len();
    node.wait_for("8 more timed-out probes", MINUTE, |_| {
        let log = node.agent_log();
        (log[log_len..].matches("context deadline exceeded").count() >= 8).then_some(())
    });
    let after = fd_count(pid);
    // A leak would be one fd per probe (16 or more); a little slack for log files and the
    // restarting container's pipes.
    assert!(after <= before + 4, "fds grew from {before} to {after}");
    let s = node.snapshot().unwrap();
    let hang_pod = node.pod(&s, "hang").unwrap();
    assert!(!hang_pod.container_statuses[0].ready);
    assert_eq!(hang_pod.container_statuses[0].restart_count, 0);
    drop(hang);
}

#[test]
fn post_start_and_pre_stop_hooks_run_and_a_failed_post_start_kills() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    // preStop calls back to this test over loopback.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            tx.send(line).unwrap();
        }
    });
    node.write_manifest(
        "hooks.yaml",
        &probed_pod(
            "hooks",
            "exec sleep 1000",
            &format!(
                "    lifecycle:\n      postStart:\n        exec:\n          command: [sh, -c, 'echo from-post-start > /proc/1/fd/1']\n      preStop:\n        httpGet:\n          port: {port}\n          path: /pre-stop\n"
            ),
        ),
    );
    node.write_manifest(
        "badhook.yaml",
        &probed_pod(
            "badhook",
            "exec sleep 1000",
            "    lifecycle:\n      postStart:\n        exec:\n          command: [sh, -c, 'echo no; exit 3']\n",
        ),
    );
    node.start();
    let hooks = node.wait_running("hooks");
    let log_path = node.log_path(&hooks, "app", 0);
    node.wait_for("postStart output in the log", MINUTE, |_| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("from-post-start")
            .then_some(())
    });
    let bad = node.wait_for("badhook killed", MINUTE, |s| {
        node.pod(s, "badhook")
            .filter(|p| p.container_statuses[0].restart_count >= 1)
            .cloned()
    });
    let last = bad.container_statuses[0].last_state.clone().unwrap();
    assert!(
        last.message.contains("FailedPostStartHook") && last.message.contains("exited with 3"),
        "{last:?}"
    );
    node.remove_manifest("hooks.yaml");
    let line = rx.recv_timeout(MINUTE).expect("preStop request");
    assert_eq!(line.trim_end(), "GET /pre-stop HTTP/1.1");
    node.wait_gone("hooks");
}

/// The Python gRPC health server of tests/support, stopped on drop.
struct GrpcServer {
    child: std::process::Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/grpc_health_server.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (with grpcio and grpcio-health-checking from .ci/setup)");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the gRPC health server did not start (pip install grpcio grpcio-health-checking): {line:?}")
        });
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn grpc_probes_ask_a_real_grpc_health_server() {
    if !root_or_skip() {
        return;
    }
    let server = GrpcServer::start();
    let port = server.port;
    let mut node = Node::new("");
    let grpc = |kind: &str, service: &str, extra: &str| {
        format!(
            "    {kind}:\n      grpc:\n        port: {port}\n        service: {service:?}\n      periodSeconds: 1\n{extra}"
        )
    };
    node.write_manifest(
        "serving.yaml",
        &probed_pod(
            "serving",
            "exec sleep 1000",
            &grpc("readinessProbe", "web", ""),
        ),
    );
    node.write_manifest(
        "unknown.yaml",
        &probed_pod(
            "unknown",
            "exec sleep 1000",
            &grpc("readinessProbe", "nope", ""),
        ),
    );
    node.write_manifest(
        "sick.yaml",
        &probed_pod(
            "sick",
            "exec sleep 1000",
            &grpc(
                "livenessProbe",
                "sick",
                "      failureThreshold: 2\n      terminationGracePeriodSeconds: 1\n",
            ),
        ),
    );
    node.start();
    node.wait_for("serving ready", MINUTE, |s| {
        node.pod(s, "serving")
            .filter(|p| p.container_statuses[0].ready)
            .map(|_| ())
    });
    let sick = node.wait_for("sick restarted", MINUTE, |s| {
        node.pod(s, "sick")
            .filter(|p| p.container_statuses[0].restart_count >= 1)
            .cloned()
    });
    let last = sick.container_statuses[0].last_state.clone().unwrap();
    assert!(
        last.message
            .contains("service unhealthy (responded with \"NOT_SERVING\")"),
        "{last:?}"
    );
    // An unknown service (NOT_FOUND): never ready, never restarted (readiness only).
    let s = node.snapshot().unwrap();
    let unknown = &node.pod(&s, "unknown").unwrap().container_statuses[0];
    assert!(unknown.is_running() && !unknown.ready, "{unknown:?}");
    assert!(
        node.agent_log()
            .contains("container \"app\": Readiness probe failed: service unhealthy"),
        "the unknown service's probe failed\n{}",
        node.agent_log()
    );
}

/// A pod on the built-in bridge network (not hostNetwork) is probed at its own IP.
#[test]
fn probes_reach_a_bridged_pod_at_its_ip() {
    if !root_or_skip() {
        return;
    }
    let pid = std::process::id();
    // A bridge and a /24 of this test's own (10.250-254.x: ranges tests/network.rs never uses).
    let bridge = format!("nlp{}", pid % 100_000);
    let cidr = format!("10.{}.{}.0/24", 250 + pid % 5, pid / 5 % 256);
    struct DelBridge(String);
    impl Drop for DelBridge {
        fn drop(&mut self) {
            let _ = nanolet::net::nat::remove(&self.0);
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }
    let _cleanup = DelBridge(bridge.clone());
    let mut node = Node::new(&format!("podCIDR: {cidr}\npodBridgeName: {bridge}\n"));
    let yaml = format!(
        "{}    readinessProbe:\n      httpGet:\n        port: 8080\n        path: /healthz\n      periodSeconds: 1\n    livenessProbe:\n      tcpSocket:\n        port: 8080\n      periodSeconds: 1\n      failureThreshold: 2\n",
        pod_yaml(
            "bridged",
            "mkdir -p /tmp/www; echo ok > /tmp/www/healthz; httpd -p 8080 -h /tmp/www; exec sleep 1000",
            "  terminationGracePeriodSeconds: 1\n"
        )
    );
    node.write_manifest("bridged.yaml", &yaml);
    node.start();
    let ready = node.wait_for("bridged ready", MINUTE, |s| {
        node.pod(s, "bridged")
            .filter(|p| p.container_statuses[0].ready)
            .cloned()
    });
    assert!(!ready.pod_ip.is_empty(), "{ready:?}");
    // The tcp liveness probe at the pod IP passed too (two failures would have restarted it).
    assert_eq!(ready.container_statuses[0].restart_count, 0);
}
