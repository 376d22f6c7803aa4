//! ConfigMaps and Secrets for static pods: one object per `.yaml`/`.yml`/`.json` file in the
//! configuration directory's `configmaps/` and `secrets/` folders (`configMapsPath`,
//! `secretsPath`), in the same shape `kubectl get -o yaml` prints.
//!
//! Every lookup reads the folder again, so an edited file is seen at the next container start
//! and the next volume sync (kubelet's periodic resync), with no watch to keep. The folders are
//! small on an appliance, and the reads are of small local files between events, like
//! [`super::scan_dir`]. When two files hold the same object, the path that sorts first wins (as
//! for manifests). A broken file is named in the "not found" error of a lookup it might have
//! answered, so the user sees why the object is missing.

use std::path::{Path, PathBuf};

use crate::config::yaml;
use crate::k8s::object::{self, DataObject, ObjectSource};

use super::is_manifest_file_name;

/// The largest object file read (the API server's limit for one object is about 1.5 MB).
const MAX_FILE: u64 = 4 << 20;

/// ConfigMaps and Secrets from two folders.
pub struct FileObjects {
    pub config_maps: PathBuf,
    pub secrets: PathBuf,
}

impl ObjectSource for FileObjects {
    fn config_map(&self, namespace: &str, name: &str) -> Result<Option<DataObject>, String> {
        find(&self.config_maps, "ConfigMap", namespace, name)
    }

    fn secret(&self, namespace: &str, name: &str) -> Result<Option<DataObject>, String> {
        find(&self.secrets, "Secret", namespace, name)
    }
}

/// Every object in `dir` with its file, sorted by path; broken files as errors.
pub fn read_all(dir: &Path, kind: &'static str) -> Vec<(PathBuf, Result<DataObject, String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_manifest_file_name))
        .map(|e| e.path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let result = read_one(&p, kind);
            (p, result)
        })
        .collect()
}

fn read_one(path: &Path, kind: &'static str) -> Result<DataObject, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let value = if is_json {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        yaml::parse_one(&text).map_err(|e| e.to_string())?
    };
    object::decode(value, kind)
}

fn find(
    dir: &Path,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Option<DataObject>, String> {
    let mut broken = Vec::new();
    for (path, result) in read_all(dir, kind) {
        match result {
            Ok(o) if o.namespace == namespace && o.name == name => return Ok(Some(o)),
            Ok(_) => {}
            Err(e) => broken.push(format!("{}: {e}", path.display())),
        }
    }
    if broken.is_empty() {
        Ok(None)
    } else {
        // The object may be in one of these: say so rather than only "not found".
        Err(format!(
            "{} {namespace}/{name} not found, and these files are unreadable: {}",
            kind.to_lowercase(),
            broken.join("; ")
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_found_by_namespace_and_name_and_edits_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let objects = FileObjects {
            config_maps: dir.path().join("configmaps"),
            secrets: dir.path().join("secrets"),
        };
        // Missing folders: no objects.
        assert_eq!(objects.config_map("default", "cfg"), Ok(None));
        std::fs::create_dir_all(&objects.config_maps).unwrap();
        let cm = objects.config_maps.join("cfg.yaml");
        std::fs::write(
            &cm,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: one}\n",
        )
        .unwrap();
        std::fs::write(
            objects.config_maps.join("other.json"),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "ops"}, "data": {"a": "ops"}}"#,
        )
        .unwrap();
        std::fs::write(objects.config_maps.join("README.txt"), "not an object").unwrap();
        let found = objects.config_map("default", "cfg").unwrap().unwrap();
        assert_eq!(found.data["a"], b"one");
        assert_eq!(
            objects.config_map("ops", "cfg").unwrap().unwrap().data["a"],
            b"ops"
        );
        std::fs::write(
            &cm,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: two}\n",
        )
        .unwrap();
        assert_eq!(
            objects.config_map("default", "cfg").unwrap().unwrap().data["a"],
            b"two"
        );
        // A Secret is not looked for among ConfigMaps.
        assert_eq!(objects.secret("default", "cfg"), Ok(None));
    }

    #[test]
    fn the_bundled_example_reads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/example");
        let objects = FileObjects {
            config_maps: example.join("configmaps"),
            secrets: example.join("secrets"),
        };
        let content = objects
            .config_map("default", "web-content")
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&content.data["index.html"]).contains("Hello"));
        let manifest = example.join("manifests/web.yaml");
        let pod =
            super::super::parse_manifest(&manifest, &std::fs::read(&manifest).unwrap(), "edge")
                .unwrap();
        assert_eq!(
            pod.spec.volumes[0].config_map.as_ref().unwrap().name,
            "web-content"
        );
    }

    #[test]
    fn a_broken_file_is_named_when_an_object_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let objects = FileObjects {
            config_maps: dir.path().to_path_buf(),
            secrets: dir.path().join("none"),
        };
        std::fs::write(
            dir.path().join("bad.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: [\n",
        )
        .unwrap();
        let err = objects.config_map("default", "cfg").unwrap_err();
        assert!(
            err.contains("configmap default/cfg not found") && err.contains("bad.yaml"),
            "{err}"
        );
    }
}
