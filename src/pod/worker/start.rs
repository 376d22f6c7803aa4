//! Starting a container: its image (pulled as the policy says), the pod sandbox, the bundle,
//! `runc run --detach`, and the watch for its exit.

use super::*;
use crate::api::events::{EventType, reason};

impl Worker {
    /// Finds (pulling as `imagePullPolicy` says) a container's image and its shared rootfs.
    pub(super) async fn image_for(
        &mut self,
        i: usize,
    ) -> Result<(Image, PathBuf), (&'static str, String)> {
        let c = self.container(i).clone();
        let lookup = |ctx: &Context| {
            ctx.images
                .resolve(&c.image)
                .map_err(|e| ("ErrImagePull", format!("image {:?}: {e}", c.image)))
        };
        let present = lookup(&self.ctx)?;
        let image = match images::decide(c.image_pull_policy(), present.is_some()) {
            PullAction::Use => present,
            PullAction::Missing => None,
            PullAction::Pull { fallback } => {
                self.slots[i].status.state = ContainerState::Waiting {
                    reason: "ContainerCreating".to_string(),
                    message: format!("pulling image {:?}", c.image),
                };
                self.publish();
                match self.pull_showing_progress(i, &c.image).await {
                    Ok(()) => lookup(&self.ctx)?,
                    Err(e) if fallback => {
                        log::warn!(
                            "pod {}: container {:?}: pulling {:?} failed ({e}); using the image already in the store",
                            self.name(),
                            c.name,
                            c.image
                        );
                        present
                    }
                    Err(e) => {
                        let again = matches!(&self.slots[i].status.state, ContainerState::Waiting { reason, .. }
                            if reason == "ErrImagePull" || reason == "ImagePullBackOff");
                        let reason = if again {
                            "ImagePullBackOff"
                        } else {
                            "ErrImagePull"
                        };
                        return Err((reason, format!("image {:?}: {e}", c.image)));
                    }
                }
            }
        };
        let Some(image) = image else {
            return Err((
                "ErrImageNeverPull",
                format!(
                    "image {:?} is not present in the image store and imagePullPolicy is Never; add it to {} or run `nanolet pull`",
                    c.image,
                    self.ctx.config.images_path.display()
                ),
            ));
        };
        if let Some(rootfs) = self.ctx.images.unpacked_rootfs(&image) {
            return Ok((image, rootfs));
        }
        // Seconds of CPU for a large image: in a child, not on the agent's thread.
        self.slots[i].status.state = ContainerState::Waiting {
            reason: "ContainerCreating".to_string(),
            message: format!("unpacking image {:?}", c.image),
        };
        self.publish();
        let puller = self.ctx.puller.clone();
        if let Err(e) = puller.unpack(&image).await {
            return Err(("ErrImagePull", format!("image {:?}: {e}", c.image)));
        }
        match self.ctx.images.unpacked_rootfs(&image) {
            Some(rootfs) => Ok((image, rootfs)),
            None => Err((
                "ErrImagePull",
                format!(
                    "image {:?}: its rootfs is gone right after unpacking",
                    c.image
                ),
            )),
        }
    }

    /// Pulls `reference` for container `i`, publishing the pull's progress in the container's
    /// status message at most once per [`PROGRESS_PERIOD`].
    pub(super) async fn pull_showing_progress(
        &mut self,
        i: usize,
        reference: &str,
    ) -> Result<(), String> {
        let puller = self.ctx.puller.clone();
        let pull = puller.pull(reference);
        futures_lite::pin!(pull);
        let mut shown = String::new();
        loop {
            let done = async { Some(pull.as_mut().await) };
            let tick = async {
                Timer::after(PROGRESS_PERIOD).await;
                None
            };
            if let Some(result) = done.or(tick).await {
                return result;
            }
            // A pull this worker joined shows the progress of the child it shares.
            let Some(message) = puller.progress(reference) else {
                continue;
            };
            if message != shown {
                shown = message.clone();
                self.slots[i].status.state = ContainerState::Waiting {
                    reason: "ContainerCreating".to_string(),
                    message,
                };
                self.publish();
            }
        }
    }

    pub(super) async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if self.sandbox.is_complete() {
            return Ok(());
        }
        let _ = self.sandbox.destroy();
        std::fs::create_dir_all(&self.pod_dir)
            .map_err(|e| format!("{}: {e}", self.pod_dir.display()))?;
        let hostname = if self.pod.spec.host_network {
            crate::config::hostname()
        } else {
            self.pod.metadata.name.clone()
        };
        self.write_pod_files(&hostname)
            .map_err(|e| format!("writing {}: {e}", self.pod_dir.display()))?;
        self.sandbox
            .create(&self.ctx.reaper, &self.ctx.exe, &hostname)
            .await
            .map_err(|e| e.to_string())
    }

    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` as kubelet writes them.
    pub(super) fn write_pod_files(&self, hostname: &str) -> std::io::Result<()> {
        let hosts = if self.pod.spec.host_network {
            let host = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            format!("# Kubernetes-managed hosts file (host network).\n{host}")
        } else {
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
            )
        };
        crate::state::write_atomic(&self.files.hosts, hosts.as_bytes())?;
        crate::state::write_atomic(&self.files.hostname, format!("{hostname}\n").as_bytes())?;
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        crate::state::write_atomic(&self.files.resolv_conf, &resolv)
    }

    pub(super) fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        let m = &self.pod.metadata;
        self.ctx
            .config
            .pod_logs_dir
            .join(format!("{}_{}_{}", m.namespace, m.name, m.uid))
            .join(name)
            .join(format!("{attempt}.log"))
    }

    /// Starts container `i`: everything up to `runc run --detach`.
    pub(super) async fn start(&mut self, i: usize) {
        let now = Instant::now();
        let (image, image_rootfs) = match self.image_for(i).await {
            Ok(found) => found,
            Err((reason, message)) => return self.create_error(i, reason, message),
        };
        // Recorded before the container exists, so image GC never takes an image being started.
        self.ctx
            .images_used
            .borrow_mut()
            .record_use(&image.manifest_digest.to_string(), unix_now());
        if let Err(e) = self.ensure_sandbox().await {
            return self.create_error(i, "CreatePodSandboxError", e);
        }
        let c = self.container(i).clone();
        let passwd = inroot::read_to_string(&image_rootfs, "/etc/passwd", 1 << 20)
            .ok()
            .flatten();
        let group = inroot::read_to_string(&image_rootfs, "/etc/group", 1 << 20)
            .ok()
            .flatten();
        let user = match user::resolve_user(
            &image.config.user,
            passwd.as_deref(),
            group.as_deref(),
            &[],
        ) {
            Ok(u) => u,
            Err(e) => {
                return self.create_error(
                    i,
                    "CreateContainerConfigError",
                    format!("image user: {e}"),
                );
            }
        };
        // The attempt number names the container and its log file.
        let attempt = self.slots[i].status.restart_count
            + u32::from(self.slots[i].status.last_termination().is_some());
        let id = format!("{}-{}-{}", self.pod.metadata.uid, c.name, attempt);
        let bundle = Bundle::new(&self.ctx.config.run_dir, &self.ctx.config.data_dir, &id);
        let inputs = config::Inputs {
            pod: &self.pod,
            container: &c,
            image: &image.config,
            user,
            sandbox: &self.sandbox,
            files: &self.files,
            cgroup_parent: &self.ctx.config.cgroup_parent,
            container_id: &id,
            attempt,
            rootfs: bundle.rootfs(),
        };
        let cfg = match config::container_config(&inputs) {
            Ok(cfg) => cfg,
            Err(e) => return self.create_error(i, "CreateContainerConfigError", e.0),
        };
        let (runtime_spec, warnings) = spec::runtime_spec(&cfg, &self.ctx.host);
        for w in warnings {
            log::warn!("pod {}: container {:?}: {w}", self.name(), c.name);
        }
        if bundle.dir.exists() {
            // Left by an attempt that did not finish (nanolet stopped in the middle of it).
            let _ = self.ctx.runc.delete(&id).await;
            let _ = bundle.remove();
        }
        let log_path = self.log_path(&c.name, attempt);
        let prepared = bundle
            .create(&image_rootfs)
            .and_then(|_| bundle.write_config(&runtime_spec))
            .and_then(|_| bundle.open_stdio())
            .and_then(|(stdio, pipes)| {
                let writer = LogWriter::open(
                    &log_path,
                    self.ctx.config.container_log_max_size,
                    self.ctx.config.container_log_max_files,
                )?;
                Ok((stdio, pipes, writer))
            });
        let (stdio, pipes, writer) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = bundle.remove();
                return self.create_error(
                    i,
                    "CreateContainerError",
                    format!("preparing bundle {}: {e}", bundle.dir.display()),
                );
            }
        };
        self.slots[i].begin_attempt(&self.ctx.backoff, now);
        self.ctx.executor.spawn(pump_logs(pipes, writer)).detach();
        let image_id = image.config_digest.to_string();
        match self.ctx.runc.run_detached(&id, &bundle.dir, stdio).await {
            Ok(pid) => {
                let started_at = unix_now();
                log::info!(
                    "pod {}: container {:?} started (attempt {attempt}, pid {pid})",
                    self.name(),
                    c.name
                );
                self.record_event(
                    Some(&c.name),
                    EventType::Normal,
                    reason::STARTED,
                    format!("Started container {}", c.name),
                );
                let record = Record {
                    pod_uid: self.pod.metadata.uid.clone(),
                    container: c.name.clone(),
                    attempt,
                    pid,
                    started_at,
                    image: c.image.clone(),
                    image_id: image_id.clone(),
                    log_path,
                    stop_signal: image
                        .config
                        .stop_signal
                        .clone()
                        .unwrap_or_else(|| "SIGTERM".to_string()),
                    grace_period_seconds: self.pod.spec.termination_grace_period_seconds().max(0)
                        as u64,
                };
                if let Err(e) = bundle.write_record(&record) {
                    log::warn!(
                        "pod {}: container {:?}: recording it for adoption: {e}",
                        self.name(),
                        c.name
                    );
                }
                self.slots[i].record_start(id.clone(), image_id, started_at);
                self.watch_exit(i, id.clone(), pid, true);
                let stop_signal = image
                    .config
                    .stop_signal
                    .clone()
                    .unwrap_or_else(|| "SIGTERM".to_string());
                self.running[i] = Some(Running {
                    id,
                    bundle,
                    pid,
                    stop_signal,
                });
            }
            Err(e) => {
                log::warn!("pod {}: container {:?}: {e}", self.name(), c.name);
                self.record_event(
                    Some(&c.name),
                    EventType::Warning,
                    reason::FAILED,
                    format!("Error: {e}"),
                );
                let _ = self.ctx.runc.delete(&id).await;
                let _ = bundle.remove();
                let now_wall = unix_now();
                self.slots[i].record_exit(
                    Terminated {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".to_string(),
                        message: e.to_string(),
                        started_at: None,
                        finished_at: now_wall,
                        container_id: id,
                    },
                    Instant::now(),
                );
            }
        }
    }

    /// Sends an `Exited` event when container `id` in slot `i` ends.
    pub(super) fn watch_exit(&self, slot: usize, id: String, pid: i32, is_child: bool) {
        let events = self.events.clone();
        let reaper = self.ctx.reaper.clone();
        self.ctx
            .executor
            .spawn(async move {
                let exit = if is_child {
                    Some(reaper.wait(pid).await)
                } else {
                    let _ = reaper::wait_foreign(pid).await;
                    None
                };
                let _ = events.send(Event::Exited { slot, id, exit }).await;
            })
            .detach();
    }
}
