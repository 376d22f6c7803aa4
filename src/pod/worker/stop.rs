//! A container's end (exit, clean-up, log pruning) and the pod's graceful termination.

use std::path::Path;

use super::*;
use crate::pod::resources;

impl Worker {
    pub(super) async fn on_exit(&mut self, i: usize, id: &str, exit: Option<Exit>) {
        let Some(running) = self.running[i].take_if(|r| r.id == id) else {
            return;
        };
        let started_at = match self.slots[i].status.state {
            ContainerState::Running { started_at } => Some(started_at),
            _ => None,
        };
        // Read before `runc delete` removes the container's cgroup.
        let container_cgroup = format!(
            "{}/{}",
            resources::pod_cgroup_path(
                &self.ctx.config.cgroup_parent,
                self.qos,
                &self.pod.metadata.uid
            ),
            running.id
        );
        let oom_killed = cgroup::oom_kills(Path::new(cgroup::CGROUP_ROOT), &container_cgroup)
            .is_some_and(|n| n > 0);
        let killed = self.stop_probes(i);
        let (exit_code, signal, reason, mut message) = match exit {
            Some(e) => {
                let reason = match (e.code(), oom_killed) {
                    (0, _) => "Completed",
                    (_, true) => "OOMKilled",
                    (_, false) => "Error",
                };
                let signal = match e {
                    Exit::Signal(s) => Some(s),
                    Exit::Code(_) => None,
                };
                (e.code(), signal, reason, String::new())
            }
            // kubelet's words for a container whose end it did not see.
            None => (
                137,
                None,
                "ContainerStatusUnknown",
                "the container exited while nanolet was not running; its exit status is unknown"
                    .to_string(),
            ),
        };
        if let Some(why) = killed {
            message = why;
        }
        log::info!(
            "pod {}: container {:?} exited with code {exit_code} ({reason})",
            self.name(),
            self.slots[i].status.name
        );
        self.slots[i].record_exit(
            Terminated {
                exit_code,
                signal,
                reason: reason.to_string(),
                message,
                started_at,
                finished_at: unix_now(),
                container_id: running.id.clone(),
            },
            Instant::now(),
        );
        self.remove_container(&running).await;
        self.prune_logs(i);
    }

    /// Keeps the current and the previous attempt's logs (what `logs --previous` needs).
    pub(super) fn prune_logs(&self, i: usize) {
        let status = &self.slots[i].status;
        let dir = self.log_path(&status.name, 0);
        let Some(dir) = dir.parent() else { return };
        let keep_from = status.restart_count.saturating_sub(1);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let attempt = name.split('.').next().and_then(|n| n.parse::<u32>().ok());
            if attempt.is_some_and(|a| a < keep_from) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    pub(super) async fn remove_container(&self, running: &Running) {
        if let Err(e) = self.ctx.runc.delete(&running.id).await {
            log::warn!("pod {}: {e}", self.name());
        }
        if let Err(e) = running.bundle.remove() {
            log::warn!(
                "pod {}: removing bundle {}: {e}",
                self.name(),
                running.bundle.dir.display()
            );
        }
    }

    /// Graceful termination, then removal of everything the pod had.
    /// `grace_seconds` overrides the spec's grace period (a deletion's own).
    pub(super) async fn terminate(&mut self, grace_seconds: Option<i64>) {
        self.terminating = true;
        self.publish();
        let seconds =
            grace_seconds.unwrap_or_else(|| self.pod.spec.termination_grace_period_seconds());
        let grace = Duration::from_secs(seconds.max(0) as u64);
        log::info!(
            "pod {}: stopping (grace period {}s)",
            self.name(),
            grace.as_secs()
        );
        let deadline = Instant::now() + grace;
        // preStop hooks, then the stop signal, in every container at once; the kill tasks end
        // at the deadline (with a SIGKILL), whatever happened before.
        for i in 0..self.running.len() {
            self.probing[i] = None;
            if self.running[i].is_some() {
                self.record(i, &crate::pod::events::Transition::Stopping);
            }
            if let Some(kill) = self.kill_task(i, grace) {
                self.ctx.executor.spawn(kill).detach();
            }
        }
        self.wait_for_exits(deadline).await;
        if self.running.iter().any(Option::is_some) {
            log::info!(
                "pod {}: grace period over; killing what is left",
                self.name()
            );
            for r in self.running.iter().flatten() {
                let _ = self.ctx.runc.kill(&r.id, "SIGKILL").await;
            }
            self.wait_for_exits(Instant::now() + Duration::from_secs(10))
                .await;
        }
        for i in 0..self.running.len() {
            if let Some(r) = self.running[i].take() {
                log::warn!(
                    "pod {}: container {} (pid {}) did not exit after SIGKILL; removing it",
                    self.name(),
                    r.id,
                    r.pid
                );
                self.remove_container(&r).await;
            }
        }
        self.cleanup().await;
        self.ctx.board.remove(&self.pod.metadata.uid);
        log::info!("pod {}: stopped and removed", self.name());
    }

    pub(super) async fn wait_for_exits(&mut self, deadline: Instant) {
        while self.running.iter().any(Option::is_some) {
            let event = self
                .events_rx
                .recv()
                .or(async {
                    Timer::at(deadline).await;
                    None
                })
                .await;
            match event {
                Some(Event::Exited { slot, id, exit }) => self.on_exit(slot, &id, exit).await,
                Some(Event::Command(_) | Event::Probe { .. }) => {}
                None => return,
            }
        }
    }

    /// Removes the pod's network, namespaces, cgroups, files and logs.
    pub(super) async fn cleanup(&mut self) {
        let name = self.name();
        self.detach_network().await;
        if let Err(e) = self.sandbox.destroy() {
            log::warn!("pod {name}: removing namespaces: {e}");
        }
        for relative in
            resources::pod_cgroup_paths(&self.ctx.config.cgroup_parent, &self.pod.metadata.uid)
        {
            if let Err(e) = cgroup::remove(Path::new(cgroup::CGROUP_ROOT), &relative) {
                log::warn!("pod {name}: {e}");
            }
        }
        if let Err(e) = self.volumes.tear_down() {
            log::warn!(
                "pod {name}: removing volumes {}: {e}",
                self.volumes.root.display()
            );
        }
        if let Some(api) = &self.ctx.api_objects {
            api.forget_pod(&self.pod.metadata.uid);
        }
        if let Err(e) = remove_tree(&self.pod_dir) {
            log::warn!("pod {name}: removing {}: {e}", self.pod_dir.display());
        }
        let logs = self.log_path("x", 0);
        if let Some(dir) = logs.parent().and_then(|p| p.parent())
            && let Err(e) = remove_tree(dir)
        {
            log::warn!("pod {name}: removing logs {}: {e}", dir.display());
        }
    }
}
