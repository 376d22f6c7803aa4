//! hostPath's `type` checks, with kubelet's messages (`hostPath type check failed: ...`).
//!
//! `DirectoryOrCreate` and `FileOrCreate` create what is missing (0755 folders with their
//! parents; an empty 0644 file, whose folder must exist, as kubelet's `MakeFile`); the other
//! types only check. An untyped hostPath that is missing becomes a folder, as containerd makes
//! it below kubelet. The path is followed if it is a symlink, as kubelet's `os.Stat` does.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::k8s::volume::HostPathType;

/// Checks (and for the `OrCreate` types, creates) `path` as `kind` says.
pub fn check(path: &Path, kind: HostPathType) -> Result<(), String> {
    let p = path.display();
    // Relative to what? Not to nanolet's working directory.
    if !path.is_absolute() {
        return Err(format!("hostPath {p}: must be an absolute path"));
    }
    let stat = || fs::metadata(path);
    let missing = || format!("hostPath type check failed: {p} does not exist");
    let want = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("hostPath type check failed: {p} is not {what}"))
        }
    };
    match kind {
        // kubelet checks nothing; containerd then creates a missing path as a folder.
        HostPathType::Unset => match stat() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|e| format!("hostPath: creating directory {p}: {e}")),
            _ => Ok(()),
        },
        HostPathType::DirectoryOrCreate | HostPathType::Directory => match stat() {
            Ok(m) => want(m.is_dir(), "a directory"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if kind == HostPathType::Directory {
                    return Err(missing());
                }
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(path)
                    .map_err(|e| format!("hostPath: creating directory {p}: {e}"))
            }
            Err(e) => Err(format!("hostPath: {p}: {e}")),
        },
        HostPathType::FileOrCreate | HostPathType::File => match stat() {
            Ok(m) => want(m.is_file(), "a file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if kind == HostPathType::File {
                    return Err(missing());
                }
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(path)
                    .map(drop)
                    .map_err(|e| format!("hostPath: creating file {p}: {e}"))
            }
            Err(e) => Err(format!("hostPath: {p}: {e}")),
        },
        HostPathType::Socket | HostPathType::CharDevice | HostPathType::BlockDevice => {
            let m = match stat() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                Err(e) => return Err(format!("hostPath: {p}: {e}")),
            };
            let t = m.file_type();
            match kind {
                HostPathType::Socket => want(t.is_socket(), "a socket file"),
                HostPathType::CharDevice => want(t.is_char_device(), "a character device"),
                _ => want(t.is_block_device(), "a block device"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_type_checks_and_creates_like_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("file"), "x").unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        use HostPathType::*;
        let ok: &[(&str, HostPathType)] = &[
            ("untyped/new", Unset),
            ("dir", Directory),
            ("dir", DirectoryOrCreate),
            ("new/deep", DirectoryOrCreate),
            ("file", File),
            ("file", FileOrCreate),
            ("newfile", FileOrCreate),
            ("sock", Socket),
        ];
        for (p, kind) in ok {
            assert_eq!(check(&d.join(p), *kind), Ok(()), "{p} {kind:?}");
        }
        assert!(d.join("new/deep").is_dir());
        assert!(d.join("newfile").is_file());
        assert!(d.join("untyped/new").is_dir());
        assert_eq!(check(Path::new("/dev/null"), CharDevice), Ok(()));
        let bad: &[(&str, HostPathType, &str)] = &[
            ("missing", Directory, "does not exist"),
            ("file", Directory, "is not a directory"),
            ("file", DirectoryOrCreate, "is not a directory"),
            ("missing", File, "does not exist"),
            ("dir", File, "is not a file"),
            ("dir", FileOrCreate, "is not a file"),
            ("missing", Socket, "does not exist"),
            ("file", Socket, "is not a socket file"),
            ("missing", CharDevice, "does not exist"),
            ("file", CharDevice, "is not a character device"),
            ("missing", BlockDevice, "does not exist"),
            ("file", BlockDevice, "is not a block device"),
            ("nodir/newfile", FileOrCreate, "creating file"),
        ];
        for (p, kind, want) in bad {
            let err = check(&d.join(p), *kind).unwrap_err();
            let full = format!("hostPath type check failed: {} {want}", d.join(p).display());
            assert!(err == full || err.contains(want), "{p} {kind:?}: {err}");
        }
        assert!(!d.join("missing").exists());
        assert_eq!(
            check(Path::new("relative/dir"), DirectoryOrCreate),
            Err("hostPath relative/dir: must be an absolute path".to_string())
        );
        assert!(!Path::new("relative").exists());
    }
}
