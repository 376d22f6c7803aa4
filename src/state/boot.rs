//! Telling a nanolet restart from a reboot.
//!
//! The kernel's boot id changes on every boot. nanolet keeps the one it last ran under in the
//! data dir: the same id means nanolet restarted and must adopt the containers still running;
//! a different (or no) id means the machine rebooted, every container is gone, and whatever the
//! last boot left in the run and data dirs is stale.

use std::fs;
use std::io;
use std::path::Path;

/// Where the kernel publishes the boot id.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// What nanolet is starting after.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Same boot: adopt running containers.
    Restart,
    /// New boot (or first start): clear stale runtime state, start pods fresh.
    Boot,
}

/// Reads the current boot id.
pub fn current() -> io::Result<String> {
    Ok(fs::read_to_string(BOOT_ID_PATH)?.trim().to_string())
}

/// Compares `current` with the id recorded in `record` (a file in the data dir).
pub fn classify(record: &Path, current: &str) -> Start {
    match fs::read_to_string(record) {
        Ok(previous) if previous.trim() == current => Start::Restart,
        _ => Start::Boot,
    }
}

/// Records `current` as the boot nanolet runs under.
pub fn record(record: &Path, current: &str) -> io::Result<()> {
    super::write_atomic(record, format!("{current}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_boot_id_is_a_restart_and_another_is_a_boot() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("boot_id");
        assert_eq!(classify(&rec, "a"), Start::Boot);
        record(&rec, "a").unwrap();
        assert_eq!(classify(&rec, "a"), Start::Restart);
        assert_eq!(classify(&rec, "b"), Start::Boot);
    }
}
