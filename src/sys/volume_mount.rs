//! Mounts for pod volumes: tmpfs for memory-backed volumes, and kubelet's safe subPath bind.
//!
//! A subPath is resolved inside its volume with `openat2(RESOLVE_IN_ROOT)`: `..` and symlinks
//! (absolute or relative) are resolved as if the volume were `/`, so they cannot lead out of
//! it. The opened `O_PATH` descriptor is then bind-mounted through `/proc/self/fd/N`, so a
//! symlink swapped in after the check changes nothing: the mount is of the object already
//! opened. Missing folders of a subPath are created one by one, each inside the folder
//! opened before it (kubelet's `SafeMakeDir`).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, UnmountFlags};

/// Mounts a tmpfs at `target` (created if missing), of at most `size` bytes when given.
pub fn mount_tmpfs(target: &Path, size: Option<u64>) -> io::Result<()> {
    fs::create_dir_all(target)?;
    if super::mount::is_mount_point(target) {
        return Ok(());
    }
    let options = match size {
        Some(bytes) => format!("mode=0777,size={bytes}"),
        None => "mode=0777".to_string(),
    };
    let data = CString::new(options).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::mount::mount(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )?;
    Ok(())
}

fn open_in_root(root: &OwnedFd, path: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        if path.is_empty() { "." } else { path },
        flags | OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Opens `sub_path` inside `volume` (never outside it), creating missing folders on the way.
pub fn open_sub_path(volume: &Path, sub_path: &str) -> io::Result<OwnedFd> {
    let root = rustix::fs::open(
        volume,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match open_in_root(&root, sub_path, OFlags::empty()) {
        Ok(fd) => return Ok(fd),
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    // Walk down, creating what is missing inside what was opened before it.
    let mut dir = rustix::fs::openat2(
        &root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )?;
    let parts: Vec<&str> = sub_path.split('/').filter(|p| !p.is_empty()).collect();
    for (n, part) in parts.iter().enumerate() {
        if *part == ".." || *part == "." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("subPath {sub_path:?}: must not contain '..'"),
            ));
        }
        match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let so_far = parts[..=n].join("/");
        dir = rustix::fs::openat2(
            &root,
            so_far.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
    }
    Ok(open_in_root(&root, sub_path, OFlags::empty())?)
}

/// Bind-mounts what `fd` refers to at `target` (created as a file or a folder to match).
pub fn bind_fd(fd: &OwnedFd, target: &Path) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd.as_fd())?;
    let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    let _ = unmount_here(target);
    if is_dir {
        if target.is_file() {
            fs::remove_file(target)?;
        }
        fs::create_dir_all(target)?;
    } else {
        if target.is_dir() {
            fs::remove_dir(target)?;
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)?;
    }
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::mount::mount_bind(source.as_str(), target)?;
    Ok(())
}

fn unmount_here(target: &Path) -> io::Result<()> {
    match rustix::mount::unmount(target, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mount points strictly below `root`, deepest first (from `/proc/self/mountinfo`).
pub fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(root) && m != root)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    found.dedup();
    found
}

/// Unmounts everything mounted below `root` (stacked mounts too).
pub fn unmount_below(root: &Path) -> io::Result<()> {
    for _round in 0..8 {
        let mounts = mounts_below(root);
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts {
            unmount_here(&m)?;
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_resolve_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("vol");
        fs::create_dir_all(volume.join("real")).unwrap();
        fs::write(volume.join("real/file"), "inside").unwrap();
        fs::write(dir.path().join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink("/", volume.join("root-link")).unwrap();
        std::os::unix::fs::symlink("../outside", volume.join("up-link")).unwrap();
        let path_of =
            |fd: &OwnedFd| fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(
            path_of(&open_sub_path(&volume, "real/file").unwrap()),
            volume.join("real/file")
        );
        // "/" inside the volume is the volume itself.
        assert_eq!(
            path_of(&open_sub_path(&volume, "root-link").unwrap()),
            volume
        );
        // "../outside" from the volume's root is <volume>/outside, which does not exist.
        assert!(open_sub_path(&volume, "up-link").is_err());
        assert_eq!(
            fs::read_to_string(dir.path().join("outside")).unwrap(),
            "secret"
        );
        // Missing folders are created.
        let fd = open_sub_path(&volume, "new/deeper").unwrap();
        assert_eq!(path_of(&fd), volume.join("new/deeper"));
        assert!(volume.join("new/deeper").is_dir());
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }
}
