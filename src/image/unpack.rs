//! Applying layer tarballs, in order, into one rootfs directory.
//!
//! Owns: the tar-entry → filesystem step, OCI whiteouts, and the limits on entry count and
//! uncompressed size. The `tar` crate is used only as a streaming parser.
//!
//! Must never: write, create, link or delete anything outside the rootfs. Every path is
//! resolved *inside* the rootfs, as if it were `/` (`openat2` with `RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS`): a symlink to `/etc` in the image means the image's `/etc`.
//! The last component is then handled with `*at` calls on the parent's fd, which do not
//! follow it. Missing parents are created as directories (0755).
//!
//! Rules, as in the OCI image spec (layer.md) and docker/containerd:
//! - `..` anywhere in an entry or hardlink path is an error; a leading `/` is stripped.
//! - A later entry replaces an earlier one at the same path, except a directory over a
//!   directory, which keeps the children and takes the new metadata.
//! - `.wh.NAME` deletes NAME from the lower layers; `.wh..wh..opq` deletes every child of
//!   its directory that came from lower layers. Entries of the same layer stay.
//! - Hardlinks may only point at entries inside the rootfs (resolved the same way).
//! - Device nodes are created when mknod is allowed, else skipped with a warning.
//! - Ownership (lchown) needs root; without it, ownership is left as is.

use log::{debug, warn};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

/// Bounds on what one image may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sum of the sizes of all regular files, over all layers.
    pub max_bytes: u64,
    /// Number of tar entries, over all layers.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// The rootfs directory could not be opened.
    Root(io::Error),
    /// The tar stream is broken.
    Read(io::Error),
    /// An entry is refused (escape attempt, unsupported type, bad whiteout).
    Entry {
        path: String,
        reason: &'static str,
    },
    /// A filesystem operation on an entry failed.
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
    TooManyEntries {
        limit: u64,
    },
    TooLarge {
        limit: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Root(e) => write!(f, "open rootfs: {e}"),
            Error::Read(e) => write!(f, "read layer: {e}"),
            Error::Entry { path, reason } => write!(f, "entry {path:?}: {reason}"),
            Error::Io { path, op, source } => write!(f, "entry {path:?}: {op}: {source}"),
            Error::TooManyEntries { limit } => {
                write!(f, "more than {limit} entries: refusing to unpack")
            }
            Error::TooLarge { limit } => {
                write!(
                    f,
                    "more than {limit} bytes uncompressed: refusing to unpack"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Root(e) | Error::Read(e) | Error::Io { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

/// Applies layers in order into one rootfs directory, keeping the running totals that
/// [`Limits`] bound.
pub struct Unpacker {
    root: OwnedFd,
    limits: Limits,
    entries: u64,
    bytes: u64,
}

/// A path split into its components, each non-empty and none `.` or `..`.
struct EntryPath {
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    /// `None` for the root itself (`./`, `/`).
    fn parse(raw: &[u8], display: &str) -> Result<Option<EntryPath>, Error> {
        let mut components = Vec::new();
        for c in raw.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    return Err(Error::Entry {
                        path: display.to_string(),
                        reason: "path contains \"..\"",
                    });
                }
                c => components.push(c.to_vec()),
            }
        }
        Ok(if components.is_empty() {
            None
        } else {
            Some(EntryPath { components })
        })
    }

    fn parent(&self) -> &[Vec<u8>] {
        &self.components[..self.components.len() - 1]
    }

    fn name(&self) -> &[u8] {
        // Invariant: parse() never builds an EntryPath without components.
        self.components.last().map_or(&[][..], |c| c.as_slice())
    }

    fn joined(components: &[Vec<u8>]) -> Vec<u8> {
        components.join(&b'/')
    }
}

fn io_err<'a>(path: &'a str, op: &'static str) -> impl Fn(Errno) -> Error + 'a {
    move |e| Error::Io {
        path: path.to_string(),
        op,
        source: e.into(),
    }
}

/// Per-layer bookkeeping.
#[derive(Default)]
struct LayerState {
    /// Paths this layer wrote (explicitly or as implicit parents): whiteouts spare them.
    written: HashSet<Vec<u8>>,
    /// Directory mtimes, set once the layer is done (writing children changes them).
    dir_mtimes: Vec<(Vec<u8>, u64)>,
}

impl Unpacker {
    pub fn new(root: &Path, limits: Limits) -> Result<Unpacker, Error> {
        let root = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Root(e.into()))?;
        Ok(Unpacker {
            root,
            limits,
            entries: 0,
            bytes: 0,
        })
    }

    /// Applies one uncompressed layer tarball on top of what is already unpacked.
    pub fn apply_layer<R: Read>(&mut self, layer: R) -> Result<(), Error> {
        let mut archive = tar::Archive::new(layer);
        let mut state = LayerState::default();
        for entry in archive.entries().map_err(Error::Read)? {
            let entry = entry.map_err(Error::Read)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(Error::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            self.apply_entry(entry, &mut state)?;
        }
        for (path, mtime) in state.dir_mtimes.iter().rev() {
            let display = String::from_utf8_lossy(path).into_owned();
            let fd = match self.open_in_root(path) {
                Ok(fd) => fd,
                // Replaced or removed later in the same layer: nothing to stamp.
                Err(Errno::NOTDIR | Errno::NOENT) => continue,
                Err(e) => return Err(io_err(&display, "open directory")(e)),
            };
            rustix::fs::futimens(&fd, &timestamps(*mtime))
                .map_err(io_err(&display, "set mtime"))?;
        }
        Ok(())
    }

    fn open_in_root(&self, path: &[u8]) -> Result<OwnedFd, Errno> {
        rustix::fs::openat2(
            &self.root,
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Opens the directory at `components` inside the rootfs, creating missing ones when
    /// `create` (recording them as written). `Ok(None)`: missing and not created.
    fn open_dir(
        &self,
        components: &[Vec<u8>],
        create: bool,
        state: &mut LayerState,
        display: &str,
    ) -> Result<Option<OwnedFd>, Error> {
        let full = EntryPath::joined(components);
        if components.is_empty() {
            return self
                .open_in_root(b".")
                .map(Some)
                .map_err(io_err(display, "open rootfs"));
        }
        match self.open_in_root(&full) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::NOTDIR) => {
                return Err(Error::Entry {
                    path: display.to_string(),
                    reason: "a parent is not a directory",
                });
            }
            Err(e) => return Err(io_err(display, "open parent")(e)),
        }
        // Walk down, creating what is missing. Each mkdirat acts on a directory that was
        // itself resolved inside the rootfs, so a created directory is inside it too.
        let mut fd = self
            .open_in_root(b".")
            .map_err(io_err(display, "open rootfs"))?;
        for i in 0..components.len() {
            let prefix = EntryPath::joined(&components[..=i]);
            let next = match self.open_in_root(&prefix) {
                Ok(next) => next,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&fd, components[i].as_slice(), Mode::from(0o755)) {
                        Ok(()) => {
                            state.written.insert(prefix.clone());
                        }
                        // Exists but did not resolve: a dangling symlink.
                        Err(Errno::EXIST) => {
                            return Err(Error::Entry {
                                path: display.to_string(),
                                reason: "a parent is a dangling symlink",
                            });
                        }
                        Err(e) => return Err(io_err(display, "create parent directory")(e)),
                    }
                    self.open_in_root(&prefix)
                        .map_err(io_err(display, "open parent"))?
                }
                Err(Errno::NOTDIR) => {
                    return Err(Error::Entry {
                        path: display.to_string(),
                        reason: "a parent is not a directory",
                    });
                }
                Err(e) => return Err(io_err(display, "open parent")(e)),
            };
            fd = next;
        }
        Ok(Some(fd))
    }

    fn apply_entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        state: &mut LayerState,
    ) -> Result<(), Error> {
        let raw = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            return Ok(());
        }
        let Some(path) = EntryPath::parse(&raw, &display)? else {
            debug!("layer entry {display:?}: the rootfs itself: skipped");
            return Ok(());
        };
        let name = path.name().to_vec();
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.apply_whiteout(&path, &display, state);
        }
        let parent = self
            .open_dir(path.parent(), true, state, &display)?
            .ok_or(Error::Entry {
                path: display.clone(),
                reason: "parent not created",
            })?;
        let full = EntryPath::joined(&path.components);
        state.written.insert(full.clone());

        let header = entry.header();
        let mode = Mode::from(header.mode().map_err(Error::Read)? & 0o7777);
        let uid = header.uid().map_err(Error::Read)?;
        let gid = header.gid().map_err(Error::Read)?;
        let mtime = header.mtime().map_err(Error::Read)?;
        let owner = Owner { uid, gid };
        let err = |op| io_err(&display, op);

        match kind {
            tar::EntryType::Directory => {
                if !is_dir_at(&parent, &name) {
                    remove_all_at(&parent, &name).map_err(err("replace with directory"))?;
                    rustix::fs::mkdirat(&parent, name.as_slice(), Mode::from(0o700))
                        .map_err(err("mkdir"))?;
                }
                let dir = rustix::fs::openat(
                    &parent,
                    name.as_slice(),
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(err("open directory"))?;
                owner.apply_fd(&dir).map_err(err("chown"))?;
                rustix::fs::fchmod(&dir, mode).map_err(err("chmod"))?;
                state.dir_mtimes.push((full, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if self.bytes.saturating_add(size) > self.limits.max_bytes {
                    return Err(Error::TooLarge {
                        limit: self.limits.max_bytes,
                    });
                }
                self.bytes += size;
                remove_all_at(&parent, &name).map_err(err("replace"))?;
                // O_CREAT|O_EXCL never follows a symlink, and we just removed the name.
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_slice(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from(0o600),
                )
                .map_err(err("create file"))?;
                let mut file = std::fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(Error::Read)?;
                // chown before chmod: chown clears setuid/setgid.
                owner.apply_fd(&file).map_err(err("chown"))?;
                rustix::fs::fchmod(&file, mode).map_err(err("chmod"))?;
                rustix::fs::futimens(&file, &timestamps(mtime)).map_err(err("set mtime"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(Error::Entry {
                        path: display.clone(),
                        reason: "symlink without target",
                    })?
                    .into_owned();
                remove_all_at(&parent, &name).map_err(err("replace"))?;
                // The target is stored as is: it is only ever resolved inside the rootfs.
                rustix::fs::symlinkat(target.as_slice(), &parent, name.as_slice())
                    .map_err(err("symlink"))?;
                owner.apply_at(&parent, &name).map_err(err("lchown"))?;
                rustix::fs::utimensat(
                    &parent,
                    name.as_slice(),
                    &timestamps(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(err("set mtime"))?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or(Error::Entry {
                        path: display.clone(),
                        reason: "hardlink without target",
                    })?
                    .into_owned();
                let target = EntryPath::parse(&target_raw, &display)?.ok_or(Error::Entry {
                    path: display.clone(),
                    reason: "hardlink to the rootfs itself",
                })?;
                let target_parent = self
                    .open_dir(target.parent(), false, state, &display)?
                    .ok_or(Error::Entry {
                        path: display.clone(),
                        reason: "hardlink target not found",
                    })?;
                if target.components == path.components {
                    return Err(Error::Entry {
                        path: display,
                        reason: "hardlink to itself",
                    });
                }
                remove_all_at(&parent, &name).map_err(err("replace"))?;
                // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
                rustix::fs::linkat(
                    &target_parent,
                    target.name(),
                    &parent,
                    name.as_slice(),
                    AtFlags::empty(),
                )
                .map_err(err("hardlink"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_all_at(&parent, &name).map_err(err("replace"))?;
                let dev = rustix::fs::makedev(major, minor);
                match rustix::fs::mknodat(&parent, name.as_slice(), file_type, mode, dev) {
                    Ok(()) => {
                        owner.apply_at(&parent, &name).map_err(err("lchown"))?;
                    }
                    Err(e) => warn!("layer entry {display:?}: mknod failed ({e}): skipped"),
                }
            }
            _ => {
                return Err(Error::Entry {
                    path: display,
                    reason: "unsupported tar entry type",
                });
            }
        }
        Ok(())
    }

    fn apply_whiteout(
        &mut self,
        path: &EntryPath,
        display: &str,
        state: &mut LayerState,
    ) -> Result<(), Error> {
        let name = path.name();
        // A missing directory has nothing to hide.
        let Some(parent) = self.open_dir(path.parent(), false, state, display)? else {
            return Ok(());
        };
        let parent_path = EntryPath::joined(path.parent());
        let child_path = |child: &[u8]| {
            if parent_path.is_empty() {
                child.to_vec()
            } else {
                [parent_path.as_slice(), b"/", child].concat()
            }
        };
        if name == WHITEOUT_OPAQUE {
            let dir =
                rustix::fs::Dir::read_from(&parent).map_err(io_err(display, "read directory"))?;
            for child in dir {
                let child = child.map_err(io_err(display, "read directory"))?;
                let child_name = child.file_name().to_bytes();
                if child_name == b"."
                    || child_name == b".."
                    || state.written.contains(&child_path(child_name))
                {
                    continue;
                }
                remove_all_at(&parent, child_name).map_err(io_err(display, "opaque whiteout"))?;
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            warn!("layer entry {display:?}: unknown special whiteout: skipped");
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(Error::Entry {
                path: display.to_string(),
                reason: "whiteout names no file",
            });
        }
        if state.written.contains(&child_path(target)) {
            // Whiteouts hide lower layers only.
            return Ok(());
        }
        remove_all_at(&parent, target).map_err(io_err(display, "whiteout"))
    }
}

struct Owner {
    uid: u64,
    gid: u64,
}

impl Owner {
    fn ids(&self) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
        let uid = u32::try_from(self.uid).ok().map(rustix::fs::Uid::from_raw);
        let gid = u32::try_from(self.gid).ok().map(rustix::fs::Gid::from_raw);
        (uid, gid)
    }

    fn apply_fd<Fd: AsFd>(&self, fd: Fd) -> Result<(), Errno> {
        let (uid, gid) = self.ids();
        tolerate_eperm(rustix::fs::fchown(fd, uid, gid))
    }

    fn apply_at(&self, dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
        let (uid, gid) = self.ids();
        tolerate_eperm(rustix::fs::chownat(
            dir,
            name,
            uid,
            gid,
            AtFlags::SYMLINK_NOFOLLOW,
        ))
    }
}

/// Without CAP_CHOWN (tests as a normal user), ownership cannot be kept: not an error.
fn tolerate_eperm(r: Result<(), Errno>) -> Result<(), Errno> {
    match r {
        Err(Errno::PERM) => Ok(()),
        r => r,
    }
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn is_dir_at(dir: &OwnedFd, name: &[u8]) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

/// Removes `name` in `dir` (recursively if a directory); never follows a symlink.
/// A missing `name` is not an error.
fn remove_all_at(dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    remove_all_at_fd(dir.as_fd(), name)
}

fn remove_all_at_fd(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for child in rustix::fs::Dir::read_from(&sub)? {
        let child = child?;
        let n = child.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_all_at_fd(sub.as_fd(), &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
