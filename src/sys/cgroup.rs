//! Pod cgroups: creating them with their limits, reading OOM kills, removing them.
//!
//! runc creates and removes each container's own cgroup (from the OCI `linux.resources` it
//! writes either version's files); the pod-level parent (`<cgroupParent>[/<qos>]/pod<uid>`) is
//! nanolet's to create with the pod's limits and to remove, in every hierarchy: the unified one
//! on cgroup v2 (controllers enabled in each ancestor's `cgroup.subtree_control`), and the
//! `cpu`, `memory` and `pids` controllers' own on a v1 or hybrid host (runc creates the others).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup filesystem root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Values for one cgroup, in cgroup v1 / OCI terms (`cpu.shares`, `cpu.cfs_quota_us`, ...);
/// `None` leaves the kernel's default (no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupValues {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// Whether `root` is a cgroup v2 (unified) mount; a v1 or hybrid host has controller folders.
pub fn is_unified(root: &Path) -> bool {
    root.join("cgroup.controllers").is_file()
}

/// runc 1.1's `cpu.shares` → `cpu.weight` (`ConvertCPUSharesToCgroupV2Value`).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", dir.join(file).display()),
        )
    })
}

/// Creates `<hierarchy>/<relative>` (and its ancestors) with `v`, in the hierarchies that carry
/// these controllers; an existing cgroup gets the values again.
pub fn create(root: &Path, relative: &str, v: &CgroupValues) -> io::Result<()> {
    let relative = relative.trim_matches('/');
    if is_unified(root) {
        let mut dir = root.to_path_buf();
        for part in relative.split('/') {
            // One at a time: a controller this kernel lacks must not keep the others off.
            for controller in ["+cpu", "+memory", "+pids"] {
                let _ = fs::write(dir.join("cgroup.subtree_control"), controller);
            }
            dir.push(part);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("creating cgroup {}: {e}", dir.display()),
                    ));
                }
                _ => {}
            }
        }
        if let Some(shares) = v.cpu_shares {
            write(&dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if v.cpu_quota.is_some() || v.cpu_period.is_some() {
            let quota = v.cpu_quota.map_or("max".to_string(), |q| q.to_string());
            let period = v.cpu_period.unwrap_or(100_000);
            write(&dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(limit) = v.memory_limit {
            write(&dir, "memory.max", &limit.to_string())?;
        }
        if let Some(limit) = v.pids_limit {
            write(&dir, "pids.max", &limit.to_string())?;
        }
        return Ok(());
    }
    let controller = |name: &str| -> io::Result<PathBuf> {
        let dir = root.join(name).join(relative);
        fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("creating cgroup {}: {e}", dir.display()))
        })?;
        Ok(dir)
    };
    let cpu = controller("cpu")?;
    if let Some(shares) = v.cpu_shares {
        write(&cpu, "cpu.shares", &shares.to_string())?;
    }
    if let Some(period) = v.cpu_period {
        write(&cpu, "cpu.cfs_period_us", &period.to_string())?;
    }
    if let Some(quota) = v.cpu_quota {
        write(&cpu, "cpu.cfs_quota_us", &quota.to_string())?;
    }
    let memory = controller("memory")?;
    if let Some(limit) = v.memory_limit {
        write(&memory, "memory.limit_in_bytes", &limit.to_string())?;
    }
    let pids = controller("pids")?;
    if let Some(limit) = v.pids_limit {
        write(&pids, "pids.max", &limit.to_string())?;
    }
    Ok(())
}

/// How many processes the kernel's OOM killer killed in cgroup `relative` (and below):
/// v2 `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill` (Linux 4.13+).
pub fn oom_kills(root: &Path, relative: &str) -> Option<u64> {
    let relative = relative.trim_matches('/');
    let file = if is_unified(root) {
        root.join(relative).join("memory.events")
    } else {
        root.join("memory")
            .join(relative)
            .join("memory.oom_control")
    };
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The files `create` writes, read back from a plain folder standing in for a cgroup root
    /// (the kernel side is covered by the root tests in `tests/resources.rs`).
    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).unwrap()
    }

    const VALUES: CgroupValues = CgroupValues {
        cpu_shares: Some(1024),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        pids_limit: Some(100),
    };

    #[test]
    fn v2_enables_controllers_down_the_path_and_writes_unified_files() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        create(root.path(), "/nanolet/burstable/podu1", &VALUES).unwrap();
        let pod = root.path().join("nanolet/burstable/podu1");
        assert_eq!(read(&pod, "cpu.weight"), "39");
        assert_eq!(read(&pod, "cpu.max"), "50000 100000");
        assert_eq!(read(&pod, "memory.max"), (64 << 20).to_string());
        assert_eq!(read(&pod, "pids.max"), "100");
        // Each ancestor delegates the controllers (the last write of each file is "+pids").
        for dir in ["", "nanolet", "nanolet/burstable"] {
            assert_eq!(
                read(&root.path().join(dir), "cgroup.subtree_control"),
                "+pids"
            );
        }
        let best_effort = CgroupValues {
            cpu_shares: Some(2),
            ..CgroupValues::default()
        };
        create(root.path(), "nanolet/besteffort/podu2", &best_effort).unwrap();
        let pod = root.path().join("nanolet/besteffort/podu2");
        assert_eq!(read(&pod, "cpu.weight"), "1");
        assert!(!pod.join("cpu.max").exists() && !pod.join("memory.max").exists());
    }

    #[test]
    fn v1_writes_each_controllers_files() {
        let root = tempfile::tempdir().unwrap();
        create(root.path(), "nanolet/podu1", &VALUES).unwrap();
        let at = |c: &str| root.path().join(c).join("nanolet/podu1");
        assert_eq!(read(&at("cpu"), "cpu.shares"), "1024");
        assert_eq!(read(&at("cpu"), "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&at("cpu"), "cpu.cfs_period_us"), "100000");
        assert_eq!(
            read(&at("memory"), "memory.limit_in_bytes"),
            (64 << 20).to_string()
        );
        assert_eq!(read(&at("pids"), "pids.max"), "100");
        assert_eq!(find(root.path(), "nanolet/podu1").len(), 3);
    }

    #[test]
    fn oom_kills_read_both_versions() {
        let v1 = tempfile::tempdir().unwrap();
        let dir = v1.path().join("memory/p/c");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(v1.path(), "/p/c"), Some(2));
        assert_eq!(oom_kills(v1.path(), "/p/missing"), None);
        let v2 = tempfile::tempdir().unwrap();
        fs::write(v2.path().join("cgroup.controllers"), "memory\n").unwrap();
        fs::create_dir_all(v2.path().join("p/c")).unwrap();
        fs::write(
            v2.path().join("p/c/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(v2.path(), "p/c"), Some(1));
    }
}
