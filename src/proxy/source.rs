//! Where Services and EndpointSlices come from, as [`Event`]s for [`super::state`].
//!
//! ```text
//!  standalone: services/ folder ─ scan_dir ─► Snapshot ─ events(prev, next) ─┐
//!  API server (later): list + watch ─────────────────────────────────────────┴► Vec<Event>
//! ```
//!
//! The proxy only consumes events, so a watch on the API server can feed it the same way a
//! folder scan does. A folder scan is a full snapshot: [`events`] turns two snapshots into
//! the applies and deletes between them, then says that both lists are complete.
//!
//! Files: `*.yaml`, `*.yml`, `*.json` (as in `manifests/`), several `---` documents each;
//! documents of other kinds are skipped with a problem line, as are unreadable files. One
//! broken document never hides the others.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::state::Event;
use crate::source::is_manifest_file_name;

/// Every Service and EndpointSlice found, keyed `namespace/name`, and what was wrong.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub services: BTreeMap<String, Value>,
    pub slices: BTreeMap<String, Value>,
    /// One line per skipped file or document, naming it.
    pub problems: Vec<String>,
}

fn key(v: &Value) -> (String, String) {
    let ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    (ns.to_string(), name.to_string())
}

impl Snapshot {
    /// Sorts the documents of one file (named `origin` in problems) into the snapshot.
    pub fn add_file(&mut self, origin: &str, text: &str) {
        let docs = match crate::config::yaml::parse_documents(text) {
            Ok(d) => d,
            Err(e) => {
                self.problems.push(format!("{origin}: {e}"));
                return;
            }
        };
        for (i, (doc, _)) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let kind = doc
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let api = doc
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let (ns, name) = key(&doc);
            let k = format!("{ns}/{name}");
            let map = match (kind.as_str(), api.as_str()) {
                ("Service", "v1") => &mut self.services,
                ("EndpointSlice", "discovery.k8s.io/v1") => &mut self.slices,
                _ => {
                    self.problems.push(format!(
                        "{origin}: document {}: kind {kind:?} apiVersion {api:?}: expected Service v1 or EndpointSlice discovery.k8s.io/v1",
                        i + 1
                    ));
                    continue;
                }
            };
            if map.insert(k.clone(), doc).is_some() {
                self.problems.push(format!(
                    "{origin}: {} {k} is defined more than once; the last one counts",
                    kind.to_lowercase()
                ));
            }
        }
    }
}

/// Reads every manifest file in `dir`. A missing folder is an empty snapshot.
pub fn scan_dir(dir: &Path) -> Snapshot {
    let mut snap = Snapshot::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return snap,
        Err(e) => {
            snap.problems
                .push(format!("services path {}: {e}", dir.display()));
            return snap;
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_manifest_file_name))
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => snap.add_file(&path.display().to_string(), &text),
            Err(e) => snap.problems.push(format!("{}: {e}", path.display())),
        }
    }
    snap
}

/// The events that turn `prev` into `next`, ending with both "synced" markers (a folder
/// scan is always a complete list).
pub fn events(prev: &Snapshot, next: &Snapshot) -> Vec<Event> {
    let mut out = Vec::new();
    for (k, v) in &prev.services {
        if !next.services.contains_key(k) {
            let (namespace, name) = key(v);
            out.push(Event::ServiceDeleted { namespace, name });
        }
    }
    for (k, v) in &prev.slices {
        if !next.slices.contains_key(k) {
            let (namespace, name) = key(v);
            out.push(Event::EndpointSliceDeleted { namespace, name });
        }
    }
    for (k, v) in &next.services {
        if prev.services.get(k) != Some(v) {
            out.push(Event::ServiceApplied(v.clone()));
        }
    }
    for (k, v) in &next.slices {
        if prev.slices.get(k) != Some(v) {
            out.push(Event::EndpointSliceApplied(v.clone()));
        }
    }
    out.push(Event::ServicesSynced);
    out.push(Event::EndpointSlicesSynced);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";

    #[test]
    fn documents_are_sorted_by_kind_and_others_are_named() {
        let mut s = Snapshot::default();
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: prod}\naddressType: IPv4\nendpoints: []\n";
        s.add_file(
            "a.yaml",
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
        s.add_file("b.yaml", "{ not yaml");
        assert!(s.problems[1].starts_with("b.yaml: "), "{:?}", s.problems);
    }

    #[test]
    fn events_carry_only_the_changes_then_both_synced_markers() {
        let mut a = Snapshot::default();
        a.add_file("a", WEB);
        let first = events(&Snapshot::default(), &a);
        assert!(matches!(first[0], Event::ServiceApplied(_)));
        assert_eq!(first.len(), 3);
        assert_eq!(
            events(&a, &a),
            vec![Event::ServicesSynced, Event::EndpointSlicesSynced]
        );
        let gone = events(&a, &Snapshot::default());
        assert_eq!(
            gone[0],
            Event::ServiceDeleted {
                namespace: "default".into(),
                name: "web".into()
            }
        );
    }
}
