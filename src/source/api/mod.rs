//! Pods from the API server: the pods bound to this node, next to the static pods.
//!
//! ```text
//!   PodApi (client.rs) ──► run_watch: Watcher (pure) ──► ApiPodSet (pure) ──► agent reconcile
//!                                                         │ dirty pods
//!                                                         ▼
//!                                              PodStore (<dataDir>/api-pods, flushed before
//!                                              each reconcile: a pod runs only once it is on disk)
//! ```
//!
//! - [`watcher`] (pure): list + watch as one state machine (resourceVersion, bookmarks, 410).
//! - [`decode`] (pure): API objects → validated pods, unknown fields tolerated.
//! - [`set`] (pure): which API pods run, which terminate, which are mirrors.
//! - [`client`]: the API calls, as a trait the loops are written against.
//! - [`objects`]: ConfigMaps, Secrets and service account tokens for API pods (cache + GETs).
//! - [`copies`]: their copies on disk, kept for edge autonomy, pruned when no pod uses them.
//! - [`ApiPods`] and [`run_watch`] (I/O): the shared state and the watch loop.
//!
//! Edge autonomy: at start the stored pods are loaded before the first reconcile, so pods run
//! even when the API server never answers; the first full list then replaces them.

pub mod api_client;
pub mod client;
pub mod copies;
pub mod decode;
pub mod objects;
pub mod set;
pub mod watcher;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use serde_json::Value;

use crate::k8s::Pod;
use crate::state::pods::PodStore;
use client::{PodApi, PodWatch};
use set::{ApiPodSet, Changes, Terminating};
use watcher::{Input, Output, Request, WatchEvent, Watcher};

/// What the agent, the watch loop and the reporters share about API pods.
pub struct ApiPods {
    pub node: String,
    set: RefCell<ApiPodSet>,
    store: PodStore,
    /// Pods to write (`Some`) or forget (`None`) on disk at the next flush.
    dirty: RefCell<BTreeMap<String, Option<Value>>>,
    /// Terminating pods whose final DELETE is under way.
    confirming: RefCell<HashSet<String>>,
    /// Wakes the agent's reconcile (capacity one: wakes coalesce).
    wake: async_channel::Sender<()>,
    /// The reporting loops, woken when API pods, mirrors or static pods change.
    subscribers: RefCell<Vec<async_channel::Sender<()>>>,
    /// The static pods, as the agent last saw them (for mirror pods).
    /// The agent's static pods, shared with their workers (for the mirror pods).
    static_pods: RefCell<Vec<Rc<Pod>>>,
    /// The fingerprint of the spec each running API pod's worker was started with, by UID
    /// (the spec itself is in the set and in the worker already).
    started: RefCell<BTreeMap<String, [u8; 32]>>,
}

impl ApiPods {
    /// Loads the stored pods (logging the damaged ones) so they run before the API answers.
    pub fn new(node: String, store: PodStore, wake: async_channel::Sender<()>) -> ApiPods {
        let (stored, errors) = store.load();
        for e in errors {
            log::error!("{e}");
        }
        let mut set = ApiPodSet::new();
        if !stored.is_empty() {
            log::info!(
                "{} pod(s) from the pod store start before the API server answers",
                stored.len()
            );
        }
        log_changes(&set.load(stored));
        ApiPods {
            node,
            set: RefCell::new(set),
            store,
            dirty: RefCell::default(),
            confirming: RefCell::default(),
            wake,
            subscribers: RefCell::default(),
            static_pods: RefCell::default(),
            started: RefCell::default(),
        }
    }

    /// The agent started a worker for this API pod.
    pub fn record_started(&self, pod: &Pod) {
        self.started
            .borrow_mut()
            .insert(pod.metadata.uid.clone(), crate::k8s::fingerprint(&pod.spec));
    }

    /// Whether the API server changed the spec of this running pod (the API allows new images):
    /// the agent then restarts the pod with the new spec. Forgets pods that are gone.
    pub fn spec_changed(&self, uid: &str) -> bool {
        let set = self.set.borrow();
        let mut started = self.started.borrow_mut();
        match (set.get(uid), started.get(uid)) {
            (Some(pod), Some(spec)) if crate::k8s::fingerprint(&pod.spec) != *spec => {
                log::info!(
                    "pod {}: the API server changed its spec; restarting it",
                    crate::k8s::pod_full_name(pod)
                );
                started.remove(uid);
                true
            }
            (None, Some(_)) => {
                started.remove(uid);
                false
            }
            _ => false,
        }
    }

    fn apply(&self, outputs: Vec<Output>) {
        let mut any = false;
        for output in outputs {
            if let Output::Warning(w) = &output {
                log::warn!("{w}");
                continue;
            }
            let changes = self.set.borrow_mut().apply(output);
            any |= changes.changed;
            log_changes(&changes);
            let mut dirty = self.dirty.borrow_mut();
            for (uid, object) in changes.store {
                dirty.insert(uid, Some(object));
            }
            for uid in changes.unstore {
                dirty.insert(uid, None);
            }
        }
        if any {
            let _ = self.wake.try_send(());
            self.notify();
        }
    }

    /// Writes the pods that changed to the store. The agent calls it before it starts workers,
    /// so that a pod runs only once it would run again after a reboot. Returns whether a pod
    /// was forgotten (the copies of its objects may then go: see [`ApiPods::referenced`]).
    pub fn flush(&self) -> bool {
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let forgot = dirty.values().any(Option::is_none);
        for (uid, object) in dirty {
            let result = match &object {
                Some(object) => self.store.save(&uid, object),
                None => self.store.remove(&uid),
            };
            if let Err(e) = result {
                log::error!("pod store: pod uid {uid}: {e}");
            }
        }
        forgot
    }

    /// What the pods bound to this node reference (ConfigMaps, Secrets, tokens): every pod of
    /// the set, which is what the store holds (or, before the first list, what it held).
    pub fn referenced(&self) -> (BTreeSet<objects::ObjectKey>, BTreeSet<objects::TokenKey>) {
        objects::references_of(self.set.borrow().all())
    }

    /// The API pods to run (shared with their workers, not copied).
    pub fn desired(&self) -> Vec<Rc<Pod>> {
        self.set.borrow().desired().into_iter().cloned().collect()
    }

    /// The grace period for stopping this pod's worker, if the API server is deleting it.
    pub fn deletion_grace(&self, uid: &str) -> Option<i64> {
        self.set
            .borrow()
            .terminating()
            .into_iter()
            .find(|t| t.uid == uid)
            .map(|t| t.grace_period_seconds)
    }

    /// Terminating pods that nothing runs any more (`is_running` says which UIDs still have a
    /// worker): their deletion is confirmed now. Returns the pods to confirm.
    pub fn idle_terminating(&self, is_running: &dyn Fn(&str) -> bool) -> Vec<Terminating> {
        let confirming = self.confirming.borrow();
        self.set
            .borrow()
            .terminating()
            .into_iter()
            .filter(|t| !is_running(&t.uid) && !confirming.contains(&t.uid))
            .collect()
    }

    /// The pod with this UID, if it is an API pod.
    pub fn get(&self, uid: &str) -> Option<Rc<Pod>> {
        self.set.borrow().get(uid).cloned()
    }

    /// The mirror pods the watch sees.
    pub fn mirrors(&self) -> Vec<crate::report::mirror::Mirror> {
        self.set.borrow().mirrors()
    }

    /// Whether a full list has been applied (the mirrors are known).
    pub fn is_synced(&self) -> bool {
        self.set.borrow().is_synced()
    }

    /// The agent's static pods changed.
    pub fn set_static_pods(&self, pods: Vec<Rc<Pod>>) {
        let mut current = self.static_pods.borrow_mut();
        if *current != pods {
            *current = pods;
            drop(current);
            self.notify();
        }
    }

    pub fn static_pods(&self) -> Vec<Rc<Pod>> {
        self.static_pods.borrow().clone()
    }

    fn notify(&self) {
        self.subscribers
            .borrow_mut()
            .retain(|tx| !matches!(tx.try_send(()), Err(async_channel::TrySendError::Closed(_))));
    }

    /// A receiver that gets a message (coalesced) when API pods, mirrors or static pods change.
    pub fn subscribe(&self) -> async_channel::Receiver<()> {
        let (tx, rx) = async_channel::bounded(1);
        self.subscribers.borrow_mut().push(tx);
        rx
    }
}

/// Confirms a terminated API pod's deletion: `DELETE` with grace period 0 and the pod's UID as
/// precondition (transcript 16), so a new pod of the same name is never hit.
pub async fn confirm_deletion<A: PodApi>(api: &A, pods: &ApiPods, t: Terminating) {
    pods.confirming.borrow_mut().insert(t.uid.clone());
    let pod = format!("{}/{}", t.namespace, t.name);
    match api.delete_pod(&t.namespace, &t.name, &t.uid, 0).await {
        Ok(()) => log::info!("pod {pod}: terminated; deletion confirmed"),
        // Already gone, or a new pod has the name (409 precondition failed): nothing to do.
        Err(e) if matches!(e.code, Some(404 | 409)) => {
            log::info!("pod {pod}: deletion confirmed ({e})")
        }
        Err(e) => {
            log::warn!("pod {pod}: confirming the deletion: {e}; retrying later");
            pods.confirming.borrow_mut().remove(&t.uid);
        }
    }
}

fn log_changes(changes: &Changes) {
    for e in &changes.errors {
        log::error!("{e}");
    }
    for d in &changes.dropped {
        log::debug!("{d}: unknown field ignored");
    }
}

/// A small xorshift generator for jitter; seeded from the clock and pid (not for secrets).
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded() -> Jitter {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// The next value in `[0, 1)`.
    pub fn fraction(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The watch loop: lists and watches the node's pods forever, feeding [`ApiPods`].
pub async fn run_watch<A: PodApi>(api: Rc<A>, pods: Rc<ApiPods>) {
    let mut watcher = Watcher::new();
    let mut jitter = Jitter::seeded();
    let node = pods.node.clone();
    loop {
        match watcher.request(jitter.fraction()) {
            Request::List { continue_token } => {
                let input = match api.list_pods(&node, continue_token.as_deref()).await {
                    Ok(page) => Input::Page {
                        items: page.items,
                        resource_version: page.resource_version,
                        continue_token: page.continue_token,
                    },
                    Err(f) => Input::Failed {
                        code: f.code,
                        error: f.message,
                    },
                };
                pods.apply(watcher.step(input, Instant::now(), jitter.fraction()));
            }
            Request::Watch {
                resource_version,
                timeout_seconds,
            } => match api
                .watch_pods(&node, &resource_version, timeout_seconds)
                .await
            {
                Err(f) => {
                    let input = Input::Failed {
                        code: f.code,
                        error: f.message,
                    };
                    pods.apply(watcher.step(input, Instant::now(), jitter.fraction()));
                }
                Ok(mut stream) => loop {
                    let (input, last) = match stream.next().await {
                        None => (Input::StreamEnded, true),
                        Some(Err(f)) => (
                            Input::Failed {
                                code: f.code,
                                error: f.message,
                            },
                            true,
                        ),
                        Some(Ok(event)) => {
                            let last = matches!(event, WatchEvent::Error(_));
                            (Input::Event(event), last)
                        }
                    };
                    pods.apply(watcher.step(input, Instant::now(), jitter.fraction()));
                    if last {
                        break;
                    }
                },
            },
            Request::Wait { until } => {
                Timer::at(until).await;
                pods.apply(watcher.step(Input::Timer, Instant::now(), jitter.fraction()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
