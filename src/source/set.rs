//! The merge of per-file scan results into the desired set of static pods.
//!
//! Owns the rules that keep one bad file from hurting the others:
//! - a file that becomes invalid (half-written, bad edit) keeps its last good pod and reports
//!   the error (kubelet drops the pod instead; a typo should not stop a running appliance);
//! - a file that disappears removes its pod;
//! - two files with the same pod full name: the path that sorts first wins, the other reports
//!   `duplicate pod NS/NAME: already defined by FILE`;
//! - an unreadable path (directory, symlink loop, FIFO) is an error for that path only.
//!
//! Pure: it never reads files or clocks; [`super::scan_dir`] feeds it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;

use crate::k8s::{Pod, pod_full_name};

use super::manifest::ManifestError;

/// What the set knows about one manifest file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileState {
    /// The file holds this pod (shared with the pod's worker: one copy per pod, not two).
    Valid(Rc<Pod>),
    /// The file is broken; `last_good` is what it held before, still desired.
    Invalid {
        error: String,
        last_good: Option<Rc<Pod>>,
    },
}

impl FileState {
    /// The pod this file contributes, if any.
    pub fn pod(&self) -> Option<&Pod> {
        self.shared().map(|pod| &**pod)
    }

    /// The same, as the value a worker shares.
    pub fn shared(&self) -> Option<&Rc<Pod>> {
        match self {
            FileState::Valid(pod) => Some(pod),
            FileState::Invalid { last_good, .. } => last_good.as_ref(),
        }
    }
}

/// How the desired pods changed with one scan, by full name (`namespace/name`), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Pods that were not desired before.
    pub added: Vec<String>,
    /// Pods still desired whose UID (content) changed.
    pub updated: Vec<String>,
    /// Pods no longer desired.
    pub removed: Vec<String>,
}

impl Changes {
    /// Whether the scan changed nothing the pod workers care about.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// The static pods desired from the manifests folder, merged from full scans.
#[derive(Debug, Default)]
pub struct StaticPodSet {
    files: BTreeMap<PathBuf, FileState>,
    /// Full name → the file whose pod is desired.
    desired: BTreeMap<String, PathBuf>,
    /// Files whose pod lost to an earlier file with the same full name.
    duplicates: BTreeMap<PathBuf, String>,
}

impl StaticPodSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one full scan (every manifest path → its parse result). Paths not in the scan
    /// are gone. Returns how the desired pods changed.
    pub fn apply_scan(&mut self, scan: Vec<(PathBuf, Result<Pod, ManifestError>)>) -> Changes {
        let before: BTreeMap<String, String> = self
            .desired()
            .into_iter()
            .map(|pod| (pod_full_name(pod), pod.metadata.uid.clone()))
            .collect();

        let mut previous = std::mem::take(&mut self.files);
        for (path, result) in scan {
            let state = match result {
                // The same content (the UID is its hash) keeps the value its worker shares.
                Ok(pod) => {
                    FileState::Valid(match previous.get(&path).and_then(FileState::shared) {
                        Some(old) if old.metadata.uid == pod.metadata.uid && **old == pod => {
                            old.clone()
                        }
                        _ => Rc::new(pod),
                    })
                }
                Err(error) => FileState::Invalid {
                    error: error.to_string(),
                    last_good: previous.remove(&path).and_then(|old| match old {
                        FileState::Valid(pod) => Some(pod),
                        FileState::Invalid { last_good, .. } => last_good,
                    }),
                },
            };
            self.files.insert(path, state);
        }

        self.desired.clear();
        self.duplicates.clear();
        // BTreeMap iterates in path order: the first path claims the name.
        for (path, state) in &self.files {
            let Some(pod) = state.pod() else { continue };
            let name = pod_full_name(pod);
            match self.desired.get(&name) {
                Some(winner) => {
                    let error = format!(
                        "manifest {}: duplicate pod {name}: already defined by {}",
                        path.display(),
                        winner.display()
                    );
                    self.duplicates.insert(path.clone(), error);
                }
                None => {
                    self.desired.insert(name, path.clone());
                }
            }
        }

        let after: BTreeMap<String, String> = self
            .desired()
            .into_iter()
            .map(|pod| (pod_full_name(pod), pod.metadata.uid.clone()))
            .collect();
        let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let mut changes = Changes::default();
        for name in names {
            match (before.get(name), after.get(name)) {
                (None, Some(_)) => changes.added.push(name.clone()),
                (Some(_), None) => changes.removed.push(name.clone()),
                (Some(old), Some(new)) if old != new => changes.updated.push(name.clone()),
                _ => {}
            }
        }
        changes
    }

    /// The desired pods, sorted by full name.
    pub fn desired(&self) -> Vec<&Pod> {
        self.desired
            .values()
            .filter_map(|path| self.files.get(path).and_then(FileState::pod))
            .collect()
    }

    /// The desired pods, as the values their workers share.
    pub fn desired_shared(&self) -> Vec<Rc<Pod>> {
        self.desired_with_source()
            .into_iter()
            .map(|(_, pod)| pod.clone())
            .collect()
    }

    /// The desired pods with the file each comes from, sorted by full name.
    pub fn desired_with_source(&self) -> Vec<(&PathBuf, &Rc<Pod>)> {
        self.desired
            .values()
            .filter_map(|path| {
                self.files
                    .get(path)
                    .and_then(FileState::shared)
                    .map(|pod| (path, pod))
            })
            .collect()
    }

    /// The per-file errors (broken files and duplicates), sorted by path.
    pub fn errors(&self) -> Vec<(PathBuf, String)> {
        let broken = self.files.iter().filter_map(|(path, state)| match state {
            FileState::Invalid { error, .. } => Some((path.clone(), error.clone())),
            FileState::Valid(_) => None,
        });
        let duplicates = self.duplicates.iter().map(|(p, e)| (p.clone(), e.clone()));
        let mut errors: Vec<_> = broken.chain(duplicates).collect();
        errors.sort();
        errors
    }

    /// What the set knows about each file, sorted by path (for status and `nanolet ps`).
    pub fn files(&self) -> impl Iterator<Item = (&PathBuf, &FileState)> {
        self.files.iter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::source::manifest::parse_manifest;

    const NODE: &str = "n1";

    fn path(name: &str) -> PathBuf {
        PathBuf::from("/m").join(name)
    }

    fn manifest(pod_name: &str, image: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod_name}}}\n\
             spec: {{containers: [{{name: c, image: {image}}}]}}\n"
        )
    }

    /// A scan of (file name, file text).
    fn scan(files: &[(&str, &str)]) -> Vec<(PathBuf, Result<Pod, ManifestError>)> {
        files
            .iter()
            .map(|(name, text)| {
                (
                    path(name),
                    parse_manifest(&path(name), text.as_bytes(), NODE),
                )
            })
            .collect()
    }

    fn desired(set: &StaticPodSet) -> Vec<(String, String)> {
        set.desired()
            .into_iter()
            .map(|p| (pod_full_name(p), p.spec.containers[0].image.clone()))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn added_updated_removed() {
        let mut set = StaticPodSet::new();
        let a1 = manifest("a", "busybox:1");
        let a2 = manifest("a", "busybox:2");
        let b = manifest("b", "busybox:1");

        let c = set.apply_scan(scan(&[("a.yaml", &a1), ("b.yaml", &b)]));
        assert_eq!(c.added, names(&["default/a-n1", "default/b-n1"]));
        assert!(c.updated.is_empty() && c.removed.is_empty());

        let c = set.apply_scan(scan(&[("a.yaml", &a1), ("b.yaml", &b)]));
        assert!(
            c.is_empty(),
            "a rescan of the same files changes nothing: {c:?}"
        );

        let c = set.apply_scan(scan(&[("a.yaml", &a2)]));
        assert_eq!(c.updated, names(&["default/a-n1"]));
        assert_eq!(c.removed, names(&["default/b-n1"]));
        assert_eq!(desired(&set), [("default/a-n1".into(), "busybox:2".into())]);
        assert!(set.errors().is_empty());
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_pod() {
        let mut set = StaticPodSet::new();
        let good = manifest("a", "busybox:1");
        set.apply_scan(scan(&[("a.yaml", &good)]));

        let half_written = &good[..good.len() / 2];
        for broken in [
            half_written,
            "apiVersion: v1\nkind: Pod\nspec: {contianers: []}\n",
        ] {
            let c = set.apply_scan(scan(&[("a.yaml", broken)]));
            assert!(c.is_empty(), "{c:?}");
            assert_eq!(desired(&set), [("default/a-n1".into(), "busybox:1".into())]);
            let errors = set.errors();
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].0, path("a.yaml"));
            assert!(
                errors[0].1.starts_with("manifest /m/a.yaml: "),
                "{}",
                errors[0].1
            );
        }

        // Fixed: the error goes, the new content is desired.
        let c = set.apply_scan(scan(&[("a.yaml", &manifest("a", "busybox:2"))]));
        assert_eq!(c.updated, names(&["default/a-n1"]));
        assert!(set.errors().is_empty());

        // Deleted while broken: the pod goes too.
        set.apply_scan(scan(&[("a.yaml", "oops: [")]));
        let c = set.apply_scan(scan(&[]));
        assert_eq!(c.removed, names(&["default/a-n1"]));
        assert!(set.desired().is_empty() && set.errors().is_empty());
    }

    #[test]
    fn a_file_broken_from_the_start_has_no_pod() {
        let mut set = StaticPodSet::new();
        let c = set.apply_scan(scan(&[
            ("a.yaml", "kind: Pod\n"),
            ("b.yaml", &manifest("b", "x:1")),
        ]));
        assert_eq!(c.added, names(&["default/b-n1"]));
        assert_eq!(set.errors().len(), 1);
        assert!(set.errors()[0].1.contains("apiVersion: required"));
    }

    #[test]
    fn duplicates_first_path_wins() {
        let mut set = StaticPodSet::new();
        let one = manifest("web", "busybox:1");
        let two = manifest("web", "busybox:2");
        set.apply_scan(scan(&[("b.yaml", &two), ("a.yaml", &one)]));
        assert_eq!(
            desired(&set),
            [("default/web-n1".into(), "busybox:1".into())]
        );
        assert_eq!(
            set.errors(),
            [(
                path("b.yaml"),
                "manifest /m/b.yaml: duplicate pod default/web-n1: already defined by /m/a.yaml"
                    .to_string()
            )]
        );

        // The winner goes: the other file's pod takes over, as an update.
        let c = set.apply_scan(scan(&[("b.yaml", &two)]));
        assert_eq!(c.updated, names(&["default/web-n1"]));
        assert_eq!(
            desired(&set),
            [("default/web-n1".into(), "busybox:2".into())]
        );
        assert!(set.errors().is_empty());
    }

    #[test]
    fn renaming_a_file_changes_nothing() {
        let mut set = StaticPodSet::new();
        let a = manifest("a", "busybox:1");
        set.apply_scan(scan(&[("a.yaml", &a)]));
        let c = set.apply_scan(scan(&[("renamed.yaml", &a)]));
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn a_rescan_of_unchanged_files_keeps_the_pod_its_worker_shares() {
        let mut set = StaticPodSet::new();
        let (a, b) = (manifest("a", "busybox:1"), manifest("b", "busybox:1"));
        set.apply_scan(scan(&[("a.yaml", &a), ("b.yaml", &b)]));
        let shared = |set: &StaticPodSet| -> Vec<Rc<Pod>> {
            set.desired_with_source()
                .into_iter()
                .map(|(_, pod)| pod.clone())
                .collect()
        };
        let before = shared(&set);
        let b2 = manifest("b", "busybox:2");
        set.apply_scan(scan(&[("a.yaml", &a), ("b.yaml", &b2)]));
        let after = shared(&set);
        assert!(Rc::ptr_eq(&before[0], &after[0]), "unchanged a: one copy");
        assert!(!Rc::ptr_eq(&before[1], &after[1]), "edited b: the new pod");
        assert_eq!(after[1].spec.containers[0].image, "busybox:2");
    }
}
