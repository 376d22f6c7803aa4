//! What the last boot or the last nanolet left behind: runtime state of a previous boot,
//! containers whose pod is no longer desired (adopted at start, then stopped), and pod folders
//! nothing uses. Nothing here runs before the first full scan of the pod sources.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::FutureExt;

use super::Agent;
use crate::config::NodeConfig;
use crate::pod::config::ANNOTATION_POD_UID;
use crate::pod::worker::{Adopted, Context};
use crate::runtime::bundle::Bundle;
use crate::state;
use crate::sys::cgroup;
use crate::sys::sandbox::Sandbox;

/// After a reboot nothing of the last boot runs: remove its bundles, runc state, namespace
/// files and writable layers (the run dir may not be on tmpfs in every setup).
pub(super) fn clear_stale_state(config: &NodeConfig) {
    let pods = config.run_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods) {
        for entry in entries.flatten() {
            let _ = Sandbox {
                dir: entry.path().join("ns"),
                host_network: false,
            }
            .destroy();
        }
    }
    if let Ok(entries) = std::fs::read_dir(config.run_dir.join("containers")) {
        for entry in entries.flatten() {
            let _ = crate::sys::mount::unmount(&entry.path().join("rootfs"));
        }
    }
    // Volumes' tmpfs and subPath binds belong to the last boot; emptyDir content on disk
    // stays for the pod's next start, as kubelet keeps it.
    let _ = crate::sys::volume_mount::unmount_below(&config.data_dir.join("pods"));
    for dir in [
        pods,
        config.run_dir.join("containers"),
        config.data_dir.join("containers"),
    ] {
        if let Err(e) = state::remove_tree(&dir) {
            log::warn!("removing stale {}: {e}", dir.display());
        }
    }
    if let Ok(entries) = std::fs::read_dir(&config.runc_root) {
        for entry in entries.flatten() {
            let _ = state::remove_tree(&entry.path());
        }
    }
}

impl Agent {
    /// Containers under nanolet's runc root, by pod uid, with their records.
    pub(super) async fn adoptable(&self) -> BTreeMap<String, Vec<Adopted>> {
        let mut by_pod: BTreeMap<String, Vec<Adopted>> = BTreeMap::new();
        let list = match self.ctx.runc.list().await {
            Ok(list) => list,
            Err(e) => {
                log::error!("listing containers to adopt: {e}");
                return by_pod;
            }
        };
        for state in list {
            let bundle = Bundle {
                id: state.id.clone(),
                dir: state.bundle.clone(),
                layer: PathBuf::new(),
            };
            let uid = state
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_POD_UID))
                .cloned();
            match (uid, bundle.read_record()) {
                (Some(uid), Ok(record)) if record.pod_uid == uid => by_pod
                    .entry(uid)
                    .or_default()
                    .push(Adopted { record, state }),
                _ => {
                    log::warn!(
                        "container {}: not nanolet's or its record is missing; removing it",
                        state.id
                    );
                    let _ = self.ctx.runc.delete(&state.id).await;
                }
            }
        }
        by_pod
    }

    /// Stops containers whose pod is no longer desired (removed while nanolet was away), and
    /// removes pod folders nothing uses.
    pub(super) fn stop_orphans(&self, orphans: BTreeMap<String, Vec<Adopted>>) {
        let ctx = self.ctx.clone();
        let live: HashSet<String> = self.workers.keys().cloned().collect();
        // All orphan pods stop at once, each as its spec said (recorded with each container).
        let stops: Vec<_> = orphans
            .into_iter()
            .map(|(uid, containers)| {
                self.ctx
                    .executor
                    .spawn(stop_orphan(ctx.clone(), uid, containers))
            })
            .collect();
        self.ctx
            .executor
            .spawn(async move {
                for stop in stops {
                    stop.await;
                }
                remove_unused_pod_dirs(&ctx, &live);
            })
            .detach();
    }
}

/// Stops the containers of a pod that no manifest defines any more: stop signal, grace period,
/// then `runc delete --force` (SIGKILL).
async fn stop_orphan(ctx: Rc<Context>, uid: String, containers: Vec<Adopted>) {
    log::info!(
        "pod uid {uid}: no manifest defines it any more; stopping its {} container(s)",
        containers.len()
    );
    for a in &containers {
        if let Err(e) = ctx.runc.kill(&a.state.id, &a.record.stop_signal).await {
            log::warn!("pod uid {uid}: {e}");
        }
    }
    let grace = containers
        .iter()
        .map(|a| a.record.grace_period_seconds)
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(grace);
    for a in &containers {
        // Not our children (an earlier nanolet started them): a pidfd tells their end.
        let exited = async {
            let _ = crate::sys::reaper::wait_foreign(a.state.pid).await;
        };
        exited
            .or(async {
                Timer::at(deadline).await;
            })
            .await;
        if let Err(e) = ctx.runc.delete(&a.state.id).await {
            log::warn!("pod uid {uid}: {e}");
        }
        let layer = ctx.config.data_dir.join("containers").join(&a.state.id);
        let bundle = Bundle {
            id: a.state.id.clone(),
            dir: a.state.bundle.clone(),
            layer,
        };
        if let Err(e) = bundle.remove() {
            log::warn!("pod uid {uid}: removing {}: {e}", bundle.dir.display());
        }
        log::info!(
            "pod uid {uid}: container {} stopped and removed",
            a.state.id
        );
    }
}

fn remove_unused_pod_dirs(ctx: &Context, live: &HashSet<String>) {
    // Volumes (in the data dir) of pods that are gone.
    if let Ok(entries) = std::fs::read_dir(ctx.config.data_dir.join("pods")) {
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&uid) {
                let volumes = crate::pod::volumes::PodVolumes::new(&ctx.config.data_dir, &uid);
                if let Err(e) = volumes.tear_down() {
                    log::warn!("removing volumes of gone pod {uid}: {e}");
                }
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(ctx.config.run_dir.join("pods")) else {
        return;
    };
    for entry in entries.flatten() {
        let uid = entry.file_name().to_string_lossy().into_owned();
        if live.contains(&uid) {
            continue;
        }
        let _ = Sandbox {
            dir: entry.path().join("ns"),
            host_network: false,
        }
        .destroy();
        for relative in crate::pod::resources::pod_cgroup_paths(&ctx.config.cgroup_parent, &uid) {
            let _ = cgroup::remove(Path::new(cgroup::CGROUP_ROOT), &relative);
        }
        let _ = state::remove_tree(&entry.path());
    }
}
