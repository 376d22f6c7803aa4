//! One static pod manifest: which file names count, and bytes → validated, defaulted [`Pod`].
//!
//! Reproduces kubelet's file source (pkg/kubelet/config/file.go, common.go) as a pure function:
//! decode (YAML or JSON) → typed Pod → static pod defaults (name suffixed with the node name,
//! `spec.nodeName`, a UID derived from the content, the `kubernetes.io/config.*` annotations)
//! → validation. Every error names the file, then the field.
//!
//! It must never do I/O: [`super::scan_dir`] reads the files, this module judges their bytes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::yaml::{self, YamlError};
use crate::k8s::{self, DecodeError, Pod, ValidationError};

/// Annotation holding the pod's config hash (kubelet: `kubetypes.ConfigHashAnnotationKey`).
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation naming the pod's source: `file` for static pods.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation with the time the pod was first seen; set by the caller, which owns the clock.
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
/// The value of [`CONFIG_SOURCE_ANNOTATION`] for manifests.
pub const FILE_SOURCE: &str = "file";

/// Why one manifest file yields no pod.
#[derive(Debug)]
pub enum ManifestError {
    /// The path is not a regular file (a directory, a FIFO, a socket, ...).
    NotAFile { path: PathBuf, what: &'static str },
    /// The path is a symlink that leads nowhere.
    DanglingSymlink { path: PathBuf },
    /// The path is a symlink that leads back to itself.
    SymlinkLoop { path: PathBuf },
    /// The file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The file is larger than [`MAX_MANIFEST_BYTES`].
    TooLarge { path: PathBuf },
    /// The file is not UTF-8.
    NotUtf8 { path: PathBuf },
    /// The file holds no document.
    Empty { path: PathBuf },
    /// Invalid YAML (including more than one document).
    Yaml { path: PathBuf, source: YamlError },
    /// Invalid JSON.
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// Not shaped like a Pod (unknown field, wrong type).
    Decode { path: PathBuf, source: DecodeError },
    /// A Pod, but an invalid one.
    Invalid {
        path: PathBuf,
        source: ValidationError,
    },
}

/// Manifests above this size are refused rather than read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

impl ManifestError {
    /// The manifest file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::NotAFile { path, .. }
            | ManifestError::DanglingSymlink { path }
            | ManifestError::SymlinkLoop { path }
            | ManifestError::Read { path, .. }
            | ManifestError::TooLarge { path }
            | ManifestError::NotUtf8 { path }
            | ManifestError::Empty { path }
            | ManifestError::Yaml { path, .. }
            | ManifestError::Json { path, .. }
            | ManifestError::Decode { path, .. }
            | ManifestError::Invalid { path, .. } => path,
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "manifest {}: ", self.path().display())?;
        match self {
            ManifestError::NotAFile { what, .. } => write!(f, "is {what}, not a regular file"),
            ManifestError::DanglingSymlink { .. } => f.write_str("dangling symlink"),
            ManifestError::SymlinkLoop { .. } => f.write_str("symlink loop"),
            ManifestError::Read { source, .. } => write!(f, "cannot read: {source}"),
            ManifestError::TooLarge { .. } => {
                write!(f, "larger than {MAX_MANIFEST_BYTES} bytes")
            }
            ManifestError::NotUtf8 { .. } => f.write_str("not UTF-8 text"),
            ManifestError::Empty { .. } => f.write_str("empty: expected a Pod"),
            ManifestError::Yaml { source, .. } => write!(f, "invalid YAML: {source}"),
            ManifestError::Json { source, .. } => write!(f, "invalid JSON: {source}"),
            ManifestError::Decode { source, .. } => write!(f, "{source}"),
            ManifestError::Invalid { source, .. } => write!(f, "{source}"),
        }
    }
}

impl std::error::Error for ManifestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManifestError::Read { source, .. } => Some(source),
            ManifestError::Yaml { source, .. } => Some(source),
            ManifestError::Json { source, .. } => Some(source),
            ManifestError::Decode { source, .. } => Some(source),
            ManifestError::Invalid { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Whether a directory entry is a manifest: `.yaml`, `.yml` or `.json` (any case), and not a
/// dotfile or an editor's temporary file (`web.yaml~`, `#web.yaml#`, vim's `.web.yaml.swp` and
/// `4913`). kubelet reads every non-dotfile; we are stricter so that editor droppings and
/// backups (`web.yaml.bak`) never become pods.
pub fn is_manifest_file_name(name: &str) -> bool {
    if name.starts_with('.') || name.ends_with('~') || name == "4913" {
        return false;
    }
    if name.starts_with('#') && name.ends_with('#') {
        return false;
    }
    let Some((stem, extension)) = name.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && ["yaml", "yml", "json"]
            .iter()
            .any(|e| extension.eq_ignore_ascii_case(e))
}

/// Decodes one manifest and applies the static pod defaults for `node_name`.
///
/// `.json` files are parsed as JSON (for JSON error messages); everything else as YAML.
pub fn parse_manifest(path: &Path, bytes: &[u8], node_name: &str) -> Result<Pod, ManifestError> {
    let p = || path.to_path_buf();
    let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotUtf8 { path: p() })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let value: Value = if is_json {
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text)
                .map_err(|source| ManifestError::Json { path: p(), source })?
        }
    } else {
        yaml::parse_one(text).map_err(|source| ManifestError::Yaml { path: p(), source })?
    };
    if value.is_null() {
        return Err(ManifestError::Empty { path: p() });
    }
    let uid = static_pod_uid(&value, node_name);
    let mut pod =
        k8s::decode_pod(value).map_err(|source| ManifestError::Decode { path: p(), source })?;
    apply_static_pod_defaults(&mut pod, uid, node_name);
    k8s::validate(&pod).map_err(|source| ManifestError::Invalid { path: p(), source })?;
    Ok(pod)
}

/// kubelet's `applyDefaults` for file sources.
fn apply_static_pod_defaults(pod: &mut Pod, uid: String, node_name: &str) {
    // An empty name stays empty so that validation says "required", not "-node is invalid".
    if !pod.metadata.name.is_empty() {
        pod.metadata.name = format!("{}-{node_name}", pod.metadata.name);
    }
    if pod.metadata.namespace.is_empty() {
        pod.metadata.namespace = k8s::pod::DEFAULT_NAMESPACE.to_string();
    }
    pod.spec.node_name = node_name.to_string();
    // kubelet keeps a UID written in the manifest; nanolet always derives it, so that copying
    // a manifest (UID included) to a new file can never yield two pods with one UID.
    pod.metadata
        .annotations
        .insert(CONFIG_HASH_ANNOTATION.to_string(), uid.clone());
    pod.metadata.annotations.insert(
        CONFIG_SOURCE_ANNOTATION.to_string(),
        FILE_SOURCE.to_string(),
    );
    pod.metadata.uid = uid;
}

/// The static pod UID: a hash of the manifest's pod object (as decoded, so comments, key order
/// and formatting do not count) and the node name, as 32 lowercase hex digits. kubelet uses
/// md5 over the Go object plus `host:` and `file:` (the path); we use the first 16 bytes of
/// sha256 and leave the path out, so renaming a manifest does not restart its pod.
fn static_pod_uid(value: &Value, node_name: &str) -> String {
    let mut hasher = Sha256::new();
    // A Value always serialises; the empty fallback is never used but keeps this total.
    hasher.update(serde_json::to_vec(value).unwrap_or_default());
    hasher.update(b"host:");
    hasher.update(node_name.as_bytes());
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::k8s::{RestartPolicy, pod_full_name};

    const NODE: &str = "edge-01";

    /// The example from the Kubernetes docs ("Create static pods"), plus fields nanolet
    /// accepts without acting on them.
    const WEB: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: static-web
  labels:
    role: myrole
spec:
  containers:
    - name: web
      image: nginx
      ports:
        - name: web
          containerPort: 80
          protocol: TCP
      resources:
        limits: {memory: 128Mi}
      readinessProbe:
        httpGet: {path: /, port: 80}
      volumeMounts:
        - {name: data, mountPath: /data}
  volumes:
    - name: data
      hostPath: {path: /srv/data}
  tolerations:
    - operator: Exists
  dnsPolicy: ClusterFirst
  securityContext: {runAsUser: 1000}
status: {}
";

    /// A control-plane style static pod, in the shape kubeadm writes (written for this test).
    const KUBEADM_STYLE: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  annotations:
    example.com/endpoint: https://10.0.0.2:2379
  creationTimestamp: null
  labels:
    component: store
    tier: control-plane
  name: store
  namespace: kube-system
spec:
  containers:
  - command:
    - store
    - --data-dir=/var/lib/store
    - --listen=https://10.0.0.2:2379
    env:
    - name: GOMAXPROCS
      value: "2"
    - name: POD_IP
      valueFrom:
        fieldRef: {fieldPath: status.podIP}
    image: registry.example.com/store:3.5.9-0
    imagePullPolicy: IfNotPresent
    livenessProbe:
      failureThreshold: 8
      httpGet: {host: 127.0.0.1, path: /health, port: 2381, scheme: HTTP}
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    name: store
    resources:
      requests: {cpu: 100m, memory: 100Mi}
    startupProbe:
      httpGet: {host: 127.0.0.1, path: /health, port: 2381, scheme: HTTP}
    securityContext:
      readOnlyRootFilesystem: true
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
    volumeMounts:
    - mountPath: /var/lib/store
      name: data
  dnsPolicy: ClusterFirst
  enableServiceLinks: true
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  restartPolicy: Always
  schedulerName: default-scheduler
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  terminationGracePeriodSeconds: 30
  volumes:
  - hostPath:
      path: /var/lib/store
      type: DirectoryOrCreate
    name: data
  - name: certs
    secret:
      secretName: store-certs
      defaultMode: 0400
status: {}
"#;

    #[test]
    fn a_kubeadm_style_manifest_parses() {
        let pod = parse_manifest(&path("store.yaml"), KUBEADM_STYLE.as_bytes(), NODE).unwrap();
        assert_eq!(pod_full_name(&pod), "kube-system/store-edge-01");
        assert!(pod.spec.host_network);
        let c = &pod.spec.containers[0];
        assert_eq!(c.image_pull_policy(), k8s::PullPolicy::IfNotPresent);
        assert_eq!(c.command[1], "--data-dir=/var/lib/store");
        assert_eq!(c.env[0].value.as_deref(), Some("2"));
        assert!(c.env[1].value_from.is_some());
        let secret = pod.spec.volumes[1].secret.as_ref().unwrap();
        assert_eq!(secret.default_mode, Some(0o400));
        assert_eq!(
            pod.metadata.annotations["example.com/endpoint"],
            "https://10.0.0.2:2379"
        );
    }

    fn path(name: &str) -> PathBuf {
        PathBuf::from("/etc/nanolet/manifests").join(name)
    }

    #[test]
    fn manifest_file_names() {
        let cases = [
            ("web.yaml", true),
            ("web.yml", true),
            ("web.json", true),
            ("WEB.YAML", true),
            (".web.yaml", false),
            (".web.yaml.swp", false),
            ("web.yaml~", false),
            ("#web.yaml#", false),
            ("4913", false),
            ("web.yaml.bak", false),
            ("web.txt", false),
            ("README", false),
            (".yaml", false),
        ];
        for (name, want) in cases {
            assert_eq!(is_manifest_file_name(name), want, "{name}");
        }
    }

    #[test]
    fn static_pod_defaults_are_applied() {
        let pod = parse_manifest(&path("web.yaml"), WEB.as_bytes(), NODE).unwrap();
        assert_eq!(pod_full_name(&pod), "default/static-web-edge-01");
        assert_eq!(pod.spec.node_name, NODE);
        assert_eq!(pod.spec.restart_policy, RestartPolicy::Always);
        assert_eq!(pod.spec.termination_grace_period_seconds(), 30);
        assert_eq!(pod.metadata.uid.len(), 32);
        assert!(
            pod.metadata
                .uid
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(
            pod.metadata.annotations[CONFIG_HASH_ANNOTATION],
            pod.metadata.uid
        );
        assert_eq!(pod.metadata.annotations[CONFIG_SOURCE_ANNOTATION], "file");
        assert_eq!(pod.metadata.labels["role"], "myrole");
        assert_eq!(
            pod.spec.containers[0].image_pull_policy(),
            k8s::PullPolicy::Always
        );
    }

    #[test]
    fn uid_depends_on_content_and_node_not_on_formatting_or_path() {
        let uid = |name: &str, text: &str, node: &str| {
            parse_manifest(&path(name), text.as_bytes(), node)
                .unwrap()
                .metadata
                .uid
        };
        let base = uid("web.yaml", WEB, NODE);
        let reformatted = format!(
            "# a comment\n{}",
            WEB.replace("  tolerations:\n    - operator: Exists\n", "")
        );
        assert_eq!(base, uid("other.yaml", WEB, NODE), "path must not count");
        assert_ne!(base, uid("web.yaml", WEB, "edge-02"), "node must count");
        assert_ne!(
            base,
            uid("web.yaml", &reformatted, NODE),
            "content must count"
        );
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},
                      "spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{image: busybox, name: c}]\n";
        assert_eq!(
            uid("a.json", json, NODE),
            uid("a.yaml", yaml, NODE),
            "format must not count"
        );
    }

    #[test]
    fn a_uid_in_the_manifest_is_replaced() {
        let text = WEB.replace("  name: static-web\n", "  name: static-web\n  uid: mine\n");
        let pod = parse_manifest(&path("web.yaml"), text.as_bytes(), NODE).unwrap();
        assert_ne!(pod.metadata.uid, "mine");
        assert_eq!(
            pod.metadata.annotations[CONFIG_HASH_ANNOTATION],
            pod.metadata.uid
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases: &[(&str, String, &str)] = &[
            (
                "web.yaml",
                "a: [1\n".into(),
                "invalid YAML: line 2 column 1",
            ),
            (
                "web.json",
                "{\"apiVersion\": \"v1\",}".into(),
                "invalid JSON: trailing comma at line 1",
            ),
            ("web.yaml", String::new(), "empty: expected a Pod"),
            ("web.json", " \n".into(), "empty: expected a Pod"),
            ("web.yaml", "# nothing\n".into(), "empty: expected a Pod"),
            (
                "web.yaml",
                format!("{WEB}---\n{WEB}"),
                "more than one document",
            ),
            (
                "web.yaml",
                WEB.replace("  containers:", "  contianers:"),
                "spec.contianers: unknown field `contianers`",
            ),
            (
                "web.yaml",
                WEB.replace(
                    "      image: nginx\n",
                    "      image: nginx\n      imagePulPolicy: Never\n",
                ),
                "spec.containers[0].imagePulPolicy: unknown field",
            ),
            (
                "web.yaml",
                WEB.replace("spec:\n", "spec:\n  restartPolicy: Sometimes\n"),
                "spec.restartPolicy: unknown variant `Sometimes`",
            ),
            (
                "web.yaml",
                WEB.replace("      image: nginx\n", "      image: \"\"\n"),
                "spec.containers[0].image: must not be empty",
            ),
            (
                "web.yaml",
                WEB.replace("    - name: web\n", "    - name: Web\n"),
                "spec.containers[0].name: \"Web\"",
            ),
            (
                "web.yaml",
                WEB.replace("kind: Pod", "kind: Deployment"),
                "kind: \"Deployment\"",
            ),
            (
                "web.yaml",
                WEB.replace("apiVersion: v1\n", ""),
                "apiVersion: required",
            ),
            (
                "web.yaml",
                WEB.replace("  name: static-web\n", ""),
                "metadata.name: required",
            ),
            (
                "web.yaml",
                WEB.replace("spec:\n", "spec:\n  terminationGracePeriodSeconds: -5\n"),
                "spec.terminationGracePeriodSeconds: -5",
            ),
        ];
        for (name, text, fragment) in cases {
            let err = parse_manifest(&path(name), text.as_bytes(), NODE)
                .expect_err(fragment)
                .to_string();
            let prefix = format!("manifest /etc/nanolet/manifests/{name}: ");
            assert!(err.starts_with(&prefix), "{err}");
            assert!(err.contains(fragment), "want {fragment:?} in {err}");
        }
    }

    #[test]
    fn not_utf8_is_an_error() {
        let err = parse_manifest(&path("web.yaml"), b"\xff\xfe", NODE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest /etc/nanolet/manifests/web.yaml: not UTF-8 text"
        );
    }

    #[test]
    fn too_long_a_name_after_the_node_suffix_is_invalid() {
        let long = "a".repeat(250);
        let text = WEB.replace("name: static-web", &format!("name: {long}"));
        let err = parse_manifest(&path("web.yaml"), text.as_bytes(), NODE).unwrap_err();
        assert!(
            err.to_string()
                .contains("metadata.name: must be no more than 253"),
            "{err}"
        );
    }
}
