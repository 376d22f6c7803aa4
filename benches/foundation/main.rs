//! nanolet's foundation benchmarks: pod start overhead, agent memory, idle CPU, binary size.
//!
//! ```text
//! sudo -E cargo bench --bench foundation               # root and runc; ~1.5 min after the build
//! NANOLET_BENCH_IDLE_SECS=10 cargo bench --bench foundation   # shorter idle CPU window
//! cargo test --bench foundation                        # only the self-check of the parsers
//! ```
//!
//! It builds nothing: it runs the nanolet binary cargo built for this bench
//! (`CARGO_BIN_EXE_nanolet`, the bench profile, which inherits `release`) as an agent on a
//! private node in `NANOLET_BENCH_DIR` (default `/tmp/nanolet-foundation-bench`; its runDir and
//! the baseline's runc root are tmpfs mounts, as `/run` is on an appliance), with the busybox
//! image from `images/build-busybox-image` (or the OCI layout in `NANOLET_BENCH_IMAGE`).
//! `NANOLET_BENCH_AGENT` runs another binary instead: the host build cargo makes is glibc, whose
//! malloc arenas add ~2.5 MiB of RSS, so for an appliance's memory numbers run the static musl
//! build (`NANOLET_BENCH_AGENT=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/nanolet`);
//! `NANOLET_BENCH_KEEP_LOG=FILE` keeps the agent's log. Everything is taken down afterwards, also
//! on errors and panics (see `lab.rs`).
//!
//! Every number is a ratio against a baseline measured in the same run, or against its target,
//! and is reported, never asserted (a slow machine does not fail the bench):
//!
//! 1. **Pod start overhead**: a manifest renamed into `manifests/` until the agent's status
//!    snapshot (`<runDir>/status.json`, watched with inotify) shows the container running,
//!    against `runc run -d` of an equivalent bundle (`runc spec`, the same rootfs and command
//!    `sh -c 'echo started; exec sleep 1000'`) from exec until runc returns. 10 starts each,
//!    interleaved so both see the same machine load, after one warm-up each (which unpacks the
//!    image); medians. Target <= 1.2x.
//! 2. **Agent memory**: `VmRSS` (`/proc/<pid>/status`) and `Pss` (`/proc/<pid>/smaps_rollup`) of
//!    the agent process, idle with 0 pods (after the warm-up) and with 20 running pods (at the end
//!    of the idle CPU window), against the 4 MiB target.
//! 3. **Binary size**: `target/<triple>/release/nanolet` for x86_64 and aarch64 musl (build them
//!    with `.ci/build-static`), against the 2 MiB target; says when a file is missing or not
//!    stripped.
//! 4. **Idle CPU**: the agent's `utime + stime` (`/proc/<pid>/stat`) over a window with 20 running
//!    pods (`NANOLET_BENCH_IDLE_SECS`, default 60), as a percentage of one core, against the
//!    0.1 % target. The CPU of waited-for children (runc) is shown beside it.
//!
//! Without root only the binary sizes are measured.

mod baseline;
#[allow(dead_code)]
#[path = "../../tests/common/busybox.rs"]
mod busybox;
mod lab;
mod procfs;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use baseline::Baseline;
use lab::{Error, Lab, is_running, pod_manifest, pod_name};
use report::{Row, mebibytes, median, millis};

/// The container command of every pod and of the baseline.
const COMMAND: &str = "echo started; exec sleep 1000";
const START_ITERATIONS: usize = 10;
const IDLE_PODS: usize = 20;
const MEMORY_TARGET_KIB: u64 = 4096;
const SIZE_TARGET_BYTES: u64 = 2 * 1024 * 1024;
const IDLE_CPU_TARGET_PERCENT: f64 = 0.1;
const TRIPLES: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then only self-check.
    if !std::env::args().any(|a| a == "--bench") {
        return self_check();
    }
    let mut rows = Vec::new();
    let result = bench(&mut rows);
    println!("\nnanolet foundation benchmarks: summary\n");
    print!("{}", report::table(&rows));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(rows: &mut Vec<Row>) -> Result<(), Error> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_nanolet"));
    let agent_exe = std::env::var_os("NANOLET_BENCH_AGENT").map_or(built.clone(), PathBuf::from);
    let profile_dir = built.parent().and_then(Path::file_name).unwrap_or_default();
    println!("agent binary: {}", agent_exe.display());
    if profile_dir != "release" {
        println!(
            "warning: {} is not a release build; its numbers mean little",
            built.display()
        );
    }
    let target_dir = built
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("target"));

    let sizes: Vec<Row> = TRIPLES.iter().map(|t| size_row(target_dir, t)).collect();
    for row in &sizes {
        println!("{}", row.sentence());
    }
    if !rustix::process::geteuid().is_root() {
        rows.extend(sizes);
        println!(
            "not root: pod start, memory and idle CPU need root and runc; measured sizes only"
        );
        return Ok(());
    }

    let base = std::env::var_os("NANOLET_BENCH_DIR").map_or(
        PathBuf::from("/tmp/nanolet-foundation-bench"),
        PathBuf::from,
    );
    let image = std::env::var_os("NANOLET_BENCH_IMAGE").map(PathBuf::from);
    let idle = Duration::from_secs(
        std::env::var("NANOLET_BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let mut lab = Lab::create(&base, &agent_exe, image.as_deref())?;
    let agent = lab.start_agent()?;
    println!("agent pid {agent}, node in {}", base.display());

    // Warm-up: imports and unpacks the image, runs the first pod through the agent.
    start_and_stop(&lab, "warmup")?;
    let image_rootfs = image_rootfs(&lab.base)?;
    let baseline = Baseline::prepare(&lab, &image_rootfs, COMMAND)?;
    baseline.start_once(0)?;

    let memory_idle = procfs::memory(agent);

    // 1. Pod start overhead, interleaved.
    let mut nanolet_starts = Vec::new();
    let mut runc_starts = Vec::new();
    for i in 1..=START_ITERATIONS {
        let n = start_and_stop(&lab, &format!("start-{i}"))?;
        let r = baseline.start_once(i)?;
        eprintln!(
            "start {i}/{START_ITERATIONS}: nanolet {}, runc run -d {}",
            millis(n),
            millis(r)
        );
        nanolet_starts.push(n);
        runc_starts.push(r);
    }
    let start_row = start_row(&nanolet_starts, &runc_starts);
    println!("{}", start_row.sentence());
    rows.push(start_row);
    rows.extend(memory_rows("0 pods", memory_idle));
    print_last(rows, 2);

    // 20 running pods: idle CPU over the window, then memory.
    let names: Vec<String> = (0..IDLE_PODS).map(|i| format!("idle-{i}")).collect();
    let started = Instant::now();
    for name in &names {
        lab.add_manifest(name, &pod_manifest(name, COMMAND))?;
    }
    let pods: Vec<String> = names.iter().map(|n| pod_name(n)).collect();
    let all_running = lab.wait_for(
        &format!("{IDLE_PODS} pods running"),
        Duration::from_secs(180),
        |s| pods.iter().all(|p| is_running(s, p)),
    )?;
    println!(
        "{IDLE_PODS} pods running {:.2} s after their manifests appeared",
        (all_running - started).as_secs_f64()
    );
    println!("idle CPU: measuring over {} s", idle.as_secs());
    let cpu = idle_cpu(agent, idle);
    let memory_busy = procfs::memory(agent);
    rows.push(cpu_row(cpu, idle));
    rows.extend(memory_rows("20 pods", memory_busy));
    print_last(rows, 3);
    rows.extend(sizes);

    for name in &names {
        lab.remove_manifest(name)?;
    }
    lab.wait_for("all pods stopped", Duration::from_secs(120), |s| {
        s.pods.is_empty()
    })?;
    if let Some(m) = procfs::memory(agent) {
        println!(
            "agent after stopping all pods: VmRSS {} KiB, Pss {} KiB",
            m.rss_kib, m.pss_kib
        );
    }
    drop(lab);
    Ok(())
}

/// Starts the static pod `name`, waits until it is running, removes it and waits until it is
/// gone. Returns manifest rename → running.
fn start_and_stop(lab: &Lab, name: &str) -> Result<Duration, Error> {
    lab.start_and_stop(name, &pod_manifest(name, COMMAND))
}

/// The image store's one unpacked rootfs (`<dataDir>/images/rootfs/<hex>`).
fn image_rootfs(base: &Path) -> Result<PathBuf, Error> {
    let dir = base.join("state/data/images/rootfs");
    let entries =
        std::fs::read_dir(&dir).map_err(lab::io_err(format!("reading {}", dir.display())))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .ok_or_else(|| Error::Command {
            what: format!("finding the busybox rootfs in {}", dir.display()),
            detail: "no unpacked rootfs".to_string(),
        })
}

fn print_last(rows: &[Row], n: usize) {
    for row in &rows[rows.len().saturating_sub(n)..] {
        println!("{}", row.sentence());
    }
}

fn start_row(nanolet: &[Duration], runc: &[Duration]) -> Row {
    let (n, r) = (median(nanolet), median(runc));
    let spread = |s: &[Duration]| match (s.iter().min(), s.iter().max()) {
        (Some(lo), Some(hi)) => format!("{}..{}", millis(*lo), millis(*hi)),
        _ => "-".to_string(),
    };
    Row {
        metric: format!("pod start overhead (median of {})", nanolet.len()),
        nanolet: n.map_or("-".to_string(), millis),
        baseline: format!("runc run -d {}", r.map_or("-".to_string(), millis)),
        ratio: n
            .zip(r)
            .filter(|(_, r)| !r.is_zero())
            .map(|(n, r)| n.as_secs_f64() / r.as_secs_f64()),
        target: 1.2,
        note: format!("ranges: nanolet {}, runc {}", spread(nanolet), spread(runc)),
    }
}

fn memory_rows(when: &str, memory: Option<procfs::Memory>) -> [Row; 2] {
    let row = |kind: &str, kib: Option<u64>| Row {
        metric: format!("agent {kind}, {when}"),
        nanolet: kib.map_or("-".to_string(), |k| format!("{k} KiB")),
        baseline: format!("target {MEMORY_TARGET_KIB} KiB"),
        ratio: kib.map(|k| k as f64 / MEMORY_TARGET_KIB as f64),
        target: 1.0,
        note: if kib.is_none() {
            "could not read /proc".to_string()
        } else {
            String::new()
        },
    };
    [
        row("VmRSS", memory.map(|m| m.rss_kib)),
        row("Pss", memory.map(|m| m.pss_kib)),
    ]
}

/// The agent's CPU over the idle window.
#[derive(Clone, Copy, Debug, PartialEq)]
struct IdleCpu {
    /// The agent's own `utime + stime`, in % of one core.
    own_percent: f64,
    /// Its waited-for children's (runc), in % of one core.
    children_percent: f64,
    own_ticks: u64,
    /// One tick in % of one core over the window: the measurement's resolution.
    resolution_percent: f64,
}

/// Measures the agent's CPU over `window`; `None` if /proc could not be read.
fn idle_cpu(agent: u32, window: Duration) -> Option<IdleCpu> {
    let hz = procfs::clock_ticks_per_second() as f64;
    let before = procfs::cpu_ticks(agent)?;
    let start = Instant::now();
    std::thread::sleep(window);
    let after = procfs::cpu_ticks(agent)?;
    let wall = start.elapsed().as_secs_f64();
    let percent = |ticks: u64| ticks as f64 / hz / wall * 100.0;
    let own = after.own.saturating_sub(before.own);
    let children = after.children.saturating_sub(before.children);
    Some(IdleCpu {
        own_percent: percent(own),
        children_percent: percent(children),
        own_ticks: own,
        resolution_percent: percent(1),
    })
}

fn cpu_row(cpu: Option<IdleCpu>, window: Duration) -> Row {
    Row {
        metric: format!("idle CPU, {IDLE_PODS} pods, {} s", window.as_secs()),
        nanolet: cpu.map_or("-".to_string(), |c| {
            format!("{:.3} % ({} ticks)", c.own_percent, c.own_ticks)
        }),
        baseline: format!("target {IDLE_CPU_TARGET_PERCENT} %"),
        ratio: cpu.map(|c| c.own_percent / IDLE_CPU_TARGET_PERCENT),
        target: 1.0,
        note: cpu.map_or("could not read /proc".to_string(), |c| {
            format!(
                "resolution 1 tick = {:.3} %; waited-for children (runc) add {:.3} %",
                c.resolution_percent, c.children_percent
            )
        }),
    }
}

fn size_row(target_dir: &Path, triple: &str) -> Row {
    let path = target_dir.join(triple).join("release/nanolet");
    let metric = format!("binary size {}", triple.split('-').next().unwrap_or(triple));
    let missing = |why: String| Row {
        metric: metric.clone(),
        nanolet: "-".to_string(),
        baseline: format!("target {}", mebibytes(SIZE_TARGET_BYTES)),
        ratio: None,
        target: 1.0,
        note: why,
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            return missing(format!(
                "{}: {e}; build with .ci/build-static or cargo build --release --target {triple}",
                path.display()
            ));
        }
    };
    let size = bytes.len() as u64;
    let note = match procfs::elf_has_symtab(&bytes) {
        Some(false) => String::new(),
        Some(true) => format!(
            "{} is not stripped: the size includes its symbols",
            path.display()
        ),
        None => format!("{} is not a 64-bit little-endian ELF file", path.display()),
    };
    Row {
        ratio: Some(size as f64 / SIZE_TARGET_BYTES as f64),
        nanolet: mebibytes(size),
        note,
        ..missing(String::new())
    }
}

/// `cargo test --bench foundation`: checks the pure parts (no root, no agent). Exits non-zero
/// naming each check that failed.
fn self_check() -> ExitCode {
    let mut failures = Vec::new();
    let mut check = |name: &str, ok: bool| {
        if !ok {
            failures.push(name.to_string());
        }
    };

    let status = "Name:\tnanolet\nVmPeak:\t  5000 kB\nVmRSS:\t  2345 kB\nRssAnon:\t 1000 kB\n";
    let field_cases: [(&str, &str, Option<u64>); 4] = [
        (status, "VmRSS", Some(2345)),
        (status, "VmPeak", Some(5000)),
        (status, "Pss", None),
        ("Rss:  10 kB\nPss:  7 kB\nPss_Anon:  3 kB\n", "Pss", Some(7)),
    ];
    for (text, field, want) in field_cases {
        check(
            &format!("field_kib {field}"),
            procfs::field_kib(text, field) == want,
        );
    }

    let stat = "42 (nano let) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 11 5 20 0 1 0 100 1000 200";
    check(
        "parse_stat: command with a space",
        procfs::parse_stat(stat)
            == Some(procfs::CpuTicks {
                own: 10,
                children: 16,
            }),
    );
    check(
        "parse_stat: command with a parenthesis",
        procfs::parse_stat("7 (a) b) R 1 1 1 0 -1 0 0 0 0 0 1 2 3 4 20")
            == Some(procfs::CpuTicks {
                own: 3,
                children: 7,
            }),
    );
    check(
        "parse_stat: truncated",
        procfs::parse_stat("42 (x) S 1 2 3").is_none(),
    );

    let mountinfo = "\
22 1 0:20 / /tmp/b/state/run/pods/u/ns/net rw - nsfs nsfs rw
23 1 0:21 / /tmp/b/state/run/containers/c/rootfs rw - overlay overlay rw
24 1 0:22 / /tmp/bb rw - tmpfs tmpfs rw
25 1 0:23 / /tmp/b/with\\040space rw - tmpfs tmpfs rw
";
    check(
        "mounts_under: deepest first, siblings with a common prefix excluded, unescaped",
        procfs::mounts_under(mountinfo, Path::new("/tmp/b"))
            == [
                "/tmp/b/state/run/containers/c/rootfs",
                "/tmp/b/state/run/pods/u/ns/net",
                "/tmp/b/with space",
            ],
    );

    check(
        "elf_has_symtab: not ELF",
        procfs::elf_has_symtab(b"#!/bin/sh\n").is_none(),
    );
    check(
        "elf_has_symtab: truncated ELF",
        procfs::elf_has_symtab(b"\x7fELF\x02\x01\x01").is_none(),
    );
    let this_exe = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::read(p).ok());
    check(
        "elf_has_symtab: this executable parses",
        this_exe.is_some_and(|b| procfs::elf_has_symtab(&b).is_some()),
    );

    let ms = Duration::from_millis;
    check(
        "median: odd",
        median(&[ms(30), ms(10), ms(20)]) == Some(ms(20)),
    );
    check(
        "median: even",
        median(&[ms(40), ms(10), ms(20), ms(30)]) == Some(ms(25)),
    );
    check("median: empty", median(&[]).is_none());

    let row = start_row(&[ms(120), ms(110), ms(130)], &[ms(100), ms(90), ms(110)]);
    check(
        "start_row: ratio of medians",
        row.ratio == Some(1.2) && row.verdict() == "meets target",
    );
    check(
        "start_row: sentence",
        row.sentence().starts_with(
            "pod start overhead (median of 3): nanolet 120.0 ms vs runc run -d 100.0 ms = 1.20x (target <= 1.2x): meets target",
        ),
    );
    let missed = Row {
        ratio: Some(1.5),
        ..row.clone()
    };
    check(
        "verdict: over the target",
        missed.verdict() == "MISSES target",
    );
    let table = report::table(&[row, missed]);
    check(
        "table: header, rule, two rows, notes",
        table.lines().count() == 6,
    );

    let missing = size_row(Path::new("/nonexistent"), "aarch64-unknown-linux-musl");
    check(
        "size_row: a missing binary says how to build it",
        missing.ratio.is_none() && missing.note.contains(".ci/build-static"),
    );

    let manifest = pod_manifest("start-1", COMMAND);
    let pod = nanolet::source::manifest::parse_manifest(
        Path::new("start-1.yaml"),
        manifest.as_bytes(),
        lab::NODE_NAME,
    );
    check(
        "pod_manifest: parses as a static pod named <name>-bench",
        pod.is_ok_and(|p| p.metadata.name == "start-1-bench"),
    );

    if failures.is_empty() {
        println!(
            "foundation bench self-check: ok (run `cargo bench --bench foundation` to measure)"
        );
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("self-check failed: {f}");
        }
        ExitCode::FAILURE
    }
}
