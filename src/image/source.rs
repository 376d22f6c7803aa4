//! Import sources: an OCI image layout directory, or a plain tar archive (an OCI archive
//! or a `docker save` archive) read in place by offset.
//!
//! Owns: opening a file of the source by its path relative to the layout/archive root.
//! Must never: open anything outside the source (paths climbing above its root are
//! refused), or copy an archive member into memory or onto disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the image files come from: paths are relative to the layout/archive root.
pub(super) trait Source {
    /// `Ok(None)` when the path does not exist.
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>>;
}

pub(super) struct DirSource {
    pub(super) dir: PathBuf,
}

impl Source for DirSource {
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let Some(rel) = clean(path) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path leaves the layout",
            ));
        };
        match File::open(self.dir.join(rel)) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

enum TarItem {
    File {
        offset: u64,
        size: u64,
    },
    /// Symlink or hardlink, already resolved to an archive path.
    Link(String),
}

/// A plain tar archive read by offset: one pass builds the table of contents, then each
/// blob is read in place.
pub(super) struct TarSource {
    file: File,
    items: HashMap<String, TarItem>,
}

impl TarSource {
    pub(super) fn open(path: &Path) -> io::Result<TarSource> {
        let file = File::open(path)?;
        let mut items = HashMap::new();
        let mut archive = tar::Archive::new(&file);
        for entry in archive.entries()? {
            let entry = entry?;
            let raw = entry.path_bytes().into_owned();
            let Some(name) = clean(&String::from_utf8_lossy(&raw)) else {
                continue;
            };
            let item = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => TarItem::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    let joined = if target.starts_with('/') {
                        target
                    } else {
                        format!("{dir}/{target}")
                    };
                    match clean(&joined) {
                        Some(t) => TarItem::Link(t),
                        None => continue,
                    }
                }
                tar::EntryType::Link => {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    match clean(&String::from_utf8_lossy(&target)) {
                        Some(t) => TarItem::Link(t),
                        None => continue,
                    }
                }
                _ => continue,
            };
            items.insert(name, item);
        }
        Ok(TarSource { file, items })
    }
}

impl Source for TarSource {
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let Some(mut name) = clean(path) else {
            return Ok(None);
        };
        for _ in 0..8 {
            match self.items.get(&name) {
                None => return Ok(None),
                Some(TarItem::File { offset, size }) => {
                    return Ok(Some(Box::new(ReadAt {
                        file: &self.file,
                        pos: *offset,
                        end: offset + size,
                    })));
                }
                Some(TarItem::Link(target)) => name = target.clone(),
            }
        }
        Err(io::Error::other("too many levels of links in archive"))
    }
}

/// Reads `file[pos..end]` with pread, so several readers can share one `File`.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Normalizes an archive path (`./a//b/../c` → `a/c`); `None` if it climbs above the root.
fn clean(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn clean_keeps_archive_paths_inside() {
        let cases = [
            ("./blobs/sha256/ab", Some("blobs/sha256/ab")),
            ("a//b/../c", Some("a/c")),
            ("/index.json", Some("index.json")),
            ("../x", None),
            ("a/../../x", None),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input).as_deref(), want, "{input}");
        }
    }
}
