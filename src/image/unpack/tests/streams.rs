//! Broken and hostile streams: decompression bombs, truncated and corrupt gzip, truncated
//! tar, oversized extended headers; and the formats and metadata that must get through
//! (zstd, xattrs).

use super::*;
use flate2::{Compress, Compression, FlushCompress};
use std::io::{BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Raw deflate of `data`, ending on a full flush: such pieces concatenate into one valid
/// deflate stream, so a bomb can repeat one piece without recompressing it.
fn deflate_piece(data: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 100 + 1024);
    loop {
        let before = c.total_in() as usize;
        c.compress_vec(&data[before..], &mut out, flush).unwrap();
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(64 * 1024);
    }
}

const MIB: u64 = 1 << 20;

/// A gzip layer of `files` files of 1 MiB of zeros each, generated as it is read: about
/// 1 KiB of gzip per MiB of tar, never held whole in memory. `served` counts the
/// compressed bytes handed out.
struct Bomb {
    files: u64,
    next: u64,
    zeros: Vec<u8>,
    piece: Vec<u8>,
    pos: usize,
    served: Arc<AtomicU64>,
    done: bool,
}

impl Bomb {
    fn new(files: u64, served: Arc<AtomicU64>) -> Bomb {
        let zeros = deflate_piece(&vec![0u8; MIB as usize], FlushCompress::Full);
        Bomb {
            files,
            next: 0,
            zeros,
            piece: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
            pos: 0,
            served,
            done: false,
        }
    }

    fn refill(&mut self) {
        self.pos = 0;
        if self.next < self.files {
            let h = header(
                format!("f{}", self.next).as_bytes(),
                tar::EntryType::Regular,
                MIB,
                0o644,
                None,
            );
            self.piece = deflate_piece(h.as_bytes(), FlushCompress::Full);
            self.piece.extend_from_slice(&self.zeros);
            self.next += 1;
        } else if !self.done {
            // The end of the deflate stream; the trailer's CRC is never reached.
            self.piece = deflate_piece(&[0u8; 1024], FlushCompress::Finish);
            self.piece.extend_from_slice(&[0; 8]);
            self.done = true;
        } else {
            self.piece.clear();
        }
    }
}

impl Read for Bomb {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.piece.len() {
            self.refill();
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        self.served.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn gzip_bomb_stops_at_the_size_limit_early() {
    let f = Fixture::new();
    let served = Arc::new(AtomicU64::new(0));
    // 10240 files of 1 MiB: 10 GiB of tar from about 10 MiB of gzip.
    let bomb = BufReader::new(Bomb::new(10 * 1024, Arc::clone(&served)));
    let limits = Limits {
        max_bytes: 16 * MIB,
        ..Limits::default()
    };
    let mut u = Unpacker::new(&f.root, limits).unwrap();
    let err = u.apply_blob(bomb).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "more than {} bytes uncompressed: refusing to unpack",
            16 * MIB
        )
    );
    // Stopped after ~16 MiB of tar, ~16 KiB of gzip: nowhere near the 10 MiB (the inflating
    // thread runs at most a few chunks of 128 KiB ahead).
    let served = served.load(Ordering::Relaxed);
    assert!(served < MIB, "read {served} bytes of gzip");
    let written = fs::read_dir(&f.root).unwrap().count();
    assert!(written <= 16, "{written} files written");
    f.assert_outside_untouched();
}

#[test]
fn one_huge_file_is_refused_before_it_is_created() {
    let f = Fixture::new();
    let mut tar = header(b"huge", tar::EntryType::Regular, 10 << 30, 0o644, None)
        .as_bytes()
        .to_vec();
    tar.extend_from_slice(&[0u8; 4096]);
    let limits = Limits {
        max_bytes: 64 * MIB,
        ..Limits::default()
    };
    let err = f.unpack(&[tar], limits).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(fs::read_dir(&f.root).unwrap().count(), 0);
}

fn sample_tar() -> Vec<u8> {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    layer(&[
        E::File("etc/hostname", b"edge\n"),
        E::File("usr/lib/big", &big),
        E::File("z", b"last"),
    ])
}

fn unpack_blob(f: &Fixture, blob: &[u8]) -> Result<LayerCompression, Error> {
    Unpacker::new(&f.root, Limits::default())?.apply_blob(blob)
}

#[test]
fn each_layer_compression_unpacks_the_same_files() {
    let tar = sample_tar();
    let zstd = ruzstd::encoding::compress_to_vec(
        tar.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let cases = [
        (LayerCompression::None, tar.clone()),
        (LayerCompression::Gzip, gzip(&tar)),
        (LayerCompression::Zstd, zstd),
    ];
    for (want, blob) in cases {
        let f = Fixture::new();
        assert_eq!(unpack_blob(&f, &blob).unwrap(), want);
        assert_eq!(fs::read(f.root.join("etc/hostname")).unwrap(), b"edge\n");
        assert_eq!(
            fs::metadata(f.root.join("usr/lib/big")).unwrap().len(),
            200_000
        );
        assert_eq!(fs::read(f.root.join("z")).unwrap(), b"last", "{want:?}");
    }
}

#[test]
fn truncated_gzip_is_an_error() {
    let gz = gzip(&sample_tar());
    for cut in [gz.len() / 3, gz.len() / 2, gz.len() - 4] {
        let f = Fixture::new();
        let err = unpack_blob(&f, &gz[..cut]).unwrap_err().to_string();
        assert!(
            err.starts_with("read layer: ") || err.contains("data truncated"),
            "cut at {cut}: {err}"
        );
        f.assert_outside_untouched();
    }
}

#[test]
fn corrupt_gzip_is_an_error() {
    let gz = gzip(&sample_tar());
    for at in [gz.len() / 4, gz.len() / 2, gz.len() - 6] {
        let mut bad = gz.clone();
        bad[at] ^= 0x5a;
        let f = Fixture::new();
        let err = unpack_blob(&f, &bad).unwrap_err().to_string();
        assert!(
            err.starts_with("read layer: ") || err.starts_with("entry "),
            "corrupt at {at}: {err}"
        );
        f.assert_outside_untouched();
    }
}

#[test]
fn truncated_tar_is_an_error() {
    let tar = sample_tar();
    // Inside the big file's data, and inside the last header.
    let in_data = 512 * 4 + 1000;
    let last_header = tar.len() - 1024 - 512 - 512 + 100;
    let cases = [
        (
            in_data,
            "entry \"usr/lib/big\": data truncated: header says 200000 bytes, layer has",
        ),
        (last_header, "read layer: "),
    ];
    for (cut, want) in cases {
        let f = Fixture::new();
        let err = f
            .unpack(&[tar[..cut].to_vec()], Limits::default())
            .unwrap_err();
        assert!(err.to_string().starts_with(want), "cut at {cut}: {err}");
    }
}

#[test]
fn oversized_extended_header_is_refused() {
    let f = Fixture::new();
    let comment = vec![b'a'; 2 * MIB as usize];
    let l = layer(&[E::PaxRecords("f", &[("comment", &comment)])]);
    let err = f.unpack(&[l], Limits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a PAX or GNU long-name header is larger than 1048576 bytes: refusing to unpack"
    );
    assert_eq!(fs::read_dir(&f.root).unwrap().count(), 0);
}

#[test]
fn path_length_limit_is_configurable() {
    let f = Fixture::new();
    let limits = Limits {
        max_path_len: 10,
        ..Limits::default()
    };
    let l = layer(&[E::File("0123456789", b"ok"), E::File("a/23456789X", b"no")]);
    let err = f.unpack(&[l], limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "entry \"a/23456789X\": path longer than 10 bytes"
    );
    assert_eq!(fs::read(f.root.join("0123456789")).unwrap(), b"ok");
}

#[test]
fn xattrs_are_kept_where_the_filesystem_allows() {
    let f = Fixture::new();
    let probe = f.root.join("probe");
    fs::write(&probe, "").unwrap();
    let fs_allows =
        rustix::fs::setxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    fs::remove_file(&probe).unwrap();

    let l = layer(&[E::PaxRecords(
        "bin/tool",
        &[
            ("SCHILY.xattr.user.nanolet", b"yes"),
            ("SCHILY.xattr.trusted.nope-without-root", b"x"),
            ("mtime", b"1000000"),
        ],
    )]);
    let unpacked = f.unpack(&[l], Limits::default());
    unpacked.unwrap();
    assert_eq!(fs::read(f.root.join("bin/tool")).unwrap(), b"x");
    if fs_allows {
        let mut buf = [0u8; 16];
        let n = rustix::fs::getxattr(f.root.join("bin/tool"), "user.nanolet", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"yes");
    }
    f.assert_outside_untouched();
}
