//! Store tests on layouts and archives built in a temp dir (no root, no network).

use super::*;
use serde_json::json;

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn put(dir: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
    d
}

/// Writes one image's blobs; returns its manifest descriptor (without annotations).
fn add_image(dir: &Path, arch: &str, layers: &[Vec<u8>]) -> serde_json::Value {
    add_image_compressed(dir, arch, layers, oci::Compression::Gzip)
}

fn compress(c: oci::Compression, tar: &[u8]) -> Vec<u8> {
    match c {
        oci::Compression::None => tar.to_vec(),
        oci::Compression::Gzip => gzip(tar),
        oci::Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
        }
    }
}

/// [`add_image`] with its layers compressed as `c`.
fn add_image_compressed(
    dir: &Path,
    arch: &str,
    layers: &[Vec<u8>],
    c: oci::Compression,
) -> serde_json::Value {
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/", "User": "65534"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let blob = compress(c, l);
            json!({"mediaType": c.layer_media_type(), "digest": put(dir, &blob).to_string(), "size": blob.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": oci::MEDIA_TYPE_OCI_CONFIG, "digest": put(dir, &config).to_string(), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    json!({"mediaType": oci::MEDIA_TYPE_OCI_MANIFEST, "digest": put(dir, &manifest).to_string(),
        "size": manifest.len(), "platform": {"os": "linux", "architecture": arch}})
}

fn write_index(dir: &Path, manifests: Vec<serde_json::Value>) {
    let index =
        json!({"schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_OCI_INDEX, "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn named(mut desc: serde_json::Value, name: &str) -> serde_json::Value {
    desc["annotations"] = json!({oci::ANNOTATION_REF_NAME: name});
    desc
}

fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

fn arm64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: None,
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    layout: PathBuf,
    store: ImageStore,
    store_dir: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let store_dir = tmp.path().join("store");
    let store = ImageStore::open(&store_dir).unwrap();
    Env {
        _tmp: tmp,
        layout,
        store,
        store_dir,
    }
}

fn blob_count(store_dir: &Path) -> usize {
    fs::read_dir(store_dir.join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn import_resolve_unpack_and_reimport() {
    let e = env();
    let l1 = tar_of(&[("bin/app", b"v1"), ("etc/conf", b"a")]);
    let l2 = tar_of(&[("bin/app", b"v2"), ("etc/.wh.conf", b"")]);
    write_index(
        &e.layout,
        vec![named(add_image(&e.layout, "amd64", &[l1, l2]), "app:1")],
    );

    let images = e.store.import_path(&e.layout, &amd64()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].names, ["docker.io/library/app:1"]);
    assert_eq!(images[0].config.cmd, ["sh"]);
    assert_eq!(images[0].config.user, "65534");

    let by_name = e.store.resolve("app:1").unwrap().unwrap();
    assert_eq!(by_name, images[0]);
    for r in [
        images[0].manifest_digest.to_string(),
        images[0].config_digest.to_string(),
        images[0].config_digest.hex().to_string(),
        format!("docker.io/library/app@{}", images[0].manifest_digest),
    ] {
        assert_eq!(
            e.store.resolve(&r).unwrap().as_ref(),
            Some(&images[0]),
            "{r}"
        );
    }
    assert_eq!(e.store.resolve("app:2").unwrap(), None);
    assert_eq!(
        e.store
            .resolve(&format!("other@{}", images[0].manifest_digest))
            .unwrap(),
        None
    );

    let rootfs = e.store.rootfs(&images[0]).unwrap();
    assert_eq!(fs::read(rootfs.join("bin/app")).unwrap(), b"v2");
    assert!(!rootfs.join("etc/conf").exists());
    assert_eq!(e.store.rootfs(&images[0]).unwrap(), rootfs);

    // Idempotent: the same image again changes nothing but may add names.
    let blobs = blob_count(&e.store_dir);
    let again = e.store.import_path(&e.layout, &amd64()).unwrap();
    assert_eq!(again, images);
    assert_eq!(e.store.list().unwrap(), images);
    assert_eq!(blob_count(&e.store_dir), blobs);
}

#[test]
fn corrupted_layer_fails_and_records_nothing() {
    let e = env();
    let desc = named(
        add_image(&e.layout, "amd64", &[tar_of(&[("a", b"a")])]),
        "busybox:latest",
    );
    write_index(&e.layout, vec![desc]);
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(e.layout.join("index.json")).unwrap()).unwrap();
    let d = Digest::parse(idx["manifests"][0]["digest"].as_str().unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(e.layout.join("blobs/sha256").join(d.hex())).unwrap())
            .unwrap();
    // Corrupt one byte of the layer in the layout.
    let layer = Digest::parse(manifest["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let path = e.layout.join("blobs/sha256").join(layer.hex());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();

    let err = e
        .store
        .import_path(&e.layout, &amd64())
        .unwrap_err()
        .to_string();
    let want = format!(
        "image docker.io/library/busybox:latest: layer {layer}: digest mismatch: want {layer}, got sha256:"
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(e.store.list().unwrap().is_empty());
    assert_eq!(e.store.resolve("busybox").unwrap(), None);
    assert_eq!(
        blob_count(&e.store_dir),
        0,
        "nothing enters the store before it verifies"
    );
    assert_eq!(fs::read_dir(e.store_dir.join("tmp")).unwrap().count(), 0);
}

#[test]
fn diff_id_mismatch_is_refused() {
    let e = env();
    // A config whose diff_id does not match its layer's content.
    let layer = gzip(&tar_of(&[("a", b"a")]));
    let wrong = Digest::of(b"not the layer");
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [wrong.to_string()]}}))
    .unwrap();
    let layer_digest = put(&e.layout, &layer);
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": oci::MEDIA_TYPE_OCI_CONFIG, "digest": put(&e.layout, &config).to_string(), "size": config.len()},
        "layers": [{"mediaType": oci::MEDIA_TYPE_OCI_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}]}))
    .unwrap();
    let desc = json!({"mediaType": oci::MEDIA_TYPE_OCI_MANIFEST, "digest": put(&e.layout, &manifest).to_string(), "size": manifest.len()});
    write_index(&e.layout, vec![named(desc, "x")]);
    let err = e
        .store
        .import_path(&e.layout, &amd64())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "image docker.io/library/x:latest: layer {layer_digest}: digest mismatch: want {wrong}"
        )),
        "{err}"
    );
    assert!(e.store.list().unwrap().is_empty());
}

#[test]
fn selects_the_node_platform_from_a_nested_index() {
    let e = env();
    let a = add_image(&e.layout, "amd64", &[tar_of(&[("arch", b"amd64")])]);
    let b = add_image(&e.layout, "arm64", &[tar_of(&[("arch", b"arm64")])]);
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_OCI_INDEX, "manifests": [a, b]}),
    )
    .unwrap();
    let desc = json!({"mediaType": oci::MEDIA_TYPE_OCI_INDEX, "digest": put(&e.layout, &index).to_string(), "size": index.len()});
    write_index(&e.layout, vec![named(desc, "multi:1")]);

    for (platform, want) in [(arm64(), "arm64"), (amd64(), "amd64")] {
        let images = e.store.import_path(&e.layout, &platform).unwrap();
        let rootfs = e.store.rootfs(&images[0]).unwrap();
        assert_eq!(fs::read_to_string(rootfs.join("arch")).unwrap(), want);
    }
    // The name moved to the last import's image; the other one is left unnamed.
    let resolved = e.store.resolve("multi:1").unwrap().unwrap();
    assert_eq!(
        fs::read_to_string(e.store.rootfs(&resolved).unwrap().join("arch")).unwrap(),
        "amd64"
    );

    let riscv = Platform {
        os: "linux".into(),
        architecture: "riscv64".into(),
        variant: None,
    };
    let err = e
        .store
        .import_path(&e.layout, &riscv)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("no manifest for platform linux/riscv64"),
        "{err}"
    );
}

#[test]
fn ambiguous_manifest_is_refused() {
    let e = env();
    let desc = add_image(&e.layout, "amd64", &[tar_of(&[("a", b"a")])]);
    // Rewrite the manifest with a `manifests` field, under its new digest.
    let d = Digest::parse(desc["digest"].as_str().unwrap()).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(e.layout.join("blobs/sha256").join(d.hex())).unwrap())
            .unwrap();
    m["manifests"] = json!([]);
    let bytes = serde_json::to_vec(&m).unwrap();
    let desc = json!({"mediaType": oci::MEDIA_TYPE_OCI_MANIFEST, "digest": put(&e.layout, &bytes).to_string(), "size": bytes.len()});
    write_index(&e.layout, vec![named(desc, "amb")]);
    let err = e
        .store
        .import_path(&e.layout, &amd64())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ambiguous document: manifest has manifests"),
        "{err}"
    );
}

#[test]
fn docker_archive_imports_with_repo_tags() {
    let e = env();
    let layer = tar_of(&[("hello", b"world")]);
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]}}))
    .unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let manifest = serde_json::to_vec(
        &json!([{"Config": config_name, "RepoTags": ["hello:v1"], "Layers": ["abc/layer.tar"]}]),
    )
    .unwrap();
    let archive = e.layout.join("hello.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    for (path, data) in [
        ("manifest.json", &manifest),
        (config_name.as_str(), &config),
        ("abc/layer.tar", &layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
    drop(b);

    let images = e.store.import_path(&archive, &amd64()).unwrap();
    assert_eq!(images[0].names, ["docker.io/library/hello:v1"]);
    assert_eq!(images[0].config_digest, Digest::of(&config));
    assert_eq!(images[0].config.entrypoint, ["/hello"]);
    let rootfs = e
        .store
        .rootfs(&e.store.resolve("hello:v1").unwrap().unwrap())
        .unwrap();
    assert_eq!(fs::read(rootfs.join("hello")).unwrap(), b"world");
}

#[test]
fn import_dir_reports_each_entry() {
    let e = env();
    let images = e.layout.join("images");
    let good = images.join("good");
    fs::create_dir_all(&good).unwrap();
    write_index(
        &good,
        vec![named(
            add_image(&good, "amd64", &[tar_of(&[("a", b"a")])]),
            "good",
        )],
    );
    fs::write(images.join("bad.tar"), b"not a tar at all").unwrap();
    fs::write(images.join(".hidden"), b"").unwrap();

    let results = e.store.import_dir(&images, &amd64());
    let summary: Vec<(String, bool)> = results
        .iter()
        .map(|(p, r)| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                r.is_ok(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("bad.tar".to_string(), false), ("good".to_string(), true)]
    );
    assert!(e.store.resolve("good").unwrap().is_some());
}

#[test]
fn remove_untags_then_deletes_and_collects_garbage() {
    let e = env();
    let desc = add_image(&e.layout, "amd64", &[tar_of(&[("a", b"a")])]);
    write_index(
        &e.layout,
        vec![named(desc.clone(), "one:1"), named(desc, "two:1")],
    );
    let images = e.store.import_path(&e.layout, &amd64()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].names,
        ["docker.io/library/one:1", "docker.io/library/two:1"]
    );
    let rootfs = e.store.rootfs(&images[0]).unwrap();

    e.store.remove("one:1").unwrap();
    assert_eq!(
        e.store.resolve("two:1").unwrap().unwrap().names,
        ["docker.io/library/two:1"]
    );
    assert!(rootfs.exists());

    e.store.remove("two:1").unwrap();
    assert!(e.store.list().unwrap().is_empty());
    assert!(!rootfs.exists());
    assert_eq!(blob_count(&e.store_dir), 0);

    let err = e.store.remove("two:1").unwrap_err().to_string();
    assert_eq!(err, "image \"two:1\": not found");
}

#[test]
fn platform_matching() {
    let p = Platform {
        os: "linux".into(),
        architecture: "arm".into(),
        variant: Some("v7".into()),
    };
    assert!(p.matches("linux", "arm", Some("v7")));
    assert!(p.matches("linux", "arm", None));
    assert!(!p.matches("linux", "arm", Some("v6")));
    assert!(!p.matches("windows", "arm", None));
    assert!(amd64().matches("linux", "x86_64", None));
    assert_eq!(p.to_string(), "linux/arm/v7");
    assert_eq!(Platform::host().os, "linux");
}

#[test]
fn failed_unpack_names_the_layer_and_leaves_no_rootfs() {
    let e = env();
    // A layer with a `..` entry (written raw: tar::Builder refuses such names).
    let mut h = tar::Header::new_old();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.as_old_mut().name[..4].copy_from_slice(b"../x");
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    let evil = b.into_inner().unwrap();
    let good = tar_of(&[("ok", b"ok")]);
    write_index(
        &e.layout,
        vec![named(
            add_image(&e.layout, "amd64", &[good, evil.clone()]),
            "evil",
        )],
    );

    let image = e.store.import_path(&e.layout, &amd64()).unwrap().remove(0);
    let err = e.store.rootfs(&image).unwrap_err().to_string();
    let layer = Digest::of(&gzip(&evil));
    assert_eq!(
        err,
        format!(
            "image docker.io/library/evil:latest: layer {layer}: unpack: entry \"../x\": path contains \"..\""
        )
    );
    assert_eq!(fs::read_dir(e.store_dir.join("rootfs")).unwrap().count(), 0);
    assert!(!e.store_dir.parent().unwrap().join("x").exists());
}

#[test]
fn open_removes_stale_temporaries() {
    let e = env();
    fs::write(e.store_dir.join("tmp/blob-1-0"), b"partial").unwrap();
    fs::create_dir(e.store_dir.join("rootfs/.tmp-abc-1")).unwrap();
    let _store = ImageStore::open(&e.store_dir).unwrap();
    assert_eq!(fs::read_dir(e.store_dir.join("tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(e.store_dir.join("rootfs")).unwrap().count(), 0);
}

#[test]
fn manifests_without_platform_are_chosen_by_their_config() {
    let e = env();
    let mut a = add_image(&e.layout, "arm64", &[tar_of(&[("arch", b"arm64")])]);
    let mut b = add_image(&e.layout, "amd64", &[tar_of(&[("arch", b"amd64")])]);
    a.as_object_mut().unwrap().remove("platform");
    b.as_object_mut().unwrap().remove("platform");
    write_index(&e.layout, vec![named(a, "p:arm"), named(b, "p:amd")]);
    let images = e.store.import_path(&e.layout, &amd64()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].names, ["docker.io/library/p:amd"]);
    assert_eq!(e.store.resolve("p:arm").unwrap(), None);
}

/// Every path under `root` with its kind and content (files) or target (symlinks).
fn tree(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                dirs.push(path.clone());
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else {
                format!("{:?}", fs::read(&path).unwrap())
            };
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), what));
        }
    }
    out.sort();
    out
}

#[test]
fn zstd_layers_import_and_unpack_like_their_gzip_twin() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let layers = [
        tar_of(&[
            ("bin/app", b"v1"),
            ("etc/conf", b"a"),
            ("usr/lib/big", &big),
        ]),
        tar_of(&[("bin/app", b"v2"), ("etc/.wh.conf", b"")]),
    ];
    let mut trees = Vec::new();
    for c in [oci::Compression::Gzip, oci::Compression::Zstd] {
        let e = env();
        let desc = add_image_compressed(&e.layout, "amd64", &layers, c);
        write_index(&e.layout, vec![named(desc, "app:1")]);
        let image = e.store.import_path(&e.layout, &amd64()).unwrap().remove(0);
        let manifest =
            oci::Manifest::parse(&fs::read(e.store.blob_path(&image.manifest_digest)).unwrap())
                .unwrap();
        assert!(
            manifest
                .layers
                .iter()
                .all(|l| l.media_type == c.layer_media_type()),
            "{c:?}"
        );
        // Importing again re-checks the stored blobs' diff_ids and changes nothing.
        assert_eq!(
            e.store.import_path(&e.layout, &amd64()).unwrap(),
            std::slice::from_ref(&image)
        );
        let rootfs = e.store.rootfs(&image).unwrap();
        assert_eq!(fs::read(rootfs.join("bin/app")).unwrap(), b"v2", "{c:?}");
        assert!(!rootfs.join("etc/conf").exists(), "{c:?}");
        trees.push(tree(&rootfs));
    }
    assert_eq!(trees[0], trees[1]);
}

#[test]
fn zstd_layer_with_a_wrong_diff_id_is_refused_naming_the_layer() {
    let e = env();
    let tar = tar_of(&[("a", b"a")]);
    let layer = compress(oci::Compression::Zstd, &tar);
    let cases = [
        // The blob decodes, to another tar than the config says.
        (layer.clone(), "digest mismatch: want "),
        // The blob is not zstd at all (its media type says it is).
        (gzip(&tar), "read: unzstd: zstd: "),
    ];
    for (blob, want) in cases {
        let wrong = Digest::of(b"not the layer");
        let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [wrong.to_string()]}}))
        .unwrap();
        let layer_digest = put(&e.layout, &blob);
        let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": oci::MEDIA_TYPE_OCI_CONFIG, "digest": put(&e.layout, &config).to_string(), "size": config.len()},
            "layers": [{"mediaType": oci::MEDIA_TYPE_OCI_LAYER_ZSTD, "digest": layer_digest.to_string(), "size": blob.len()}]}))
        .unwrap();
        let desc = json!({"mediaType": oci::MEDIA_TYPE_OCI_MANIFEST, "digest": put(&e.layout, &manifest).to_string(), "size": manifest.len()});
        write_index(&e.layout, vec![named(desc, "x")]);
        let err = e
            .store
            .import_path(&e.layout, &amd64())
            .unwrap_err()
            .to_string();
        let want = format!("image docker.io/library/x:latest: layer {layer_digest}: {want}");
        assert!(err.starts_with(&want), "{err}\nwant: {want}");
        assert!(e.store.list().unwrap().is_empty());
        assert_eq!(
            blob_count(&e.store_dir),
            0,
            "nothing enters the store before both digests verify"
        );
        assert_eq!(fs::read_dir(e.store_dir.join("tmp")).unwrap().count(), 0);
    }
}
