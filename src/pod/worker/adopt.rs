//! Taking over the containers an earlier nanolet left running (or stopped).

use super::*;

impl Worker {
    /// Takes over a container a previous nanolet started.
    /// Takes over what an earlier nanolet left: per container, the latest attempt is adopted
    /// and older ones are removed (a pod never runs twice). Init containers of a pod whose app
    /// containers had started are complete: they are not run again, as kubelet would not.
    pub(super) async fn adopt_all(&mut self, mut adopted: Vec<Adopted>) {
        adopted.sort_by(|a, b| {
            (&a.record.container, a.record.attempt).cmp(&(&b.record.container, b.record.attempt))
        });
        let mut latest: Vec<Adopted> = Vec::new();
        for a in adopted {
            match latest.last() {
                Some(prev) if prev.record.container == a.record.container => {
                    if let Some(old) = latest.pop() {
                        self.remove_leftover(&old).await;
                    }
                }
                _ => {}
            }
            latest.push(a);
        }
        let n_init = self.pod.spec.init_containers.len();
        let app_started = latest.iter().any(|a| {
            self.slots
                .iter()
                .position(|s| s.status.name == a.record.container)
                .is_some_and(|i| i >= n_init)
        });
        for a in latest {
            self.adopt(a).await;
        }
        if app_started {
            let now = unix_now();
            for slot in self.slots.iter_mut().take(n_init) {
                if slot.status.is_running() {
                    continue;
                }
                slot.status.state = ContainerState::Terminated(Terminated {
                    exit_code: 0,
                    signal: None,
                    reason: "Completed".to_string(),
                    message: "completed before nanolet restarted".to_string(),
                    started_at: None,
                    finished_at: now,
                    container_id: String::new(),
                });
            }
        }
    }

    /// Removes a container of an older attempt that a newer one replaced.
    pub(super) async fn remove_leftover(&self, a: &Adopted) {
        log::warn!(
            "pod {}: container {} is an older attempt of {:?}; removing it",
            self.name(),
            a.state.id,
            a.record.container
        );
        if a.state.is_running() {
            let _ = self.ctx.runc.kill(&a.state.id, "SIGKILL").await;
        }
        let leftover = Running {
            id: a.state.id.clone(),
            bundle: Bundle {
                id: a.state.id.clone(),
                dir: a.state.bundle.clone(),
                layer: self
                    .ctx
                    .config
                    .data_dir
                    .join("containers")
                    .join(&a.state.id),
            },
            pid: a.state.pid,
            stop_signal: String::new(),
        };
        self.remove_container(&leftover).await;
    }

    pub(super) async fn adopt(&mut self, a: Adopted) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.status.name == a.record.container)
        else {
            return;
        };
        let bundle = Bundle {
            id: a.state.id.clone(),
            dir: a.state.bundle.clone(),
            layer: self
                .ctx
                .config
                .data_dir
                .join("containers")
                .join(&a.state.id),
        };
        let slot = &mut self.slots[i];
        slot.status.restart_count = a.record.attempt;
        if a.state.is_running() && self.running[i].is_none() {
            slot.record_start(
                a.state.id.clone(),
                a.record.image_id.clone(),
                a.record.started_at,
            );
            self.start_time = self.start_time.min(a.record.started_at);
            match (
                bundle.open_log_pipes(),
                LogWriter::open(
                    &a.record.log_path,
                    self.ctx.config.container_log_max_size,
                    self.ctx.config.container_log_max_files,
                ),
            ) {
                (Ok(pipes), Ok(writer)) => {
                    self.ctx.executor.spawn(pump_logs(pipes, writer)).detach()
                }
                (Err(e), _) | (_, Err(e)) => log::warn!(
                    "pod {}: container {:?}: reopening its log: {e}",
                    self.name(),
                    a.record.container
                ),
            }
            self.watch_exit(i, a.state.id.clone(), a.state.pid, false);
            log::info!(
                "pod {}: adopted running container {:?} (pid {})",
                self.name(),
                a.record.container,
                a.state.pid
            );
            let stop_signal = a.record.stop_signal.clone();
            let running_for = (unix_now() - a.record.started_at).max(0) as u64;
            self.running[i] = Some(Running {
                id: a.state.id.clone(),
                bundle,
                pid: a.state.pid,
                stop_signal,
            });
            self.start_probes(i, &a.state.id, Duration::from_secs(running_for));
        } else {
            // It ended while nanolet was away.
            slot.record_start(
                a.state.id.clone(),
                a.record.image_id.clone(),
                a.record.started_at,
            );
            let running = Running {
                id: a.state.id.clone(),
                bundle,
                pid: a.state.pid,
                stop_signal: String::new(),
            };
            self.running[i] = Some(running);
            self.on_exit(i, &a.state.id, None).await;
        }
    }
}
