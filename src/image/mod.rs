//! The image store: imports images from OCI layouts and archives, keeps verified blobs,
//! names them, and unpacks each image's layers once into a shared read-only rootfs.
//!
//! Images come from layouts and archives ([`ImageStore::import_path`]) or from a registry
//! ([`pull::pull`], over [`registry`] and [`auth`]); both go through the same verifying
//! import path.
//!
//! Owns the directory it is opened on (e.g. `/var/lib/nanolet/images`):
//!
//! ```text
//! blobs/sha256/<hex>     verified, content-addressed blobs (manifests, configs, layers)
//! index.json             our records: names → manifest digest, config digest, config
//! rootfs/<config-hex>/   an image's layers unpacked once (written via .tmp-*, renamed)
//! tmp/                   blobs being copied in (same filesystem, so rename is atomic)
//! lock                   flock: imports and removals exclusive, unpacking shared
//! ```
//!
//! Must never: let an unverified byte enter `blobs/` (copy → verify size, digest and
//! diff_id → fsync → rename), leave a partial rootfs under its final name, or write
//! outside its root. Synchronous and blocking: the agent calls it from a child process.
//!
//! Decisions: gzip, zstd and uncompressed layers. A pull (`fetch.rs`) checks each layer's
//! diff_id while unpacking it, in one pass; an import from a layout or archive checks it
//! while copying the blob in (a zstd layer's by decoding the written temporary blob before
//! it is renamed in) and unpacks later. Unpacking decompresses on a thread of its own
//! ([`unpack::decompress_on_thread`]), so it belongs in a child process, never the agent.
//! Compressed archive files (`.tar.gz`) are refused: gunzip them first, since blobs are
//! read from the tar by offset. A name moving to another image leaves the old
//! image without that name; an image whose last name is removed is deleted (like `docker
//! rmi`), and blobs and rootfs directories no image refers to are deleted with it.

pub mod auth;
pub mod digest;
mod fetch;
pub mod gc;
mod import;
pub mod oci;
pub mod pull;
pub mod reference;
pub mod registry;
mod source;
pub mod unpack;

use digest::Digest;
use reference::Reference;
use rustix::fs::{FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use unpack::Limits;

/// An image platform, with the OCI spelling of os/architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The node's platform: linux and the OCI name of the CPU nanolet was built for.
    pub fn host() -> Platform {
        Platform {
            os: "linux".to_string(),
            architecture: normalize_arch(std::env::consts::ARCH).to_string(),
            variant: None,
        }
    }

    /// Whether an image built for `os/architecture/variant` runs here. A missing variant on
    /// either side matches any variant.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == normalize_arch(architecture)
            && match (&self.variant, variant) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Rust/uname CPU names to OCI's (`GOARCH`) names.
fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What the runtime needs from the image config to build a container's process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
}

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalized references: `docker.io/library/busybox:latest`.
    pub names: Vec<String>,
    pub manifest_digest: Digest,
    /// The image ID.
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Bytes of the config and the (compressed) layers.
    pub size: u64,
}

#[derive(Debug)]
pub enum Error {
    /// A file operation in the store failed.
    Store {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    Reference(reference::Error),
    /// The import source is not something we can import.
    Source {
        path: PathBuf,
        reason: String,
    },
    /// A blob failed verification or could not be copied.
    Blob {
        image: String,
        object: String,
        source: digest::Error,
    },
    /// A document (index, manifest, config) is invalid.
    Document {
        image: String,
        object: String,
        source: oci::Error,
    },
    /// The image is structurally invalid or unsupported.
    Invalid {
        image: String,
        reason: String,
    },
    /// No manifest for the node's platform.
    Platform {
        image: String,
        want: String,
    },
    /// A layer could not be unpacked (`layer` is `None` when the rootfs itself failed).
    Unpack {
        image: String,
        layer: Option<Digest>,
        source: unpack::Error,
    },
    NotFound {
        reference: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Store { path, op, source } => {
                write!(f, "image store {}: {op}: {source}", path.display())
            }
            Error::Reference(e) => e.fmt(f),
            Error::Source { path, reason } => write!(f, "import {}: {reason}", path.display()),
            Error::Blob {
                image,
                object,
                source,
            } => write!(f, "image {image}: {object}: {source}"),
            Error::Document {
                image,
                object,
                source,
            } => {
                write!(f, "image {image}: {object}: {source}")
            }
            Error::Invalid { image, reason } => write!(f, "image {image}: {reason}"),
            Error::Platform { image, want } => {
                write!(f, "image {image}: no manifest for platform {want}")
            }
            Error::Unpack {
                image,
                layer: Some(layer),
                source,
            } => write!(f, "image {image}: layer {layer}: unpack: {source}"),
            Error::Unpack {
                image,
                layer: None,
                source,
            } => write!(f, "image {image}: unpack: {source}"),
            Error::NotFound { reference } => write!(f, "image {reference:?}: not found"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Store { source, .. } => Some(source),
            Error::Reference(e) => Some(e),
            Error::Blob { source, .. } => Some(source),
            Error::Document { source, .. } => Some(source),
            Error::Unpack { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn store_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(io::Error) -> Error + 'a {
    move |source| Error::Store {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// `index.json` of the store.
#[derive(Default, Serialize, Deserialize)]
struct Records {
    images: Vec<Image>,
}

pub struct ImageStore {
    root: PathBuf,
    limits: Limits,
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, Error> {
        for dir in ["blobs/sha256", "rootfs", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(store_err(&p, "create directory"))?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            limits: Limits::default(),
        };
        store.remove_stale_temporaries()?;
        Ok(store)
    }

    /// Deletes what crashed imports and unpacks left behind. Every writer holds the lock,
    /// so holding it exclusively means no temporary is in use; if it is held, skip.
    fn remove_stale_temporaries(&self) -> Result<(), Error> {
        let Ok(_lock) = self.lock(FlockOperation::NonBlockingLockExclusive) else {
            return Ok(());
        };
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(store_err(&tmp, "read directory"))? {
            let entry = entry.map_err(store_err(&tmp, "read directory"))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&path)?;
            } else {
                fs::remove_file(&path).map_err(store_err(&path, "remove"))?;
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs).map_err(store_err(&rootfs, "read directory"))? {
            let entry = entry.map_err(store_err(&rootfs, "read directory"))?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Replaces the default unpack limits.
    pub fn with_limits(mut self, limits: Limits) -> ImageStore {
        self.limits = limits;
        self
    }

    /// Imports every image in an OCI layout directory or a tar archive (OCI archive or
    /// `docker save`). Importing the same image again only merges its names.
    pub fn import_path(&self, path: &Path, platform: &Platform) -> Result<Vec<Image>, Error> {
        let _lock = self.lock(FlockOperation::LockExclusive)?;
        import::import_path(self, path, platform)
    }

    /// Imports each entry of `dir` (hidden entries skipped), in name order; one bad
    /// archive never stops the others.
    pub fn import_dir(
        &self,
        dir: &Path,
        platform: &Platform,
    ) -> Vec<(PathBuf, Result<Vec<Image>, Error>)> {
        let entries = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => return vec![(dir.to_path_buf(), Err(store_err(dir, "read directory")(e)))],
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let r = self.import_path(&p, platform);
                (p, r)
            })
            .collect()
    }

    pub fn list(&self) -> Result<Vec<Image>, Error> {
        Ok(self.read_records()?.images)
    }

    /// Finds an image by normalized name (`busybox` → `docker.io/library/busybox:latest`),
    /// by `name@digest` (manifest digest, same repository), or by manifest or config
    /// digest (`sha256:…` or the bare 64-hex image ID).
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, Error> {
        let images = self.read_records()?.images;
        Ok(find(&images, reference)?.map(|i| images[i].clone()))
    }

    /// The image's unpacked rootfs, unpacked on first use. Callers must treat it as
    /// read-only: it is shared by every container of the image.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf, Error> {
        let dir = self.rootfs_dir(&image.config_digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let _lock = self.lock(FlockOperation::LockShared)?;
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.new_tmp_rootfs(&image.config_digest)?;
        let result = self
            .unpack_into(image, &tmp)
            .and_then(|()| self.commit_rootfs(&tmp, &dir));
        if let Err(e) = result {
            // Best effort: the unpack error is the one to report.
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        Ok(dir)
    }

    /// The image's rootfs if it is unpacked; never unpacks (the agent's way in: unpacking
    /// blocks and uses a thread, so the agent has a child process run
    /// [`ImageStore::rootfs`]).
    pub fn unpacked_rootfs(&self, image: &Image) -> Option<PathBuf> {
        Some(self.rootfs_dir(&image.config_digest)).filter(|dir| dir.is_dir())
    }

    /// Removes a name; an image left without names (or removed by digest) is deleted, with
    /// the blobs and rootfs no other image uses.
    pub fn remove(&self, reference: &str) -> Result<(), Error> {
        let _lock = self.lock(FlockOperation::LockExclusive)?;
        let mut records = self.read_records()?;
        let Some(i) = find(&records.images, reference)? else {
            return Err(Error::NotFound {
                reference: reference.to_string(),
            });
        };
        let by_name = Reference::parse(reference)
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| r.to_string())
            .filter(|n| records.images[i].names.contains(n));
        match by_name {
            Some(name) => {
                records.images[i].names.retain(|n| *n != name);
                if records.images[i].names.is_empty() {
                    records.images.remove(i);
                }
            }
            None => {
                records.images.remove(i);
            }
        }
        self.write_records(&records)?;
        self.collect_garbage(&records)
    }

    // ---- internals shared with import.rs ----------------------------------------------

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn rootfs_dir(&self, config: &Digest) -> PathBuf {
        self.root.join("rootfs").join(config.hex())
    }

    /// An empty directory (mode 0755) beside the final rootfs, to unpack into; removed
    /// by the caller on failure, else by [`ImageStore::open`] after a crash.
    fn new_tmp_rootfs(&self, config: &Digest) -> Result<PathBuf, Error> {
        let tmp =
            self.root
                .join("rootfs")
                .join(format!(".tmp-{}-{}", config.hex(), std::process::id()));
        remove_tree(&tmp)?;
        fs::create_dir(&tmp).map_err(store_err(&tmp, "create directory"))?;
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(store_err(&tmp, "chmod"))?;
        Ok(tmp)
    }

    /// Renames a fully unpacked `tmp` to its final name `dir`, its files on disk first: a
    /// power cut must not leave a rootfs of empty files under the final name (ext4 writes
    /// new files' data late). One `syncfs` instead of an fsync per file and directory.
    fn commit_rootfs(&self, tmp: &Path, dir: &Path) -> Result<(), Error> {
        sync_fs(tmp)?;
        match fs::rename(tmp, dir) {
            Ok(()) => dir.parent().map_or(Ok(()), sync_dir),
            // Another process finished first: use its copy.
            Err(_) if dir.is_dir() => remove_tree(tmp),
            Err(e) => Err(store_err(dir, "rename unpacked rootfs")(e)),
        }
    }

    fn lock(&self, op: FlockOperation) -> Result<fs::File, Error> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(store_err(&path, "open lock"))?;
        rustix::fs::flock(&file, op).map_err(|e| store_err(&path, "lock")(e.into()))?;
        Ok(file)
    }

    fn read_records(&self) -> Result<Records, Error> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                store_err(&path, "parse")(io::Error::new(io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(store_err(&path, "read")(e)),
        }
    }

    /// Temp file, fsync, rename, fsync the directory.
    fn write_records(&self, records: &Records) -> Result<(), Error> {
        let path = self.root.join("index.json");
        let tmp = self
            .root
            .join(format!("index.json.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(records)
            .map_err(|e| store_err(&path, "encode")(io::Error::other(e)))?;
        let mut f = fs::File::create(&tmp).map_err(store_err(&tmp, "create"))?;
        f.write_all(&bytes).map_err(store_err(&tmp, "write"))?;
        f.sync_all().map_err(store_err(&tmp, "fsync"))?;
        fs::rename(&tmp, &path).map_err(store_err(&path, "rename"))?;
        sync_dir(&self.root)
    }

    /// Adds `image` (merging with a record of the same manifest digest) and takes its
    /// names away from any other record.
    fn record(&self, image: &Image) -> Result<Image, Error> {
        let mut records = self.read_records()?;
        for other in records.images.iter_mut() {
            if other.manifest_digest != image.manifest_digest {
                other.names.retain(|n| !image.names.contains(n));
            }
        }
        let merged = match records
            .images
            .iter_mut()
            .find(|i| i.manifest_digest == image.manifest_digest)
        {
            Some(existing) => {
                for n in &image.names {
                    if !existing.names.contains(n) {
                        existing.names.push(n.clone());
                    }
                }
                existing.clone()
            }
            None => {
                records.images.push(image.clone());
                image.clone()
            }
        };
        self.write_records(&records)?;
        Ok(merged)
    }

    fn layers_of(&self, image: &Image) -> Result<Vec<Digest>, Error> {
        let path = self.blob_path(&image.manifest_digest);
        let bytes = fs::read(&path).map_err(store_err(&path, "read manifest"))?;
        let manifest = oci::Manifest::parse(&bytes).map_err(|source| Error::Document {
            image: display_name(image),
            object: format!("manifest {}", image.manifest_digest),
            source,
        })?;
        Ok(manifest.layers.into_iter().map(|l| l.digest).collect())
    }

    fn unpack_into(&self, image: &Image, dir: &Path) -> Result<(), Error> {
        let name = display_name(image);
        let unpack_err = |layer: Option<&Digest>| {
            let image = name.clone();
            let layer = layer.cloned();
            move |source| Error::Unpack {
                image,
                layer,
                source,
            }
        };
        let mut unpacker = unpack::Unpacker::new(dir, self.limits).map_err(unpack_err(None))?;
        for layer in self.layers_of(image)? {
            let path = self.blob_path(&layer);
            let file = fs::File::open(&path).map_err(store_err(&path, "open layer"))?;
            // The store keeps no media type: the unpacker sniffs gzip, zstd or none.
            unpacker
                .apply_blob(io::BufReader::new(file))
                .map_err(unpack_err(Some(&layer)))?;
        }
        Ok(())
    }

    /// Deletes blobs and rootfs directories that no record refers to.
    fn collect_garbage(&self, records: &Records) -> Result<(), Error> {
        let mut keep: HashSet<String> = HashSet::new();
        for image in &records.images {
            keep.insert(image.manifest_digest.hex().to_string());
            keep.insert(image.config_digest.hex().to_string());
            for l in self.layers_of(image)? {
                keep.insert(l.hex().to_string());
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(store_err(&blobs, "read directory"))? {
            let entry = entry.map_err(store_err(&blobs, "read directory"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                fs::remove_file(entry.path()).map_err(store_err(&entry.path(), "remove blob"))?;
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs).map_err(store_err(&rootfs, "read directory"))? {
            let entry = entry.map_err(store_err(&rootfs, "read directory"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !keep.contains(&name) {
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// The index of the image `reference` names, if any.
fn find(images: &[Image], reference: &str) -> Result<Option<usize>, Error> {
    let digest = Digest::parse(reference)
        .or_else(|_| Digest::from_hex(reference))
        .ok();
    if let Some(d) = digest {
        return Ok(images
            .iter()
            .position(|i| i.manifest_digest == d || i.config_digest == d));
    }
    let r = Reference::parse(reference).map_err(Error::Reference)?;
    if let Some(d) = &r.digest {
        let repo = r.repository();
        let same_repo =
            |n: &String| Reference::parse(n).is_ok_and(|other| other.repository() == repo);
        return Ok(images
            .iter()
            .position(|i| i.manifest_digest == *d && i.names.iter().any(same_repo)));
    }
    let name = r.to_string();
    Ok(images.iter().position(|i| i.names.contains(&name)))
}

/// How errors name an image: its first name, else its manifest digest.
fn display_name(image: &Image) -> String {
    image
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| image.manifest_digest.to_string())
}

/// Writes out the whole filesystem that holds `dir` (`syncfs`).
fn sync_fs(dir: &Path) -> Result<(), Error> {
    let fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| store_err(dir, "open directory")(e.into()))?;
    rustix::fs::syncfs(&fd).map_err(|e| store_err(dir, "syncfs")(e.into()))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    let fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| store_err(dir, "open directory")(e.into()))?;
    rustix::fs::fsync(&fd).map_err(|e| store_err(dir, "fsync directory")(e.into()))
}

fn remove_tree(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(store_err(path, "remove")(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
