//! Starting a container: its image (pulled as the policy says), the pod sandbox, its volumes,
//! the bundle,
//! `runc run --detach`, and the watch for its exit.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::pod::resources::{self, NodeCapacity, PodResources};
use crate::pod::security::{self, Seccomp, Security};
use crate::runtime::seccomp;

/// Whether the clamped `oom_score_adj` warning was logged (it would repeat for every start).
static OOM_CLAMP_WARNED: AtomicBool = AtomicBool::new(false);

/// The node's CPUs and memory, read once: `/proc/meminfo` `MemTotal` and the CPUs this process
/// may run on.
fn node_capacity() -> &'static NodeCapacity {
    static CAPACITY: OnceLock<NodeCapacity> = OnceLock::new();
    CAPACITY.get_or_init(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: i64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        NodeCapacity {
            cpu_milli: cpus as i64 * 1000,
            memory_bytes: kib.saturating_mul(1024),
        }
    })
}

/// A container's resources and security, decided before its bundle is made.
struct Limits {
    pod: PodResources,
    security: Security,
    seccomp: Option<serde_json::Value>,
}
use crate::pod::events::Transition;

impl Worker {
    /// Container `c`'s resources and security, the user it runs as, and its pod's cgroup
    /// (created, with the pod's limits, before runc puts the container under it).
    fn identity_and_limits(
        &self,
        c: &k8s::Container,
        image: &Image,
        image_rootfs: &Path,
    ) -> Result<(Limits, spec::User, String), (&'static str, String)> {
        let config_error = |m: String| ("CreateContainerConfigError", m);
        let limits = self
            .limits_and_security(c, &image.config.user)
            .map_err(config_error)?;
        let read = |file| {
            inroot::read_to_string(image_rootfs, file, 1 << 20)
                .ok()
                .flatten()
        };
        let user = user::resolve_user(
            &security::user_spec(&image.config.user, &limits.security),
            read("/etc/passwd").as_deref(),
            read("/etc/group").as_deref(),
            &limits.security.extra_gids,
        )
        .map_err(|e| config_error(format!("image user: {e}")))?;
        let pod_cgroup = resources::pod_cgroup_path(
            &self.ctx.config.cgroup_parent,
            self.qos,
            &self.pod.metadata.uid,
        );
        cgroup::create(
            Path::new(cgroup::CGROUP_ROOT),
            &pod_cgroup,
            &limits.pod.pod_cgroup,
        )
        .map_err(|e| ("CreateContainerError", format!("pod cgroup: {e}")))?;
        Ok((limits, user, pod_cgroup))
    }

    /// Decides container `c`'s resources and security (pure, in [`resources`] and [`security`]),
    /// checks `runAsNonRoot` and reads a `Localhost` seccomp profile.
    fn limits_and_security(&self, c: &k8s::Container, image_user: &str) -> Result<Limits, String> {
        let config = &self.ctx.config;
        let pod = PodResources::of(&self.pod, config.pod_pids_limit).map_err(|e| e.0)?;
        let sec =
            security::security(&self.pod, c, &config.allowed_unsafe_sysctls).map_err(|e| e.0)?;
        security::verify_run_as_non_root(&self.pod, c, &sec, image_user).map_err(|e| e.0)?;
        let seccomp = match &sec.seccomp {
            Seccomp::Unconfined => None,
            Seccomp::RuntimeDefault => Some(seccomp::runtime_default(&sec.capabilities)),
            Seccomp::Localhost(rel) => {
                let path = config.data_dir.join("seccomp").join(rel);
                let text = std::fs::read(&path).map_err(|e| {
                    format!(
                        "container {:?}: seccomp profile {}: {e}",
                        c.name,
                        path.display()
                    )
                })?;
                let profile: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
                    format!(
                        "container {:?}: seccomp profile {}: {e}",
                        c.name,
                        path.display()
                    )
                })?;
                if profile
                    .get("defaultAction")
                    .and_then(|a| a.as_str())
                    .is_none()
                {
                    return Err(format!(
                        "container {:?}: seccomp profile {}: no defaultAction: not an OCI seccomp profile",
                        c.name,
                        path.display()
                    ));
                }
                Some(profile)
            }
        };
        Ok(Limits {
            pod,
            security: sec,
            seccomp,
        })
    }

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
            PullAction::Use => {
                if present.is_some() {
                    self.record(i, &Transition::AlreadyPresent { image: &c.image });
                }
                present
            }
            PullAction::Missing => None,
            PullAction::Pull { fallback } => {
                self.slots[i].status.state = ContainerState::Waiting {
                    reason: "ContainerCreating".to_string(),
                    message: format!("pulling image {:?}", c.image),
                };
                self.publish();
                match self.pull_recording_events(i, &c.image).await {
                    Ok(took) => {
                        let found = lookup(&self.ctx)?;
                        if let Some(image) = &found {
                            // A pull this worker joined counts from when it asked, which is
                            // kubelet's "including waiting"; there is no queue before it.
                            let transition = Transition::Pulled {
                                image: &c.image,
                                pull: took,
                                total: took,
                                size: image.size,
                            };
                            self.record(i, &transition);
                        }
                        found
                    }
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

    /// Pulls `reference` for container `i` as [`Self::pull_showing_progress`] does, with
    /// kubelet's Pulling event before and its Failed event after a failure; returns how long
    /// the pull took.
    async fn pull_recording_events(
        &mut self,
        i: usize,
        reference: &str,
    ) -> Result<Duration, String> {
        let (credentials, notes) = self.pull_credentials(reference);
        for note in &notes {
            log::warn!("pod {}: {note}", self.name());
        }
        self.record(i, &Transition::Pulling { image: reference });
        let began = Instant::now();
        match self.pull_showing_progress(i, reference, credentials).await {
            Ok(()) => Ok(began.elapsed()),
            Err(mut error) => {
                // The pull secrets that could not be used may be why it failed.
                for note in notes {
                    error.push_str("; ");
                    error.push_str(&note);
                }
                let image = reference;
                self.record(
                    i,
                    &Transition::PullFailed {
                        image,
                        error: &error,
                    },
                );
                Err(error)
            }
        }
    }

    /// Pulls `reference` for container `i`, publishing the pull's progress in the container's
    /// status message at most once per [`PROGRESS_PERIOD`].
    pub(super) async fn pull_showing_progress(
        &mut self,
        i: usize,
        reference: &str,
        credentials: Option<crate::image::auth::Credentials>,
    ) -> Result<(), String> {
        let puller = self.ctx.puller.clone();
        let pull = puller.pull_with(reference, credentials);
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

    pub(super) fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        let m = &self.pod.metadata;
        self.ctx
            .config
            .pod_logs_dir
            .join(format!("{}_{}_{}", m.namespace, m.name, m.uid))
            .join(name)
            .join(format!("{attempt}.log"))
    }

    /// An API pod's imagePullSecrets as the cache has them (none for static pods: the node's
    /// `config.json` serves them).
    fn pull_secrets(&self) -> Vec<crate::pod::pull_secrets::Fetched> {
        let Some(api) = self
            .ctx
            .api_objects
            .as_ref()
            .filter(|_| self.source == "api")
        else {
            return Vec::new();
        };
        let ns = &self.pod.metadata.namespace;
        crate::source::api::objects::pull_secret_names(&self.pod)
            .into_iter()
            .map(|name| {
                let found = api.secret_with_type(ns, &name);
                (name, found)
            })
            .collect()
    }

    /// The credentials of the pod's imagePullSecrets for `image`'s registry, and notes on
    /// unusable secrets.
    fn pull_credentials(
        &self,
        image: &str,
    ) -> (Option<crate::image::auth::Credentials>, Vec<String>) {
        let Ok(reference) = crate::image::reference::Reference::parse(image) else {
            return (None, Vec::new());
        };
        crate::pod::pull_secrets::credentials(&self.pull_secrets(), &reference.domain)
    }

    /// kubelet's FailedToRetrieveImagePullSecret when an imagePullSecret is missing or cannot
    /// be read (kubelet checks at every pod sync; nanolet at every container start). The pull
    /// goes on with the secrets that are there.
    fn report_unretrievable_pull_secrets(&self, i: usize) {
        let fetched = self.pull_secrets();
        let names = crate::pod::pull_secrets::unretrievable(&fetched);
        if !names.is_empty() {
            self.record(i, &Transition::PullSecretsUnretrievable { names: &names });
        }
    }

    /// Starts container `i`: everything up to `runc run --detach`.
    pub(super) async fn start(&mut self, i: usize) {
        let now = Instant::now();
        // The copies of the pod's ConfigMaps, Secrets (pull secrets too) and tokens.
        self.fetch_objects().await;
        self.report_unretrievable_pull_secrets(i);
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
        let (limits, user, pod_cgroup) = match self.identity_and_limits(&c, &image, &image_rootfs) {
            Ok(found) => found,
            Err((reason, message)) => return self.create_error(i, reason, message),
        };
        // The attempt number names the container and its log file.
        let attempt = self.slots[i].status.restart_count
            + u32::from(self.slots[i].status.last_termination().is_some());
        let id = format!("{}-{}-{}", self.pod.metadata.uid, c.name, attempt);
        let bundle = Bundle::new(&self.ctx.config.run_dir, &self.ctx.config.data_dir, &id);
        let addresses = self.addresses();
        let volume_inputs = volumes::Inputs {
            pod: &self.pod,
            objects: self.objects(),
            addresses: &addresses,
        };
        // kubelet mounts every volume of the pod before any container starts, and waits
        // (ContainerCreating) while one cannot be set up.
        if let Err(e) = self.volumes.set_up(&self.pod, &volume_inputs) {
            return self.create_error(i, "ContainerCreating", e.to_string());
        }
        let sources = config::EnvSources {
            objects: self.objects(),
            addresses: &addresses,
            node: node_capacity(),
        };
        let volume_mounts = match config::kubelet_environment(&self.pod, &c, &sources)
            .map_err(|e| e.0)
            .and_then(|env| self.volumes.container_mounts(&self.pod, &c, &env))
        {
            Ok(mounts) => mounts,
            Err(e) => return self.create_error(i, "CreateContainerConfigError", e),
        };
        let inputs = config::Inputs {
            pod: &self.pod,
            container: &c,
            image: &image.config,
            user,
            sandbox: &self.sandbox,
            files: &self.files,
            pod_cgroup: &pod_cgroup,
            resources: limits.pod.container_cgroup(i),
            oom_score_adj: limits.pod.oom_score_adj(&self.pod, i, node_capacity()),
            security: &limits.security,
            seccomp: limits.seccomp,
            node: node_capacity(),
            container_id: &id,
            attempt,
            rootfs: bundle.rootfs(),
            sources: &sources,
            volume_mounts,
        };
        let cfg = match config::container_config(&inputs) {
            Ok(cfg) => cfg,
            Err(e) => return self.create_error(i, "CreateContainerConfigError", e.0),
        };
        let (runtime_spec, warnings) = spec::runtime_spec(&cfg, &self.ctx.host);
        for w in warnings {
            // Every Guaranteed container would repeat this one: once is enough.
            if w.starts_with("oomScoreAdj") && OOM_CLAMP_WARNED.swap(true, Ordering::Relaxed) {
                continue;
            }
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
        // The container's configuration and its OCI spec (~20 KiB as JSON values) are on disk
        // now: freed before waiting for runc, so that pods starting together do not each hold
        // theirs (100 pods at once: ~2 MiB of peak heap that the allocator then keeps).
        drop((runtime_spec, cfg, inputs));
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
                self.record(i, &Transition::Started);
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
                    id: id.clone(),
                    bundle,
                    pid,
                    stop_signal,
                });
                self.start_probes(i, &id, Duration::ZERO);
            }
            Err(e) => {
                log::warn!("pod {}: container {:?}: {e}", self.name(), c.name);
                let error = e.to_string();
                self.record(i, &Transition::StartFailed { error: &error });
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
                let _ = events.send(Event::Exited { slot, id, exit });
            })
            .detach();
    }
}
