//! `cargo bench --bench images`: unpacking one gzip layer of 100 MiB (uncompressed) with
//! nanolet's [`Unpacker`] against `tar -xzf` (GNU tar piping through gzip) of the same
//! file, into the same directory tree (tmpfs `/dev/shm` when it exists, so the disk does
//! not decide the result; `NANOLET_BENCH_DIR` overrides).
//!
//! Reports the best of [`RUNS`] wall times of each, their ratio (tar's time over
//! nanolet's: >= 1.0 means nanolet is at least as fast) and the peak RSS (VmHWM) of the
//! process doing nanolet's unpack: the bench re-executes itself with `NANOLET_BENCH_UNPACK`
//! set, and that child unpacks and prints its own VmHWM, as the agent's unpack child would.
//! No assertions: the numbers are for the reader.
//!
//! The layer is reproducible: file sizes, names and contents come from a fixed PRNG
//! (xorshift64*), with text-like contents so gzip compresses about as it does real images.

use flate2::write::GzEncoder;
use nanolet::image::unpack::{Limits, Unpacker};
use std::fs;
use std::io::{self, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "data/mod.rs"]
mod data;

use data::{Rng, fill};

const LAYER_BYTES: u64 = 100 << 20;
const RUNS: usize = 3;
const CHILD_ENV: &str = "NANOLET_BENCH_UNPACK";

/// A file size: mostly small (configs, scripts), some libraries, a few large binaries.
fn file_size(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..=74 => rng.below(8 << 10),
        75..=96 => (8 << 10) + rng.below(120 << 10),
        _ => (128 << 10) + rng.below(4 << 20),
    }
}

/// Writes the layer; returns (file count, compressed size).
fn build_layer(path: &Path) -> io::Result<(u64, u64)> {
    let gz = GzEncoder::new(
        io::BufWriter::new(fs::File::create(path)?),
        flate2::Compression::default(),
    );
    let mut b = tar::Builder::new(gz);
    let mut rng = Rng(0x6e61_6e6f_6c65_7421);
    let mut total = 0;
    let mut files = 0;
    let mut data = Vec::new();
    for d in 0..40 {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("usr/lib/d{d:02}/"), io::empty())?;
    }
    while total < LAYER_BYTES {
        let size = file_size(&mut rng).min(LAYER_BYTES - total);
        fill(&mut rng, &mut data, size as usize);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(if rng.below(4) == 0 { 0o755 } else { 0o644 });
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let name = format!("usr/lib/d{:02}/f{files:05}", rng.below(40));
        b.append_data(&mut h, name, data.as_slice())?;
        total += size;
        files += 1;
    }
    b.into_inner()?.finish()?.flush()?;
    Ok((files, fs::metadata(path)?.len()))
}

/// The child: unpack `layer` into `dest`, print "VmHWM <kB>".
fn child(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (layer, dest) = spec.split_once(':').ok_or("want LAYER:DEST")?;
    let file = fs::File::open(layer)?;
    let mut u = Unpacker::new(Path::new(dest), Limits::default())?;
    u.apply_blob(BufReader::with_capacity(64 << 10, file))?;
    let status = fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or("no VmHWM")?;
    println!("VmHWM {}", hwm.trim().trim_end_matches(" kB"));
    Ok(())
}

fn fresh(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir(dir)
}

fn run_nanolet(layer: &Path, dest: &Path) -> io::Result<(Duration, u64)> {
    fresh(dest)?;
    let start = Instant::now();
    let out = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, format!("{}:{}", layer.display(), dest.display()))
        .output()?;
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nanolet unpack failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let hwm = stdout
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((took, hwm))
}

fn run_tar(layer: &Path, dest: &Path) -> io::Result<Duration> {
    fresh(dest)?;
    let start = Instant::now();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(layer)
        .arg("-C")
        .arg(dest)
        .status()?;
    let took = start.elapsed();
    if !status.success() {
        return Err(io::Error::other(format!("tar -xzf: {status}")));
    }
    Ok(took)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    // `cargo bench` passes `--bench`; any other argument filters (there is one bench).
    let base = data::work_base();
    let work = tempfile::Builder::new()
        .prefix("nanolet-bench-")
        .tempdir_in(&base)?;
    let layer = work.path().join("layer.tar.gz");
    let (files, gz_size) = build_layer(&layer)?;
    println!(
        "layer: {files} files, {} MiB uncompressed, {:.1} MiB gzip, in {}",
        LAYER_BYTES >> 20,
        gz_size as f64 / f64::from(1 << 20),
        base.display()
    );
    let dest = work.path().join("rootfs");
    let mut best_nanolet = Duration::MAX;
    let mut best_tar = Duration::MAX;
    let mut hwm = 0;
    for _ in 0..RUNS {
        let (t, h) = run_nanolet(&layer, &dest)?;
        best_nanolet = best_nanolet.min(t);
        hwm = hwm.max(h);
        best_tar = best_tar.min(run_tar(&layer, &dest)?);
    }
    let mibps = |d: Duration| (LAYER_BYTES >> 20) as f64 / d.as_secs_f64();
    println!(
        "nanolet unpack: {:.3} s ({:.0} MiB/s), peak RSS (VmHWM) {:.1} MiB",
        best_nanolet.as_secs_f64(),
        mibps(best_nanolet),
        hwm as f64 / 1024.0
    );
    println!(
        "tar -xzf:       {:.3} s ({:.0} MiB/s)",
        best_tar.as_secs_f64(),
        mibps(best_tar)
    );
    println!(
        "ratio (tar time / nanolet time, best of {RUNS}): {:.2}x (target >= 1.0x); peak RSS target <= 16 MiB",
        best_tar.as_secs_f64() / best_nanolet.as_secs_f64()
    );
    Ok(())
}
