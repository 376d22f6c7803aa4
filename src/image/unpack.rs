//! Applying layer tarballs, in order, into one rootfs directory.
//!
//! Owns: the tar-entry → filesystem step, OCI whiteouts, the layer decompression
//! (gzip, zstd, none: [`decompress`]) and the limits on entry count, uncompressed size and
//! path length. The `tar` crate is used only as a streaming parser.
//!
//! Must never: write, create, link or delete anything outside the rootfs. Every path is
//! resolved *inside* the rootfs, as if it were `/` (`openat2` with `RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS`): a symlink to `/etc` in the image means the image's `/etc`.
//! The last component is then handled with `*at` calls on the parent's fd, which do not
//! follow it. Missing parents are created as directories (0755).
//!
//! Rules, as in the OCI image spec (layer.md) and docker/containerd:
//! - `..` anywhere in an entry or hardlink path is an error; a leading `/` is stripped;
//!   `.` and empty components are dropped; a NUL byte (possible in a PAX path) is an error.
//! - Paths and link targets are at most [`Limits::max_path_len`] bytes, each component at
//!   most [`MAX_NAME_LEN`].
//! - A later entry replaces an earlier one at the same path, except a directory over a
//!   directory, which keeps the children and takes the new metadata.
//! - `.wh.NAME` deletes NAME from the lower layers; `.wh..wh..opq` deletes every child of
//!   its directory that came from lower layers, wherever the marker sits in the layer.
//!   Entries of the same layer stay (and in directories they keep, lower children go).
//! - A hardlink to itself, to a directory or to a missing entry is an error.
//! - Hardlinks may only point at entries inside the rootfs (resolved the same way).
//! - Device nodes are created when mknod is allowed, else skipped with a warning.
//! - Ownership (lchown) needs root; without it, ownership is left as is.
//! - xattrs come from PAX `SCHILY.xattr.NAME` records; one the filesystem (or our lack of
//!   privilege) refuses is skipped with a warning. They are set after chown, which clears
//!   `security.capability`.
//! - Directory modes and mtimes are set once the layer is done, so a directory of mode
//!   0000 can still receive its children without root.
//!
//! Bounds (see [`Limits`]): the uncompressed tar stream of all layers, headers included, is
//! metered as it is read, so a decompression bomb stops after `max_bytes`; the extended
//! headers of one entry (PAX, GNU long name and link), which the `tar` crate holds in
//! memory, may not exceed [`MAX_EXTENSION_BYTES`] (plus a few blocks); a file larger than what is left is refused before it is created.
//! A failed unpack leaves a partial rootfs: the caller owns removing it (the store unpacks
//! into `.tmp-*` and deletes it on error).

use log::{debug, warn};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;

mod decompress;
mod inflate;
pub use decompress::{LayerCompression, ZSTD_MAX_WINDOW, ZstdReader, decompress};
pub use inflate::decompress_on_thread;

/// The longest path component Linux accepts (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// The largest PAX or GNU long-name header one entry may carry.
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// Bounds on what one image may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Uncompressed bytes (the tar streams, headers included), over all layers.
    pub max_bytes: u64,
    /// Number of tar entries, over all layers.
    pub max_entries: u64,
    /// Length of an entry path, hardlink or symlink target (PATH_MAX by default). Each
    /// component is also bounded by [`MAX_NAME_LEN`].
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_path_len: 4096,
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
    /// An entry path or link target is longer than [`Limits::max_path_len`].
    PathTooLong {
        path: String,
        limit: usize,
    },
    /// A path component is longer than [`MAX_NAME_LEN`].
    NameTooLong {
        path: String,
    },
    /// A regular file's data ends before its header's size.
    Truncated {
        path: String,
        want: u64,
        got: u64,
    },
    TooManyEntries {
        limit: u64,
    },
    TooLarge {
        limit: u64,
    },
    /// A PAX or GNU long-name header over [`MAX_EXTENSION_BYTES`].
    HeaderTooLarge {
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
            Error::PathTooLong { path, limit } => {
                write!(f, "entry {path:?}: path longer than {limit} bytes")
            }
            Error::NameTooLong { path } => write!(
                f,
                "entry {path:?}: a path component is longer than {MAX_NAME_LEN} bytes"
            ),
            Error::Truncated { path, want, got } => write!(
                f,
                "entry {path:?}: data truncated: header says {want} bytes, layer has {got}"
            ),
            Error::TooManyEntries { limit } => {
                write!(f, "more than {limit} entries: refusing to unpack")
            }
            Error::TooLarge { limit } => {
                write!(
                    f,
                    "more than {limit} bytes uncompressed: refusing to unpack"
                )
            }
            Error::HeaderTooLarge { limit } => write!(
                f,
                "a PAX or GNU long-name header is larger than {limit} bytes: refusing to unpack"
            ),
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
    /// Uncompressed bytes read so far, over all layers.
    bytes: u64,
    /// Whether an xattr was already refused (warned once, then logged at debug).
    xattr_warned: bool,
}

/// A path split into its components, each non-empty and none `.` or `..`.
struct EntryPath {
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    /// `None` for the root itself (`./`, `/`, ``).
    fn parse(raw: &[u8], display: &str, limits: &Limits) -> Result<Option<EntryPath>, Error> {
        let refuse = |reason| Error::Entry {
            path: display.to_string(),
            reason,
        };
        if raw.contains(&0) {
            return Err(refuse("path contains a NUL byte"));
        }
        if raw.len() > limits.max_path_len {
            return Err(Error::PathTooLong {
                path: display.to_string(),
                limit: limits.max_path_len,
            });
        }
        let mut components = Vec::new();
        for c in raw.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(refuse("path contains \"..\"")),
                c if c.len() > MAX_NAME_LEN => {
                    return Err(Error::NameTooLong {
                        path: display.to_string(),
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

/// An entry path for messages: lossy UTF-8, cut short (a PAX path may be a megabyte).
fn display_path(raw: &[u8]) -> String {
    const MAX: usize = 256;
    let s = String::from_utf8_lossy(&raw[..raw.len().min(MAX)]).into_owned();
    if raw.len() > MAX { s + "…" } else { s }
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
    /// Directory modes and mtimes, set once the layer is done (writing children changes
    /// the mtime; a mode without write or search permission would stop them).
    dirs: Vec<(Vec<u8>, Mode, u64)>,
}

/// Why the [`Metered`] reader stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trip {
    TooLarge,
    HeaderTooLarge,
}

/// Counts the uncompressed bytes the tar parser reads, and fails the read that crosses a
/// limit: the total, or (while the parser looks for the next entry) one extended header.
struct Meter {
    total: Cell<u64>,
    max_total: u64,
    /// Bytes read since the parser started looking for the next entry; `None` while an
    /// entry's data is read.
    between_entries: Cell<Option<u64>>,
    tripped: Cell<Option<Trip>>,
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)? as u64;
        let m = &self.meter;
        m.total.set(m.total.get() + n);
        if m.total.get() > m.max_total {
            m.tripped.set(Some(Trip::TooLarge));
            return Err(io::Error::other("uncompressed size limit reached"));
        }
        if let Some(b) = m.between_entries.get() {
            m.between_entries.set(Some(b + n));
            // The headers of one entry: its extension data plus a few 512-byte blocks.
            if b + n > MAX_EXTENSION_BYTES + 8 * 512 {
                m.tripped.set(Some(Trip::HeaderTooLarge));
                return Err(io::Error::other("extended header limit reached"));
            }
        }
        Ok(n as usize)
    }
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
            xattr_warned: false,
        })
    }

    /// Applies one stored layer blob, gzip, zstd or uncompressed (told apart by its first
    /// bytes), on top of what is already unpacked. The blob is decompressed on a thread of
    /// its own ([`decompress_on_thread`]): call this from an unpacking process, not the agent.
    pub fn apply_blob<R: BufRead + Send>(
        &mut self,
        mut blob: R,
    ) -> Result<LayerCompression, Error> {
        let c = LayerCompression::sniff(blob.fill_buf().map_err(Error::Read)?);
        decompress_on_thread(blob, |layer| self.apply_layer(layer)).map_err(Error::Read)??;
        Ok(c)
    }

    /// Applies one uncompressed layer tarball on top of what is already unpacked.
    pub fn apply_layer<R: Read>(&mut self, layer: R) -> Result<(), Error> {
        let meter = Rc::new(Meter {
            total: Cell::new(self.bytes),
            max_total: self.limits.max_bytes,
            between_entries: Cell::new(None),
            tripped: Cell::new(None),
        });
        let result = self.apply_metered(
            Metered {
                inner: layer,
                meter: Rc::clone(&meter),
            },
            &meter,
        );
        self.bytes = meter.total.get();
        match (result, meter.tripped.get()) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(Trip::TooLarge)) => Err(Error::TooLarge {
                limit: self.limits.max_bytes,
            }),
            (Err(_), Some(Trip::HeaderTooLarge)) => Err(Error::HeaderTooLarge {
                limit: MAX_EXTENSION_BYTES,
            }),
            (Err(e), None) => Err(e),
        }
    }

    fn apply_metered<R: Read>(&mut self, layer: Metered<R>, meter: &Meter) -> Result<(), Error> {
        let mut archive = tar::Archive::new(layer);
        let mut state = LayerState::default();
        let mut entries = archive.entries().map_err(Error::Read)?;
        loop {
            meter.between_entries.set(Some(0));
            let next = entries.next();
            meter.between_entries.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(Error::Read)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(Error::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            self.apply_entry(&mut entry, &mut state, meter)?;
            // Whatever the entry carried and we did not use (a directory's or whiteout's
            // data) is read here, inside the total and outside the header bound.
            io::copy(&mut entry, &mut io::sink()).map_err(Error::Read)?;
        }
        // Read to the end: the zero blocks and padding after the archive, and, for gzip,
        // the trailer whose CRC proves the stream whole. Metered: no bomb hides there.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(Error::Read)?;
        // Latest entry first; a directory listed twice takes its last entry's metadata.
        let mut stamped = HashSet::new();
        for (path, mode, mtime) in state.dirs.iter().rev() {
            if !stamped.insert(path) {
                continue;
            }
            let display = display_path(path);
            let fd = match self.open_in_root(path) {
                Ok(fd) => fd,
                // Replaced or removed later in the same layer: nothing to stamp.
                Err(Errno::NOTDIR | Errno::NOENT) => continue,
                Err(e) => return Err(io_err(&display, "open directory")(e)),
            };
            rustix::fs::futimens(&fd, &timestamps(*mtime))
                .map_err(io_err(&display, "set mtime"))?;
            rustix::fs::fchmod(&fd, *mode).map_err(io_err(&display, "chmod"))?;
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
        entry: &mut tar::Entry<'_, R>,
        state: &mut LayerState,
        meter: &Meter,
    ) -> Result<(), Error> {
        let raw = entry.path_bytes().into_owned();
        let display = display_path(&raw);
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            return Ok(());
        }
        let Some(path) = EntryPath::parse(&raw, &display, &self.limits)? else {
            debug!("layer entry {display:?}: the rootfs itself: skipped");
            return Ok(());
        };
        let name = path.name().to_vec();
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.apply_whiteout(&path, &display, state);
        }
        let link = match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name_bytes().ok_or(Error::Entry {
                    path: display.clone(),
                    reason: "link without target",
                })?;
                if target.contains(&0) {
                    return Err(Error::Entry {
                        path: display,
                        reason: "link target contains a NUL byte",
                    });
                }
                if target.len() > self.limits.max_path_len {
                    return Err(Error::PathTooLong {
                        path: display,
                        limit: self.limits.max_path_len,
                    });
                }
                target.into_owned()
            }
            _ => Vec::new(),
        };
        let xattrs = xattrs_of(entry)?;
        let parent = self
            .open_dir(path.parent(), true, state, &display)?
            .ok_or(Error::Entry {
                path: display.clone(),
                reason: "parent not created",
            })?;
        let full = EntryPath::joined(&path.components);
        // Ancestors too: an opaque whiteout higher up must spare this entry's directories
        // (while clearing what lower layers left in them).
        for i in 1..path.components.len() {
            state
                .written
                .insert(EntryPath::joined(&path.components[..i]));
        }
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
                self.set_xattrs(&display, &xattrs, |k, v| {
                    rustix::fs::fsetxattr(&dir, k, v, rustix::fs::XattrFlags::empty())
                });
                state.dirs.push((full, mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                // Refused before anything is created; the meter would stop it later anyway.
                if meter.total.get().saturating_add(size) > self.limits.max_bytes {
                    meter.tripped.set(Some(Trip::TooLarge));
                    return Err(Error::TooLarge {
                        limit: self.limits.max_bytes,
                    });
                }
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
                let got = io::copy(entry, &mut file).map_err(Error::Read)?;
                if got != size {
                    return Err(Error::Truncated {
                        path: display,
                        want: size,
                        got,
                    });
                }
                // chown first: it clears setuid/setgid and security.capability. xattrs
                // before chmod: without root, a read-only mode would refuse `user.*` ones.
                owner.apply_fd(&file).map_err(err("chown"))?;
                self.set_xattrs(&display, &xattrs, |k, v| {
                    rustix::fs::fsetxattr(&file, k, v, rustix::fs::XattrFlags::empty())
                });
                rustix::fs::fchmod(&file, mode).map_err(err("chmod"))?;
                rustix::fs::futimens(&file, &timestamps(mtime)).map_err(err("set mtime"))?;
            }
            tar::EntryType::Symlink => {
                remove_all_at(&parent, &name).map_err(err("replace"))?;
                // The target is stored as is: it is only ever resolved inside the rootfs.
                rustix::fs::symlinkat(link.as_slice(), &parent, name.as_slice())
                    .map_err(err("symlink"))?;
                owner.apply_at(&parent, &name).map_err(err("lchown"))?;
                self.set_xattrs_at(&display, &xattrs, &parent, &name);
                rustix::fs::utimensat(
                    &parent,
                    name.as_slice(),
                    &timestamps(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(err("set mtime"))?;
            }
            tar::EntryType::Link => {
                let target =
                    EntryPath::parse(&link, &display, &self.limits)?.ok_or(Error::Entry {
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
                match rustix::fs::statat(&target_parent, target.name(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(Error::Entry {
                            path: display,
                            reason: "hardlink to a directory",
                        });
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        return Err(Error::Entry {
                            path: display,
                            reason: "hardlink target not found",
                        });
                    }
                    Err(e) => return Err(err("hardlink target")(e)),
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
                        self.set_xattrs_at(&display, &xattrs, &parent, &name);
                        // mknod applies the umask: set the mode as the layer says. (The
                        // name is the node just made, not a symlink, in a directory of
                        // the rootfs that nothing else writes to.)
                        rustix::fs::chmodat(&parent, name.as_slice(), mode, AtFlags::empty())
                            .map_err(err("chmod"))?;
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

    /// Sets each xattr with `set`; one refused is skipped with a warning (the first time;
    /// at debug after that, so an image on a filesystem without xattrs logs one line).
    fn set_xattrs(
        &mut self,
        display: &str,
        xattrs: &[Xattr],
        mut set: impl FnMut(&[u8], &[u8]) -> Result<(), Errno>,
    ) {
        for (k, v) in xattrs {
            if let Err(e) = set(k, v) {
                let k = String::from_utf8_lossy(k);
                if self.xattr_warned {
                    debug!("layer entry {display:?}: xattr {k}: {e}: skipped");
                } else {
                    warn!(
                        "layer entry {display:?}: xattr {k}: {e}: skipped (further refusals logged at debug)"
                    );
                    self.xattr_warned = true;
                }
            }
        }
    }

    /// xattrs of an entry that cannot be opened (a symlink, a device): `lsetxattr` on
    /// `/proc/self/fd/<parent>/<name>`. The magic link is the parent directory, already
    /// resolved inside the rootfs; `lsetxattr` does not follow `name`.
    fn set_xattrs_at(&mut self, display: &str, xattrs: &[Xattr], parent: &OwnedFd, name: &[u8]) {
        if xattrs.is_empty() {
            return;
        }
        let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
        path.extend_from_slice(name);
        self.set_xattrs(display, xattrs, |k, v| {
            rustix::fs::lsetxattr(path.as_slice(), k, v, rustix::fs::XattrFlags::empty())
        });
    }

    fn apply_whiteout(
        &mut self,
        path: &EntryPath,
        display: &str,
        state: &mut LayerState,
    ) -> Result<(), Error> {
        let name = path.name();
        let is_opaque = name == WHITEOUT_OPAQUE;
        let target = &name[WHITEOUT_PREFIX.len()..];
        if !is_opaque
            && !name.starts_with(b".wh..wh.")
            && (target.is_empty() || target == b"." || target == b"..")
        {
            return Err(Error::Entry {
                path: display.to_string(),
                reason: "whiteout names no file",
            });
        }
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
        if is_opaque {
            return opaque_clear(parent.as_fd(), &parent_path, &state.written)
                .map_err(io_err(display, "opaque whiteout"));
        }
        if name.starts_with(b".wh..wh.") {
            warn!("layer entry {display:?}: unknown special whiteout: skipped");
            return Ok(());
        }
        if state.written.contains(&child_path(target)) {
            // Whiteouts hide lower layers only.
            return Ok(());
        }
        remove_all_at(&parent, target).map_err(io_err(display, "whiteout"))
    }
}

/// Removes what lower layers left in `dir` (at `dir_path`): every child this layer did
/// not write, and, inside directories it did write, their lower-layer children too.
fn opaque_clear(
    dir: BorrowedFd<'_>,
    dir_path: &[u8],
    written: &HashSet<Vec<u8>>,
) -> Result<(), Errno> {
    let sub = rustix::fs::openat(
        dir,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let names = entry_names(&sub)?;
    for n in names {
        let path = if dir_path.is_empty() {
            n.clone()
        } else {
            [dir_path, b"/", &n].concat()
        };
        if !written.contains(&path) {
            remove_all_at_fd(sub.as_fd(), &n)?;
        } else if rustix::fs::statat(&sub, n.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
        {
            let child = rustix::fs::openat(
                &sub,
                n.as_slice(),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            opaque_clear(child.as_fd(), &path, written)?;
        }
    }
    Ok(())
}

/// An extended attribute: name (`user.foo`), value.
type Xattr = (Vec<u8>, Vec<u8>);

/// The xattrs an entry carries as PAX `SCHILY.xattr.NAME=VALUE` records.
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<Xattr>, Error> {
    const PREFIX: &str = "SCHILY.xattr.";
    let mut out = Vec::new();
    let Some(records) = entry.pax_extensions().map_err(Error::Read)? else {
        return Ok(out);
    };
    for r in records {
        let r = r.map_err(Error::Read)?;
        let key = r.key_bytes();
        if let Some(name) = key.strip_prefix(PREFIX.as_bytes())
            && !name.is_empty()
            && !name.contains(&0)
        {
            out.push((name.to_vec(), r.value_bytes().to_vec()));
        }
    }
    Ok(out)
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
    let names = entry_names(&sub)?;
    for n in names {
        remove_all_at_fd(sub.as_fd(), &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

/// The names in an open directory, without `.` and `..`.
fn entry_names(dir: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for child in rustix::fs::Dir::read_from(dir)? {
        let child = child?;
        let n = child.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}
