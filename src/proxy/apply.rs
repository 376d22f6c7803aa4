//! Writes transactions to the kernel: the proxy's one file of netlink I/O.
//!
//! A [`Writer`] takes the operations of one transaction ([`super::ruleset::Op`]), listed or
//! streamed ([`Ops`]: a full sync makes them one Service at a time), and commits them
//! atomically or not at all. [`Netlink`] lowers them into one nf_tables batch
//! ([`super::lower`]) and has it committed over a `NETLINK_NETFILTER` socket; tests inject
//! their own writer to record transactions. The nftables backend
//! ([`super::backend::Nftables`]) decides what to write; this file only writes it.
//!
//! ```text
//!  agent (executor thread)                              child: nanolet internal-nft-commit
//!  lower each op ─► 1 MiB of messages at a time ─► stdin ─► read all ─► sendmsg (the kernel
//!  await stderr EOF and the reaper's exit ◄──────────── exit 0, or 1 + "nftables: …"   commits here)
//! ```
//!
//! Small incremental transactions (a Service added, an endpoint gone: [`commits_inline`]) are
//! committed on the agent's thread: the kernel takes about a millisecond for them.
//!
//! Not blocking: the kernel checks and commits a batch inside the `sendmsg` that carries it
//! (netlink runs nfnetlink in the sender's context), so a non-blocking socket would not help:
//! at 10 000 Services that call takes seconds to minutes. The agent therefore hands the bytes
//! to a short-lived child of its own executable and awaits it; pod workers, probes and the
//! lease keep running meanwhile. The child inherits the agent's network namespace. A commit
//! that takes longer than [`COMMIT_TIMEOUT`] is given up (the child is killed; the kernel
//! either committed the batch or not, and the next full sync replaces the tables anyway).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, FutureExt};

use crate::netlink::nftables::{self, Batch};
use crate::sys::reaper::{Exit, Reaper};

use super::lower::{lower_op, lower_ops};
use super::ruleset::Op;

/// The operations of one transaction: listed (an incremental one), or made as they are
/// taken (a full sync, one Service at a time: never every element at once).
pub enum Ops<'a> {
    Listed(Vec<Op>),
    Streamed(&'a mut dyn Iterator<Item = Op>),
}

/// Something that commits a transaction as a whole.
// The agent's executor is single-threaded: these futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Writer {
    /// Commits `ops` atomically; other tasks run while the kernel works. A writer takes
    /// streamed operations one at a time and lets each go once encoded.
    async fn write(&mut self, ops: Ops<'_>) -> Result<(), String>;

    /// Deletes the UDP conntrack entries translated to `backend`, a backend that went away.
    /// Returns how many there were.
    fn forget_udp_flows(&mut self, backend: std::net::SocketAddr) -> Result<usize, String>;
}

/// The longest a commit may take before it is given up. The kernel's commit of 10 000
/// kube-proxy-shaped Services took about four minutes on the reference VM.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The verb of the child that commits one batch (hidden; see `crate::cli`).
pub const CHILD_VERB: &str = "internal-nft-commit";

/// The kernel's nf_tables, over netlink, in the caller's network namespace, through a child
/// process per commit.
#[derive(Clone)]
pub struct Netlink {
    exe: PathBuf,
    reaper: Reaper,
    next_seq: u32,
}

impl Netlink {
    /// A writer whose commits run in `exe internal-nft-commit`, reaped by `reaper`. Fails
    /// when this network namespace has no netfilter netlink (checked once, here).
    pub fn open(exe: PathBuf, reaper: Reaper) -> io::Result<Netlink> {
        drop(nftables::open()?);
        Ok(Netlink {
            exe,
            reaper,
            next_seq: 1,
        })
    }
}

/// The most set or map elements an inline commit may carry (see [`commits_inline`]).
const INLINE_MAX_ELEMENTS: usize = 1024;

/// Does a transaction commit on the agent's own thread? Only a small incremental one: no
/// table replaced, few elements. The kernel commits a few elements in about a millisecond even
/// beside 10 000 Services, less than a child's exec costs (about 6 ms); everything larger goes
/// to the commit child.
pub fn commits_inline(ops: &[Op]) -> bool {
    let mut elements = 0;
    for op in ops {
        elements += match op {
            Op::AddTable(_) | Op::DeleteTable(_) => return false,
            Op::AddElements(_, _, e) => e.len(),
            Op::AddEndpoints(_, _, e) => e.len(),
            Op::DeleteElements(_, _, e) => e.len(),
            _ => 1,
        };
    }
    elements <= INLINE_MAX_ELEMENTS
}

impl Netlink {
    /// Commits a small batch on this thread (see [`commits_inline`]).
    fn write_inline(&mut self, ops: &[Op]) -> Result<(), String> {
        let mut sock =
            nftables::open().map_err(|e| format!("opening a netfilter netlink socket: {e}"))?;
        sock.set_recv_timeout(INLINE_TIMEOUT)
            .map_err(|e| format!("netlink socket: {e}"))?;
        let mut batch = Batch::new(self.next_seq);
        lower_ops(ops, &mut batch);
        self.next_seq = self.next_seq.wrapping_add(batch.len() + 1);
        nftables::apply(&mut sock, batch).map_err(|e| e.to_string())
    }
}

/// How long the agent's thread waits for the kernel's answer to an inline commit.
const INLINE_TIMEOUT: Duration = Duration::from_secs(5);

impl Writer for Netlink {
    async fn write(&mut self, ops: Ops<'_>) -> Result<(), String> {
        if let Ops::Listed(listed) = &ops
            && commits_inline(listed)
        {
            return self.write_inline(listed);
        }
        let mut cmd = Command::new(&self.exe);
        cmd.arg(CHILD_VERB)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("running {} {CHILD_VERB}: {e}", self.exe.display()))?;
        let pid = child.id() as i32;
        let stdin = child.stdin.take();
        let stderr = child
            .stderr
            .take()
            .map(|p| Async::new(File::from(OwnedFd::from(p))));
        // `child` is dropped without `wait`: the reaper owns the exit status.
        drop(child);
        // Encoding is the agent's work (pure, about a second at 10 000 Services); the
        // messages go down the pipe as they are made, so the batch is never held whole here.
        // The child does nothing but read until the end, so these writes do not wait long.
        let sent = match stdin {
            Some(pipe) => {
                let mut batch = Batch::new(self.next_seq);
                batch.spill_to(Box::new(pipe), SPILL_CHUNK);
                match ops {
                    Ops::Listed(listed) => lower_ops(&listed, &mut batch),
                    Ops::Streamed(stream) => {
                        for op in stream {
                            lower_op(&op, &mut batch);
                        }
                    }
                }
                self.next_seq = self.next_seq.wrapping_add(batch.len() + 1);
                batch.finish_spilled()
            }
            None => Err(io::Error::other("no stdin pipe")),
        };
        let verdict = await_child(&self.reaper, pid, stderr).await;
        match (sent, verdict) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(format!("writing the batch to the commit child: {e}")),
            (Ok(_), Ok(())) => Ok(()),
        }
    }

    fn forget_udp_flows(&mut self, backend: std::net::SocketAddr) -> Result<usize, String> {
        crate::netlink::conntrack::delete_udp_to(backend).map_err(|e| format!("conntrack: {e}"))
    }
}

/// How much of a batch the agent holds before handing it to the commit child (the pipe takes
/// 64 KiB at a time anyway; a larger part only raises the agent's peak).
const SPILL_CHUNK: usize = 256 << 10;

/// Most of the child's stderr kept (its last line is the error).
const MAX_STDERR: u64 = 64 * 1024;

/// Awaits the commit child `pid` (its stdin already closed): its verdict, or a timeout after
/// which it is killed.
async fn await_child(
    reaper: &Reaper,
    pid: i32,
    stderr: Option<io::Result<Async<File>>>,
) -> Result<(), String> {
    let run = async {
        let mut buf = Vec::new();
        if let Some(Ok(pipe)) = stderr {
            let _ = pipe.take(MAX_STDERR).read_to_end(&mut buf).await;
        }
        Some((reaper.wait(pid).await, buf))
    };
    let timeout = async {
        Timer::after(COMMIT_TIMEOUT).await;
        None
    };
    match run.or(timeout).await {
        Some((Exit::Code(0), _)) => Ok(()),
        Some((exit, stderr)) => {
            let stderr = String::from_utf8_lossy(&stderr);
            let tail = stderr.lines().rev().find(|l| !l.trim().is_empty());
            let tail = tail.unwrap_or("no message").trim();
            let tail = tail.strip_prefix("nanolet: ").unwrap_or(tail);
            Err(format!("{tail} (commit child exit {})", exit.code()))
        }
        None => {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            reaper.wait(pid).await;
            Err(format!(
                "the kernel did not answer the batch within {} s; gave up",
                COMMIT_TIMEOUT.as_secs()
            ))
        }
    }
}

/// `nanolet internal-nft-commit`: reads one finished nf_tables batch from stdin, commits it
/// in this process's network namespace, and fails with the kernel's verdict.
pub fn commit_child() -> Result<(), String> {
    let mut bytes = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the batch from stdin: {e}"))?;
    let (first, last) = nftables::batch_bounds(&bytes)
        .ok_or("stdin does not hold a whole nf_tables batch (begin and end markers)")?;
    let mut sock =
        nftables::open().map_err(|e| format!("opening a netfilter netlink socket: {e}"))?;
    // The answers are queued when the send returns; a minute without one means a lost one.
    sock.set_recv_timeout(Duration::from_secs(60))
        .map_err(|e| format!("netlink socket: {e}"))?;
    nftables::commit(&mut sock, &bytes, first, last).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::IpFamily;

    #[test]
    fn only_small_incremental_transactions_commit_on_the_agents_thread() {
        let chain = |i: usize| Op::DeleteChain(IpFamily::V4, format!("endpoints-{i}"));
        assert!(commits_inline(&[chain(1), chain(2)]));
        assert!(commits_inline(&[]));
        // A full sync replaces the table: always the child.
        assert!(!commits_inline(&[Op::DeleteTable(IpFamily::V4)]));
        // Too much at once, even without a table: the child.
        let many: Vec<Op> = (0..=INLINE_MAX_ELEMENTS).map(chain).collect();
        assert!(!commits_inline(&many));
    }
}
