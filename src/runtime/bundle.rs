//! A container's bundle and everything nanolet keeps for it on disk.
//!
//! ```text
//!   <runDir>/containers/<id>/            the OCI bundle (tmpfs: gone after a reboot)
//!       config.json                      written atomically
//!       rootfs/                          overlay: image rootfs (shared, read-only) + upper
//!       stdout, stderr                   FIFOs: the container writes, the agent reads
//!       runc.log, container.pid          runc's own messages and the container's pid
//!       record.json                      what nanolet needs to adopt the container later
//!   <dataDir>/containers/<id>/{upper,work}  the container's writable layer (on disk, not RAM)
//! ```
//!
//! The container holds its FIFOs open read-write, so its writes never fail with EPIPE while
//! the agent is away (restarting): they wait in the pipe until the agent reopens the read end.
//! The read end sees end-of-file when the container's last process has exited.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_io::Async;
use serde::{Deserialize, Serialize};

use super::runc::Stdio3;
use crate::state::{remove_tree, write_atomic};
use crate::sys::mount;

/// What nanolet records about a container it started, to adopt it after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub pod_uid: String,
    pub container: String,
    pub attempt: u32,
    pub pid: i32,
    pub started_at: i64,
    pub image: String,
    pub image_id: String,
    pub log_path: PathBuf,
    /// How to stop it when its pod's spec is gone (a pod removed while nanolet was away).
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
}

fn default_stop_signal() -> String {
    "SIGTERM".to_string()
}

fn default_grace() -> u64 {
    30
}

/// The agent's ends of a container's stdout and stderr.
pub struct LogPipes {
    pub stdout: Async<File>,
    pub stderr: Async<File>,
}

/// How the rootfs was made.
#[derive(Debug, PartialEq, Eq)]
pub enum RootfsKind {
    Overlay,
    /// A private copy, where overlayfs is not available (e.g. the data dir is on overlayfs).
    Copy,
}

/// A container's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub id: String,
    pub dir: PathBuf,
    pub layer: PathBuf,
}

impl Bundle {
    pub fn new(run_dir: &Path, data_dir: &Path, id: &str) -> Bundle {
        Bundle {
            id: id.to_string(),
            dir: run_dir.join("containers").join(id),
            layer: data_dir.join("containers").join(id),
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Creates the bundle folder and the container's root filesystem over `image_rootfs`.
    pub fn create(&self, image_rootfs: &Path) -> io::Result<RootfsKind> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        let rootfs = self.rootfs();
        let upper = self.layer.join("upper");
        let work = self.layer.join("work");
        match mount::mount_overlay(image_rootfs, &upper, &work, &rootfs) {
            Ok(()) => Ok(RootfsKind::Overlay),
            Err(e) => {
                log::warn!(
                    "container {}: overlay mount failed ({e}); copying the image instead",
                    self.id
                );
                remove_tree(&self.layer)?;
                copy_tree(image_rootfs, &rootfs)?;
                Ok(RootfsKind::Copy)
            }
        }
    }

    pub fn write_config(&self, config: &serde_json::Value) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
        write_atomic(&self.dir.join("config.json"), &bytes)
    }

    pub fn write_record(&self, record: &Record) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        write_atomic(&self.dir.join("record.json"), &bytes)
    }

    pub fn read_record(&self) -> io::Result<Record> {
        let bytes = fs::read(self.dir.join("record.json"))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Makes the stdout/stderr FIFOs; returns the container's ends (for runc) and the agent's.
    pub fn open_stdio(&self) -> io::Result<(Stdio3, LogPipes)> {
        for name in ["stdout", "stderr"] {
            let path = self.dir.join(name);
            match rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::from(0o600)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The read ends first: opening them non-blocking never waits for a writer.
        let pipes = self.open_log_pipes()?;
        let writer = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(name))
        };
        let stdio = Stdio3 {
            stdout: writer("stdout")?,
            stderr: writer("stderr")?,
        };
        Ok((stdio, pipes))
    }

    /// Opens the agent's ends of the FIFOs (again, after a restart).
    pub fn open_log_pipes(&self) -> io::Result<LogPipes> {
        let reader = |name: &str| {
            OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(self.dir.join(name))
                .and_then(Async::new)
        };
        Ok(LogPipes {
            stdout: reader("stdout")?,
            stderr: reader("stderr")?,
        })
    }

    /// Unmounts the rootfs and removes the bundle and the writable layer. Idempotent.
    pub fn remove(&self) -> io::Result<()> {
        mount::unmount(&self.rootfs())?;
        remove_tree(&self.dir)?;
        remove_tree(&self.layer)
    }
}

/// Copies a tree, keeping symlinks as symlinks, modes and ownership.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if kind.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, meta.permissions())?;
    } else if kind.is_file() {
        fs::copy(from, to)?;
    } else {
        // Device nodes, FIFOs and sockets are not copied; images rarely carry them.
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_remove_is_idempotent() {
        let run = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let b = Bundle::new(run.path(), data.path(), "pod-app-0");
        fs::create_dir_all(&b.dir).unwrap();
        let r = Record {
            pod_uid: "u".into(),
            container: "app".into(),
            attempt: 3,
            pid: 7,
            started_at: 9,
            image: "busybox".into(),
            image_id: "sha256:x".into(),
            log_path: "/var/log/pods/x/app/3.log".into(),
            stop_signal: "SIGQUIT".into(),
            grace_period_seconds: 5,
        };
        b.write_record(&r).unwrap();
        assert_eq!(b.read_record().unwrap(), r);
        b.remove().unwrap();
        b.remove().unwrap();
        assert!(!b.dir.exists());
    }

    #[test]
    fn copy_keeps_symlinks_and_modes() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("bin")).unwrap();
        fs::write(src.path().join("bin/tool"), b"x").unwrap();
        fs::set_permissions(
            src.path().join("bin/tool"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("tool", src.path().join("bin/sh")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let to = dst.path().join("rootfs");
        copy_tree(src.path(), &to).unwrap();
        assert_eq!(fs::read_link(to.join("bin/sh")).unwrap(), Path::new("tool"));
        assert_eq!(
            fs::metadata(to.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }
}
