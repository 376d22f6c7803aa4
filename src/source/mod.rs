//! Pod sources: static pods from the manifests folder (`staticPodPath`).
//!
//! Data flow, one direction:
//!
//! ```text
//!  DirWatch::changed() ─┐ (inotify: something in the folder changed)
//!  periodic timer ──────┴─► scan_dir(dir, node) ─► Vec<(path, Result<Pod, ManifestError>)>
//!                            │  reads each file; manifest::parse_manifest judges the bytes
//!                            ▼
//!                          StaticPodSet::apply_scan ─► Changes {added, updated, removed}
//!                            │                         desired(): the pods to run
//!                            ▼                         errors():  per-file problems
//!                          pod workers (agent)
//! ```
//!
//! - [`manifest`] (pure): which names count, bytes → validated, defaulted Pod.
//! - [`set`] (pure): merging scans so one broken file never stops or loses the others.
//! - [`scan_dir`] (I/O): one full read of the folder; every problem is per path.
//! - [`watch`] (I/O): the inotify watch; it only says "look again", never what changed.
//!
//! This module never starts pods: it only says which pods are desired.

pub mod api;
pub mod manifest;
pub mod set;
pub mod watch;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::k8s::Pod;

pub use manifest::{ManifestError, is_manifest_file_name, parse_manifest};
pub use set::{Changes, FileState, StaticPodSet};
pub use watch::DirWatch;

/// One full scan: each manifest path with its pod or its error, sorted by path.
pub type Scan = Vec<(PathBuf, Result<Pod, ManifestError>)>;

/// The manifests folder itself could not be read.
#[derive(Debug)]
pub enum SourceError {
    ReadDir { dir: PathBuf, source: io::Error },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::ReadDir { dir, source } => {
                write!(
                    f,
                    "static pod path {}: cannot read: {source}",
                    dir.display()
                )
            }
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SourceError::ReadDir { source, .. } => Some(source),
        }
    }
}

/// Reads every manifest in `dir` (following symlinks to files) and parses it for `node_name`.
/// A missing `dir` is an empty scan (with a warning): the folder may be created later.
/// Problems with one entry (a directory, a symlink loop, a FIFO, unreadable) are that entry's
/// error; only an unreadable `dir` fails the whole scan.
///
/// Blocking reads of small local files; callers run it on the executor thread between events.
pub fn scan_dir(dir: &Path, node_name: &str) -> Result<Scan, SourceError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::warn!(
                "static pod path {}: does not exist, no static pods",
                dir.display()
            );
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(SourceError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut scan = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SourceError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            log::debug!(
                "static pod path {}: skipping non-UTF-8 name {name:?}",
                dir.display()
            );
            continue;
        };
        if !is_manifest_file_name(name) {
            continue;
        }
        let path = entry.path();
        match read_manifest(&path) {
            Ok(Some(bytes)) => {
                let result = parse_manifest(&path, &bytes, node_name);
                scan.push((path, result));
            }
            // Removed between readdir and open: it is simply gone.
            Ok(None) => {}
            Err(e) => scan.push((path, Err(e))),
        }
    }
    scan.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(scan)
}

/// Reads one manifest, refusing anything but a regular file. `Ok(None)`: the file vanished.
fn read_manifest(path: &Path) -> Result<Option<Vec<u8>>, ManifestError> {
    let p = || path.to_path_buf();
    let loop_errno = rustix::io::Errno::LOOP.raw_os_error();
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(loop_errno) => {
            return Err(ManifestError::SymlinkLoop { path: p() });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match std::fs::symlink_metadata(path) {
                Ok(_) => Err(ManifestError::DanglingSymlink { path: p() }),
                Err(_) => Ok(None),
            };
        }
        Err(source) => return Err(ManifestError::Read { path: p(), source }),
    };
    check_regular(path, &metadata)?;
    // O_NONBLOCK: if the path was swapped for a FIFO after the check, open must not block the
    // executor thread; the second check on the open file then refuses it.
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let file: File = match OpenOptions::new()
        .read(true)
        .custom_flags(nonblock)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ManifestError::Read { path: p(), source }),
    };
    let metadata = file
        .metadata()
        .map_err(|source| ManifestError::Read { path: p(), source })?;
    check_regular(path, &metadata)?;
    if metadata.len() > manifest::MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { path: p() });
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(manifest::MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ManifestError::Read { path: p(), source })?;
    if bytes.len() as u64 > manifest::MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { path: p() });
    }
    Ok(Some(bytes))
}

fn check_regular(path: &Path, metadata: &std::fs::Metadata) -> Result<(), ManifestError> {
    let t = metadata.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    };
    Err(ManifestError::NotAFile {
        path: path.to_path_buf(),
        what,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::k8s::pod_full_name;
    use std::os::unix::fs::symlink;

    const NODE: &str = "n1";

    fn manifest(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n\
             spec: {{containers: [{{name: c, image: busybox}}]}}\n"
        )
    }

    /// (file name, Ok(pod full name) or Err(error fragment)) for a scan.
    fn summary(scan: &Scan) -> Vec<(String, Result<String, String>)> {
        scan.iter()
            .map(|(path, result)| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let result = match result {
                    Ok(pod) => Ok(pod_full_name(pod)),
                    Err(e) => Err(e.to_string()),
                };
                (name, result)
            })
            .collect()
    }

    #[test]
    fn scan_reads_manifests_and_reports_bad_entries_per_path() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("a.yaml"), manifest("a")).unwrap();
        std::fs::write(d.join("b.json"), r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"x"}]}}"#).unwrap();
        std::fs::write(d.join("notes.txt"), "ignored").unwrap();
        std::fs::write(d.join(".hidden.yaml"), "ignored").unwrap();
        std::fs::write(d.join("a.yaml~"), "ignored").unwrap();
        std::fs::create_dir(d.join("dir.yaml")).unwrap();
        symlink(d.join("loop2.yaml"), d.join("loop1.yaml")).unwrap();
        symlink(d.join("loop1.yaml"), d.join("loop2.yaml")).unwrap();
        symlink(d.join("missing"), d.join("dangling.yaml")).unwrap();
        symlink(d.join("a.yaml"), d.join("link.yml")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            d.join("fifo.yaml"),
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        std::fs::write(d.join("bad.yaml"), "spec: {contianers: []}\n").unwrap();

        let scan = scan_dir(d, NODE).unwrap();
        let got = summary(&scan);
        let prefix = |name: &str| format!("manifest {}: ", d.join(name).display());
        let want: Vec<(&str, Result<&str, String>)> = vec![
            ("a.yaml", Ok("default/a-n1")),
            ("b.json", Ok("default/b-n1")),
            (
                "bad.yaml",
                Err(format!(
                    "{}spec.contianers: unknown field",
                    prefix("bad.yaml")
                )),
            ),
            (
                "dangling.yaml",
                Err(format!("{}dangling symlink", prefix("dangling.yaml"))),
            ),
            (
                "dir.yaml",
                Err(format!(
                    "{}is a directory, not a regular file",
                    prefix("dir.yaml")
                )),
            ),
            (
                "fifo.yaml",
                Err(format!(
                    "{}is a FIFO, not a regular file",
                    prefix("fifo.yaml")
                )),
            ),
            ("link.yml", Ok("default/a-n1")),
            (
                "loop1.yaml",
                Err(format!("{}symlink loop", prefix("loop1.yaml"))),
            ),
            (
                "loop2.yaml",
                Err(format!("{}symlink loop", prefix("loop2.yaml"))),
            ),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for ((name, result), (want_name, want_result)) in got.iter().zip(&want) {
            assert_eq!(name, want_name);
            match (result, want_result) {
                (Ok(full), Ok(want_full)) => assert_eq!(full, want_full),
                (Err(e), Err(fragment)) => assert!(e.starts_with(fragment.as_str()), "{e}"),
                _ => panic!("{name}: got {result:?}, want {want_result:?}"),
            }
        }

        // Through the set: the duplicate symlink loses to a.yaml, every error is per path.
        let mut set = StaticPodSet::new();
        set.apply_scan(scan);
        assert_eq!(set.desired().len(), 2);
        assert_eq!(set.errors().len(), 7);
    }

    #[test]
    fn a_missing_dir_is_an_empty_scan() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(scan_dir(&tmp.path().join("nope"), NODE).unwrap().is_empty());
    }

    #[test]
    fn a_file_as_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = scan_dir(&file, NODE).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("static pod path {}: cannot read", file.display())),
            "{err}"
        );
    }
}
