//! What the bench reads about processes and files: memory and CPU time from `/proc`, the mounts
//! below a folder, whether an ELF binary still carries a symbol table.
//!
//! The parsers are pure (text or bytes in, numbers out) so the self-check in `main` can test them
//! without root; the readers around them are one-line file reads. Never writes anything.

use std::fs;
use std::path::Path;

/// A process's memory, in KiB, as the kernel accounts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS` from `/proc/<pid>/status`: resident pages, shared ones counted in full.
    pub rss_kib: u64,
    /// `Pss` from `/proc/<pid>/smaps_rollup`: resident pages, shared ones divided among sharers.
    pub pss_kib: u64,
}

/// A process's CPU time so far, in clock ticks (`USER_HZ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    /// `utime + stime` of the process itself.
    pub own: u64,
    /// `cutime + cstime`: its children that it has waited for (runc, helpers).
    pub children: u64,
}

/// The `kB` value of `field` in a `/proc` file of `Name:   123 kB` lines.
pub fn field_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The CPU ticks in a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`: field 3 (state) is index 0 there,
/// utime/stime/cutime/cstime (fields 14-17) are indexes 11-14.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let (_, after) = text.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(CpuTicks {
        own: tick(11)? + tick(12)?,
        children: tick(13)? + tick(14)?,
    })
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(Memory {
        rss_kib: field_kib(&status, "VmRSS")?,
        pss_kib: field_kib(&rollup, "Pss")?,
    })
}

pub fn cpu_ticks(pid: u32) -> Option<CpuTicks> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `USER_HZ`, the unit of `/proc/<pid>/stat` times: `getconf CLK_TCK`, else 100 (its value on
/// every Linux architecture nanolet targets).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// The mount points in `mountinfo` text that are `base` or below it, deepest first (the order
/// to unmount them in). Mount points are unescaped (`\040` is a space).
pub fn mounts_under(mountinfo: &str, base: &Path) -> Vec<String> {
    let mut found: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .filter(|point| Path::new(point).starts_with(base))
        .collect();
    found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        let value = digits
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')));
        match value.and_then(|v| u8::try_from(v).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a 64-bit little-endian ELF file still has a symbol table section (`SHT_SYMTAB`),
/// i.e. is not stripped. `None` when the bytes are not such an ELF file.
pub fn elf_has_symtab(elf: &[u8]) -> Option<bool> {
    const SHT_SYMTAB: u32 = 2;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let section_headers = usize::try_from(u64_at(0x28)?).ok()?;
    let entry_size = usize::from(u16_at(0x3a)?);
    let count = usize::from(u16_at(0x3c)?);
    for i in 0..count {
        let header = section_headers.checked_add(i.checked_mul(entry_size)?)?;
        if u32_at(header + 4)? == SHT_SYMTAB {
            return Some(true);
        }
    }
    Some(false)
}
