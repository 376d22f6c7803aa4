//! Container root filesystems: an overlay of the image's shared, read-only rootfs with a
//! per-container writable layer, or a private copy where overlayfs cannot be used.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

/// Mounts `overlay` at `target` with `lower` read-only below `upper` (its `work` folder beside).
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    for dir in [upper, work, target] {
        fs::create_dir_all(dir)?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    // overlayfs splits options on ',' and ':'; nanolet's own paths never contain them, but an
    // operator's dataDir might: refuse rather than mount something else.
    if [lower, upper, work]
        .iter()
        .any(|p| p.to_string_lossy().contains([',', ':']))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("overlay paths must not contain ',' or ':': {options}"),
        ));
    }
    let data = CString::new(options).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )?;
    Ok(())
}

/// Unmounts `target` if something is mounted there. Idempotent.
pub fn unmount(target: &Path) -> io::Result<()> {
    match rustix::mount::unmount(target, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (fs::metadata(path), path.parent().map(fs::metadata)) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    me.dev() != parent.dev() || me.ino() == parent.ino()
}
