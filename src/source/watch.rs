//! An inotify watch on the manifests folder: "something changed, scan again".
//!
//! Owns one non-blocking inotify fd (in `async_io::Async`) with two watches:
//! - the folder itself: a manifest written (`IN_CLOSE_WRITE`, not every `IN_MODIFY` of a
//!   half-written file), renamed in or out, deleted, or a directory/symlink created (those get
//!   no `IN_CLOSE_WRITE`); the folder itself deleted or moved away;
//! - its parent, only to see the folder (re)appear, so the watch survives
//!   `rm -rf manifests && mkdir manifests` and a folder that does not exist yet.
//!
//! It never says *what* changed and never parses anything: the caller rescans the whole folder
//! on every change and periodically anyway (inotify can overflow; some filesystems send no
//! events), so a missed event only delays a change to the next periodic scan.

use std::ffi::{OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use async_io::Async;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::manifest::is_manifest_file_name;

/// Watches one manifests folder.
pub struct DirWatch {
    dir: PathBuf,
    /// The folder's name in its parent.
    name: OsString,
    fd: Async<OwnedFd>,
    parent_wd: Option<i32>,
    /// `None` while the folder does not exist.
    dir_wd: Option<i32>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("dir", &self.dir)
            .field("watching", &self.dir_wd.is_some())
            .finish()
    }
}

const DIR_EVENTS: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR);

const PARENT_EVENTS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ONLYDIR);

/// One event as read, owned.
struct RawEvent {
    wd: i32,
    flags: ReadFlags,
    name: Option<OsString>,
}

impl DirWatch {
    /// Starts watching `dir`, which need not exist yet (its parent must, unless `dir` is `/`).
    pub fn new(dir: &Path) -> io::Result<Self> {
        let dir = std::path::absolute(dir)?;
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let parent_wd = match dir.parent() {
            Some(parent) => Some(inotify::add_watch(&fd, parent, PARENT_EVENTS)?),
            None => None,
        };
        let name = dir.file_name().map(OsStr::to_os_string).unwrap_or_default();
        let mut watch = DirWatch {
            dir,
            name,
            fd: Async::new(fd)?,
            parent_wd,
            dir_wd: None,
        };
        watch.add_dir_watch()?;
        Ok(watch)
    }

    /// Resolves when something in the folder changed (or the folder appeared or went away),
    /// after draining all pending events, so a burst of writes gives one wake-up.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let events = self.fd.read_with(read_events).await?;
            let mut changed = false;
            for event in events {
                changed |= self.handle(event)?;
            }
            if changed {
                return Ok(());
            }
        }
    }

    fn add_dir_watch(&mut self) -> io::Result<()> {
        match inotify::add_watch(self.fd.get_ref(), &self.dir, DIR_EVENTS) {
            Ok(wd) => {
                self.dir_wd = Some(wd);
                Ok(())
            }
            // Not there (yet), or replaced by a file: wait for the parent to show a folder.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {
                self.dir_wd = None;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Updates the watches for one event; returns whether the folder's contents may differ.
    fn handle(&mut self, event: RawEvent) -> io::Result<bool> {
        if event.flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            return Ok(true);
        }
        if Some(event.wd) == self.dir_wd {
            if event.flags.contains(ReadFlags::MOVE_SELF) {
                // The watch follows the inode to its new name: drop it.
                let _ = inotify::remove_watch(self.fd.get_ref(), event.wd);
                self.dir_wd = None;
                return Ok(true);
            }
            if event
                .flags
                .intersects(ReadFlags::DELETE_SELF | ReadFlags::IGNORED)
            {
                self.dir_wd = None;
                return Ok(true);
            }
            let dir = &self.dir;
            return Ok(is_relevant(event.flags, event.name.as_deref(), |name| {
                std::fs::symlink_metadata(dir.join(name))
                    .is_ok_and(|m| m.file_type().is_symlink() || m.is_dir())
            }));
        }
        if event.wd >= 0 && Some(event.wd) == self.parent_wd {
            if event.name.as_deref() == Some(self.name.as_os_str()) {
                if let Some(old) = self.dir_wd.take() {
                    let _ = inotify::remove_watch(self.fd.get_ref(), old);
                }
                self.add_dir_watch()?;
                return Ok(true);
            }
            return Ok(false);
        }
        Ok(false)
    }
}

/// Whether an event inside the folder may change the scan: only manifest names count; a
/// created entry counts only if it is a directory or symlink (`is_dir_or_symlink`), because a
/// created regular file is still being written and its `IN_CLOSE_WRITE` follows.
fn is_relevant(
    flags: ReadFlags,
    name: Option<&OsStr>,
    is_dir_or_symlink: impl FnOnce(&OsStr) -> bool,
) -> bool {
    let Some(name) = name else { return false };
    let Some(text) = std::str::from_utf8(name.as_bytes()).ok() else {
        return false;
    };
    if !is_manifest_file_name(text) {
        return false;
    }
    if flags.intersects(
        ReadFlags::CLOSE_WRITE | ReadFlags::MOVED_TO | ReadFlags::MOVED_FROM | ReadFlags::DELETE,
    ) {
        return true;
    }
    if flags.contains(ReadFlags::CREATE) {
        return flags.contains(ReadFlags::ISDIR) || is_dir_or_symlink(name);
    }
    false
}

/// Drains the inotify fd. `WouldBlock` when nothing is pending (so `read_with` waits).
fn read_events(fd: &OwnedFd) -> io::Result<Vec<RawEvent>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd, &mut buf);
    let mut events = Vec::new();
    loop {
        match reader.next() {
            Ok(event) => events.push(RawEvent {
                wd: event.wd(),
                flags: event.events(),
                name: event
                    .file_name()
                    .map(|n| OsStr::from_bytes(n.to_bytes()).to_os_string()),
            }),
            // Drained (more than one buffer's worth may have been queued).
            Err(rustix::io::Errno::AGAIN) if !events.is_empty() => return Ok(events),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::time::Duration;

    /// Waits for `changed()`, failing (not hanging) if nothing arrives within a generous bound.
    fn wait_changed(watch: &mut DirWatch) {
        let bounded = future::or(async { watch.changed().await.map(|()| true) }, async {
            async_io::Timer::after(Duration::from_secs(20)).await;
            Ok(false)
        });
        assert!(
            future::block_on(bounded).unwrap(),
            "no change seen for {watch:?}"
        );
    }

    #[test]
    fn a_written_manifest_wakes_the_watch() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("manifests");
        std::fs::create_dir(&dir).unwrap();
        let mut watch = DirWatch::new(&dir).unwrap();
        std::fs::write(dir.join("web.yaml"), "x").unwrap();
        wait_changed(&mut watch);
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        wait_changed(&mut watch);
    }

    #[test]
    fn the_watch_survives_the_folder_being_removed_and_recreated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("manifests");
        // Not there yet.
        let mut watch = DirWatch::new(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        wait_changed(&mut watch);
        std::fs::remove_dir(&dir).unwrap();
        wait_changed(&mut watch);
        std::fs::create_dir(&dir).unwrap();
        wait_changed(&mut watch);
        std::fs::write(dir.join("web.yaml"), "x").unwrap();
        wait_changed(&mut watch);
    }

    #[test]
    fn only_manifest_events_count() {
        let yes = |_: &OsStr| true;
        let no = |_: &OsStr| false;
        let cases: &[(ReadFlags, &str, bool, bool)] = &[
            (ReadFlags::CLOSE_WRITE, "web.yaml", false, true),
            (ReadFlags::MOVED_TO, "web.yaml", false, true),
            (ReadFlags::MOVED_FROM, "web.json", false, true),
            (ReadFlags::DELETE, "web.yml", false, true),
            (ReadFlags::CLOSE_WRITE, ".web.yaml.swp", false, false),
            (ReadFlags::CLOSE_WRITE, "4913", false, false),
            (ReadFlags::CLOSE_WRITE, "notes.txt", false, false),
            (ReadFlags::CREATE, "web.yaml", false, false),
            (ReadFlags::CREATE, "web.yaml", true, true),
            (
                ReadFlags::CREATE.union(ReadFlags::ISDIR),
                "d.yaml",
                false,
                true,
            ),
        ];
        for (flags, name, is_link, want) in cases {
            let got = if *is_link {
                is_relevant(*flags, Some(OsStr::new(name)), yes)
            } else {
                is_relevant(*flags, Some(OsStr::new(name)), no)
            };
            assert_eq!(got, *want, "{flags:?} {name}");
        }
    }
}
