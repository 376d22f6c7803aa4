//! Content digests (`sha256:<64 lowercase hex>`) and streaming verification.
//!
//! Owns: parsing/validating a [`Digest`], and [`Verifier`], which hashes bytes as they
//! stream past and checks the OCI descriptor's size and digest at the end.
//! Must never: hold a whole blob in memory, or accept an algorithm other than sha256
//! (the only one nanolet's images use; `sha512` is rejected with a clear error).

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug)]
pub enum Error {
    /// The text is not a valid digest.
    Invalid { input: String, reason: &'static str },
    /// The content hashed to something else.
    Mismatch { want: Digest, got: Digest },
    /// The content had another length than its descriptor says.
    SizeMismatch { want: u64, got: u64 },
    /// Reading or writing the content failed.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid { input, reason } => write!(f, "digest {input:?}: {reason}"),
            Error::Mismatch { want, got } => {
                write!(f, "digest mismatch: want {want}, got {got}")
            }
            Error::SizeMismatch { want, got } => {
                write!(f, "size mismatch: want {want} bytes, got {got}")
            }
            Error::Io(e) => write!(f, "read: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, Error> {
        let invalid = |reason| Error::Invalid {
            input: s.to_string(),
            reason,
        };
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| invalid("missing algorithm"))?;
        if algorithm != "sha256" {
            return Err(invalid("unsupported algorithm (only sha256)"));
        }
        Digest::from_hex(hex).map_err(|_| invalid("want 64 lowercase hex characters"))
    }

    /// Accepts the bare 64-hex form (a Docker image ID, a blob file name).
    pub fn from_hex(hex: &str) -> Result<Digest, Error> {
        let is_hex = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_hex {
            return Err(Error::Invalid {
                input: hex.to_string(),
                reason: "want 64 lowercase hex characters",
            });
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut v = Verifier::new();
        v.update(data);
        v.digest()
    }

    /// The 64 hex characters, used as the blob's file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// `sha256:ab12cd34ef56`: for log lines.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Hashes bytes as they pass and counts them.
pub struct Verifier {
    hasher: Sha256,
    len: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier {
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything seen so far.
    pub fn digest(self) -> Digest {
        let sum = self.hasher.finalize();
        let mut hex = String::with_capacity(64);
        for b in sum.iter() {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Digest { hex }
    }

    /// Checks length (if known) and digest; size first, because a wrong size explains
    /// a wrong digest more plainly.
    pub fn verify(self, want: &Digest, want_size: Option<u64>) -> Result<(), Error> {
        if let Some(want_size) = want_size
            && want_size != self.len
        {
            return Err(Error::SizeMismatch {
                want: want_size,
                got: self.len,
            });
        }
        let got = self.digest();
        if &got != want {
            return Err(Error::Mismatch {
                want: want.clone(),
                got,
            });
        }
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A writer that hashes what is written through it (used as the sink of a decompressor to
/// compute a layer's diff_id without storing the uncompressed tar).
pub struct HashingWriter<W> {
    pub inner: W,
    pub verifier: Verifier,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.verifier.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_table() {
        let cases: &[(&str, bool)] = &[
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                true,
            ),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                false,
            ),
            ("sha256:e3b0", false),
            (
                "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                false,
            ),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                false,
            ),
            (
                "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
                false,
            ),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(Digest::parse(input).is_ok(), *ok, "{input}");
        }
        let d = Digest::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
        assert_eq!(d.hex(), EMPTY);
    }

    #[test]
    fn verifier_checks_size_then_digest() {
        let want = Digest::of(b"hello");
        let mut v = Verifier::new();
        v.update(b"hello");
        assert!(v.verify(&want, Some(5)).is_ok());

        let mut v = Verifier::new();
        v.update(b"hellO");
        let err = v.verify(&want, Some(5)).unwrap_err().to_string();
        assert!(
            err.starts_with("digest mismatch: want sha256:2cf24d"),
            "{err}"
        );

        let mut v = Verifier::new();
        v.update(b"hell");
        let err = v.verify(&want, Some(5)).unwrap_err().to_string();
        assert_eq!(err, "size mismatch: want 5 bytes, got 4");
    }

    #[test]
    fn empty_digest_is_well_known() {
        assert_eq!(Digest::of(b"").hex(), EMPTY);
    }
}
