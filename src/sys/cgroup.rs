//! Finding and removing cgroup directories nanolet's containers leave behind.
//!
//! runc creates and removes each container's own cgroup; the pod-level parent
//! (`<cgroupParent>/pod<uid>`) is nanolet's to remove, in every hierarchy: the unified one on
//! cgroup v2, and each controller's on a v1 or hybrid host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup filesystem root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Every existing directory `<hierarchy>/<relative>` under `root`: the unified hierarchy
/// (`root` itself) and each v1 controller mount (`root/<controller>`).
pub fn find(root: &Path, relative: &str) -> Vec<PathBuf> {
    let relative = relative.trim_start_matches('/');
    let mut found = Vec::new();
    let direct = root.join(relative);
    if direct.is_dir() {
        found.push(direct);
    }
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            let candidate = entry.path().join(relative);
            if candidate.is_dir() {
                found.push(candidate);
            }
        }
    }
    found
}

/// Removes `<hierarchy>/<relative>` and any empty child cgroups, in every hierarchy.
/// A cgroup that still holds processes cannot be removed: that error is returned.
pub fn remove(root: &Path, relative: &str) -> io::Result<()> {
    let mut first_error = None;
    for dir in find(root, relative) {
        if let Err(e) = remove_tree(&dir) {
            first_error.get_or_insert(io::Error::new(
                e.kind(),
                format!("removing cgroup {}: {e}", dir.display()),
            ));
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    // cgroup folders hold only control files (which cannot be removed) and child cgroups.
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
