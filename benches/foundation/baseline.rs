//! The pod start baseline: plain `runc run -d` of a bundle equivalent to the pod's container.
//!
//! The bundle is `runc spec`'s default (new pid, network, ipc, uts and mount namespaces, a
//! read-only rootfs) with no terminal, the same command as the pod, and a copy of the very rootfs
//! nanolet unpacked into its image store. Each start gets its own bundle folder and cgroup under
//! [`BASELINE_CGROUP_PARENT`], and is `runc delete -f`d after it was timed. Owns nothing outside
//! `<base>/baseline/` and that cgroup parent.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::lab::{BASELINE_CGROUP_PARENT, Error, Lab, io_err, run};

pub struct Baseline {
    dir: PathBuf,
    root: PathBuf,
    template: Value,
}

impl Baseline {
    /// Copies `image_rootfs` and writes the `runc spec` template for `command` (`sh -c` text).
    pub fn prepare(lab: &Lab, image_rootfs: &Path, command: &str) -> Result<Baseline, Error> {
        let dir = lab.base.join("baseline");
        let rootfs = dir.join("rootfs");
        run(
            Command::new("cp").arg("-a").arg(image_rootfs).arg(&rootfs),
            "copying the image rootfs",
        )?;
        let spec_dir = dir.join("spec");
        fs::create_dir_all(&spec_dir)
            .map_err(io_err(format!("creating {}", spec_dir.display())))?;
        run(
            Command::new("runc").arg("spec").current_dir(&spec_dir),
            "runc spec",
        )?;
        let path = spec_dir.join("config.json");
        let text = fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        let mut template: Value = serde_json::from_slice(&text).map_err(|e| Error::Command {
            what: format!("parsing {}", path.display()),
            detail: e.to_string(),
        })?;
        template["process"]["terminal"] = json!(false);
        template["process"]["args"] = json!(["sh", "-c", command]);
        template["root"]["path"] = json!(rootfs);
        Ok(Baseline {
            dir,
            root: lab.baseline_root(),
            template,
        })
    }

    /// Times one `runc run -d` (exec until runc returns with the container running), then
    /// checks it is running and deletes it.
    pub fn start_once(&self, iteration: usize) -> Result<Duration, Error> {
        let id = format!("nanolet-bench-baseline-{iteration}");
        let bundle = self.dir.join(&id);
        fs::create_dir_all(&bundle).map_err(io_err(format!("creating {}", bundle.display())))?;
        let mut config = self.template.clone();
        config["linux"]["cgroupsPath"] = json!(format!("/{BASELINE_CGROUP_PARENT}/{id}"));
        let config_path = bundle.join("config.json");
        fs::write(&config_path, config.to_string())
            .map_err(io_err(format!("writing {}", config_path.display())))?;
        // Detached runc hands its stdio to the container: a file, never a pipe (which would
        // stay open as long as the container runs).
        let err_path = bundle.join("runc.stderr");
        let err =
            File::create(&err_path).map_err(io_err(format!("creating {}", err_path.display())))?;
        let mut cmd = Command::new("runc");
        cmd.arg("--root")
            .arg(&self.root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let start = Instant::now();
        let status = cmd.status().map_err(io_err("runc run -d"))?;
        let took = start.elapsed();
        if !status.success() {
            let message = fs::read_to_string(&err_path).unwrap_or_default();
            return Err(Error::Command {
                what: format!("runc run -d {id}"),
                detail: format!("{status}: {}", message.trim()),
            });
        }
        let state = run(
            Command::new("runc")
                .arg("--root")
                .arg(&self.root)
                .args(["state", &id]),
            "runc state",
        );
        run(
            Command::new("runc")
                .arg("--root")
                .arg(&self.root)
                .args(["delete", "-f", &id]),
            &format!("runc delete -f {id}"),
        )?;
        let state = state?;
        if !state.contains("\"status\": \"running\"") {
            return Err(Error::Command {
                what: format!("runc state {id}"),
                detail: format!("not running after runc run -d: {state}"),
            });
        }
        Ok(took)
    }
}
