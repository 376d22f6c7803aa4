//! Reading a file inside a container's root filesystem without following a link out of it
//! (`openat2` with `RESOLVE_IN_ROOT`): an image's `/etc/passwd` may be a symlink to anything.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Reads at most `limit` bytes of `path` (absolute inside `root`), resolved inside `root`.
/// `Ok(None)` when the file does not exist.
pub fn read_to_string(root: &Path, path: &str, limit: u64) -> io::Result<Option<String>> {
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = match rustix::fs::openat2(
        &dir,
        path.trim_start_matches('/'),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    File::from(fd).take(limit).read_to_string(&mut text)?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/real"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc/real", root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../etc/hostname",
            root.path().join("etc/group"),
        )
        .unwrap();
        assert_eq!(
            read_to_string(root.path(), "/etc/passwd", 1 << 20)
                .unwrap()
                .as_deref(),
            Some("inside\n")
        );
        // The link points at the host's /etc/hostname, but resolves to <root>/etc/hostname.
        assert_eq!(
            read_to_string(root.path(), "/etc/group", 1 << 20).unwrap(),
            None
        );
    }
}
