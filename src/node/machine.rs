//! What the machine is and how it is doing: the facts a Node reports (CPUs, memory, disk,
//! machine and boot ids, kernel, OS) and the pressure observations behind its conditions.
//!
//! Reads only small files under `/proc`, `/sys` and `/etc` plus one `statvfs`; nothing here
//! blocks for long, so the heartbeat calls it on the agent's thread. Parsing is split from
//! reading so that the parsers are tested with text.

use std::path::Path;

/// Static facts, read once at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub cpus: u32,
    /// `MemTotal`, bytes.
    pub memory_bytes: u64,
    /// Size of the filesystem holding the data dir, bytes.
    pub storage_bytes: u64,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `/sys/class/dmi/id/product_uuid` (empty where there is none, as on many ARM boards).
    pub system_uuid: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os_image: String,
    /// Go's name of the architecture (`amd64`, `arm64`, `arm`).
    pub architecture: &'static str,
}

/// What the conditions are computed from, read every status period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// `MemAvailable`, bytes.
    pub memory_available: u64,
    /// Free bytes (for unprivileged users) on the data dir's filesystem.
    pub storage_available: u64,
    /// Size of that filesystem.
    pub storage_total: u64,
    /// Tasks (threads) on the machine (`/proc/loadavg`'s fourth field).
    pub tasks: u64,
    /// `/proc/sys/kernel/pid_max`.
    pub pid_max: u64,
}

/// Reads the static facts; `data_dir` is where ephemeral storage lives.
pub fn read(data_dir: &Path) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (storage_bytes, _) = storage(data_dir);
    Machine {
        cpus: std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok())
            .unwrap_or(1),
        memory_bytes: meminfo(&read("/proc/meminfo"), "MemTotal").unwrap_or(0),
        storage_bytes,
        machine_id: read("/etc/machine-id").trim().to_string(),
        system_uuid: read("/sys/class/dmi/id/product_uuid").trim().to_string(),
        boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_string(),
        kernel_version: rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned(),
        os_image: os_image(&read("/etc/os-release")),
        architecture: go_arch(std::env::consts::ARCH),
    }
}

/// Reads the current usage.
pub fn usage(data_dir: &Path) -> Usage {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (storage_total, storage_available) = storage(data_dir);
    Usage {
        memory_available: meminfo(&read("/proc/meminfo"), "MemAvailable").unwrap_or(u64::MAX),
        storage_available,
        storage_total,
        tasks: loadavg_tasks(&read("/proc/loadavg")).unwrap_or(0),
        pid_max: read("/proc/sys/kernel/pid_max")
            .trim()
            .parse()
            .unwrap_or(32_768),
    }
}

/// (total, available) bytes of the filesystem holding `dir`; (0, 0) if it cannot be read.
fn storage(dir: &Path) -> (u64, u64) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => (
            s.f_blocks.saturating_mul(s.f_frsize),
            s.f_bavail.saturating_mul(s.f_frsize),
        ),
        Err(_) => (0, 0),
    }
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// The task count of `/proc/loadavg` (`0.00 0.01 0.05 1/123 4567` → 123).
pub fn loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

/// `PRETTY_NAME` of an os-release file, unquoted; `Linux` without one.
pub fn os_image(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "Linux".to_string())
}

/// Rust's architecture name → Go's (what `kubernetes.io/arch` holds).
pub fn go_arch(rust: &str) -> &'static str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let mi =
            "MemTotal:        2035548 kB\nMemFree:          100 kB\nMemAvailable:    1048576 kB\n";
        assert_eq!(meminfo(mi, "MemTotal"), Some(2_035_548 * 1024));
        assert_eq!(meminfo(mi, "MemAvailable"), Some(1024 * 1024 * 1024));
        assert_eq!(meminfo(mi, "Nope"), None);
        assert_eq!(loadavg_tasks("0.00 0.01 0.05 1/123 4567\n"), Some(123));
        assert_eq!(
            os_image("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(
            os_image("PRETTY_NAME=Buildroot 2024.02\n"),
            "Buildroot 2024.02"
        );
        assert_eq!(os_image(""), "Linux");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn this_machine_has_plausible_facts() {
        let m = read(Path::new("/"));
        assert!(m.cpus >= 1 && m.memory_bytes > 0 && m.storage_bytes > 0);
        assert!(!m.kernel_version.is_empty());
    }
}
