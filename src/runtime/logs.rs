//! CRI-format container log files: what containerd's CRI plugin writes and kubelet reads.
//!
//! Owns: the record format, the writer (line splitting, 16 KiB partial records, rotation) and the
//! reader behind `nanolet logs`.
//! Never does: read the clock (callers pass `now`), or know which pod a file belongs to (callers
//! pass the path, kubelet-style `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restartCount>.log`).
//!
//! One record per line:
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout F hello
//! └ RFC 3339, UTC, 9 digits       │      │ └ content, without its newline
//!                                 │      └ F: ends a line; P: partial, the line goes on
//!                                 └ stdout | stderr
//! ```
//!
//! Writing follows containerd's `cri/io/logger.go`: a `\n` (or `\r\n`) ends a line, written as one
//! `F` record; a line longer than [`MAX_RECORD_CONTENT`] is cut into `P` records of that size and a
//! final `F`; what is left without a newline when the stream ends is written as a `P` record (see
//! [`LogWriter::flush_partial`]).
//!
//! Rotation follows kubelet's container log manager: when writing a record would take `N.log` past
//! `max_size`, it is renamed to `N.log.<YYYYMMDD-HHMMSS>` (UTC) and a new `N.log` started; at most
//! `max_files` files (current and rotated) are kept for that `N.log`, oldest rotated ones deleted
//! first. Unlike kubelet, rotated files are not compressed (no gzip writer in the binary); the
//! reader ignores `.gz` files. Rotation happens on the write path, not on a 10 s timer, so a file
//! never exceeds `max_size` unless one record alone does.
//!
//! Reading (`write_contents`) joins each stream's `P` records with the `F` that ends them, so
//! `tail` counts the lines the container printed, not records.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::api::time::{civil, format_nano_time, unix};

/// The longest content of one record, containerd's default `max_container_log_line_size`.
pub const MAX_RECORD_CONTENT: usize = 16 * 1024;

/// The stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// The suffix of a rotated log file, `YYYYMMDD-HHMMSS` in UTC (kubelet's format).
pub fn rotation_suffix(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(unix(t).0);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// Appends CRI-format records for one container to `<dir>/N.log`, rotating it by size.
///
/// Blocking file I/O: each `write` is a few small appends to a local file.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    /// Per stream, the start of a line whose newline has not arrived yet.
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) or creates `path` and its directories. `max_size` 0 turns rotation off;
    /// `max_files` counts the current file, so values below 1 mean 1.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Feeds raw bytes read from the container's `stream`: complete lines are written as `F`
    /// records; the rest is kept for the next call, cut into `P` records once it exceeds
    /// [`MAX_RECORD_CONTENT`].
    pub fn write(&mut self, stream: Stream, data: &[u8], now: SystemTime) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.pending[stream.index()]);
        let result = self.write_lines(stream, &mut buf, data, now);
        // Keep the allocation only while a line is unfinished: a container that printed one
        // long line once must not hold its length for the rest of its life.
        if buf.is_empty() {
            buf = Vec::new();
        }
        self.pending[stream.index()] = buf;
        result
    }

    fn write_lines(
        &mut self,
        stream: Stream,
        buf: &mut Vec<u8>,
        mut data: &[u8],
        now: SystemTime,
    ) -> io::Result<()> {
        loop {
            let newline = data.iter().position(|&b| b == b'\n');
            let (segment, rest) = match newline {
                Some(i) => (&data[..i], Some(&data[i + 1..])),
                None => (data, None),
            };
            buf.extend_from_slice(segment);
            if rest.is_some() && buf.last() == Some(&b'\r') {
                buf.pop(); // "\r\n" ends a line like "\n"
            }
            // A trailing '\r' without its '\n' yet may still be half of a "\r\n": don't count it.
            let counted =
                |b: &Vec<u8>| b.len() - usize::from(rest.is_none() && b.last() == Some(&b'\r'));
            while counted(buf) > MAX_RECORD_CONTENT {
                self.write_record(stream, true, &buf[..MAX_RECORD_CONTENT], now)?;
                buf.drain(..MAX_RECORD_CONTENT);
            }
            match rest {
                Some(rest) => {
                    self.write_record(stream, false, buf, now)?;
                    buf.clear();
                    data = rest;
                }
                None => return Ok(()),
            }
        }
    }

    /// At the end of `stream` (the container exited): writes what is left without a newline as a
    /// `P` record, as containerd does, so readers can tell the line never ended.
    pub fn flush_partial(&mut self, stream: Stream, now: SystemTime) -> io::Result<()> {
        let buf = std::mem::take(&mut self.pending[stream.index()]);
        if buf.is_empty() {
            return Ok(());
        }
        self.write_record(stream, true, &buf, now)
    }

    fn write_record(
        &mut self,
        stream: Stream,
        partial: bool,
        content: &[u8],
        now: SystemTime,
    ) -> io::Result<()> {
        let tag = if partial { "P" } else { "F" };
        let header = format!("{} {} {tag} ", format_nano_time(now), stream.as_str());
        let mut record = Vec::with_capacity(header.len() + content.len() + 1);
        record.extend_from_slice(header.as_bytes());
        record.extend_from_slice(content);
        record.push(b'\n');
        let len = record.len() as u64;
        if self.max_size > 0 && self.size > 0 && self.size + len > self.max_size {
            self.rotate(now)?;
        }
        // One write per record, so a reader never sees half a header.
        self.file.write_all(&record)?;
        self.size += len;
        Ok(())
    }

    /// `N.log` → `N.log.<suffix>`, a new `N.log`, then delete the oldest rotated files.
    fn rotate(&mut self, now: SystemTime) -> io::Result<()> {
        let mut rotated = with_suffix(&self.path, &rotation_suffix(now));
        // Two rotations within a second: `.<suffix>.1`, `.2`, … (sorted numerically on reading).
        let mut n = 0u32;
        while rotated.exists() {
            n += 1;
            rotated = with_suffix(&self.path, &format!("{}.{n}", rotation_suffix(now)));
        }
        fs::rename(&self.path, &rotated)?;
        self.file = open_append(&self.path)?;
        self.size = 0;

        // The rotation is done; failing to prune must not lose the record being written.
        if let Err(e) = self.remove_oldest_rotated() {
            log::warn!(
                "container log {}: removing old rotated files: {e}",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Deletes the oldest rotated files until at most `max_files` remain, the current included.
    fn remove_oldest_rotated(&self) -> io::Result<()> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let base = file_name(&self.path);
        let mut rotated: Vec<(Rotation, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((Rotation::of(e.file_name().to_str()?, &base)?, e.path())))
            .collect();
        rotated.sort();
        let keep = self.max_files as usize - 1; // the current file counts as one
        let excess = rotated.len().saturating_sub(keep);
        for (_, path) in rotated.into_iter().take(excess) {
            fs::remove_file(path)?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sort key of a log file name: `N.log` or `N.log.<YYYYMMDD-HHMMSS>[.<seq>]`.
/// Orders by restart count, then rotated files oldest first, then the current file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct LogFileKey {
    restart: u64,
    is_current: bool,
    rotation: Rotation,
}

/// The suffix of a rotated file, `<YYYYMMDD-HHMMSS>[.<seq>]`, ordered oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Rotation {
    stamp: String,
    seq: u32,
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl Rotation {
    /// Parses the part after `N.log.`; `None` for other files (`.gz`, `.tmp`): not ours to read.
    fn parse(suffix: &str) -> Option<Rotation> {
        let (stamp, seq) = match suffix.split_once('.') {
            Some((stamp, seq)) if all_digits(seq) => (stamp, seq.parse().ok()?),
            Some(_) => return None,
            None => (suffix, 0),
        };
        let is_stamp = stamp.len() == 15
            && stamp.bytes().enumerate().all(|(i, b)| match i {
                8 => b == b'-',
                _ => b.is_ascii_digit(),
            });
        is_stamp.then(|| Rotation {
            stamp: stamp.to_string(),
            seq,
        })
    }

    /// The rotation of `name` if it is a rotated copy of the file named `base`.
    fn of(name: &str, base: &str) -> Option<Rotation> {
        Rotation::parse(name.strip_prefix(base)?.strip_prefix('.')?)
    }
}

impl LogFileKey {
    fn parse(name: &str) -> Option<LogFileKey> {
        let (restart, rest) = name.split_once(".log")?;
        if !all_digits(restart) {
            return None;
        }
        let restart = restart.parse().unwrap_or(u64::MAX);
        if rest.is_empty() {
            let rotation = Rotation::default();
            return Some(LogFileKey {
                restart,
                is_current: true,
                rotation,
            });
        }
        let rotation = Rotation::parse(rest.strip_prefix('.')?)?;
        Some(LogFileKey {
            restart,
            is_current: false,
            rotation,
        })
    }
}

/// Lists a container's log files (`dir` holds `N.log` and its rotated `N.log.<time>` files),
/// oldest first: by restart count, rotated before current. Other files are ignored.
pub fn container_log_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<(LogFileKey, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((LogFileKey::parse(e.file_name().to_str()?)?, e.path())))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// One record of a CRI log file, borrowed from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// The RFC 3339 timestamp as written.
    pub time: &'a str,
    pub stream: Stream,
    /// `P`: the line continues in the stream's next record.
    pub partial: bool,
    /// The content, without the record's newline.
    pub content: &'a [u8],
}

/// Why a line is not a CRI log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogParseError {
    /// The line ends before the named field (`timestamp`, `stream`, `tag`).
    Missing { field: &'static str },
    /// The timestamp is not RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`).
    Timestamp { found: String },
    /// The stream is neither `stdout` nor `stderr`.
    Stream { found: String },
    /// The tag is neither `F` nor `P` (optionally followed by `:`-separated tags).
    Tag { found: String },
}

impl fmt::Display for LogParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogParseError::Missing { field } => write!(f, "cri log record: missing {field}"),
            LogParseError::Timestamp { found } => {
                write!(f, "cri log record: timestamp {found:?}: want RFC 3339")
            }
            LogParseError::Stream { found } => {
                write!(
                    f,
                    "cri log record: stream {found:?}: want \"stdout\" or \"stderr\""
                )
            }
            LogParseError::Tag { found } => {
                write!(f, "cri log record: tag {found:?}: want \"F\" or \"P\"")
            }
        }
    }
}

impl std::error::Error for LogParseError {}

/// Splits `line` at the first space: (field, rest after the space).
fn field<'a>(line: &'a [u8], name: &'static str) -> Result<(&'a [u8], &'a [u8]), LogParseError> {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => Ok((&line[..i], &line[i + 1..])),
        None => Err(LogParseError::Missing { field: name }),
    }
}

/// Whether `s` has RFC 3339's shape; the values are not range-checked (kubelet only needs to
/// print and compare them).
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let fixed = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !fixed {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|d| d.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// Parses one line of a CRI log file (a trailing `\n` is allowed).
pub fn parse_line(line: &[u8]) -> Result<LogRecord<'_>, LogParseError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (time, rest) = field(line, "stream")?;
    let time = std::str::from_utf8(time)
        .ok()
        .filter(|t| is_rfc3339(t))
        .ok_or_else(|| LogParseError::Timestamp { found: lossy(time) })?;
    let (stream, rest) = field(rest, "tag")?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        other => {
            return Err(LogParseError::Stream {
                found: lossy(other),
            });
        }
    };
    // Without the space after the tag, the content field is missing: kubelet rejects that too.
    let (tags, content) = field(rest, "content")?;
    let partial = match tags.split(|&b| b == b':').next() {
        Some(b"F") => false,
        Some(b"P") => true,
        _ => return Err(LogParseError::Tag { found: lossy(tags) }),
    };
    Ok(LogRecord {
        time,
        stream,
        partial,
        content,
    })
}

/// Collects complete lines from records, joining each stream's `P` records with their `F`.
struct LineJoiner {
    pending: [Vec<u8>; 2],
    /// With a tail: the last `n` complete lines; without, lines go straight out.
    tail: Option<(usize, VecDeque<Vec<u8>>)>,
}

impl LineJoiner {
    fn push(&mut self, record: &LogRecord<'_>, out: &mut dyn Write) -> io::Result<()> {
        let pending = &mut self.pending[record.stream.index()];
        pending.extend_from_slice(record.content);
        if record.partial {
            return Ok(());
        }
        pending.push(b'\n');
        let line = std::mem::take(pending);
        self.emit(line, out)
    }

    fn emit(&mut self, line: Vec<u8>, out: &mut dyn Write) -> io::Result<()> {
        match &mut self.tail {
            None => out.write_all(&line),
            Some((n, lines)) => {
                if *n > 0 {
                    if lines.len() == *n {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
                Ok(())
            }
        }
    }

    /// Lines that never ended (the container died mid-line) come last, without a newline.
    fn finish(mut self, out: &mut dyn Write) -> io::Result<()> {
        for i in 0..self.pending.len() {
            let rest = std::mem::take(&mut self.pending[i]);
            if !rest.is_empty() {
                self.emit(rest, out)?;
            }
        }
        if let Some((_, lines)) = self.tail {
            for line in lines {
                out.write_all(&line)?;
            }
        }
        Ok(())
    }
}

/// Writes the content of `files` (oldest first, as [`container_log_files`] returns them) to
/// `out`: the last `tail` lines, or all with `None`. `P` records are joined with the `F` that ends
/// them, per stream. Malformed lines are skipped with a warning, as kubelet does.
///
/// Reads every file from the start: bounded by `max_files * max_size`, small on an appliance.
pub fn write_contents(
    files: &[PathBuf],
    tail: Option<usize>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut joiner = LineJoiner {
        pending: [Vec::new(), Vec::new()],
        tail: tail.map(|n| (n, VecDeque::with_capacity(n.min(1024)))),
    };
    for path in files {
        let mut reader = BufReader::new(File::open(path)?);
        let mut line = Vec::new();
        let mut number = 0usize;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            number += 1;
            match parse_line(&line) {
                Ok(record) => joiner.push(&record, out)?,
                Err(e) => log::warn!("{}:{number}: {e}: skipped", path.display()),
            }
        }
    }
    joiner.finish(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: i64, nanos: u32) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nanos.into())
        }
    }

    const T0: i64 = 1_475_713_029; // 2016-10-06T00:17:09Z

    #[test]
    fn formats_timestamps_like_containerd() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (T0, 669_794_202, "2016-10-06T00:17:09.669794202Z"),
            (951_825_600, 1, "2000-02-29T12:00:00.000000001Z"), // leap year divisible by 400
            (1_709_251_199, 999_999_999, "2024-02-29T23:59:59.999999999Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000000000Z"), // 2100 is not a leap year
            (2_147_483_648, 0, "2038-01-19T03:14:08.000000000Z"),
            (-1, 500_000_000, "1969-12-31T23:59:59.500000000Z"),
            (-2_203_891_200, 0, "1900-03-01T00:00:00.000000000Z"),
            (-11_670_998_400, 0, "1600-02-29T00:00:00.000000000Z"),
        ];
        for (secs, nanos, want) in cases {
            assert_eq!(
                format_nano_time(at(secs, nanos)),
                want,
                "unix time {secs}.{nanos:09}"
            );
        }
        assert_eq!(rotation_suffix(at(T0, 669_794_202)), "20161006-001709");
    }

    fn read(path: &Path) -> String {
        String::from_utf8(fs::read(path).unwrap()).unwrap()
    }

    fn writer(dir: &Path) -> LogWriter {
        LogWriter::open(&dir.join("app/0.log"), 0, 5).unwrap()
    }

    #[test]
    fn writes_complete_lines_as_full_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let now = at(T0, 669_794_202);
        w.write(Stream::Stdout, b"hello\nwor", now).unwrap();
        w.write(Stream::Stderr, b"oops\r\n", now).unwrap();
        w.write(Stream::Stdout, b"ld\n\nbare\rcr\r", now).unwrap();
        w.write(Stream::Stdout, b"\n", now).unwrap();
        assert_eq!(
            read(&dir.path().join("app/0.log")),
            "2016-10-06T00:17:09.669794202Z stdout F hello\n\
             2016-10-06T00:17:09.669794202Z stderr F oops\n\
             2016-10-06T00:17:09.669794202Z stdout F world\n\
             2016-10-06T00:17:09.669794202Z stdout F \n\
             2016-10-06T00:17:09.669794202Z stdout F bare\rcr\n"
        );
    }

    #[test]
    fn flushes_an_unterminated_line_as_partial() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.write(Stream::Stdout, b"no newline", at(0, 0)).unwrap();
        w.flush_partial(Stream::Stderr, at(0, 0)).unwrap(); // nothing pending there
        w.flush_partial(Stream::Stdout, at(1, 0)).unwrap();
        w.flush_partial(Stream::Stdout, at(1, 0)).unwrap(); // already flushed
        assert_eq!(
            read(&dir.path().join("app/0.log")),
            "1970-01-01T00:00:01.000000000Z stdout P no newline\n"
        );
    }

    #[test]
    fn splits_long_lines_into_partial_records() {
        let max = MAX_RECORD_CONTENT;
        /// (partial, content length) of each record.
        type Records = Vec<(bool, usize)>;
        let cases: &[(&str, Vec<&[u8]>, usize, Records)] = &[
            // name, writes, total content, want records (partial, content length)
            (
                "exactly max",
                vec![&[b'a'; MAX_RECORD_CONTENT], b"\n"],
                max,
                vec![(false, max)],
            ),
            (
                "max + 1",
                vec![&[b'a'; MAX_RECORD_CONTENT + 1], b"\n"],
                max + 1,
                vec![(true, max), (false, 1)],
            ),
            (
                "max then crlf",
                vec![&[b'a'; MAX_RECORD_CONTENT], b"\r", b"\n"],
                max,
                vec![(false, max)],
            ),
            (
                "2 max + 5 in pieces",
                vec![
                    &[b'a'; 10_000],
                    &[b'a'; 10_000],
                    &[b'a'; 10_000],
                    &[b'a'; 2773],
                    b"\n",
                ],
                2 * max + 5,
                vec![(true, max), (true, max), (false, 5)],
            ),
        ];
        for (name, writes, total, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut w = writer(dir.path());
            for data in writes {
                w.write(Stream::Stdout, data, at(0, 0)).unwrap();
            }
            let text = fs::read(dir.path().join("app/0.log")).unwrap();
            let got: Vec<(bool, usize)> = text
                .split_inclusive(|&b| b == b'\n')
                .map(|l| parse_line(l).unwrap())
                .map(|r| (r.partial, r.content.len()))
                .collect();
            assert_eq!(&got, want, "{name}");
            let mut joined = Vec::new();
            write_contents(&[dir.path().join("app/0.log")], None, &mut joined).unwrap();
            assert_eq!(joined.len(), total + 1, "{name}: joined line length");
        }
    }

    #[test]
    fn parses_records_and_rejects_malformed_lines() {
        let ok = parse_line(b"2016-10-06T00:17:09.669794202Z stderr P a b  c\n").unwrap();
        assert_eq!(
            ok,
            LogRecord {
                time: "2016-10-06T00:17:09.669794202Z",
                stream: Stream::Stderr,
                partial: true,
                content: b"a b  c"
            }
        );
        let empty = parse_line(b"2016-10-06T00:17:09+02:00 stdout F:x ").unwrap();
        assert_eq!((empty.partial, empty.content), (false, &b""[..]));
        assert_eq!(
            parse_line(b"2016-10-06T00:17:09Z stdout F hi")
                .unwrap()
                .content,
            b"hi"
        );

        let cases: &[(&[u8], &str)] = &[
            (b"", "cri log record: missing stream"),
            (b"2016-10-06T00:17:09Z", "cri log record: missing stream"),
            (
                b"2016-10-06T00:17:09Z stdout",
                "cri log record: missing tag",
            ),
            (
                b"2016-10-06T00:17:09Z stdout F",
                "cri log record: missing content",
            ),
            (
                b"yesterday stdout F hi",
                "cri log record: timestamp \"yesterday\": want RFC 3339",
            ),
            (
                b"2016-10-06 stdout F hi",
                "cri log record: timestamp \"2016-10-06\": want RFC 3339",
            ),
            (
                b"2016-10-06T00:17:09. stdout F hi",
                "cri log record: timestamp \"2016-10-06T00:17:09.\": want RFC 3339",
            ),
            (
                b"2016-10-06T00:17:09Z stdin F hi",
                "cri log record: stream \"stdin\": want \"stdout\" or \"stderr\"",
            ),
            (
                b"2016-10-06T00:17:09Z stdout X hi",
                "cri log record: tag \"X\": want \"F\" or \"P\"",
            ),
            (
                b"2016-10-06T00:17:09Z stdout  hi",
                "cri log record: tag \"\": want \"F\" or \"P\"",
            ),
        ];
        for (line, want) in cases {
            let got = parse_line(line)
                .map(|r| format!("{r:?}"))
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                Err(want.to_string()),
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    fn contents(files: &[PathBuf], tail: Option<usize>) -> String {
        let mut out = Vec::new();
        write_contents(files, tail, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files.iter().map(|p| file_name(p)).collect()
    }

    /// Each record below is 46 bytes (30 of timestamp, " stdout F ", "lineN", "\n"), so a 100-byte
    /// file holds two; a rotated file is named after the time of the rotation, as in kubelet.
    #[test]
    fn rotates_keeping_max_files_and_the_newest_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 100, 3).unwrap();
        for i in 0..10u32 {
            // One second apart, so every rotation gets its own name.
            w.write(
                Stream::Stdout,
                format!("line{i}\n").as_bytes(),
                at(T0 + i64::from(i), 0),
            )
            .unwrap();
        }
        let files = container_log_files(dir.path()).unwrap();
        assert_eq!(
            names(&files),
            ["0.log.20161006-001715", "0.log.20161006-001717", "0.log"]
        );
        assert_eq!(
            contents(&files, None),
            "line4\nline5\nline6\nline7\nline8\nline9\n"
        );
        for f in &files {
            assert!(
                fs::metadata(f).unwrap().len() <= 100,
                "{}: over max_size",
                f.display()
            );
        }
    }

    #[test]
    fn rotations_within_one_second_do_not_overwrite_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 50, 20).unwrap();
        for i in 0..12 {
            w.write(
                Stream::Stdout,
                format!("line{i:02}\n").as_bytes(),
                at(T0, 0),
            )
            .unwrap();
        }
        let files = container_log_files(dir.path()).unwrap();
        assert_eq!(files.len(), 12);
        assert_eq!(
            names(&files)[..3],
            [
                "0.log.20161006-001709",
                "0.log.20161006-001709.1",
                "0.log.20161006-001709.2"
            ]
        );
        assert_eq!(names(&files)[10], "0.log.20161006-001709.10");
        let all: String = (0..12).map(|i| format!("line{i:02}\n")).collect();
        assert_eq!(contents(&files, None), all);
    }

    #[test]
    fn prunes_rotated_files_of_any_log_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(&dir.path().join("custom.log"), 50, 2).unwrap();
        for i in 0..5 {
            w.write(
                Stream::Stdout,
                format!("line{i}\n").as_bytes(),
                at(T0 + i, 0),
            )
            .unwrap();
        }
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // One 46-byte record per file; the last rotation, at line4's time, moved line3 aside.
        assert_eq!(left, ["custom.log", "custom.log.20161006-001713"]);
        assert!(read(&dir.path().join("custom.log.20161006-001713")).ends_with(" F line3\n"));
        assert!(read(&dir.path().join("custom.log")).ends_with(" stdout F line4\n"));
    }

    #[test]
    fn reopening_appends_and_keeps_counting_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        LogWriter::open(&path, 100, 2)
            .unwrap()
            .write(Stream::Stdout, b"line0\nline1\n", at(T0, 0))
            .unwrap();
        let mut w = LogWriter::open(&path, 100, 2).unwrap();
        w.write(Stream::Stdout, b"line2\n", at(T0 + 1, 0)).unwrap();
        let files = container_log_files(dir.path()).unwrap();
        assert_eq!(names(&files), ["0.log.20161006-001710", "0.log"]);
        assert_eq!(contents(&files, None), "line0\nline1\nline2\n");
    }

    #[test]
    fn tails_lines_across_a_rotation_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 100, 5).unwrap();
        // Records: "a" 42 bytes, "long-" (P) 46, "line" (F) 45, "b" 42, "c" 42: the line
        // "long-line" starts in the first file and ends in the second.
        w.write(Stream::Stdout, b"a\n", at(T0, 0)).unwrap();
        w.write(Stream::Stderr, b"long-", at(T0, 0)).unwrap();
        w.flush_partial(Stream::Stderr, at(T0, 0)).unwrap();
        w.write(Stream::Stderr, b"line\n", at(T0 + 1, 0)).unwrap();
        w.write(Stream::Stdout, b"b\n", at(T0 + 1, 0)).unwrap();
        w.write(Stream::Stdout, b"c\n", at(T0 + 2, 0)).unwrap();
        let files = container_log_files(dir.path()).unwrap();
        assert_eq!(
            names(&files),
            ["0.log.20161006-001710", "0.log.20161006-001711", "0.log"]
        );
        let first = read(&files[0]);
        assert!(first.ends_with(" stderr P long-\n"), "{first:?}");
        let cases = [
            (None, "a\nlong-line\nb\nc\n"),
            (Some(0), ""),
            (Some(1), "c\n"),
            (Some(2), "b\nc\n"),
            (Some(3), "long-line\nb\nc\n"),
            (Some(100), "a\nlong-line\nb\nc\n"),
        ];
        for (tail, want) in cases {
            assert_eq!(contents(&files, tail), want, "tail {tail:?}");
        }
    }

    #[test]
    fn reading_joins_partials_per_stream_and_skips_malformed_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        fs::write(
            &path,
            "2016-10-06T00:17:09.000000000Z stdout P hel\n\
             2016-10-06T00:17:09.000000000Z stderr F err\n\
             garbage\n\
             2016-10-06T00:17:09.000000000Z stdout F lo\n\
             2016-10-06T00:17:09.000000000Z stdout P unfinished",
        )
        .unwrap();
        assert_eq!(
            contents(std::slice::from_ref(&path), None),
            "err\nhello\nunfinished"
        );
        assert_eq!(contents(&[path], Some(2)), "hello\nunfinished");
    }

    #[test]
    fn lists_log_files_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "1.log",
            "0.log",
            "0.log.20261128-040440",
            "0.log.20261128-040440.2",
            "0.log.20261128-040440.10",
            "0.log.20250101-000000",
            "0.log.20250101-000000.gz",
            "1.log.20261128-050000",
            "10.log",
            "x.log",
            "0.log.tmp",
            "notes.txt",
        ] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let files = container_log_files(dir.path()).unwrap();
        assert_eq!(
            names(&files),
            [
                "0.log.20250101-000000",
                "0.log.20261128-040440",
                "0.log.20261128-040440.2",
                "0.log.20261128-040440.10",
                "0.log",
                "1.log.20261128-050000",
                "1.log",
                "10.log",
            ]
        );
    }
}
