//! Decompressing a layer on a thread of its own, beside the thread that consumes it.
//!
//! Inflating gzip is the costliest step of unpacking a layer (about 2.5 ns a byte, against
//! well under 1 ns for hashing it or writing it to files); on two cores a second thread
//! nearly halves the time, as `tar -xzf` gets from running `gzip` as a separate process.
//! Used only in the short-lived processes that unpack (`internal-import`, `internal-pull`,
//! `internal-unpack`, `nanolet pull`), never on the agent's thread.
//!
//! ```text
//!  inflate thread: blob ─► gunzip/unzstd/none ─► 128 KiB chunks ─┐ (at most 4 queued,
//!  calling thread:         consume(&mut dyn Read) ◄───────────────┘  buffers recycled)
//! ```
//!
//! Must never: hold more than `(CHUNKS + 1) * CHUNK` bytes of the stream, or let a consumer
//! that stops early block the inflating thread (it ends at its next chunk).

use super::decompress::decompress;
use std::io::{self, BufRead, Read};
use std::sync::mpsc;

/// Runs `consume` on the decompressed stream of `blob`, which is decompressed (gzip, zstd
/// or none, sniffed) on a scoped thread. `Err` only when that thread cannot be started;
/// decompression errors reach `consume` as read errors.
pub fn decompress_on_thread<B, T>(
    blob: B,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> io::Result<T>
where
    B: BufRead + Send,
{
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel(CHUNKS);
        let (free_tx, free_rx) = mpsc::channel();
        for _ in 0..=CHUNKS {
            let _ = free_tx.send(vec![0u8; CHUNK]);
        }
        std::thread::Builder::new()
            .name("inflate".into())
            .spawn_scoped(scope, move || inflate(blob, &full_tx, &free_rx))?;
        let mut chunks = Chunks {
            full: full_rx,
            free: free_tx,
            current: None,
            pos: 0,
            ended: false,
        };
        // When `consume` returns early, `chunks` drops, the channels close, and the
        // inflating thread ends at its next chunk; the scope waits for it.
        Ok(consume(&mut chunks))
    })
}

/// Uncompressed bytes in flight between the inflating thread and the unpacker: at most
/// `CHUNKS + 1` buffers of `CHUNK` bytes, recycled.
const CHUNK: usize = 128 * 1024;
const CHUNKS: usize = 4;

/// A chunk of the uncompressed stream and how much of it is filled; `0` marks the end.
type Chunk = io::Result<(Vec<u8>, usize)>;

/// The inflating thread: the blob decompressed, in chunks.
fn inflate<B: BufRead>(blob: B, full: &mpsc::SyncSender<Chunk>, free: &mpsc::Receiver<Vec<u8>>) {
    let mut decompressed = match decompress(blob) {
        Ok((_, r)) => r,
        Err(e) => {
            let _ = full.send(Err(e));
            return;
        }
    };
    // Ends when the stream does, or when the reader is gone (a send or recv fails).
    while let Ok(mut buf) = free.recv() {
        let chunk = read_full(&mut decompressed, &mut buf).map(|n| (buf, n));
        let last = !matches!(chunk, Ok((_, n)) if n > 0);
        if full.send(chunk).is_err() || last {
            return;
        }
    }
}

/// Reads until `buf` is full or the stream ends.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// The consumer's side of the inflating thread: its chunks as one stream.
pub struct Chunks {
    full: mpsc::Receiver<Chunk>,
    free: mpsc::Sender<Vec<u8>>,
    current: Option<(Vec<u8>, usize)>,
    pos: usize,
    ended: bool,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((chunk, len)) = &self.current
                && self.pos < *len
            {
                let n = buf.len().min(len - self.pos);
                buf[..n].copy_from_slice(&chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if let Some((chunk, _)) = self.current.take() {
                let _ = self.free.send(chunk);
            }
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            match self.full.recv() {
                Ok(Ok((chunk, 0))) => {
                    self.ended = true;
                    let _ = self.free.send(chunk);
                }
                Ok(Ok(chunk)) => {
                    self.current = Some(chunk);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the inflating thread stopped")),
            }
        }
    }
}
