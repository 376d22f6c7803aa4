//! A container's image: whether to pull it (kubelet's `imagePullPolicy`, pure) and the pulls
//! themselves, each in a short-lived `nanolet internal-pull` child so the agent stays small and
//! responsive. Pulls of the same reference are shared: one child, every waiter gets its result.
//!
//! The child's stdout is read line by line as it arrives ([`PullProgress`], pure), so a waiting
//! container can show `pulling image "x": 12.3/30.1 MiB` ([`Puller::progress`]). After a
//! successful pull the reference is sent on the channel given to [`Puller::new`]: the agent
//! tells every worker, so containers waiting for that image retry at once.
//!
//! One deliberate difference from kubelet, for edge autonomy: under `Always`, an image that is
//! already in the store is used when the pull fails (the registry is unreachable, say), with a
//! warning, instead of keeping the pod from starting offline.
//!
//! An image in the store whose rootfs is not unpacked (removed, or imported without one) is
//! unpacked the same way, in a `nanolet internal-unpack DIGEST` child ([`Puller::unpack`]):
//! unpacking a large image takes seconds of CPU and the agent has one thread.
//!
//! It must never touch the image store itself: the child does.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;

use async_io::Async;
use futures_lite::io::BufReader;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, StreamExt, future};

use crate::image::auth::Credentials;
use crate::image::digest::Digest;
use crate::image::pull::Event;
use crate::k8s::PullPolicy;
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

/// A pull as its child reports it: bytes done and total per layer, then the result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PullProgress {
    layers: BTreeMap<Digest, (u64, u64)>,
    result: Option<Result<(), String>>,
}

impl PullProgress {
    /// Takes one line of the child's stdout; a line that is not an [`Event`] is ignored.
    pub fn apply_line(&mut self, line: &str) {
        match Event::parse(line) {
            Ok(Event::Layer { layer, done, total }) => {
                self.layers.insert(layer, (done, total));
            }
            Ok(Event::Image { .. }) => self.result = Some(Ok(())),
            Ok(Event::Error { error }) => self.result = Some(Err(error)),
            Err(_) => {}
        }
    }

    /// Bytes done and total over the layers reported so far.
    pub fn bytes(&self) -> (u64, u64) {
        self.layers
            .values()
            .fold((0, 0), |(d, t), &(done, total)| (d + done, t + total))
    }

    /// The status message of a container waiting for this pull.
    pub fn message(&self, reference: &str) -> String {
        match self.bytes() {
            (_, 0) => format!("pulling image {reference:?}"),
            (done, total) => {
                const MIB: f64 = (1u64 << 20) as f64;
                let (done, total) = (done as f64 / MIB, total as f64 / MIB);
                format!("pulling image {reference:?}: {done:.1}/{total:.1} MiB")
            }
        }
    }

    /// The child's last word: `{"image":…}` or `{"error":…}`; `None` before it.
    pub fn result(&self) -> Option<Result<(), String>> {
        self.result.clone()
    }
}

/// Runs pulls in child processes, one per reference at a time. Cheap to clone.
#[derive(Clone)]
pub struct Puller {
    exe: PathBuf,
    config_dir: PathBuf,
    reaper: Reaper,
    inflight: Rc<RefCell<HashMap<String, Waiters>>>,
    progress: Rc<RefCell<HashMap<String, PullProgress>>>,
    pulled: async_channel::Sender<String>,
}

impl Puller {
    /// `pulled` receives each reference pulled successfully.
    pub fn new(
        exe: PathBuf,
        config_dir: PathBuf,
        reaper: Reaper,
        pulled: async_channel::Sender<String>,
    ) -> Puller {
        Puller {
            exe,
            config_dir,
            reaper,
            inflight: Rc::default(),
            progress: Rc::default(),
            pulled,
        }
    }

    /// Pulls `reference` into the store; `Err` carries the pull's own message.
    pub async fn pull(&self, reference: &str) -> Result<(), String> {
        self.pull_with(reference, None).await
    }

    /// Pulls `reference` with `credentials` (a pod's imagePullSecrets; they take precedence
    /// over the node's `config.json`). They reach the child on its stdin, never its arguments.
    /// Pulls share a child only when their credentials are the same.
    pub async fn pull_with(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<(), String> {
        let result = self
            .run_shared("internal-pull", reference, credentials)
            .await;
        if result.is_ok() {
            // Unbounded on the agent's side; a closed channel means the agent is stopping.
            let _ = self.pulled.try_send(reference.to_string());
        }
        result
    }

    /// Unpacks the rootfs of `image`, which is in the store, in a child process.
    pub async fn unpack(&self, image: &crate::image::Image) -> Result<(), String> {
        let digest = image.manifest_digest.to_string();
        self.run_shared("internal-unpack", &digest, None).await
    }

    /// Runs `nanolet VERB ARG`, or joins the child already running it.
    async fn run_shared(
        &self,
        verb: &'static str,
        arg: &str,
        credentials: Option<Credentials>,
    ) -> Result<(), String> {
        let key = match &credentials {
            // The digest tells credentials apart without keeping them in the key.
            Some(c) => format!(
                "{verb} {arg} {}",
                Digest::of(format!("{}\0{}", c.username, c.password).as_bytes()).hex()
            ),
            None => format!("{verb} {arg}"),
        };
        let joined = {
            let mut inflight = self.inflight.borrow_mut();
            match inflight.get_mut(&key) {
                Some(waiters) => {
                    let (tx, rx) = async_channel::bounded(1);
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    inflight.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = joined {
            return rx
                .recv()
                .await
                .unwrap_or_else(|_| Err(format!("{verb} abandoned")));
        }
        self.progress
            .borrow_mut()
            .insert(arg.to_string(), PullProgress::default());
        let result = self.run_child(verb, arg, credentials).await;
        self.progress.borrow_mut().remove(arg);
        let waiters = self.inflight.borrow_mut().remove(&key).unwrap_or_default();
        for w in waiters {
            let _ = w.try_send(result.clone());
        }
        result
    }

    /// The status message of a pull of `reference` in flight (`pulling image "x": 1.0/2.0 MiB`).
    pub fn progress(&self, reference: &str) -> Option<String> {
        self.progress
            .borrow()
            .get(reference)
            .map(|p| p.message(reference))
    }

    /// Runs the child; `reference` is its argument and the key of its progress.
    async fn run_child(
        &self,
        verb: &str,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<(), String> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg(verb).arg("--config-dir").arg(&self.config_dir);
        if credentials.is_some() {
            cmd.arg("--credentials-stdin");
        }
        cmd.arg(reference)
            .stdin(if credentials.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("running {verb}: {e}"))?;
        if let (Some(c), Some(mut stdin)) = (credentials, child.stdin.take()) {
            use std::io::Write;
            // A few hundred bytes: far below a pipe's buffer, so this write cannot block.
            let line = serde_json::json!({"username": c.username, "password": c.password});
            if let Err(e) = stdin.write_all(line.to_string().as_bytes()) {
                log::warn!("{verb} {reference}: handing over the pull credentials: {e}");
            }
        }
        let pid = child.id() as i32;
        let stdout = child
            .stdout
            .take()
            .map(|p| Async::new(File::from(std::os::fd::OwnedFd::from(p))));
        let stderr = child
            .stderr
            .take()
            .map(|p| Async::new(File::from(std::os::fd::OwnedFd::from(p))));
        // `child` is dropped without `wait`: the reaper owns the exit status.
        drop(child);
        let read_stdout = async {
            let Some(Ok(pipe)) = stdout else { return };
            let mut lines = BufReader::new(pipe).lines();
            while let Some(Ok(line)) = lines.next().await {
                if let Some(p) = self.progress.borrow_mut().get_mut(reference) {
                    p.apply_line(&line);
                }
            }
        };
        let read_stderr = async {
            let mut buf = Vec::new();
            if let Some(Ok(pipe)) = stderr {
                let _ = pipe.take(MAX_STDERR).read_to_end(&mut buf).await;
            }
            buf
        };
        let ((), stderr) = future::zip(read_stdout, read_stderr).await;
        let exit = self.reaper.wait(pid).await;
        let result = self
            .progress
            .borrow()
            .get(reference)
            .and_then(PullProgress::result);
        result.unwrap_or_else(|| {
            let stderr = String::from_utf8_lossy(&stderr);
            let tail = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Err(format!(
                "{verb} ended without a result (exit {exit:?}): {}",
                tail.trim()
            ))
        })
    }
}

/// The most stderr kept from a pull child (its last line goes into the error).
const MAX_STDERR: u64 = 1 << 20;

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

    /// The lines an `internal-pull` child writes, as the agent reads them one by one.
    fn lines(events: &[Event]) -> Vec<String> {
        events.iter().map(Event::to_line).collect()
    }

    fn layer(name: &str, done: u64, total: u64) -> Event {
        Event::Layer {
            layer: Digest::of(name.as_bytes()),
            done,
            total,
        }
    }

    #[test]
    fn progress_adds_up_the_layers_as_lines_arrive() {
        const MIB: u64 = 1 << 20;
        let mut p = PullProgress::default();
        let mut seen = vec![p.message("app:v1")];
        let stdout = lines(&[
            layer("a", 0, 10 * MIB),
            layer("b", 2 * MIB, 20 * MIB + MIB / 10),
            layer("a", 10 * MIB, 10 * MIB),
        ]);
        for line in stdout.iter().map(String::as_str).chain(["not json"]) {
            p.apply_line(line);
            seen.push(p.message("app:v1"));
        }
        assert_eq!(
            seen,
            [
                "pulling image \"app:v1\"",
                "pulling image \"app:v1\": 0.0/10.0 MiB",
                "pulling image \"app:v1\": 2.0/30.1 MiB",
                "pulling image \"app:v1\": 12.0/30.1 MiB",
                "pulling image \"app:v1\": 12.0/30.1 MiB",
            ]
        );
        assert_eq!(p.result(), None);
    }

    #[test]
    fn the_childs_last_event_is_its_result() {
        let image = crate::image::Image {
            names: vec!["r.local/app:v1".into()],
            manifest_digest: Digest::of(b"m"),
            config_digest: Digest::of(b"c"),
            config: Default::default(),
            size: 42,
        };
        let error = Event::Error {
            error: "image x: 401 unauthorized".into(),
        };
        for (events, want) in [
            (vec![layer("a", 1, 2), Event::Image { image }], Some(Ok(()))),
            (
                vec![layer("a", 1, 2), error],
                Some(Err("image x: 401 unauthorized".to_string())),
            ),
            (vec![layer("a", 1, 2)], None),
        ] {
            let mut p = PullProgress::default();
            for line in lines(&events) {
                p.apply_line(&line);
            }
            assert_eq!(p.result(), want, "{events:?}");
        }
    }
}
