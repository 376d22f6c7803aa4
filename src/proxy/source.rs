//! Where Services and EndpointSlices come from, as [`Event`]s for [`super::state`].
//!
//! ```text
//!  standalone: services/ folder ─ scan_dir(prev) ─► one document at a time ─ changed? ─► emit
//!                                                   Snapshot (a hash per object) ◄┘
//!  API server: list + watch (super::api) ───────────────────────────────────────────► Vec<Event>
//! ```
//!
//! The proxy only consumes events, so a watch on the API server can feed it the same way a
//! folder scan does. A folder scan is a full snapshot: [`scan_dir`] hands over each document
//! that differs from the previous scan as soon as it is parsed, then the deletions, then says
//! that both lists are complete. The snapshot keeps a hash per object, not the object: the
//! store holds the validated model, and the JSON of 10 000 Services is never held at once.
//!
//! Files: `*.yaml`, `*.yml`, `*.json` (as in `manifests/`), several `---` documents each,
//! read a document at a time (a file's text is never held whole);
//! documents of other kinds are skipped with a problem line, as are unreadable files. One
//! broken document never hides the others before it (a YAML syntax error, or a line that is
//! not UTF-8, ends its file).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use super::model::object_key;
use super::state::Event;
use crate::source::is_manifest_file_name;

/// What one scan found: a hash of every Service and EndpointSlice, keyed `namespace/name`,
/// and what was wrong.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub services: Hashes,
    pub slices: Hashes,
    /// One line per skipped file or document, naming it.
    pub problems: Vec<String>,
}

/// A hash per object, by `namespace/name`: a map while a scan fills it, then (sealed) a
/// sorted array of exact size, which is what is kept between scans (24 bytes and the key per
/// object instead of a map node's share, a `String` and its spare capacity).
#[derive(Debug, Clone, Default)]
pub struct Hashes {
    filling: BTreeMap<Box<str>, u64>,
    sealed: Box<[(Box<str>, u64)]>,
}

impl Hashes {
    pub fn get(&self, key: &str) -> Option<u64> {
        self.filling.get(key).copied().or_else(|| {
            let i = self.sealed.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
            self.sealed.get(i).map(|(_, h)| *h)
        })
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Records `key`'s hash; true if the key was there already.
    fn insert(&mut self, key: &str, hash: u64) -> bool {
        let known = self.contains_key(key);
        self.filling.insert(key.into(), hash);
        known
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries().into_iter().map(|(k, _)| k)
    }

    /// Every key and its hash, in key order (a key being filled wins over a sealed one).
    fn entries(&self) -> Vec<(&str, u64)> {
        let mut all: BTreeMap<&str, u64> = self.sealed.iter().map(|(k, h)| (&**k, *h)).collect();
        all.extend(self.filling.iter().map(|(k, h)| (&**k, *h)));
        all.into_iter().collect()
    }

    /// Turns what the scan filled into the compact form.
    fn seal(&mut self) {
        let filling = std::mem::take(&mut self.filling);
        let mut all: BTreeMap<Box<str>, u64> = std::mem::take(&mut self.sealed)
            .into_vec()
            .into_iter()
            .collect();
        all.extend(filling);
        self.sealed = all.into_iter().collect();
    }
}

impl PartialEq for Hashes {
    /// The same keys and hashes, whichever form holds them.
    fn eq(&self, other: &Hashes) -> bool {
        self.entries() == other.entries()
    }
}

/// A hash of a whole JSON value (object keys are sorted in `serde_json`'s map).
fn hash_of(v: &Value) -> u64 {
    fn walk(v: &Value, h: &mut DefaultHasher) {
        match v {
            Value::Null => 0u8.hash(h),
            Value::Bool(b) => (1u8, b).hash(h),
            Value::Number(n) => (2u8, n.to_string()).hash(h),
            Value::String(s) => (3u8, s).hash(h),
            Value::Array(a) => {
                (4u8, a.len()).hash(h);
                a.iter().for_each(|x| walk(x, h));
            }
            Value::Object(m) => {
                (5u8, m.len()).hash(h);
                for (k, x) in m {
                    k.hash(h);
                    walk(x, h);
                }
            }
        }
    }
    let mut h = DefaultHasher::new();
    walk(v, &mut h);
    h.finish()
}

impl Snapshot {
    /// Sorts the documents of one file (named `origin` in problems) into the snapshot, one at
    /// a time; each that differs from `prev` goes to `emit` as an applied event.
    pub fn add_file(
        &mut self,
        origin: &str,
        text: &str,
        prev: &Snapshot,
        emit: &mut dyn FnMut(Event),
    ) {
        self.add_stream(origin, text.as_bytes(), prev, emit);
    }

    /// [`Snapshot::add_file`] for a file read a document at a time: its text is never held
    /// whole.
    pub fn add_stream(
        &mut self,
        origin: &str,
        input: impl BufRead,
        prev: &Snapshot,
        emit: &mut dyn FnMut(Event),
    ) {
        let mut i = 0;
        let parsed = crate::config::yaml::each_document_read(input, |doc| {
            i += 1;
            self.add_document(origin, i, doc, prev, emit);
        });
        if let Err(e) = parsed {
            self.problems.push(format!("{origin}: {e}"));
        }
    }

    fn add_document(
        &mut self,
        origin: &str,
        i: usize,
        doc: Value,
        prev: &Snapshot,
        emit: &mut dyn FnMut(Event),
    ) {
        if doc.is_null() {
            return;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let (map, old, is_service) = match (kind, api) {
            ("Service", "v1") => (&mut self.services, &prev.services, true),
            ("EndpointSlice", "discovery.k8s.io/v1") => (&mut self.slices, &prev.slices, false),
            _ => {
                self.problems.push(format!(
                    "{origin}: document {i}: kind {kind:?} apiVersion {api:?}: expected Service v1 or EndpointSlice discovery.k8s.io/v1"
                ));
                return;
            }
        };
        let k = object_key(&doc);
        let hash = hash_of(&doc);
        let twice = map.insert(&k, hash);
        // A second definition in this scan always goes to the store: the last one counts.
        if twice || old.get(&k) != Some(hash) {
            emit(if is_service {
                Event::ServiceApplied(doc)
            } else {
                Event::EndpointSliceApplied(doc)
            });
        }
        if twice {
            let what = if is_service {
                "service"
            } else {
                "endpointslice"
            };
            self.problems.push(format!(
                "{origin}: {what} {k} is defined more than once; the last one counts"
            ));
        }
    }
}

/// Reads every manifest file in `dir` (a missing folder is empty). Each object that differs
/// from `prev` goes to `emit` as soon as it is parsed; then the deletions since `prev`, then
/// both "synced" markers (a folder scan is always a complete list). Returns the new snapshot.
pub fn scan_dir(dir: &Path, prev: &Snapshot, emit: &mut dyn FnMut(Event)) -> Snapshot {
    let mut snap = Snapshot::default();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<_> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(is_manifest_file_name))
                .map(|e| e.path())
                .collect();
            paths.sort();
            for path in paths {
                match std::fs::File::open(&path) {
                    Ok(file) => snap.add_stream(
                        &path.display().to_string(),
                        BufReader::new(file),
                        prev,
                        emit,
                    ),
                    Err(e) => snap.problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => snap
            .problems
            .push(format!("services path {}: {e}", dir.display())),
    }
    snap.services.seal();
    snap.slices.seal();
    finish(prev, &snap, emit);
    snap
}

/// Every Service and EndpointSlice in `dir` (the last definition of each), and the problems
/// found: for `nanolet proxy dump`, which needs the objects, not the events.
pub fn load_dir(dir: &Path) -> (Vec<Value>, Vec<Value>, Vec<String>) {
    let mut services = BTreeMap::new();
    let mut slices = BTreeMap::new();
    let snap = scan_dir(dir, &Snapshot::default(), &mut |e| match e {
        Event::ServiceApplied(v) => drop(services.insert(object_key(&v), v)),
        Event::EndpointSliceApplied(v) => drop(slices.insert(object_key(&v), v)),
        _ => {}
    });
    (
        services.into_values().collect(),
        slices.into_values().collect(),
        snap.problems,
    )
}

/// The deletions that turn `prev` into `next`, then both "synced" markers.
pub fn finish(prev: &Snapshot, next: &Snapshot, emit: &mut dyn FnMut(Event)) {
    let split = |k: &str| {
        let (ns, name) = k.split_once('/').unwrap_or(("default", k));
        (ns.to_string(), name.to_string())
    };
    for k in prev.services.keys() {
        if !next.services.contains_key(k) {
            let (namespace, name) = split(k);
            emit(Event::ServiceDeleted { namespace, name });
        }
    }
    for k in prev.slices.keys() {
        if !next.slices.contains_key(k) {
            let (namespace, name) = split(k);
            emit(Event::EndpointSliceDeleted { namespace, name });
        }
    }
    emit(Event::ServicesSynced);
    emit(Event::EndpointSlicesSynced);
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";

    /// The snapshot and the events of one file scanned after `prev`.
    fn scan(prev: &Snapshot, text: &str) -> (Snapshot, Vec<Event>) {
        let mut events = Vec::new();
        let mut s = Snapshot::default();
        s.add_file("a.yaml", text, prev, &mut |e| events.push(e));
        finish(prev, &s, &mut |e| events.push(e));
        (s, events)
    }

    #[test]
    fn documents_are_sorted_by_kind_and_others_are_named() {
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: prod}\naddressType: IPv4\nendpoints: []\n";
        let (s, _) = scan(
            &Snapshot::default(),
            &format!("{WEB}---\n{slice}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n"),
        );
        assert_eq!(s.services.keys().collect::<Vec<_>>(), vec!["default/web"]);
        assert_eq!(s.slices.keys().collect::<Vec<_>>(), vec!["prod/web-1"]);
        assert_eq!(s.problems.len(), 1);
        assert!(
            s.problems[0].starts_with("a.yaml: document 3: kind \"Pod\""),
            "{:?}",
            s.problems
        );
        let (s, _) = scan(&Snapshot::default(), "{ not yaml");
        assert!(s.problems[0].starts_with("a.yaml: "), "{:?}", s.problems);
    }

    #[test]
    fn events_carry_only_the_changes_then_both_synced_markers() {
        let (a, first) = scan(&Snapshot::default(), WEB);
        assert!(matches!(first[0], Event::ServiceApplied(_)));
        assert_eq!(first.len(), 3);
        let (_, again) = scan(&a, WEB);
        assert_eq!(
            again,
            vec![Event::ServicesSynced, Event::EndpointSlicesSynced]
        );
        let (_, changed) = scan(&a, &WEB.replace("port: 80", "port: 81"));
        assert!(
            matches!(changed[0], Event::ServiceApplied(_)),
            "{changed:?}"
        );
        assert_eq!(changed.len(), 3);
        let (_, gone) = scan(&a, "");
        assert_eq!(
            gone[0],
            Event::ServiceDeleted {
                namespace: "default".into(),
                name: "web".into()
            }
        );
    }

    #[test]
    fn a_folder_scanned_again_gives_only_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.yaml");
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\nendpoints: []\n";
        std::fs::write(&file, format!("{WEB}---\n{slice}")).unwrap();
        let scan = |prev: &Snapshot| {
            let mut events = Vec::new();
            let snap = scan_dir(dir.path(), prev, &mut |e| events.push(e));
            (snap, events)
        };
        let (first, events) = scan(&Snapshot::default());
        assert_eq!(events.len(), 4, "{events:?}");
        let mut filled = Snapshot::default();
        let text = std::fs::read_to_string(&file).unwrap();
        filled.add_file("all.yaml", &text, &Snapshot::default(), &mut |_| {});
        assert_eq!(
            (&filled.services, &filled.slices),
            (&first.services, &first.slices),
            "the sealed form holds what the scan filled"
        );
        assert_eq!(first.services.keys().collect::<Vec<_>>(), ["default/web"]);
        let (second, events) = scan(&first);
        assert_eq!(
            events,
            vec![Event::ServicesSynced, Event::EndpointSlicesSynced]
        );
        assert_eq!(second, first);
        std::fs::write(&file, WEB.replace("port: 80", "port: 81")).unwrap();
        let (_, events) = scan(&second);
        assert!(matches!(events[0], Event::ServiceApplied(_)), "{events:?}");
        assert_eq!(
            events[1],
            Event::EndpointSliceDeleted {
                namespace: "default".into(),
                name: "web-1".into()
            }
        );
    }

    #[test]
    fn of_two_definitions_the_last_one_reaches_the_store_even_when_unchanged() {
        let (a, _) = scan(&Snapshot::default(), WEB);
        let other = WEB.replace("10.96.0.10", "10.96.0.11");
        let (s, events) = scan(&a, &format!("{other}---\n{WEB}"));
        let applied: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::ServiceApplied(v) => v.pointer("/spec/clusterIP").cloned(),
                _ => None,
            })
            .collect();
        assert_eq!(applied, vec!["10.96.0.11", "10.96.0.10"]);
        assert!(
            s.problems[0].contains("service default/web is defined more than once"),
            "{:?}",
            s.problems
        );
    }
}
