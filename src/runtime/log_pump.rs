//! The log pump: copies a container's stdout and stderr FIFOs into its CRI log file.
//!
//! Owns: one task per container attempt, alive until both FIFOs reach end-of-file (the
//! container's last process exited), and the one read buffer all pumps share.
//! Never does: format records (that is [`LogWriter`]'s job) or hold a buffer across an await.
//!
//! Memory is the point of this file. An idle container (most of them, most of the time) costs
//! its two FIFO registrations and the writer, not a read buffer: a pump waits for its FIFO to
//! become readable holding nothing, then reads into the executor thread's one
//! [`READ_BUFFER`]-sized scratch buffer and hands the bytes to the writer synchronously, so the
//! buffer is only ever borrowed between two awaits. With a 16 KiB buffer per stream, 100
//! containers held 3.2 MiB of buffers that were empty nearly all the time.
//!
//! ```text
//!   loop { wait readable ─► read ≤ READ_BUFFER into the shared scratch ─► writer.write (sync)
//!          └ WouldBlock: wait again; 0 bytes (EOF) or an error: flush the partial line, end }
//! ```
//!
//! A pump that keeps finding data yields to the executor after [`READS_PER_TURN`] reads, so a
//! container that writes without pause cannot starve the other tasks on the agent's thread.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::time::SystemTime;

use async_io::Async;

use super::bundle::LogPipes;
use super::logs::{LogWriter, Stream};

/// The most bytes one read takes from a FIFO (a pipe holds 64 KiB by default).
pub const READ_BUFFER: usize = 16 * 1024;

/// Reads a pump does before it lets other tasks run.
const READS_PER_TURN: usize = 4;

thread_local! {
    /// The executor thread's scratch buffer: borrowed only inside [`drain`], which never awaits.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Copies both streams of `pipes` into `writer` until both end.
pub async fn pump(pipes: LogPipes, writer: LogWriter) {
    let writer = RefCell::new(writer);
    futures_lite::future::zip(
        pump_stream(&pipes.stdout, Stream::Stdout, &writer),
        pump_stream(&pipes.stderr, Stream::Stderr, &writer),
    )
    .await;
}

/// What [`drain`] found.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// Nothing to read now: wait for the FIFO.
    Empty,
    /// Data keeps coming: let other tasks run, then read on.
    More,
    /// End-of-file (or a read error, which a FIFO only gives when it is gone).
    End,
}

async fn pump_stream(pipe: &Async<File>, stream: Stream, writer: &RefCell<LogWriter>) {
    loop {
        match drain(pipe.get_ref(), stream, writer) {
            Drained::Empty => {
                if pipe.readable().await.is_err() {
                    break;
                }
            }
            Drained::More => futures_lite::future::yield_now().await,
            Drained::End => break,
        }
    }
    if let Err(e) = writer.borrow_mut().flush_partial(stream, SystemTime::now()) {
        log::warn!("container log: {e}");
    }
}

/// Reads what `file` (non-blocking) holds, up to [`READS_PER_TURN`] buffers, into `writer`.
fn drain(mut file: &File, stream: Stream, writer: &RefCell<LogWriter>) -> Drained {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        if buf.len() < READ_BUFFER {
            buf.resize(READ_BUFFER, 0);
        }
        for _ in 0..READS_PER_TURN {
            match file.read(&mut buf[..READ_BUFFER]) {
                Ok(0) => return Drained::End,
                Ok(n) => {
                    if let Err(e) = writer
                        .borrow_mut()
                        .write(stream, &buf[..n], SystemTime::now())
                    {
                        log::warn!("container log: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Drained::End,
            }
        }
        Drained::More
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    /// A FIFO pair as a bundle has: the agent's non-blocking read ends and the container's
    /// write ends.
    fn fifos(dir: &std::path::Path) -> (LogPipes, File, File) {
        let open = |name: &str| {
            let path = dir.join(name);
            rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::from(0o600)).unwrap();
            let read = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&path)
                .unwrap();
            let write = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            (Async::new(read).unwrap(), write)
        };
        let (stdout, out_w) = open("stdout");
        let (stderr, err_w) = open("stderr");
        (LogPipes { stdout, stderr }, out_w, err_w)
    }

    /// Each stream's text as `nanolet logs` would show it (partial records joined), and the
    /// number of records per stream.
    fn streams(path: &std::path::Path) -> [(String, usize); 2] {
        let text = std::fs::read(path).unwrap();
        let mut out = [(String::new(), 0), (String::new(), 0)];
        for line in text.split_inclusive(|&b| b == b'\n') {
            let r = crate::runtime::logs::parse_line(line).unwrap();
            let s = &mut out[usize::from(r.stream == Stream::Stderr)];
            s.0.push_str(std::str::from_utf8(r.content).unwrap());
            if !r.partial {
                s.0.push('\n');
            }
            s.1 += 1;
        }
        out
    }

    #[test]
    fn copies_both_streams_until_both_end_and_flushes_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (pipes, mut out, mut err) = fifos(dir.path());
        let log = dir.path().join("0.log");
        let writer = LogWriter::open(&log, 0, 1).unwrap();
        let ex = async_executor::LocalExecutor::new();
        let task = ex.spawn(pump(pipes, writer));
        out.write_all(b"hello\nwor").unwrap();
        err.write_all(b"oops\n").unwrap();
        // More than one turn's worth, more than a pipe holds: the pump yields, comes back for
        // the rest, and the writer blocks until it has.
        let long = READ_BUFFER * READS_PER_TURN + 70_000;
        let (done, written) = async_channel::bounded(1);
        std::thread::spawn(move || {
            out.write_all(b"ld\n").unwrap();
            out.write_all(&vec![b'x'; long]).unwrap();
            out.write_all(b"\nlast, no newline").unwrap();
            done.send_blocking(()).unwrap();
        });
        async_io::block_on(ex.run(async {
            written.recv().await.unwrap();
            drop(err);
            task.await;
        }));
        let [(stdout, _), (stderr, _)] = streams(&log);
        assert_eq!(stderr, "oops\n");
        let want = format!("hello\nworld\n{}\nlast, no newline", "x".repeat(long));
        assert!(
            stdout == want,
            "stdout: {} bytes, want {}",
            stdout.len(),
            want.len()
        );
    }
}
