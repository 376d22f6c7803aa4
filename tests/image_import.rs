//! End to end: build the busybox image with `images/build-busybox-image`, import it into a
//! fresh store, resolve it, unpack it, and compare with `umoci raw unpack` when present.
//!
//! Needs root and apt (the script downloads busybox-static); skipped with a message
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use nanolet::image::{ImageStore, Platform};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build-busybox-image")
}

fn can_build() -> bool {
    let is_root = rustix::process::geteuid().is_root();
    let has_apt = Command::new("apt-get")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !is_root || !has_apt {
        eprintln!("skipped: needs root and apt-get to build the busybox image");
        return false;
    }
    true
}

/// Runs the script; returns the manifest digest it prints.
fn build(args: &[&Path], arch: &str) -> String {
    let mut cmd = Command::new(script());
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.arg(arch).output().unwrap();
    assert!(
        out.status.success(),
        "build-busybox-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

#[test]
fn busybox_image_imports_resolves_and_unpacks() {
    if !can_build() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let archive = tmp.path().join("busybox.tar");
    let digest = build(&[&layout], arch());
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    // Reproducible: the archive holds the very same manifest.
    assert_eq!(build(&[Path::new("--archive"), &archive], arch()), digest);

    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let images = store.import_path(&layout, &Platform::host()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].manifest_digest.to_string(), digest);
    assert_eq!(images[0].names, ["docker.io/library/busybox:latest"]);
    assert_eq!(images[0].config.cmd, ["sh"]);

    // The archive is the same image: importing it changes nothing.
    assert_eq!(
        store.import_path(&archive, &Platform::host()).unwrap(),
        images
    );
    assert_eq!(store.list().unwrap(), images);

    let image = store.resolve("busybox").unwrap().expect("busybox resolves");
    let rootfs = store.rootfs(&image).unwrap();
    let busybox = fs::metadata(rootfs.join("bin/busybox")).unwrap();
    assert!(busybox.is_file() && busybox.permissions().mode() & 0o111 == 0o111);
    let sh = fs::symlink_metadata(rootfs.join("bin/sh")).unwrap();
    assert!(sh.file_type().is_symlink());
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(rootfs.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("var/www/index.html")).unwrap(),
        "hello from nanolet\n"
    );

    // The store's rootfs matches umoci's, entry by entry.
    let umoci_root = tmp.path().join("umoci");
    let umoci = Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:busybox:latest", layout.display()))
        .arg(&umoci_root)
        .output();
    match umoci {
        Ok(out) if out.status.success() => assert_eq!(listing(&rootfs), listing(&umoci_root)),
        _ => eprintln!("umoci comparison skipped: umoci not available"),
    }
}

#[test]
fn corrupted_blob_fails_with_digest_error_and_leaves_no_record() {
    if !can_build() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    build(&[&layout], arch());
    // Corrupt the biggest blob: the layer.
    let mut blobs: Vec<_> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    blobs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let layer = blobs.last().unwrap();
    let mut bytes = fs::read(layer).unwrap();
    bytes[100] ^= 0x01;
    fs::write(layer, bytes).unwrap();

    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let err = store
        .import_path(&layout, &Platform::host())
        .unwrap_err()
        .to_string();
    let hex = layer.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.starts_with(&format!("image docker.io/library/busybox:latest: layer sha256:{hex}: digest mismatch: want sha256:{hex}, got sha256:")),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.resolve("busybox").unwrap(), None);
}

/// Every entry under `root`: path, type, mode, owner, size, mtime, symlink target.
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let target = fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let size = if m.is_file() { m.len() } else { 0 };
            out.push(format!(
                "{rel} {:o} {}:{} {size} {} {target}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime()
            ));
            if m.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
