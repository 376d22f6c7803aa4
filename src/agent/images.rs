//! The agent's image chores: re-importing `images/` when its listing changes, telling workers
//! that images changed, and image garbage collection as kubelet does it ([`gc`] decides, pure;
//! `nanolet rmi` children remove, so no tree removal runs on the agent's thread).

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Command as ProcessCommand;

use super::{Agent, unix_now};
use crate::image::Image;
use crate::image::gc::{self, Thresholds};
use crate::pod::worker::{Command, Context};
use crate::sys::process;

impl Agent {
    /// Imports `images/` again when its listing changed (names, sizes, times), in a child process.
    pub(super) async fn import_images_if_changed(&mut self) {
        let dir = self.config().images_path.clone();
        let signature = dir_signature(&dir);
        if signature == self.images_signature {
            return;
        }
        self.images_signature = signature;
        if self.images_signature.is_empty() {
            return;
        }
        let mut cmd = ProcessCommand::new(&self.ctx.exe);
        cmd.arg("internal-import")
            .arg("--config-dir")
            .arg(&self.config_dir);
        match process::output(&self.ctx.reaper, cmd).await {
            Ok(out) => {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    log::info!("images: {line}");
                }
                for line in String::from_utf8_lossy(&out.stderr).lines() {
                    log::warn!("images: {line}");
                }
            }
            Err(e) => log::error!("importing images from {}: {e}", dir.display()),
        }
        self.tell_images_changed();
    }

    pub(super) fn tell_images_changed(&self) {
        for handle in self.workers.values() {
            let _ = handle.commands.try_send(Command::ImagesChanged);
        }
    }

    /// Image GC, as kubelet does it (see [`gc`]): decides now, removes in `nanolet rmi`
    /// children on a task of its own. One round at a time.
    pub(super) fn collect_images(&mut self) {
        if self.image_gc.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let cfg = self.config();
        let thresholds = Thresholds {
            high_percent: cfg.image_gc_high_threshold_percent,
            low_percent: cfg.image_gc_low_threshold_percent,
            minimum_age: cfg.image_minimum_gc_age,
        };
        if thresholds.high_percent >= 100 {
            return; // imageGCHighThresholdPercent: 100 disables image GC.
        }
        let store_dir = cfg.data_dir.join("images");
        let images = match self.ctx.images.list() {
            Ok(images) => images,
            Err(e) => return log::warn!("image gc: listing images: {e}"),
        };
        let in_use = self.images_in_use(&images);
        let now = unix_now();
        // Every tick, so an image's first detection is known before the disk fills up.
        let candidates = self.ctx.images_used.borrow_mut().candidates(
            images
                .iter()
                .map(|i| (i.manifest_digest.to_string(), i.names.clone(), i.size)),
            &in_use,
            now,
        );
        let usage = match gc::disk_usage(&store_dir) {
            Ok(usage) => usage,
            Err(e) => return log::warn!("image gc: {e}"),
        };
        let Some(plan) = gc::plan(usage, &candidates, now, &thresholds) else {
            self.image_gc_stuck = false;
            return;
        };
        let why = format!(
            "disk of {} is {}% used (imageGCHighThresholdPercent {}%); freeing {} to reach {}%",
            store_dir.display(),
            plan.used_percent,
            thresholds.high_percent,
            gc::mib(plan.bytes_to_free),
            thresholds.low_percent
        );
        if plan.remove.is_empty() {
            // Once per episode: the tick comes back every fileCheckFrequency.
            if !std::mem::replace(&mut self.image_gc_stuck, true) {
                log::warn!("image gc: {why}: no unused image is old enough to remove");
            }
            return;
        }
        self.image_gc_stuck = false;
        log::info!("image gc: {why}: removing {} image(s)", plan.remove.len());
        if plan.shortfall > 0 {
            log::warn!(
                "image gc: removing every unused image old enough still leaves {} to free",
                gc::mib(plan.shortfall)
            );
        }
        let ctx = self.ctx.clone();
        let config_dir = self.config_dir.clone();
        self.image_gc = Some(self.ctx.executor.spawn(async move {
            for image in plan.remove {
                remove_image(&ctx, &config_dir, &image, now).await;
            }
        }));
    }

    /// The images (by manifest digest) a container of a pod nanolet runs, stops or wants to
    /// run uses: by the references in the desired pods and the pods on the board, and by the
    /// image IDs of the containers on the board.
    fn images_in_use(&self, images: &[Image]) -> HashSet<String> {
        let snapshot = self.ctx.board.snapshot(0, "", 0);
        let statuses = snapshot.pods.iter().flat_map(|p| {
            p.init_container_statuses
                .iter()
                .chain(&p.container_statuses)
        });
        let mut references: BTreeSet<&str> = self
            .set
            .desired()
            .into_iter()
            .flat_map(|pod| pod.spec.init_containers.iter().chain(&pod.spec.containers))
            .map(|c| c.image.as_str())
            .collect();
        let mut image_ids = HashSet::new();
        for s in statuses {
            references.insert(s.image.as_str());
            if !s.image_id.is_empty() {
                image_ids.insert(s.image_id.as_str());
            }
        }
        let mut in_use: HashSet<String> = images
            .iter()
            .filter(|i| image_ids.contains(i.config_digest.to_string().as_str()))
            .map(|i| i.manifest_digest.to_string())
            .collect();
        for reference in references {
            if let Ok(Some(image)) = self.ctx.images.resolve(reference) {
                in_use.insert(image.manifest_digest.to_string());
            }
        }
        in_use
    }
}

/// Removes one image chosen by image GC, in a `nanolet rmi` child (removal deletes trees).
async fn remove_image(ctx: &Context, config_dir: &Path, image: &gc::Candidate, now: i64) {
    let name = image.names.first().unwrap_or(&image.id);
    if ctx.images_used.borrow().is_used_since(&image.id, now) {
        return log::info!("image gc: keeping image {name}: a container started with it just now");
    }
    log::info!(
        "image gc: removing image {name} ({}, unused for {}s)",
        gc::mib(image.size),
        now - image.last_used
    );
    let mut cmd = ProcessCommand::new(&ctx.exe);
    cmd.arg("rmi")
        .arg("--config-dir")
        .arg(config_dir)
        .arg(&image.id);
    match process::output(&ctx.reaper, cmd).await {
        Ok(out) if out.is_success() => {}
        Ok(out) => log::warn!("image gc: removing image {name}: {}", out.stderr_tail()),
        Err(e) => log::warn!("image gc: removing image {name}: running rmi: {e}"),
    }
}

fn dir_signature(dir: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut sig: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.metadata().ok().map(|m| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            m.size(),
                            m.mtime(),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    sig.sort();
    sig
}
