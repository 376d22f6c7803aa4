//! kubelet's atomic writer: a volume's files change all at once, never half.
//!
//! ```text
//!   <dir>/..2026_11_29_04_10_00.123456789/   the payload, written in full
//!   <dir>/..data -> ..2026_11_29_04_10_00.123456789   swapped by rename(2) of a new symlink
//!   <dir>/key -> ..data/key                  one user-visible link per top-level name
//! ```
//!
//! A reader that opens `key` sees the old payload or the new one. An unchanged payload writes
//! nothing. Nothing is fsynced (kubelet does not either): the content is derived from the pod
//! and its objects and compared byte for byte before every container start, so whatever a power
//! cut leaves is rewritten before anything reads it (fsyncs cost tens of ms per pod start). Paths come from validated pods (relative, no `..`), and are checked again here
//! because this is where a bad one would do harm.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path};
use std::time::{SystemTime, UNIX_EPOCH};

use super::payload::Payload;

const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// Writes `payload` into `dir` (which exists). Returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for path in payload.keys() {
        check_path(path)?;
    }
    let old = fs::read_link(dir.join(DATA_DIR)).ok();
    if let Some(old) = &old
        && same_payload(&dir.join(old), payload)
    {
        return Ok(false);
    }
    remove_abandoned(dir, old.as_deref());
    let ts = new_ts_dir(dir)?;
    let written = (|| {
        for (path, file) in payload {
            let target = ts.join(path);
            if let Some(parent) = target.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)?;
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)?;
            f.write_all(&file.data)?;
            // The mode is set explicitly: the umask must not change what the pod asked for.
            f.set_permissions(fs::Permissions::from_mode(file.mode))?;
        }
        let ts_name = ts.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let tmp = dir.join(DATA_DIR_TMP);
        let _ = fs::remove_file(&tmp);
        symlink(&ts_name, &tmp)?;
        fs::rename(&tmp, dir.join(DATA_DIR))
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&ts);
        return Err(e);
    }
    // The user-visible links: one per top-level name; stale ones go.
    let top: std::collections::BTreeSet<&str> =
        payload.keys().filter_map(|p| p.split('/').next()).collect();
    for name in &top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &link)?;
        }
    }
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(name.as_str()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old
        && old.as_os_str() != ts.file_name().unwrap_or_default()
    {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Removes timestamped folders that `..data` does not point at: left by a write that a crash
/// or power cut interrupted before the swap.
fn remove_abandoned(dir: &Path, current: Option<&Path>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_ts = name.to_string_lossy().starts_with("..")
            && name != DATA_DIR
            && name != DATA_DIR_TMP
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if is_ts && current.is_none_or(|c| c.as_os_str() != name) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn check_path(path: &str) -> io::Result<()> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.starts_with("..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid path {path:?}: must be relative and stay inside the volume"),
        ))
    }
}

/// Whether `ts` holds exactly `payload` (same files, bytes and modes).
fn same_payload(ts: &Path, payload: &Payload) -> bool {
    let mut count = 0;
    for (path, file) in payload {
        let p = ts.join(path);
        match (fs::symlink_metadata(&p), fs::read(&p)) {
            (Ok(m), Ok(data)) if m.is_file() => {
                if data != file.data || m.permissions().mode() & 0o7777 != file.mode {
                    return false;
                }
            }
            _ => return false,
        }
        count += 1;
    }
    count == count_files(ts)
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            _ => 1,
        })
        .sum()
}

fn new_ts_dir(dir: &Path) -> io::Result<std::path::PathBuf> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    for n in 0..100u32 {
        let (y, mo, d, h, mi, s) = civil(now.as_secs() as i64);
        let name = format!(
            "..{y:04}_{mo:02}_{d:02}_{h:02}_{mi:02}_{s:02}.{}{n}",
            now.subsec_nanos()
        );
        let path = dir.join(name);
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free timestamped folder name"))
}

/// UTC calendar time of a Unix time (Howard Hinnant's days-from-civil, inverted).
fn civil(t: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::payload::FileProjection;
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    fn visible(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_swaps_and_removes_like_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(write(d, &payload(&[("a", "one", 0o644), ("sub/b", "two", 0o400)])).unwrap());
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "one");
        assert_eq!(fs::read_to_string(d.join("sub/b")).unwrap(), "two");
        assert_eq!(
            fs::metadata(d.join("sub/b")).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(fs::read_link(d.join("a")).unwrap(), Path::new("..data/a"));
        let first = fs::read_link(d.join(DATA_DIR)).unwrap();
        // Unchanged: nothing is written.
        assert!(!write(d, &payload(&[("a", "one", 0o644), ("sub/b", "two", 0o400)])).unwrap());
        assert_eq!(fs::read_link(d.join(DATA_DIR)).unwrap(), first);
        // Changed: a new folder, the old one gone, stale names removed.
        assert!(write(d, &payload(&[("a", "uno", 0o644)])).unwrap());
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "uno");
        assert_ne!(fs::read_link(d.join(DATA_DIR)).unwrap(), first);
        assert!(!d.join(&first).exists());
        assert_eq!(visible(d), ["a"]);
        // A mode change alone is a change.
        assert!(write(d, &payload(&[("a", "uno", 0o600)])).unwrap());
        let dots = fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(dots, 1);
    }

    #[test]
    fn a_write_cut_short_is_cleaned_up_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, &payload(&[("a", "one", 0o644)])).unwrap();
        fs::create_dir(d.join("..2026_01_01_00_00_00.1")).unwrap();
        fs::write(d.join("..2026_01_01_00_00_00.1/a"), "half").unwrap();
        write(d, &payload(&[("a", "two", 0o644)])).unwrap();
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "two");
        assert!(!d.join("..2026_01_01_00_00_00.1").exists());
    }

    #[test]
    fn paths_that_leave_the_volume_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "a/../../x", "..x", ""] {
            assert!(
                write(dir.path(), &payload(&[(bad, "x", 0o644)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_795_000_000), (2026, 11, 18, 11, 6, 40));
    }
}
