//! `cargo bench --bench pull`: pulling a three-layer image from a real registry on
//! loopback (Debian's `docker-registry`) with `nanolet internal-pull` into a fresh store,
//! against `skopeo copy` of the same image into an OCI layout.
//!
//! The image is built here, reproducibly (fixed PRNG, fixed mtimes): three gzip layers of
//! 60, 30 and 15 MiB uncompressed, text-like with runs of random bytes (about 3:1 under
//! gzip, as real images), pushed once with `skopeo`. Each of [`RUNS`] rounds pulls with
//! nanolet then with skopeo, each into an empty directory (tmpfs `/dev/shm` when it
//! exists, so the disk does not decide the result; `NANOLET_BENCH_DIR` overrides).
//!
//! nanolet's pull does more than skopeo's copy: besides size and sha256 of every blob it
//! verifies each layer's diff_id and unpacks the rootfs, in the same pass (layers download
//! three at a time; each is unpacked while it and the later ones download). From the
//! child's own progress lines: "download" ends when the last byte of the last layer to
//! finish is reported (unpacking may still be behind), "with unpack" when the process
//! exits, every diff_id verified and the rootfs renamed into the store.
//!
//! Peak RSS is each child's `ru_maxrss` from `wait4`, so it covers the whole process
//! life. Then, as root, a running agent pulls the image for a pod, and its own RSS before
//! and after is reported (see `pull/agent.rs`). Reports medians and ratios (skopeo's time over nanolet's: >= 1.0 means nanolet
//! is at least as fast). No assertions: the numbers are for the reader. Skipped, with a
//! message, without `docker-registry` or `skopeo`. Everything is removed at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/registry.rs"]
mod registry;

#[path = "data/mod.rs"]
mod data;

#[path = "pull/agent.rs"]
mod agent_rss;

use data::{Rng, fill};

use flate2::write::GzEncoder;
use nanolet::image::digest::{Digest, HashingWriter, Verifier};
use serde_json::json;
use std::ffi::{c_int, c_long};
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Uncompressed sizes of the three layers.
const LAYERS: [u64; 3] = [60 << 20, 30 << 20, 15 << 20];
const RUNS: usize = 5;
const REPO: &str = "bench/pull";
const TAG: &str = "v1";

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// Writes layer `n` (gzip) into `blobs`; returns (blob digest, blob size, diff_id).
fn build_layer(blobs: &Path, n: usize, bytes: u64) -> io::Result<(Digest, u64, Digest)> {
    let tmp = blobs.join("building");
    // Hash the tar as it goes into gzip (diff_id) and the gzip as it goes to the file.
    let file = HashingWriter {
        inner: io::BufWriter::new(fs::File::create(&tmp)?),
        verifier: Verifier::new(),
    };
    let gz = GzEncoder::new(file, flate2::Compression::default());
    let mut b = tar::Builder::new(HashingWriter {
        inner: gz,
        verifier: Verifier::new(),
    });
    let mut rng = Rng(0x6e61_6e6f_6c65_7421 ^ n as u64);
    let dir = format!("usr/lib/layer{n}");
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        format!("{dir}/"),
        io::empty(),
    )?;
    let (mut total, mut files, mut data) = (0, 0, Vec::new());
    while total < bytes {
        // Mostly small files, some libraries, a few large binaries.
        let size = match rng.below(100) {
            0..=74 => rng.below(8 << 10),
            75..=96 => (8 << 10) + rng.below(120 << 10),
            _ => (128 << 10) + rng.below(4 << 20),
        }
        .min(bytes - total);
        fill(&mut rng, &mut data, size as usize);
        let mut h = header(tar::EntryType::Regular, 0o644, size);
        b.append_data(&mut h, format!("{dir}/f{files:05}"), data.as_slice())?;
        total += size;
        files += 1;
    }
    let tar = b.into_inner()?;
    let diff_id = tar.verifier.digest();
    let mut file = tar.inner.finish()?;
    file.flush()?;
    let size = file.verifier.len();
    let digest = file.verifier.digest();
    fs::rename(&tmp, blobs.join(digest.hex()))?;
    Ok((digest, size, diff_id))
}

fn put(blobs: &Path, bytes: &[u8]) -> io::Result<serde_json::Value> {
    let d = Digest::of(bytes);
    fs::write(blobs.join(d.hex()), bytes)?;
    Ok(json!({"digest": d.to_string(), "size": bytes.len()}))
}

/// An OCI layout at `dir` holding the image as `bench`; returns the blobs' total size.
fn build_layout(dir: &Path) -> io::Result<u64> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut total = 0;
    for (n, bytes) in LAYERS.into_iter().enumerate() {
        let (digest, size, diff_id) = build_layer(&blobs, n, bytes)?;
        layers.push(
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.to_string(), "size": size}),
        );
        diff_ids.push(diff_id.to_string());
        total += size;
    }
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "amd64",
        other => other,
    };
    let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux",
        "config": {"Cmd": ["sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}))?;
    let mut config_desc = put(&blobs, &config)?;
    config_desc["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc, "layers": layers}))?;
    let mut manifest_desc = put(&blobs, &manifest)?;
    manifest_desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    manifest_desc["annotations"] = json!({"org.opencontainers.image.ref.name": "bench"});
    let index = json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(total + (config.len() + manifest.len()) as u64)
}

/// `struct rusage` of 64-bit Linux (glibc and musl): two `timeval`s, then longs.
#[repr(C)]
struct Rusage {
    utime: [c_long; 2],
    stime: [c_long; 2],
    maxrss: c_long,
    rest: [c_long; 13],
}

unsafe extern "C" {
    fn wait4(pid: c_int, status: *mut c_int, options: c_int, rusage: *mut Rusage) -> c_int;
}

/// Reaps `child` with `wait4`: (exited 0, peak RSS in KiB). rustix 1.1 has no `wait4`
/// and `/proc/<pid>/status` of a zombie no longer shows VmHWM.
fn reap(child: Child) -> io::Result<(bool, u64)> {
    let pid = c_int::try_from(child.id()).map_err(io::Error::other)?;
    let mut status: c_int = 0;
    let mut usage = Rusage {
        utime: [0; 2],
        stime: [0; 2],
        maxrss: 0,
        rest: [0; 13],
    };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (`Child` only waits when asked
        // and is dropped unwaited); both pointers are to live locals of the C types.
        let r = unsafe { wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok((status == 0, u64::try_from(usage.maxrss).unwrap_or(0)))
}

struct Sample {
    /// Until the last layer's last byte (nanolet only).
    download: Option<Duration>,
    total: Duration,
    rss_kib: u64,
}

/// Runs `cmd` to the end; reads its stdout lines as they come, for progress lines.
fn run(mut cmd: Command, log: &Path) -> io::Result<Sample> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(fs::File::create(log)?)
        .spawn()?;
    let stdout = child.stdout.take().ok_or(io::Error::other("no stdout"))?;
    let mut download = None;
    let mut last = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v.get("layer").is_some() && v["done"] == v["total"] {
            download = Some(start.elapsed());
        }
        last = line;
    }
    let (ok, rss_kib) = reap(child)?;
    let total = start.elapsed();
    if !ok {
        let err = fs::read_to_string(log).unwrap_or_default();
        return Err(io::Error::other(format!("{cmd:?} failed: {last}\n{err}")));
    }
    Ok(Sample {
        download,
        total,
        rss_kib,
    })
}

fn fresh(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn has_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !has_tool("docker-registry") || !has_tool("skopeo") {
        println!(
            "skipped: needs docker-registry and skopeo (apt-get install docker-registry skopeo)"
        );
        return Ok(());
    }
    let base = data::work_base();
    let work = tempfile::Builder::new()
        .prefix("nanolet-bench-pull-")
        .tempdir_in(&base)?;
    let layout = work.path().join("layout");
    let image_bytes = build_layout(&layout)?;
    let registry = registry::RealRegistry::start(None);
    registry.push(&layout, "bench", REPO, TAG, None);
    let reference = format!("{}/{REPO}:{TAG}", registry.host());
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "image {reference}: 3 gzip layers, {:.0} MiB uncompressed, {:.1} MiB to pull; in {}",
        mib(LAYERS.iter().sum()),
        mib(image_bytes),
        base.display()
    );

    let node = work.path().join("node");
    let data = node.join("data");
    fs::create_dir(&node)?;
    fs::write(
        node.join("nanolet.yaml"),
        format!(
            "dataDir: {}\nrunDir: {}\n",
            data.display(),
            node.join("run").display()
        ),
    )?;
    let skopeo_dir = work.path().join("skopeo");
    let log = work.path().join("stderr.log");
    let (mut download, mut total, mut skopeo) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut skopeo_rss) = (0, 0);
    for _ in 0..RUNS {
        fresh(&data)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nanolet"));
        cmd.args(["internal-pull", &reference, "--config-dir"])
            .arg(&node);
        let s = run(cmd, &log)?;
        download.push(s.download.ok_or("no layer progress line")?);
        total.push(s.total);
        rss = rss.max(s.rss_kib);

        fresh(&skopeo_dir)?;
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:bench", skopeo_dir.display()));
        let s = run(cmd, &log)?;
        skopeo.push(s.total);
        skopeo_rss = skopeo_rss.max(s.rss_kib);
    }
    let (download, total, skopeo) = (median(download), median(total), median(skopeo));
    let speed = |d: Duration| mib(image_bytes) / d.as_secs_f64();
    println!(
        "nanolet download:        {:.3} s ({:.0} MiB/s)",
        download.as_secs_f64(),
        speed(download)
    );
    println!(
        "nanolet +unpack:         {:.3} s, peak RSS (ru_maxrss) {:.1} MiB",
        total.as_secs_f64(),
        rss as f64 / 1024.0
    );
    println!(
        "skopeo copy:             {:.3} s ({:.0} MiB/s), peak RSS {:.1} MiB",
        skopeo.as_secs_f64(),
        speed(skopeo),
        skopeo_rss as f64 / 1024.0
    );
    println!(
        "ratio (skopeo time / nanolet time, median of {RUNS}): download {:.2}x, \
         with unpack {:.2}x (target >= 1.0x); peak RSS target <= 16 MiB",
        skopeo.as_secs_f64() / download.as_secs_f64(),
        skopeo.as_secs_f64() / total.as_secs_f64()
    );
    match agent_rss::measure(&reference, work.path())? {
        None => println!("agent RSS around a pull: skipped (needs root to run the agent)"),
        Some(a) => println!(
            "agent VmRSS ({}): {} KiB idle, {} KiB after a pod whose image it pulled, {} KiB \
             after a second pod of the stored image; pull's share {:+} KiB (pull+pod {:+}, \
             pod alone {:+}; target within +-256 KiB)",
            a.agent.display(),
            a.before_kib,
            a.after_pull_kib,
            a.after_second_pod_kib,
            a.pull_kib(),
            a.pull_and_pod_kib(),
            a.pod_kib()
        ),
    }
    Ok(())
}
