//! A pod's volumes, as kubelet's volume manager prepares them before its containers start.
//!
//! ```text
//!   <dataDir>/pods/<uid>/
//!     volumes/kubernetes.io~empty-dir/<name>/     disk, or tmpfs (medium: Memory, sizeLimit)
//!     volumes/kubernetes.io~configmap/<name>/     atomic writer layout (..data → ..<timestamp>)
//!     volumes/kubernetes.io~secret/<name>/        same, on tmpfs: secrets never touch the disk
//!     volumes/kubernetes.io~downward-api/<name>/  same
//!     volumes/kubernetes.io~projected/<name>/     same, on tmpfs
//!     volume-subpaths/<volume>/<container>/<i>    subPath binds of an opened fd (sys::volume_mount)
//! ```
//!
//! hostPath volumes are the host's path itself, after the type check ([`host_path`]).
//! [`PodVolumes::set_up`] is idempotent: the worker calls it before starting containers and
//! periodically (`syncFrequency`) so edited ConfigMaps and Secrets reach running pods, as
//! kubelet's resync does. [`PodVolumes::tear_down`] unmounts and removes everything.
//!
//! The pure parts are [`payload`] (which files a volume holds) and [`container_mounts`]'s
//! decisions; the I/O is in [`atomic_writer`], [`host_path`] and [`crate::sys::volume_mount`].

pub mod atomic_writer;
pub mod host_path;
pub mod payload;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::k8s::volume::{Source, Volume, VolumeMount, parse_size};
use crate::k8s::{Container, Pod};
use crate::runtime::spec::Mount;
use crate::state::remove_tree;
use crate::sys::volume_mount;

pub use payload::Inputs;

/// A volume that could not be set up: kubelet's `MountVolume.SetUp failed` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeError {
    pub volume: String,
    pub message: String,
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MountVolume.SetUp failed for volume {:?} : {}",
            self.volume, self.message
        )
    }
}

/// One pod's volume folders.
#[derive(Debug, Clone)]
pub struct PodVolumes {
    /// `<dataDir>/pods/<uid>`.
    pub root: PathBuf,
}

/// kubelet's plugin folder name for a source, and whether it lives on tmpfs.
fn plugin(source: Source) -> Option<(&'static str, bool)> {
    Some(match source {
        Source::EmptyDir(e) => ("kubernetes.io~empty-dir", e.medium == "Memory"),
        Source::ConfigMap(_) => ("kubernetes.io~configmap", false),
        Source::Secret(_) => ("kubernetes.io~secret", true),
        Source::DownwardApi(_) => ("kubernetes.io~downward-api", false),
        Source::Projected(_) => ("kubernetes.io~projected", true),
        Source::HostPath(_) | Source::Unsupported(_) => return None,
    })
}

/// Whether kubelet always mounts this kind read-only (its API data volumes).
fn is_read_only_kind(source: Source) -> bool {
    matches!(
        source,
        Source::ConfigMap(_) | Source::Secret(_) | Source::DownwardApi(_) | Source::Projected(_)
    )
}

impl PodVolumes {
    pub fn new(data_dir: &Path, pod_uid: &str) -> PodVolumes {
        PodVolumes {
            root: data_dir.join("pods").join(pod_uid),
        }
    }

    /// Where a volume is on the host (the path itself for hostPath).
    pub fn host_path(&self, volume: &Volume) -> Option<PathBuf> {
        let source = volume.source()?;
        if let Source::HostPath(h) = source {
            return Some(PathBuf::from(&h.path));
        }
        let (plugin, _) = plugin(source)?;
        Some(self.root.join("volumes").join(plugin).join(&volume.name))
    }

    /// Prepares every volume of the pod (again: it is idempotent), stopping at the first that
    /// fails.
    pub fn set_up(&self, pod: &Pod, inputs: &Inputs) -> Result<(), VolumeError> {
        for v in &pod.spec.volumes {
            self.set_up_one(v, inputs).map_err(|message| VolumeError {
                volume: v.name.clone(),
                message,
            })?;
        }
        Ok(())
    }

    fn set_up_one(&self, v: &Volume, inputs: &Inputs) -> Result<(), String> {
        let source = v
            .source()
            .ok_or_else(|| "must specify exactly one volume type".to_string())?;
        match source {
            Source::Unsupported(kind) => {
                return Err(format!(
                    "{kind} volumes are not supported by nanolet (no cluster storage on this node)"
                ));
            }
            Source::HostPath(h) => return host_path::check(Path::new(&h.path), h.kind),
            _ => {}
        }
        let dir = self
            .host_path(v)
            .ok_or_else(|| "volume has no folder".to_string())?;
        let (_, on_tmpfs) = plugin(source).ok_or_else(|| "volume has no folder".to_string())?;
        if on_tmpfs {
            let size = match source {
                Source::EmptyDir(e) => parse_size(e.size_limit.as_ref())?,
                _ => None,
            };
            volume_mount::mount_tmpfs(&dir, size)
                .map_err(|e| format!("mounting tmpfs at {}: {e}", dir.display()))?;
        } else {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if let Source::EmptyDir(_) = source {
            use std::os::unix::fs::PermissionsExt;
            // kubelet's emptyDir is world-writable, so any container user can use it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            return Ok(());
        }
        let files = payload::payload(source, inputs)?.unwrap_or_default();
        atomic_writer::write(&dir, &files)
            .map(drop)
            .map_err(|e| format!("writing {}: {e}", dir.display()))
    }

    /// The container's volume mounts for the runtime, with subPaths bound safely.
    /// `env` expands `subPathExpr` (the container's variables, as kubelet does).
    pub fn container_mounts(
        &self,
        pod: &Pod,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, String> {
        let mut mounts = Vec::new();
        for (i, m) in c.volume_mounts.iter().enumerate() {
            let Some(v) = pod.spec.volumes.iter().find(|v| v.name == m.name) else {
                return Err(format!("volumeMount {:?}: no such volume", m.name));
            };
            let source = v
                .source()
                .ok_or_else(|| format!("volume {:?}: no source", v.name))?;
            let host = self
                .host_path(v)
                .ok_or_else(|| format!("volume {:?} cannot be mounted", v.name))?;
            let sub_path = sub_path(m, env)?;
            let host = match sub_path {
                None => host,
                Some(sub) => {
                    let fd = volume_mount::open_sub_path(&host, &sub).map_err(|e| {
                        format!("failed to prepare subPath for volumeMount {:?} of container {:?}: {sub:?}: {e}", m.name, c.name)
                    })?;
                    let target = self
                        .root
                        .join("volume-subpaths")
                        .join(&v.name)
                        .join(&c.name)
                        .join(i.to_string());
                    volume_mount::bind_fd(&fd, &target).map_err(|e| {
                        format!("binding subPath {sub:?} of volume {:?}: {e}", v.name)
                    })?;
                    target
                }
            };
            let read_only = m.read_only || is_read_only_kind(source);
            mounts.push(Mount {
                destination: m.mount_path.clone(),
                source: host,
                kind: "bind".to_string(),
                options: ["rbind", "rprivate", if read_only { "ro" } else { "rw" }]
                    .map(String::from)
                    .to_vec(),
            });
        }
        Ok(mounts)
    }

    /// Unmounts and removes every volume of the pod (hostPath content is never touched: it is
    /// not below the pod's folder).
    pub fn tear_down(&self) -> io::Result<()> {
        volume_mount::unmount_below(&self.root)?;
        remove_tree(&self.root)
    }
}

/// The subPath of a mount: `subPath`, or `subPathExpr` expanded with the container's variables
/// (and checked again, since expansion may produce anything).
fn sub_path(m: &VolumeMount, env: &[(String, String)]) -> Result<Option<String>, String> {
    let raw = if !m.sub_path_expr.is_empty() {
        let lookup = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let expanded = crate::pod::config::expand(&m.sub_path_expr, &lookup);
        if let Some(p) = crate::k8s::validate_volumes::relative_path_problem(&expanded, false) {
            return Err(format!(
                "volumeMount {:?}: subPathExpr {:?} expands to {p}",
                m.name, m.sub_path_expr
            ));
        }
        expanded
    } else {
        m.sub_path.clone()
    };
    let trimmed = raw.trim_matches('/');
    Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sub_path_expr_expands_with_the_container_env_and_cannot_escape() {
        let env = vec![
            ("POD".to_string(), "web-1".to_string()),
            ("UP".to_string(), "..".to_string()),
        ];
        let m = |sub: &str, expr: &str| VolumeMount {
            name: "v".into(),
            mount_path: "/x".into(),
            sub_path: sub.into(),
            sub_path_expr: expr.into(),
            ..VolumeMount::default()
        };
        assert_eq!(sub_path(&m("a/b", ""), &env), Ok(Some("a/b".into())));
        assert_eq!(sub_path(&m("", ""), &env), Ok(None));
        assert_eq!(
            sub_path(&m("", "logs/$(POD)"), &env),
            Ok(Some("logs/web-1".into()))
        );
        let err = sub_path(&m("", "$(UP)/etc"), &env).unwrap_err();
        assert!(err.contains("must not contain '..'"), "{err}");
    }
}
