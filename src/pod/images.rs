//! A container's image: whether to pull it (kubelet's `imagePullPolicy`, pure) and the pulls
//! themselves, each in a short-lived `nanolet internal-pull` child so the agent stays small and
//! responsive. Pulls of the same reference are shared: one child, every waiter gets its result.
//!
//! One deliberate difference from kubelet, for edge autonomy: under `Always`, an image that is
//! already in the store is used when the pull fails (the registry is unreachable, say), with a
//! warning, instead of keeping the pod from starting offline.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;

use crate::k8s::PullPolicy;
use crate::sys::process;
use crate::sys::reaper::Reaper;

/// What to do about a container's image.
#[derive(Debug, PartialEq, Eq)]
pub enum PullAction {
    /// Use the image in the store.
    Use,
    /// Pull it; on failure fall back to the stored copy when `fallback`.
    Pull { fallback: bool },
    /// `Never`, and the image is not in the store: `ErrImageNeverPull`.
    Missing,
}

/// kubelet's pull decision, with nanolet's offline fallback under `Always`.
pub fn decide(policy: PullPolicy, present: bool) -> PullAction {
    match (policy, present) {
        (PullPolicy::Never, true) | (PullPolicy::IfNotPresent, true) => PullAction::Use,
        (PullPolicy::Never, false) => PullAction::Missing,
        (PullPolicy::IfNotPresent, false) => PullAction::Pull { fallback: false },
        (PullPolicy::Always, present) => PullAction::Pull { fallback: present },
    }
}

type Waiters = Vec<async_channel::Sender<Result<(), String>>>;

/// Runs pulls in child processes, one per reference at a time. Cheap to clone.
#[derive(Clone)]
pub struct Puller {
    exe: PathBuf,
    config_dir: PathBuf,
    reaper: Reaper,
    inflight: Rc<RefCell<HashMap<String, Waiters>>>,
}

impl Puller {
    pub fn new(exe: PathBuf, config_dir: PathBuf, reaper: Reaper) -> Puller {
        Puller {
            exe,
            config_dir,
            reaper,
            inflight: Rc::default(),
        }
    }

    /// Pulls `reference` into the store; `Err` carries the pull's own message.
    pub async fn pull(&self, reference: &str) -> Result<(), String> {
        let joined = {
            let mut inflight = self.inflight.borrow_mut();
            match inflight.get_mut(reference) {
                Some(waiters) => {
                    let (tx, rx) = async_channel::bounded(1);
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    inflight.insert(reference.to_string(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = joined {
            return rx
                .recv()
                .await
                .unwrap_or_else(|_| Err("pull abandoned".to_string()));
        }
        let result = self.run_child(reference).await;
        let waiters = self
            .inflight
            .borrow_mut()
            .remove(reference)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.try_send(result.clone());
        }
        result
    }

    async fn run_child(&self, reference: &str) -> Result<(), String> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("internal-pull")
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg(reference);
        let out = process::output(&self.reaper, cmd)
            .await
            .map_err(|e| format!("running the pull: {e}"))?;
        last_result(&out.stdout).unwrap_or_else(|| {
            Err(format!(
                "the pull ended without a result (exit {:?}): {}",
                out.exit,
                out.stderr_tail()
            ))
        })
    }
}

/// The pull child's final line: `{"image":…}` or `{"error":"…"}`.
fn last_result(stdout: &[u8]) -> Option<Result<(), String>> {
    let text = String::from_utf8_lossy(stdout);
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v.get("image").is_some() {
            Some(Ok(()))
        } else {
            v.get("error")
                .map(|e| Err(e.as_str().unwrap_or("unknown error").to_string()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_decisions_follow_kubelet_with_an_offline_fallback() {
        use PullAction::*;
        use PullPolicy::*;
        for (policy, present, want) in [
            (Never, true, Use),
            (Never, false, Missing),
            (IfNotPresent, true, Use),
            (IfNotPresent, false, Pull { fallback: false }),
            (Always, true, Pull { fallback: true }),
            (Always, false, Pull { fallback: false }),
        ] {
            assert_eq!(
                decide(policy, present),
                want,
                "{policy:?} present={present}"
            );
        }
    }

    #[test]
    fn the_childs_last_line_is_its_result() {
        assert_eq!(
            last_result(b"{\"layer\":\"sha256:a\",\"done\":1,\"total\":2}\n{\"image\":{}}\n"),
            Some(Ok(()))
        );
        assert_eq!(
            last_result(b"{\"error\":\"image x: 401 unauthorized\"}\n"),
            Some(Err("image x: 401 unauthorized".to_string()))
        );
        assert_eq!(last_result(b"garbage\n"), None);
    }
}
