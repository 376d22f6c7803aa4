//! Image garbage collection, as kubelet's image GC manager does it: when the filesystem holding
//! the image store is at or above `imageGCHighThresholdPercent` used, unused images are removed,
//! least recently used first, until the usage would drop below `imageGCLowThresholdPercent`.
//! An image detected or used less than `imageMinimumGCAge` ago is kept.
//!
//! Owns the decision ([`plan`], pure: usage, images and the time are passed in), the record of
//! when each image was last used and first detected ([`UseLog`], in memory), and one small I/O
//! helper ([`disk_usage`], a `statvfs`). It must never remove anything itself: the agent carries
//! the plan out in `nanolet rmi` children, since removal deletes whole trees.
//!
//! ```text
//!   usage% >= high?  no → nothing
//!        │ yes
//!   bytes to free = used − capacity·low/100
//!   unused images, oldest last use first, skipping the too young
//!        → take until the bytes to free are covered (or none are left)
//! ```
//!
//! Sizes are the store's record of each image (config + compressed layers): blobs shared with
//! other images are not freed, and the unpacked rootfs frees more. The estimate only chooses how
//! many images to take; the next periodic tick measures again and removes more if needed.
//!
//! Times are Unix seconds. An image never used since nanolet started counts as used at start
//! time (the log is not kept across restarts), so a restart never makes every image "old".

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The three KubeletConfiguration settings that steer image GC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// `imageGCHighThresholdPercent`: GC runs at or above this disk usage; 100 disables it.
    pub high_percent: u8,
    /// `imageGCLowThresholdPercent`: GC frees space down to this disk usage.
    pub low_percent: u8,
    /// `imageMinimumGCAge`: an image younger than this (since first detected or last used) stays.
    pub minimum_age: Duration,
}

/// How full the filesystem holding the image store is, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub capacity: u64,
    /// Bytes an unprivileged writer can still use (`f_bavail`), as kubelet counts.
    pub available: u64,
}

impl DiskUsage {
    /// Used share of the capacity, rounded down, as kubelet computes it.
    pub fn used_percent(&self) -> u8 {
        if self.capacity == 0 {
            return 0;
        }
        let available = self.available.min(self.capacity);
        let used = (self.capacity - available) as u128 * 100 / self.capacity as u128;
        used as u8
    }
}

/// An image in the store, as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// What `nanolet rmi` removes the whole image by: its manifest digest.
    pub id: String,
    /// For log lines: the image's names.
    pub names: Vec<String>,
    pub size: u64,
    pub last_used: i64,
    pub first_detected: i64,
    /// A container of a pod nanolet runs or wants to run uses it.
    pub in_use: bool,
}

/// What GC decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub used_percent: u8,
    /// Bytes to free to reach the low threshold.
    pub bytes_to_free: u64,
    /// Images to remove, in order.
    pub remove: Vec<Candidate>,
    /// Bytes the removals are estimated not to cover (all unused, old-enough images are taken).
    pub shortfall: u64,
}

/// kubelet's image GC decision. `None` when usage is below the high threshold, or when
/// `high_percent` is 100, which disables GC as in KubeletConfiguration.
pub fn plan(
    usage: DiskUsage,
    images: &[Candidate],
    now: i64,
    thresholds: &Thresholds,
) -> Option<Plan> {
    let used_percent = usage.used_percent();
    if thresholds.high_percent >= 100
        || usage.capacity == 0
        || used_percent < thresholds.high_percent
    {
        return None;
    }
    let used = usage.capacity - usage.available.min(usage.capacity);
    let low_bytes = (usage.capacity as u128 * thresholds.low_percent as u128 / 100) as u64;
    let bytes_to_free = used.saturating_sub(low_bytes);
    let min_age = thresholds.minimum_age.as_secs() as i64;
    let mut unused: Vec<&Candidate> = images
        .iter()
        .filter(|c| !c.in_use)
        .filter(|c| now - c.first_detected.max(c.last_used) >= min_age)
        .collect();
    // Least recently used first; ties by first detection, then id, so the plan is stable.
    unused.sort_by(|a, b| {
        (a.last_used, a.first_detected, &a.id).cmp(&(b.last_used, b.first_detected, &b.id))
    });
    let mut freed = 0u64;
    let mut remove = Vec::new();
    for c in unused {
        if freed >= bytes_to_free {
            break;
        }
        freed = freed.saturating_add(c.size);
        remove.push(c.clone());
    }
    Some(Plan {
        used_percent,
        bytes_to_free,
        remove,
        shortfall: bytes_to_free.saturating_sub(freed),
    })
}

/// When each image (by manifest digest) was last used by a container start, and first seen
/// by GC. In memory: see the module doc.
#[derive(Debug, Clone, Default)]
pub struct UseLog {
    started_at: i64,
    last_used: HashMap<String, i64>,
    first_detected: HashMap<String, i64>,
}

impl UseLog {
    /// A log for an agent started at `started_at`.
    pub fn new(started_at: i64) -> UseLog {
        UseLog {
            started_at,
            ..UseLog::default()
        }
    }

    /// A container started with the image `id` at `now`.
    pub fn record_use(&mut self, id: &str, now: i64) {
        self.last_used.insert(id.to_string(), now);
        self.first_detected.entry(id.to_string()).or_insert(now);
    }

    /// Whether a container started with the image `id` at or after `t`: a removal planned at
    /// `t` is called off then.
    pub fn is_used_since(&self, id: &str, t: i64) -> bool {
        self.last_used.get(id).is_some_and(|&used| used >= t)
    }

    /// Candidates for the store's images `(id, names, size)`; `in_use` says which ids a pod
    /// needs. Images seen for the first time are recorded as detected `now`; ids no longer in
    /// the store are forgotten.
    pub fn candidates(
        &mut self,
        images: impl IntoIterator<Item = (String, Vec<String>, u64)>,
        in_use: &HashSet<String>,
        now: i64,
    ) -> Vec<Candidate> {
        let list: Vec<Candidate> = images
            .into_iter()
            .map(|(id, names, size)| {
                let first_detected = *self.first_detected.entry(id.clone()).or_insert(now);
                Candidate {
                    last_used: self.last_used.get(&id).copied().unwrap_or(self.started_at),
                    first_detected,
                    in_use: in_use.contains(&id),
                    id,
                    names,
                    size,
                }
            })
            .collect();
        let present: HashSet<&str> = list.iter().map(|c| c.id.as_str()).collect();
        self.first_detected
            .retain(|id, _| present.contains(id.as_str()));
        self.last_used.retain(|id, _| present.contains(id.as_str()));
        list
    }
}

/// Why the disk usage could not be read.
#[derive(Debug)]
pub enum Error {
    Statvfs {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Statvfs { path, source } => {
                write!(f, "image store {}: statvfs: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Statvfs { source, .. } => Some(source),
        }
    }
}

/// The usage of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> Result<DiskUsage, Error> {
    let s = rustix::fs::statvfs(path).map_err(|e| Error::Statvfs {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(DiskUsage {
        capacity: s.f_blocks.saturating_mul(s.f_frsize),
        available: s.f_bavail.saturating_mul(s.f_frsize),
    })
}

/// `12.3 MiB`: sizes for log lines and status messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn thresholds() -> Thresholds {
        Thresholds {
            high_percent: 85,
            low_percent: 80,
            minimum_age: Duration::from_secs(120),
        }
    }

    /// A 1000 MiB disk with `used` MiB used.
    fn disk(used: u64) -> DiskUsage {
        DiskUsage {
            capacity: 1000 * MIB,
            available: (1000 - used) * MIB,
        }
    }

    fn image(id: &str, size_mib: u64, last_used: i64, in_use: bool) -> Candidate {
        Candidate {
            id: id.to_string(),
            names: vec![format!("docker.io/library/{id}:latest")],
            size: size_mib * MIB,
            last_used,
            first_detected: 0,
            in_use,
        }
    }

    fn removed(p: &Option<Plan>) -> Vec<&str> {
        p.iter()
            .flat_map(|p| p.remove.iter().map(|c| c.id.as_str()))
            .collect()
    }

    #[test]
    fn images_are_removed_least_recently_used_first_until_below_low() {
        let now = 10_000;
        let store = [
            image("new", 30, 9_000, false),
            image("old", 30, 1_000, false),
            image("older", 30, 500, false),
            image("running", 300, 100, true),
        ];
        // (used MiB of 1000, expected removals in order); high 85%, low 80%.
        let cases: &[(u64, &[&str])] = &[
            (849, &[]),                       // 84%: below high, GC does not run
            (850, &["older", "old"]),         // 85%: free 50 MiB, one 30 MiB image is short
            (880, &["older", "old", "new"]),  // free 80 MiB
            (1000, &["older", "old", "new"]), // full disk: every unused image goes
        ];
        let disabled = Thresholds {
            high_percent: 100,
            ..thresholds()
        };
        assert_eq!(plan(disk(1000), &store, now, &disabled), None);
        for &(used, want) in cases {
            let p = plan(disk(used), &store, now, &thresholds());
            assert_eq!(removed(&p), want.to_vec(), "used {used} MiB");
        }
    }

    #[test]
    fn the_plan_states_what_it_frees_and_what_it_cannot() {
        let store = [image("a", 30, 0, false), image("b", 300, 0, true)];
        let p = plan(disk(900), &store, 10_000, &thresholds()).expect("above high");
        assert_eq!(p.used_percent, 90);
        assert_eq!(p.bytes_to_free, 100 * MIB);
        assert_eq!(p.shortfall, 70 * MIB);
    }

    #[test]
    fn images_in_use_or_too_young_are_never_removed() {
        let now = 10_000;
        let mut young = image("pulled-just-now", 500, 0, false);
        young.first_detected = now - 60;
        let recently_used = image("used-a-minute-ago", 500, now - 60, false);
        let at_limit = image("used-two-minutes-ago", 500, now - 120, false);
        let in_use = image("in-use", 500, 0, true);
        let store = [young, recently_used, at_limit, in_use];
        let p = plan(disk(990), &store, now, &thresholds());
        assert_eq!(removed(&p), vec!["used-two-minutes-ago"]);
    }

    #[test]
    fn usage_is_rounded_down_and_an_empty_filesystem_is_never_collected() {
        for (capacity, available, want) in [
            (1000, 151, 84),
            (1000, 150, 85),
            (1000, 0, 100),
            (1000, 2000, 0),
            (0, 0, 0),
        ] {
            let u = DiskUsage {
                capacity,
                available,
            };
            assert_eq!(u.used_percent(), want, "{u:?}");
        }
        let zero = DiskUsage {
            capacity: 0,
            available: 0,
        };
        let t = Thresholds {
            high_percent: 0,
            ..thresholds()
        };
        assert_eq!(plan(zero, &[image("a", 1, 0, false)], 10_000, &t), None);
    }

    #[test]
    fn the_use_log_defaults_to_start_time_and_forgets_removed_images() {
        let mut log = UseLog::new(1_000);
        log.record_use("sha256:a", 5_000);
        assert!(log.is_used_since("sha256:a", 5_000));
        assert!(!log.is_used_since("sha256:a", 5_001));
        assert!(!log.is_used_since("sha256:b", 0));
        let in_use: HashSet<String> = ["sha256:b".to_string()].into();
        let entry = |id: &str| (id.to_string(), vec![], 1);
        let list = log.candidates([entry("sha256:a"), entry("sha256:b")], &in_use, 6_000);
        let summary: Vec<_> = list
            .iter()
            .map(|c| (c.id.as_str(), c.last_used, c.first_detected, c.in_use))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("sha256:a", 5_000, 5_000, false),
                ("sha256:b", 1_000, 6_000, true),
            ]
        );
        // "a" was removed; when it comes back (pulled again) it is new.
        log.candidates([entry("sha256:b")], &in_use, 7_000);
        let list = log.candidates([entry("sha256:a")], &in_use, 8_000);
        assert_eq!((list[0].last_used, list[0].first_detected), (1_000, 8_000));
    }
}
