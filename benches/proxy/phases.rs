//! `cargo bench --bench proxy -- phases`: where the agent's memory goes at N Services, phase
//! by phase, counted by the allocator (live heap after the phase, and its peak during it), so
//! that the numbers do not depend on what malloc keeps from the process.
//!
//! Phases as the standalone agent runs them: the `services/` text; the folder parsed into the
//! store (the validated model) one document at a time; the full sync as the agent runs it
//! (each Service's operations made and encoded as the batch is handed on in 256 KiB parts, as the agent does);
//! what was applied, as recorded; the encoded batch whole (as the commit child holds it). For comparison, the folder held as JSON
//! documents at once, as the source did before (its snapshot kept them between scans).
//!
//! Then, as root in a network namespace: where a commit's time goes, in `sendmsg` (the kernel
//! processes the batch in the sender's context) or in waiting for the answer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use nanolet::netlink::nftables::{self, Batch};
use nanolet::proxy::lower::{lower_op, lower_ops};
use nanolet::proxy::source::{Snapshot, scan_dir};
use nanolet::proxy::state::{Event, NextSync, ProxyState};

/// The system allocator, counting live bytes and their peak.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Runs `f` and prints the live heap after it and the peak during it (both absolute).
fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let start = Instant::now();
    let out = f();
    println!(
        "  {name:<52} live {:>7.1} MiB | peak during {:>7.1} MiB | {:>7.0} ms",
        mib(LIVE.load(Ordering::Relaxed)),
        mib(PEAK.load(Ordering::Relaxed)),
        start.elapsed().as_secs_f64() * 1000.0
    );
    out
}

/// The memory phases for the `services/` folder `dir` holding `n` Services.
pub fn memory(n: u32, dir: &std::path::Path, node: &nanolet::proxy::model::NodeConfig) {
    println!("memory at {n} Services x 10 endpoints (heap, counted by the allocator):");
    let text = phase("services/ text", || {
        std::fs::read_to_string(dir.join("all.yaml")).unwrap()
    });
    let docs = phase("(before: every document as JSON at once)", || {
        nanolet::config::yaml::parse_documents(&text).unwrap()
    });
    drop(docs);
    drop(text);
    let mut state = ProxyState::default();
    let snap = phase("source -> store, one document at a time", || {
        scan_dir(dir, &Snapshot::default(), &mut |e| {
            state.apply(e).unwrap();
        })
    });
    parts_of_the_store(dir);
    let bytes = phase(
        "full sync streamed into a batch spilled in 256 KiB parts",
        || {
            let Some(NextSync::Full(mut full)) = state.next_sync(node) else {
                panic!("a synced state with nothing applied makes a full sync");
            };
            let mut batch = Batch::new(1);
            batch.spill_to(Box::new(std::io::sink()), 256 << 10);
            let mut ops = 0;
            for op in full.by_ref() {
                lower_op(&op, &mut batch);
                ops += 1;
            }
            let tx = full.finish();
            let (last, _) = batch.finish_spilled().unwrap();
            (tx, ops, last)
        },
    );
    let (tx, ops, _) = bytes;
    phase("what was applied, recorded (counts and owners)", || {
        state.committed(tx)
    });
    println!(
        "  {ops} operations streamed; {} element users and owners kept",
        state.applied_size()
    );
    let whole = phase("encoded batch, whole (the commit child holds this)", || {
        state.forget_applied();
        let Some(NextSync::Full(full)) = state.next_sync(node) else {
            panic!("a full sync after forgetting what was applied");
        };
        let mut batch = Batch::new(1);
        for op in full {
            lower_op(&op, &mut batch);
        }
        batch.finish().0
    });
    println!(
        "  batch {:.1} MiB; store + snapshot + batch all live: {:.1} MiB",
        mib(whole.len()),
        mib(LIVE.load(Ordering::Relaxed))
    );
    drop((snap, state, whole));
}

/// The parts of what the scan leaves live: the store alone (the validated objects) and the
/// source's snapshot (a hash per object), from a second scan of `dir`.
fn parts_of_the_store(dir: &std::path::Path) {
    use nanolet::proxy::store::Store;
    let before = LIVE.load(Ordering::Relaxed);
    let mut store = Store::default();
    let snap = scan_dir(dir, &Snapshot::default(), &mut |e| {
        let mut dirty = std::collections::BTreeSet::new();
        let _ = match e {
            Event::ServiceApplied(v) => store.put_service(&v, &mut dirty),
            Event::EndpointSliceApplied(v) => store.put_slice(&v, &mut dirty),
            _ => Ok(()),
        };
    });
    let both = LIVE.load(Ordering::Relaxed) - before;
    drop(snap);
    let alone = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "    of which the store alone {:.2} MiB, the source's snapshot {:.2} MiB",
        mib(alone),
        mib(both - alone)
    );
    drop(store);
}

/// Times a full-sync commit's `sendmsg` against the wait for the kernel's answer after it
/// (run inside a fresh network namespace).
pub fn commit_split(ops: &[nanolet::proxy::ruleset::Op], n: u32) {
    let mut batch = Batch::new(1);
    lower_ops(ops, &mut batch);
    let (bytes, _, last) = batch.finish();
    let sock = nftables::open().unwrap();
    sock.set_send_buffer(bytes.len() + 65536, true).unwrap();
    let start = Instant::now();
    sock.send(&bytes).unwrap();
    let sent = start.elapsed();
    let mut buf = vec![0u8; 256 * 1024];
    'answers: loop {
        let len = sock.recv(&mut buf).unwrap();
        for msg in nanolet::netlink::messages(&buf[..len]) {
            let msg = msg.unwrap();
            if msg.error_seq() == Some(last) || msg.error_code().is_some_and(|c| c != 0) {
                assert_eq!(msg.error_code(), Some(0), "the kernel refused the batch");
                break 'answers;
            }
        }
    }
    let total = start.elapsed();
    println!(
        "commit of {n} Services: sendmsg returned after {:.1} ms; the answer was there {:.3} ms later",
        sent.as_secs_f64() * 1000.0,
        (total - sent).as_secs_f64() * 1000.0
    );
}

/// What the commit child costs: a one-table batch committed inline against through
/// `nanolet internal-nft-commit` (spawn, pipe, exit), median of `runs` each (run inside a
/// fresh network namespace).
pub fn child_overhead(exe: &str, runs: usize) {
    use std::io::Write;
    let tiny = || {
        let mut b = Batch::new(1);
        b.add_table(nftables::Family::Ipv4, "nanolet-bench-tiny");
        b.finish().0
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut inline = Vec::new();
    let mut child = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut sock = nftables::open().unwrap();
        let bytes = tiny();
        let (first, last) = nftables::batch_bounds(&bytes).unwrap();
        nftables::commit(&mut sock, &bytes, first, last).unwrap();
        inline.push(start.elapsed().as_secs_f64() * 1000.0);
        let start = Instant::now();
        let mut c = std::process::Command::new(exe)
            .arg("internal-nft-commit")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&tiny()).unwrap();
        assert!(c.wait().unwrap().success());
        child.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (i, c) = (median(inline), median(child));
    println!(
        "one-table commit (median of {runs}): inline {i:.2} ms | through the child {c:.2} ms ({:.1}x)",
        c / i
    );
}
