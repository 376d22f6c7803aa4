//! `nanolet ps`: pods, containers, state, restarts, age and reason, from the agent's snapshot.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::pod::status::{ContainerState, Snapshot};

/// The snapshot's file name in the run dir.
pub const SNAPSHOT_FILE: &str = "status.json";

/// Reads the agent's status snapshot.
pub fn read_snapshot(run_dir: &Path) -> io::Result<Snapshot> {
    let path = run_dir.join(SNAPSHOT_FILE);
    let bytes = fs::read(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "reading {}: {e} (is the agent running with this --config-dir?)",
                path.display()
            ),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// `1d2h`, `5m`, `42s`: kubectl's short ages.
pub fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The table `nanolet ps` prints: one line per pod, then one per container, then the
/// manifests that could not be used.
pub fn render_table(snapshot: &Snapshot, now: i64, agent_alive: bool) -> String {
    let mut out = String::new();
    if !agent_alive {
        let _ = writeln!(
            out,
            "warning: the agent (pid {}) is not running; this is its last snapshot",
            snapshot.agent_pid
        );
    }
    let _ = writeln!(
        out,
        "{:<12} {:<32} {:<6} {:<22} {:<9} {:<6} REASON",
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"
    );
    for pod in &snapshot.pods {
        let (ready, total) = pod.ready_count();
        let age = pod
            .start_time
            .map_or("-".to_string(), |t| human_age(now - t));
        let _ = writeln!(
            out,
            "{:<12} {:<32} {:<6} {:<22} {:<9} {:<6} {}",
            pod.namespace,
            pod.name,
            format!("{ready}/{total}"),
            pod.display_status(),
            pod.restarts(),
            age,
            pod.message
        );
        let containers = pod
            .init_container_statuses
            .iter()
            .map(|c| (c, "init:"))
            .chain(pod.container_statuses.iter().map(|c| (c, "")));
        for (c, prefix) in containers {
            let (state, age, reason) = match &c.state {
                ContainerState::Running { started_at } => (
                    "Running".to_string(),
                    human_age(now - started_at),
                    String::new(),
                ),
                ContainerState::Waiting { reason, message } => (
                    format!("Waiting:{reason}"),
                    "-".to_string(),
                    message.clone(),
                ),
                ContainerState::Terminated(t) => (
                    format!("Terminated:{}({})", t.reason, t.exit_code),
                    human_age(now - t.finished_at),
                    t.message.clone(),
                ),
            };
            let last = c
                .last_state
                .as_ref()
                .map(|t| format!("last: {} exit {}", t.reason, t.exit_code))
                .unwrap_or_default();
            let reason = [reason, last]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                out,
                "{:<12} {:<32} {:<6} {:<22} {:<9} {:<6} {}",
                "",
                format!("  {prefix}{}", c.name),
                if c.ready { "1/1" } else { "0/1" },
                state,
                c.restart_count,
                age,
                reason
            );
        }
    }
    if !snapshot.source_errors.is_empty() {
        let _ = writeln!(out, "\nMANIFEST ERRORS");
        for e in &snapshot.source_errors {
            let _ = writeln!(out, "{}: {}", e.source, e.error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::status::*;

    fn snapshot() -> Snapshot {
        let mut c = ContainerStatus::new("app", "busybox");
        c.state = ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: "back-off 20s restarting failed container=app pod=crash-edge_default(u-1)"
                .into(),
        };
        c.last_state = Some(Terminated {
            exit_code: 3,
            signal: None,
            reason: "Error".into(),
            message: String::new(),
            started_at: Some(90),
            finished_at: 95,
            container_id: "x".into(),
        });
        c.restart_count = 2;
        Snapshot {
            agent_pid: 1,
            node_name: "edge".into(),
            updated_at: 100,
            pods: vec![PodStatus {
                namespace: "default".into(),
                name: "crash-edge".into(),
                uid: "u".into(),
                source: "/etc/nanolet/manifests/crash.yaml".into(),
                phase: Phase::Running,
                reason: String::new(),
                message: String::new(),
                start_time: Some(40),
                conditions: vec![],
                init_container_statuses: vec![],
                container_statuses: vec![c],
                host_network: false,
                terminating: false,
                qos_class: String::new(),
                pod_ip: String::new(),
                pod_ips: Vec::new(),
                host_ip: String::new(),
            }],
            source_errors: vec![SourceError {
                source: "/etc/nanolet/manifests/bad.yaml".into(),
                error: "manifest /etc/nanolet/manifests/bad.yaml: unknown field `contianers`"
                    .into(),
            }],
        }
    }

    #[test]
    fn table_shows_crash_loops_restarts_and_manifest_errors() {
        let table = render_table(&snapshot(), 100, true);
        let pod_line = table.lines().nth(1).unwrap();
        assert!(pod_line.contains("crash-edge"), "{table}");
        assert!(pod_line.contains("CrashLoopBackOff"), "{table}");
        assert!(pod_line.contains("0/1"), "{table}");
        assert!(
            pod_line.split_whitespace().any(|w| w == "2"),
            "restarts: {table}"
        );
        assert!(pod_line.contains("60s"), "age: {table}");
        assert!(table.contains("last: Error exit 3"), "{table}");
        assert!(table.contains("bad.yaml: manifest"), "{table}");
        assert!(!table.contains("warning"), "{table}");
        assert!(
            render_table(&snapshot(), 100, false)
                .starts_with("warning: the agent (pid 1) is not running")
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (7200, "2h"),
            (200_000, "2d"),
            (-3, "0s"),
        ] {
            assert_eq!(human_age(secs), want);
        }
    }
}
