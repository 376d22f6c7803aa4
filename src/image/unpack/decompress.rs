//! Turning a stored layer blob into its uncompressed tar stream: gzip, zstd or none,
//! told apart by the blob's first bytes (the store keeps no media type beside a blob).
//!
//! Owns: the sniffing and a multi-frame zstd reader over `ruzstd`.
//! Must never: buffer a whole layer; every decoder here streams with bounded memory
//! (gzip: a 32 KiB window; zstd: at most [`ZSTD_MAX_WINDOW`]).

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use std::io::{self, BufRead, Read};

/// How a layer blob is compressed, from its magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The largest zstd window accepted. `zstd -19` and the Go encoders used by container
/// builders stay at or below 8 MiB; `--long` (128 MiB) would break the node's memory
/// budget, so such a layer is refused with a clear error instead.
pub const ZSTD_MAX_WINDOW: u64 = 8 << 20;

impl LayerCompression {
    /// Sniffs the compression from the first bytes of a blob (at least 4 for zstd).
    pub fn sniff(head: &[u8]) -> LayerCompression {
        if head.starts_with(&GZIP_MAGIC) {
            LayerCompression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC) || is_skippable_frame(head) {
            LayerCompression::Zstd
        } else {
            LayerCompression::None
        }
    }
}

/// zstd skippable frames: magic 0x184D2A50..=0x184D2A5F, little-endian.
fn is_skippable_frame(head: &[u8]) -> bool {
    head.len() >= 4 && head[1..4] == [0x2a, 0x4d, 0x18] && head[0] & 0xf0 == 0x50
}

/// Decodes a stream of zstd frames (skippable frames skipped) into their concatenation,
/// as `zstd -d` does.
pub struct ZstdReader<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    pub fn new(source: R) -> ZstdReader<R> {
        let mut decoder = FrameDecoder::new();
        decoder.set_max_window_size(ZSTD_MAX_WINDOW);
        ZstdReader {
            source,
            decoder,
            in_frame: false,
        }
    }
}

fn zstd_err(e: FrameDecoderError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let want = u64::from(length);
                        let got = io::copy(&mut (&mut self.source).take(want), &mut io::sink())?;
                        if got != want {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "zstd: skippable frame truncated",
                            ));
                        }
                    }
                    Err(e) => return Err(zstd_err(e)),
                }
                continue;
            }
            while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(zstd_err)?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                // This frame is done: the next one (if any) follows in the source.
                self.in_frame = false;
            }
        }
    }
}

/// The uncompressed tar stream of a layer blob.
pub fn decompress<'a, R: BufRead + 'a>(
    mut blob: R,
) -> io::Result<(LayerCompression, Box<dyn Read + 'a>)> {
    let c = LayerCompression::sniff(blob.fill_buf()?);
    let reader: Box<dyn Read + 'a> = match c {
        LayerCompression::None => Box::new(blob),
        LayerCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        LayerCompression::Zstd => Box::new(ZstdReader::new(blob)),
    };
    Ok((c, reader))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_format() {
        let cases: &[(&[u8], LayerCompression)] = &[
            (&[0x1f, 0x8b, 8, 0], LayerCompression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0], LayerCompression::Zstd),
            (&[0x5a, 0x2a, 0x4d, 0x18], LayerCompression::Zstd),
            (b"etc/passwd\0", LayerCompression::None),
            (b"", LayerCompression::None),
            (&[0x28, 0xb5], LayerCompression::None),
        ];
        for (head, want) in cases {
            assert_eq!(LayerCompression::sniff(head), *want, "{head:?}");
        }
    }

    /// A zstd frame holding `data` in one raw (uncompressed) block, written by hand so
    /// the test needs no encoder.
    fn raw_frame(data: &[u8]) -> Vec<u8> {
        let mut f = ZSTD_MAGIC.to_vec();
        // Frame header descriptor: single segment, 4-byte content size.
        f.push(0b1010_0000);
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        // Block header: last block, raw, size.
        let bh = 1 | ((data.len() as u32) << 3);
        f.extend_from_slice(&bh.to_le_bytes()[..3]);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn zstd_reads_every_frame_and_skips_skippable_ones() {
        let mut blob = raw_frame(b"hello ");
        blob.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
        blob.extend_from_slice(&raw_frame(b"world"));
        let (c, mut r) = decompress(blob.as_slice()).unwrap();
        assert_eq!(c, LayerCompression::Zstd);
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn zstd_refuses_a_window_over_the_budget() {
        // Not single segment; window descriptor 0x88: 2^(10+17) = 128 MiB window.
        let blob = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x88, 1, 0, 0];
        let (_, mut r) = decompress(&blob[..]).unwrap();
        let err = r.read(&mut [0u8; 16]).unwrap_err();
        assert!(err.to_string().starts_with("zstd: "), "{err}");
    }

    #[test]
    fn zstd_truncated_frame_is_an_error() {
        let blob = raw_frame(b"hello world");
        let (_, mut r) = decompress(&blob[..blob.len() - 3]).unwrap();
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
    }
}
