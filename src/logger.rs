//! A small stderr logger for the `log` facade: `<level letter> <unix time.ms> <message>`.
//!
//! A logging crate would cost more bytes than the ~20 lines it replaces.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Libraries' debug lines (ureq-proto logs every HTTP state) drown nanolet's own.
        metadata.level() <= log::max_level()
            && (metadata.level() <= Level::Info || metadata.target().starts_with("nanolet"))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let letter = match record.level() {
            Level::Error => 'E',
            Level::Warn => 'W',
            Level::Info => 'I',
            Level::Debug => 'D',
            Level::Trace => 'T',
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // One write per line, so lines from this process never interleave.
        let line = format!(
            "{letter} {}.{:03} {}\n",
            now.as_secs(),
            now.subsec_millis(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger at `level` (`error`, `warn`, `info`, `debug`, `trace`).
pub fn init(level: &str) {
    let filter = level.parse().unwrap_or(LevelFilter::Info);
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(filter);
    }
}
