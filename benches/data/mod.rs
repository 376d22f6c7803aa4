//! Reproducible bench data shared by the image benchmarks: a fixed PRNG and text-like bytes
//! that compress about as binaries and libraries do, and where benchmarks work.

use std::path::{Path, PathBuf};

/// `NANOLET_BENCH_DIR`, else `/dev/shm` (tmpfs: measures nanolet, not the disk), else the
/// temporary folder.
pub fn work_base() -> PathBuf {
    std::env::var_os("NANOLET_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            }
        })
}

/// xorshift64*: the same sequence on every run and machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Text-like bytes: words from a small vocabulary, some runs of random bytes (about 3:1
/// under gzip, as binaries and libraries are).
pub fn fill(rng: &mut Rng, out: &mut Vec<u8>, len: usize) {
    const WORDS: [&[u8]; 16] = [
        b"the ",
        b"container ",
        b"node ",
        b"pod ",
        b"image ",
        b"layer ",
        b"\n",
        b"0x00 ",
        b"return ",
        b"if ",
        b"else ",
        b"struct ",
        b"fn ",
        b"let ",
        b"mut ",
        b"= ",
    ];
    out.clear();
    while out.len() < len {
        if rng.below(24) == 0 {
            for _ in 0..rng.below(24) {
                out.push(rng.next() as u8);
            }
        } else {
            out.extend_from_slice(WORDS[rng.below(16) as usize]);
        }
    }
    out.truncate(len);
}
