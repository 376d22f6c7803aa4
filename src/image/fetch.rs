//! `fetch`: the layers of a pulled image, downloaded concurrently and unpacked in one pass.
//!
//! Owns the layer step of a registry pull. Up to [`MAX_CONCURRENT_DOWNLOADS`] threads
//! download the layers, earliest first, each into its own temp blob while hashing it (size
//! and sha256 against the descriptor). Meanwhile each layer, in order, is read from its
//! temp blob *as it grows* and decompressed once (on an "inflate" thread, in chunks of 128
//! KiB), and this thread hashes the uncompressed stream for the config's `diff_id` and
//! unpacks it into a temp rootfs, all in the same pass: layer N is unpacked while layers
//! N+1… still download.
//!
//! ```text
//!  download threads (≤ 3)                      inflate thread     this thread, layers in order
//!  GET blobs/<d> ─size+sha256─► tmp/blob-P-N ──pread as it grows──► gunzip/unzstd ─┬► sha256 = diff_id?
//!                     ▲ Range resume, retries                                      └► unpack into rootfs/.tmp-*
//!                     └ verified + fsynced                     every digest and diff_id matched
//!                                                   ─► rename blobs ─► documents ─► rename rootfs ─► record
//! ```
//!
//! Threads: this code runs only in the short-lived pull process (`nanolet internal-pull`,
//! `nanolet pull`), never in the agent, whose one-thread rule is about its executor; the
//! threads end before [`import_pulled`] returns (scoped).
//!
//! Must never: rename a blob or rootfs into the store before every size, digest and
//! diff_id of the image matched (bytes of a layer may reach the temp rootfs before its
//! digest is known: the temp rootfs is deleted on any failure), or hold a layer in memory.
//! When a layer both fails to unpack and fails its digest, the digest error is reported:
//! a corrupted blob is named as such, not as a broken gzip stream.

use super::digest::{self, Digest, Verifier};
use super::import::{Importer, image_config};
use super::oci::{Compression, Descriptor};
use super::pull::Progress;
use super::registry::Registry;
use super::source::Source;
use super::unpack::{self, Unpacker, decompress_on_thread};
use super::{Error, Image, ImageStore, Platform, remove_tree, store_err};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Layers downloaded at once (docker's and containerd's default).
pub const MAX_CONCURRENT_DOWNLOADS: usize = 3;

/// Imports the image whose manifest `desc` names: documents from `source`, layers from
/// `registry`, under the store's exclusive lock. The rootfs is unpacked on the way unless
/// the store already has it. An image already complete in the store only gets `names`.
#[allow(clippy::too_many_arguments)]
pub(super) fn import_pulled(
    store: &ImageStore,
    source: &dyn Source,
    registry: &Registry,
    platform: &Platform,
    desc: &Descriptor,
    names: Vec<String>,
    progress: Progress<'_>,
) -> Result<Image, Error> {
    let _lock = store.lock(rustix::fs::FlockOperation::LockExclusive)?;
    let image = names
        .first()
        .cloned()
        .unwrap_or_else(|| desc.digest.to_string());
    let importer = Importer {
        store,
        source,
        platform,
        origin: image.clone(),
    };
    if let Some(existing) = importer.known(&desc.digest)? {
        return store.record(&Image { names, ..existing });
    }
    let docs = importer.read_documents(&image, desc)?;
    let (manifest, config) = (&docs.manifest, &docs.config);
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        // Refuses media types we cannot read; the content itself is sniffed when unpacked.
        Compression::of_layer(&layer.media_type).map_err(|reason| Error::Invalid {
            image: image.clone(),
            reason: format!("layer {}: {reason}", layer.digest),
        })?;
        layers.push(Layer {
            digest: &layer.digest,
            size: layer.size,
            diff_id,
        });
    }
    let dir = store.rootfs_dir(&manifest.config.digest);
    let tmp_rootfs = match dir.is_dir() {
        true => None,
        false => Some(store.new_tmp_rootfs(&manifest.config.digest)?),
    };
    let result = fetch_layers(
        store,
        registry,
        &image,
        &layers,
        tmp_rootfs.as_deref(),
        progress,
    )
    .and_then(|()| {
        importer.put_documents(&image, &docs)?;
        match &tmp_rootfs {
            Some(tmp) => store.commit_rootfs(tmp, &dir),
            None => Ok(()),
        }
    });
    if let Err(e) = result {
        if let Some(tmp) = &tmp_rootfs {
            // Best effort: the pull's error is the one to report.
            let _ = remove_tree(tmp);
        }
        return Err(e);
    }
    let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
    store.record(&Image {
        names,
        manifest_digest: desc.digest.clone(),
        config_digest: manifest.config.digest.clone(),
        config: image_config(config.config.clone().unwrap_or_default()),
        size,
    })
}

/// One layer of the manifest.
struct Layer<'a> {
    digest: &'a Digest,
    size: u64,
    diff_id: &'a Digest,
}

/// Downloads what the store lacks, verifies every layer's digest and diff_id, unpacks them
/// into `rootfs` (when given) and renames the new blobs into the store.
fn fetch_layers(
    store: &ImageStore,
    registry: &Registry,
    image: &str,
    layers: &[Layer<'_>],
    rootfs: Option<&Path>,
    progress: Progress<'_>,
) -> Result<(), Error> {
    let mut blobs: Vec<Blob> = Vec::new();
    let result = (|| {
        for layer in layers {
            if !blobs.iter().any(|b| b.digest == *layer.digest) {
                blobs.push(Blob::open(store, layer)?);
            }
        }
        let pending: Vec<&Blob> = blobs.iter().filter(|b| b.tmp.is_some()).collect();
        let next = AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let mut spawned = 0;
            for _ in 0..pending.len().min(MAX_CONCURRENT_DOWNLOADS) {
                let worker = std::thread::Builder::new()
                    .name("download".into())
                    .spawn_scoped(scope, || {
                        while let Some(blob) = pending.get(next.fetch_add(1, Ordering::Relaxed)) {
                            blob.download(registry, &cancel, progress);
                        }
                    });
                match worker {
                    Ok(_) => spawned += 1,
                    // Fewer threads only means less overlap; none means no download at all.
                    Err(e) if spawned == 0 => {
                        let tmp = store.tmp_dir();
                        return Err(store_err(&tmp, "start a download thread")(e));
                    }
                    Err(e) => log::warn!("image {image}: a download thread: {e}"),
                }
            }
            let unpacked = unpack_layers(store, image, layers, &blobs, rootfs);
            if unpacked.is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
            unpacked
        })?;
        for blob in &blobs {
            if let Some(tmp) = &blob.tmp {
                let path = store.blob_path(&blob.digest);
                fs::rename(tmp, &path).map_err(store_err(&path, "rename blob"))?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for tmp in blobs.iter().filter_map(|b| b.tmp.as_ref()) {
            // Best effort: the pull's error is the one to report.
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

/// Applies the layers in order, each read from its blob as it is downloaded.
fn unpack_layers(
    store: &ImageStore,
    image: &str,
    layers: &[Layer<'_>],
    blobs: &[Blob],
    rootfs: Option<&Path>,
) -> Result<(), Error> {
    let mut unpacker = match rootfs {
        Some(dir) => Some(
            Unpacker::new(dir, store.limits).map_err(|source| Error::Unpack {
                image: image.to_string(),
                layer: None,
                source,
            })?,
        ),
        None => None,
    };
    for layer in layers {
        let Some(blob) = blobs.iter().find(|b| b.digest == *layer.digest) else {
            continue; // Invariant: fetch_layers opened a blob for every layer.
        };
        let blob_err = |source| Error::Blob {
            image: image.to_string(),
            object: format!("layer {}", layer.digest),
            source,
        };
        let applied = apply(blob, layer, unpacker.as_mut());
        // The blob's own verdict first, whatever the unpack said.
        blob.wait().map_err(blob_err)?;
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(blob_err(e)),
            Err(source) => {
                return Err(Error::Unpack {
                    image: image.to_string(),
                    layer: Some(layer.digest.clone()),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Decompresses one layer from its blob (on a thread of its own, so inflating overlaps with
/// hashing and writing files), unpacks it (or only reads it, when the rootfs exists
/// already) and checks its diff_id: `Err` when unpacking failed, `Ok(Err)` when the
/// uncompressed stream is not the one the config names.
fn apply(
    blob: &Blob,
    layer: &Layer<'_>,
    unpacker: Option<&mut Unpacker>,
) -> Result<Result<(), digest::Error>, unpack::Error> {
    let growing = BufReader::with_capacity(64 * 1024, Growing { blob, pos: 0 });
    let consume = |layer_tar: &mut dyn Read| {
        let mut hashed = Hashing {
            inner: layer_tar,
            verifier: Verifier::new(),
        };
        match unpacker {
            // Reads to the end of the stream: the diff_id covers every byte.
            Some(u) => u.apply_layer(&mut hashed)?,
            None => {
                io::copy(&mut hashed, &mut io::sink()).map_err(unpack::Error::Read)?;
            }
        }
        Ok(hashed.verifier.verify(layer.diff_id, None))
    };
    decompress_on_thread(growing, consume).map_err(unpack::Error::Read)?
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    verifier: Verifier,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.verifier.update(&buf[..n]);
        Ok(n)
    }
}

/// How far a blob's download got: one state per blob, shared by its download thread
/// (which writes) and this thread (which reads behind it).
enum Fill {
    /// This many bytes are written; more may come.
    Growing(u64),
    /// Complete, verified and fsynced (or already in the store).
    Done(u64),
    /// The download failed; the error until [`Blob::wait`] takes it.
    Failed(Option<digest::Error>),
}

/// A layer blob: already in the store, or being downloaded into `tmp`.
struct Blob {
    digest: Digest,
    size: u64,
    /// The temp blob being written; `None` for a blob the store has.
    tmp: Option<PathBuf>,
    file: File,
    fill: Mutex<Fill>,
    grown: Condvar,
}

impl Blob {
    fn open(store: &ImageStore, layer: &Layer<'_>) -> Result<Blob, Error> {
        let stored = store.blob_path(layer.digest);
        let (tmp, file, fill) = match File::open(&stored) {
            // Verified when it entered the store; its diff_id is checked again on the way.
            Ok(file) => (None, file, Fill::Done(layer.size)),
            Err(_) => {
                static COUNTER: AtomicU64 = AtomicU64::new(0);
                let tmp = store.tmp_dir().join(format!(
                    "blob-{}-{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed)
                ));
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(store_err(&tmp, "create"))?;
                (Some(tmp), file, Fill::Growing(0))
            }
        };
        Ok(Blob {
            digest: layer.digest.clone(),
            size: layer.size,
            tmp,
            file,
            fill: Mutex::new(fill),
            grown: Condvar::new(),
        })
    }

    fn fill(&self) -> MutexGuard<'_, Fill> {
        // Poisoned only if a thread panicked while holding it; the state is still whole.
        self.fill.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, fill: Fill) {
        *self.fill() = fill;
        self.grown.notify_all();
    }

    /// Downloads the blob into its temp file (on a download thread), then records the
    /// outcome. A thread that dies mid-way still leaves `Failed`, so no reader waits forever.
    fn download(&self, registry: &Registry, cancel: &AtomicBool, progress: Progress<'_>) {
        struct Guard<'a>(&'a Blob);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                let mut fill = self.0.fill();
                if matches!(*fill, Fill::Growing(_)) {
                    *fill = Fill::Failed(None);
                    self.0.grown.notify_all();
                }
            }
        }
        let _guard = Guard(self);
        let outcome = self.copy(registry, cancel, progress);
        self.set(match outcome {
            Ok(()) => Fill::Done(self.size),
            Err(e) => Fill::Failed(Some(e)),
        });
    }

    fn copy(
        &self,
        registry: &Registry,
        cancel: &AtomicBool,
        progress: Progress<'_>,
    ) -> Result<(), digest::Error> {
        let mut reader = ProgressReader {
            inner: registry.blob(&self.digest, self.size),
            digest: &self.digest,
            done: 0,
            total: self.size,
            reported: 0,
            progress,
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut verifier = Verifier::new();
        let mut out = &self.file;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(digest::Error::Io(io::Error::other("pull cancelled")));
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(digest::Error::Io(e)),
            };
            let chunk = &buf[..n];
            verifier.update(chunk);
            if verifier.len() > self.size {
                return Err(digest::Error::SizeMismatch {
                    want: self.size,
                    got: verifier.len(),
                });
            }
            out.write_all(chunk).map_err(digest::Error::Io)?;
            let written = verifier.len();
            self.set(Fill::Growing(written));
        }
        verifier.verify(&self.digest, Some(self.size))?;
        self.file.sync_all().map_err(digest::Error::Io)
    }

    /// Waits until the download is over: `Err` with its error if it failed.
    fn wait(&self) -> Result<(), digest::Error> {
        let mut fill = self.fill();
        loop {
            match &mut *fill {
                Fill::Growing(_) => {
                    fill = self.grown.wait(fill).unwrap_or_else(|e| e.into_inner());
                }
                Fill::Done(_) => return Ok(()),
                Fill::Failed(e) => {
                    return Err(e.take().unwrap_or_else(|| {
                        digest::Error::Io(io::Error::other("download failed"))
                    }));
                }
            }
        }
    }
}

/// Reads a blob behind its download: blocks until more is written, ends at `Done`.
struct Growing<'a> {
    blob: &'a Blob,
    pos: u64,
}

impl Read for Growing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = {
            let mut fill = self.blob.fill();
            loop {
                match *fill {
                    Fill::Growing(n) | Fill::Done(n) if n > self.pos => break n,
                    Fill::Done(_) => return Ok(0),
                    Fill::Growing(_) => {
                        fill = self
                            .blob
                            .grown
                            .wait(fill)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    Fill::Failed(_) => return Err(io::Error::other("layer download failed")),
                }
            }
        };
        let want = usize::try_from(available - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.blob.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "layer blob shorter than written",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reports a layer's progress about every 1% (and at the end).
struct ProgressReader<'a, R> {
    inner: R,
    digest: &'a Digest,
    done: u64,
    total: u64,
    reported: u64,
    progress: Progress<'a>,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let step = (self.total / 100).max(64 * 1024);
        if self.done == self.total || self.done - self.reported >= step {
            if self.reported != self.done {
                (self.progress)(self.digest, self.done, self.total);
            }
            self.reported = self.done;
        }
        Ok(n)
    }
}
