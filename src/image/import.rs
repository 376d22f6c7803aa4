//! Import of images into the store from an OCI image layout directory, an OCI archive
//! (a tar of a layout) or a `docker save` archive (`manifest.json` with Config/RepoTags/
//! Layers), selecting the node's platform from an image index.
//!
//! Owns: reading the source, verifying every blob while it is copied into the store
//! (size and sha256 of the blob; sha256 of the uncompressed layer against the config's
//! `rootfs.diff_ids`), and recording the image. Plain and gzip layers are decompressed
//! and hashed as they stream in; zstd layers are hashed by re-reading the written temp
//! blob through the unpacker's zstd reader (ruzstd decodes by pulling from a reader, it
//! has no push decoder), still before the rename. Must never: put an unverified blob under
//! `blobs/`, hold a layer in memory (JSON documents, bounded by
//! [`oci::MAX_DOCUMENT_SIZE`], are read whole), or follow a path out of the source.
//!
//! ```text
//! source ──read──► tmp/blob-N ──verify size+digest+diff_id──► fsync ──rename──► blobs/sha256/<hex>
//!                        └─(zstd) re-read, decode, verify diff_id─┘
//! ```

use super::digest::{self, Digest, HashingWriter, Verifier};
use super::oci::{self, Compression, Descriptor, Index, Manifest};
use super::reference::Reference;
use super::source::{DirSource, Source, TarSource};
use super::unpack::{LayerCompression, ZstdReader};
use super::{Error, Image, ImageConfig, ImageStore, Platform};
use log::{info, warn};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) fn import_path(
    store: &ImageStore,
    path: &Path,
    platform: &Platform,
) -> Result<Vec<Image>, Error> {
    let src_err = |reason: String| Error::Source {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| src_err(e.to_string()))?;
    let source: Box<dyn Source> = if meta.is_dir() {
        Box::new(DirSource {
            dir: path.to_path_buf(),
        })
    } else {
        let mut magic = [0u8; 2];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|e| src_err(e.to_string()))?;
        if n == 2 && magic == [0x1f, 0x8b] {
            return Err(src_err(
                "compressed archive: only plain tar archives are supported (gunzip it first)"
                    .into(),
            ));
        }
        Box::new(TarSource::open(path).map_err(|e| src_err(format!("read archive: {e}")))?)
    };
    let mut importer = Importer {
        store,
        source: source.as_ref(),
        platform,
        origin: path.display().to_string(),
    };
    let has = |p: &str| {
        source
            .open(p)
            .map(|r| r.is_some())
            .map_err(|e| src_err(e.to_string()))
    };
    let images = if has("manifest.json")? {
        importer.import_docker_archive()?
    } else if has("index.json")? {
        importer.import_oci_layout()?
    } else {
        return Err(src_err(
            "neither an OCI image layout (index.json) nor a docker archive (manifest.json)".into(),
        ));
    };
    for image in &images {
        info!(
            "image {}: imported from {} ({})",
            image.names.join(", "),
            path.display(),
            image.manifest_digest.short()
        );
    }
    Ok(images)
}

pub(super) struct Importer<'a> {
    pub(super) store: &'a ImageStore,
    pub(super) source: &'a dyn Source,
    pub(super) platform: &'a Platform,
    /// The source path, naming images that have no name.
    pub(super) origin: String,
}

/// How many index levels we follow (layout index → image index → manifest).
const MAX_INDEX_DEPTH: usize = 2;

impl Importer<'_> {
    fn import_oci_layout(&mut self) -> Result<Vec<Image>, Error> {
        let origin = self.origin.clone();
        let bytes = self.read_document(&origin, "index.json", "index.json", None)?;
        let index = Index::parse(&bytes).map_err(|source| Error::Document {
            image: origin.clone(),
            object: "index.json".into(),
            source,
        })?;
        // Several descriptors may name the same manifest: merge their names.
        let mut chosen: Vec<(Descriptor, Vec<String>)> = Vec::new();
        for d in &index.manifests {
            let names = names_from_annotations(d);
            let label = names.first().cloned().unwrap_or_else(|| origin.clone());
            let Some(m) = self.select(&label, d, 0)? else {
                continue;
            };
            match chosen.iter_mut().find(|(c, _)| c.digest == m.digest) {
                Some((_, existing)) => existing.extend(names),
                None => chosen.push((m, names)),
            }
        }
        let mut images = Vec::new();
        for (m, names) in chosen {
            match self.import_manifest(&m, names) {
                Ok(image) => images.push(image),
                // A manifest listed without a platform turned out (from its config) to be
                // for another platform: one of its siblings may be ours.
                Err(Error::Platform { .. }) if m.platform.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        if images.is_empty() {
            return Err(Error::Platform {
                image: origin,
                want: self.platform.to_string(),
            });
        }
        Ok(images)
    }

    /// The manifest for our platform reachable from `d`, if any.
    fn select(
        &self,
        image: &str,
        d: &Descriptor,
        depth: usize,
    ) -> Result<Option<Descriptor>, Error> {
        if let Some(p) = &d.platform
            && !self
                .platform
                .matches(&p.os, &p.architecture, p.variant.as_deref())
        {
            return Ok(None);
        }
        if d.is_manifest() {
            return Ok(Some(d.clone()));
        }
        if !d.is_index() {
            warn!(
                "image {image}: descriptor {} of media type {:?}: skipped",
                d.digest.short(),
                d.media_type
            );
            return Ok(None);
        }
        if depth >= MAX_INDEX_DEPTH {
            return Err(Error::Invalid {
                image: image.to_string(),
                reason: "image indexes nested too deep".into(),
            });
        }
        let object = format!("index {}", d.digest);
        let bytes = self.read_document(image, &object, &blob_path(&d.digest), Some(d))?;
        let index = Index::parse(&bytes).map_err(|source| Error::Document {
            image: image.to_string(),
            object,
            source,
        })?;
        for child in &index.manifests {
            if let Some(m) = self.select(image, child, depth + 1)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    fn import_manifest(&self, desc: &Descriptor, names: Vec<String>) -> Result<Image, Error> {
        let image = names
            .first()
            .cloned()
            .unwrap_or_else(|| self.origin.clone());
        // Already imported (and verified then): only the names may be new.
        if let Some(existing) = self.known(&desc.digest)? {
            return self.store.record(&Image { names, ..existing });
        }
        let docs = self.read_documents(&image, desc)?;
        let (manifest, config) = (&docs.manifest, &docs.config);
        let mut size = manifest.config.size;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let compression =
                Compression::of_layer(&layer.media_type).map_err(|reason| Error::Invalid {
                    image: image.clone(),
                    reason: format!("layer {}: {reason}", layer.digest),
                })?;
            let object = format!("layer {}", layer.digest);
            let reader = self.open_blob(&image, &object, &blob_path(&layer.digest))?;
            self.put_layer(
                reader,
                Some((&layer.digest, layer.size)),
                Some(compression),
                diff_id,
            )
            .map_err(|source| Error::Blob {
                image: image.clone(),
                object,
                source,
            })?;
            size += layer.size;
        }
        self.put_documents(&image, &docs)?;
        self.store.record(&Image {
            names,
            manifest_digest: desc.digest.clone(),
            config_digest: manifest.config.digest.clone(),
            config: image_config(config.config.clone().unwrap_or_default()),
            size,
        })
    }

    fn import_docker_archive(&mut self) -> Result<Vec<Image>, Error> {
        let origin = self.origin.clone();
        let bytes = self.read_document(&origin, "manifest.json", "manifest.json", None)?;
        let entries =
            oci::parse_docker_archive_manifest(&bytes).map_err(|source| Error::Document {
                image: origin.clone(),
                object: "manifest.json".into(),
                source,
            })?;
        let mut images = Vec::new();
        for entry in entries {
            let names: Vec<String> = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| normalize_name(t))
                .collect();
            let image = names.first().cloned().unwrap_or_else(|| origin.clone());
            let config_object = format!("config {}", entry.config);
            let config_bytes = self.read_document(&image, &config_object, &entry.config, None)?;
            let config_digest = Digest::of(&config_bytes);
            let config_object = format!("config {config_digest}");
            let config =
                self.check_config(&image, &config_object, &config_bytes, entry.layers.len())?;
            let mut layers = Vec::new();
            for (path, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
                let object = format!("layer {path}");
                let reader = self.open_blob(&image, &object, path)?;
                let (digest, size, compression) = self
                    .put_layer(reader, None, None, diff_id)
                    .map_err(|source| Error::Blob {
                        image: image.clone(),
                        object,
                        source,
                    })?;
                layers.push(descriptor(compression.layer_media_type(), digest, size));
            }
            let size = config_bytes.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>();
            let config_desc = descriptor(
                oci::MEDIA_TYPE_OCI_CONFIG,
                config_digest.clone(),
                config_bytes.len() as u64,
            );
            let manifest = Manifest::new(config_desc, layers);
            let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| Error::Invalid {
                image: image.clone(),
                reason: format!("encode manifest: {e}"),
            })?;
            let manifest_digest = Digest::of(&manifest_bytes);
            self.put_document(&image, &config_object, &config_bytes)?;
            self.put_document(
                &image,
                &format!("manifest {manifest_digest}"),
                &manifest_bytes,
            )?;
            images.push(self.store.record(&Image {
                names,
                manifest_digest,
                config_digest,
                config: image_config(config.config.unwrap_or_default()),
                size,
            })?);
        }
        Ok(images)
    }

    /// Reads the manifest `desc` names and its config, each verified against its descriptor;
    /// the config is checked as [`Importer::check_config`] says.
    pub(super) fn read_documents(
        &self,
        image: &str,
        desc: &Descriptor,
    ) -> Result<Documents, Error> {
        let manifest_object = format!("manifest {}", desc.digest);
        let manifest_bytes = self.read_document(
            image,
            &manifest_object,
            &blob_path(&desc.digest),
            Some(desc),
        )?;
        let manifest = Manifest::parse(&manifest_bytes).map_err(|source| Error::Document {
            image: image.to_string(),
            object: manifest_object.clone(),
            source,
        })?;
        let config_object = format!("config {}", manifest.config.digest);
        let config_bytes = self.read_document(
            image,
            &config_object,
            &blob_path(&manifest.config.digest),
            Some(&manifest.config),
        )?;
        let config =
            self.check_config(image, &config_object, &config_bytes, manifest.layers.len())?;
        Ok(Documents {
            manifest,
            manifest_object,
            manifest_bytes,
            config,
            config_object,
            config_bytes,
        })
    }

    /// Stores an image's config and manifest (after its layers: a manifest in the store means
    /// everything it names is there).
    pub(super) fn put_documents(&self, image: &str, docs: &Documents) -> Result<(), Error> {
        self.put_document(image, &docs.config_object, &docs.config_bytes)?;
        self.put_document(image, &docs.manifest_object, &docs.manifest_bytes)
    }

    /// Parses the config, checks its platform and that it has one diff_id per layer.
    pub(super) fn check_config(
        &self,
        image: &str,
        object: &str,
        bytes: &[u8],
        layers: usize,
    ) -> Result<oci::Config, Error> {
        let config = oci::Config::parse(bytes).map_err(|source| Error::Document {
            image: image.to_string(),
            object: object.to_string(),
            source,
        })?;
        if !self
            .platform
            .matches(&config.os, &config.architecture, config.variant.as_deref())
        {
            return Err(Error::Platform {
                image: image.to_string(),
                want: self.platform.to_string(),
            });
        }
        if config.rootfs.diff_ids.len() != layers {
            return Err(Error::Invalid {
                image: image.to_string(),
                reason: format!(
                    "{object}: {} diff_ids for {layers} layers",
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        Ok(config)
    }

    /// The recorded image with this manifest, if all its blobs are still in the store.
    pub(super) fn known(&self, manifest: &Digest) -> Result<Option<Image>, Error> {
        let records = self.store.read_records()?;
        let Some(image) = records
            .images
            .into_iter()
            .find(|i| i.manifest_digest == *manifest)
        else {
            return Ok(None);
        };
        let complete = self.store.layers_of(&image).is_ok_and(|layers| {
            layers
                .iter()
                .chain([&image.config_digest])
                .all(|d| self.store.blob_path(d).is_file())
        });
        Ok(complete.then_some(image))
    }

    fn open_blob(
        &self,
        image: &str,
        object: &str,
        path: &str,
    ) -> Result<Box<dyn Read + '_>, Error> {
        match self.source.open(path) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Error::Invalid {
                image: image.to_string(),
                reason: format!("{object}: {path} not found"),
            }),
            Err(e) => Err(Error::Blob {
                image: image.to_string(),
                object: object.to_string(),
                source: digest::Error::Io(e),
            }),
        }
    }

    /// Reads a small JSON document, verifying it against its descriptor when there is one.
    pub(super) fn read_document(
        &self,
        image: &str,
        object: &str,
        path: &str,
        desc: Option<&Descriptor>,
    ) -> Result<Vec<u8>, Error> {
        let blob_err = |source| Error::Blob {
            image: image.to_string(),
            object: object.to_string(),
            source,
        };
        if let Some(d) = desc
            && d.size > oci::MAX_DOCUMENT_SIZE
        {
            return Err(Error::Invalid {
                image: image.to_string(),
                reason: format!("{object}: larger than {} bytes", oci::MAX_DOCUMENT_SIZE),
            });
        }
        let reader = self.open_blob(image, object, path)?;
        let mut bytes = Vec::new();
        reader
            .take(oci::MAX_DOCUMENT_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| blob_err(digest::Error::Io(e)))?;
        if bytes.len() as u64 > oci::MAX_DOCUMENT_SIZE {
            return Err(Error::Invalid {
                image: image.to_string(),
                reason: format!("{object}: larger than {} bytes", oci::MAX_DOCUMENT_SIZE),
            });
        }
        if let Some(d) = desc {
            let mut v = Verifier::new();
            v.update(&bytes);
            v.verify(&d.digest, Some(d.size)).map_err(blob_err)?;
        }
        Ok(bytes)
    }

    /// Stores an already verified document under its digest.
    pub(super) fn put_document(
        &self,
        image: &str,
        object: &str,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let digest = Digest::of(bytes);
        self.put_blob(
            bytes,
            Some((&digest, bytes.len() as u64)),
            Some(Compression::None),
            None,
        )
        .map(|_| ())
        .map_err(|source| Error::Blob {
            image: image.to_string(),
            object: object.to_string(),
            source,
        })
    }

    /// Copies a layer into the store, verifying its digest (if known) and its diff_id. A
    /// layer already in the store is only re-checked against this diff_id.
    fn put_layer(
        &self,
        reader: impl Read,
        want: Option<(&Digest, u64)>,
        compression: Option<Compression>,
        diff_id: &Digest,
    ) -> Result<(Digest, u64, Compression), digest::Error> {
        if let Some((d, size)) = want
            && let Ok(file) = File::open(self.store.blob_path(d))
        {
            let copied = copy_verified(&file, io::sink(), None, compression, Some(diff_id))?;
            if copied.is_diff_id_pending {
                verify_zstd_diff_id(&file, diff_id)?;
            }
            return Ok((d.clone(), size, copied.compression));
        }
        self.put_blob(reader, want, compression, Some(diff_id))
    }

    /// Streams `reader` into a temp file in the store, verifies, fsyncs and renames it to
    /// `blobs/sha256/<hex>`. Returns the digest, size and detected compression.
    fn put_blob(
        &self,
        reader: impl Read,
        want: Option<(&Digest, u64)>,
        compression: Option<Compression>,
        diff_id: Option<&Digest>,
    ) -> Result<(Digest, u64, Compression), digest::Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.store.tmp_dir().join(format!(
            "blob-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(digest::Error::Io)?;
            let copied = copy_verified(reader, &file, want, compression, diff_id)?;
            if let Some(diff_id) = diff_id
                && copied.is_diff_id_pending
            {
                verify_zstd_diff_id(&file, diff_id)?;
            }
            file.sync_all().map_err(digest::Error::Io)?;
            fs::rename(&tmp, self.store.blob_path(&copied.digest)).map_err(digest::Error::Io)?;
            Ok((copied.digest, copied.size, copied.compression))
        })();
        if result.is_err() {
            // Best effort: the verification error is the one to report.
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// What [`copy_verified`] copied and verified.
struct Copied {
    digest: Digest,
    size: u64,
    compression: Compression,
    /// A zstd layer's diff_id was not checked while copying: the caller must check it
    /// from the written blob with [`verify_zstd_diff_id`] before keeping the blob.
    is_diff_id_pending: bool,
}

/// Copies `reader` to `out` while hashing it and, when `diff_id` is given, hashing its
/// decompressed content (except zstd's: see [`Copied::is_diff_id_pending`]).
/// `compression: None` sniffs gzip or zstd from the first bytes.
fn copy_verified(
    mut reader: impl Read,
    mut out: impl Write,
    want: Option<(&Digest, u64)>,
    compression: Option<Compression>,
    diff_id: Option<&Digest>,
) -> Result<Copied, digest::Error> {
    let mut head = [0u8; 4];
    let mut head_len = 0;
    if compression.is_none() {
        head_len = read_head(&mut reader, &mut head).map_err(digest::Error::Io)?;
    }
    let c = compression.unwrap_or_else(|| match LayerCompression::sniff(&head[..head_len]) {
        LayerCompression::None => Compression::None,
        LayerCompression::Gzip => Compression::Gzip,
        LayerCompression::Zstd => Compression::Zstd,
    });
    let mut reader = (&head[..head_len]).chain(reader);
    let mut buf = vec![0u8; 64 * 1024];
    let mut blob = Verifier::new();
    let mut diff = diff_id.map(|_| DiffHasher::new(c));
    let mut diff_err = None;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(digest::Error::Io(e)),
        };
        let chunk = &buf[..n];
        blob.update(chunk);
        if let Some((_, size)) = want
            && blob.len() > size
        {
            return Err(digest::Error::SizeMismatch {
                want: size,
                got: blob.len(),
            });
        }
        out.write_all(chunk).map_err(digest::Error::Io)?;
        // A decompression error is reported only once the blob's own digest checks out:
        // a corrupted blob is named as such, not as a broken gzip stream.
        if let Some(hasher) = diff.as_mut()
            && diff_err.is_none()
            && let Err(e) = hasher.write(chunk)
        {
            diff_err = Some(e);
        }
    }
    let size = blob.len();
    let digest = match want {
        Some((d, size)) => {
            blob.verify(d, Some(size))?;
            d.clone()
        }
        None => blob.digest(),
    };
    if let Some(e) = diff_err {
        return Err(e);
    }
    let mut is_diff_id_pending = false;
    if let (Some(want_diff), Some(diff)) = (diff_id, diff) {
        match diff.finish()? {
            Some(verifier) => verifier.verify(want_diff, None)?,
            None => is_diff_id_pending = true,
        }
    }
    Ok(Copied {
        digest,
        size,
        compression: c,
        is_diff_id_pending,
    })
}

/// Reads up to `head.len()` bytes (fewer only at end of stream): enough to sniff the
/// compression even from a reader that returns short reads.
fn read_head(reader: &mut impl Read, head: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < head.len() {
        match reader.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Checks the diff_id of a zstd blob already written to `file` by decoding it from the
/// start. Memory stays bounded by the unpacker's zstd window limit.
fn verify_zstd_diff_id(file: &File, diff_id: &Digest) -> Result<(), digest::Error> {
    let zstd_err =
        |e: io::Error| digest::Error::Io(io::Error::new(e.kind(), format!("unzstd: {e}")));
    let mut reader = file;
    io::Seek::rewind(&mut reader).map_err(digest::Error::Io)?;
    let mut decoded = ZstdReader::new(BufReader::with_capacity(64 * 1024, reader));
    let mut hashing = HashingWriter {
        inner: io::sink(),
        verifier: Verifier::new(),
    };
    io::copy(&mut decoded, &mut hashing).map_err(zstd_err)?;
    hashing.verifier.verify(diff_id, None)
}

/// Hashes the uncompressed content of a layer as its compressed bytes are fed in.
enum DiffHasher {
    Plain(Verifier),
    Gzip(Box<flate2::write::MultiGzDecoder<HashingWriter<io::Sink>>>),
    /// zstd is decoded afterwards from the written blob ([`verify_zstd_diff_id`]).
    Zstd,
}

impl DiffHasher {
    fn new(c: Compression) -> DiffHasher {
        match c {
            Compression::Zstd => DiffHasher::Zstd,
            Compression::None => DiffHasher::Plain(Verifier::new()),
            Compression::Gzip => DiffHasher::Gzip(Box::new(flate2::write::MultiGzDecoder::new(
                HashingWriter {
                    inner: io::sink(),
                    verifier: Verifier::new(),
                },
            ))),
        }
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), digest::Error> {
        match self {
            DiffHasher::Plain(v) => {
                v.update(chunk);
                Ok(())
            }
            DiffHasher::Gzip(d) => d
                .write_all(chunk)
                .map_err(|e| digest::Error::Io(io::Error::new(e.kind(), format!("gunzip: {e}")))),
            DiffHasher::Zstd => Ok(()),
        }
    }

    /// The hash of the uncompressed content; `None` when it is checked later (zstd).
    fn finish(self) -> Result<Option<Verifier>, digest::Error> {
        match self {
            DiffHasher::Plain(v) => Ok(Some(v)),
            DiffHasher::Gzip(d) => d
                .finish()
                .map(|w| Some(w.verifier))
                .map_err(|e| digest::Error::Io(io::Error::new(e.kind(), format!("gunzip: {e}")))),
            DiffHasher::Zstd => Ok(None),
        }
    }
}

/// An image's manifest and config as read and verified, with the bytes the store keeps.
pub(super) struct Documents {
    pub manifest: Manifest,
    manifest_object: String,
    manifest_bytes: Vec<u8>,
    pub config: oci::Config,
    config_object: String,
    config_bytes: Vec<u8>,
}

pub(super) fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: Default::default(),
    }
}

/// Image names from a layout descriptor: containerd's full-name annotation, else
/// `org.opencontainers.image.ref.name` read as a reference (`busybox:latest`; a bare
/// `busybox` means `busybox:latest`). Invalid names are logged and ignored.
fn names_from_annotations(d: &Descriptor) -> Vec<String> {
    let name = d
        .annotations
        .get(oci::ANNOTATION_CONTAINERD_NAME)
        .or_else(|| d.annotations.get(oci::ANNOTATION_REF_NAME));
    name.and_then(|n| normalize_name(n)).into_iter().collect()
}

fn normalize_name(name: &str) -> Option<String> {
    match Reference::parse(name) {
        Ok(r) => Some(r.to_string()),
        Err(e) => {
            warn!("{e}: name ignored");
            None
        }
    }
}

pub(super) fn image_config(c: oci::ExecConfig) -> ImageConfig {
    ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        stop_signal: c.stop_signal,
    }
}
