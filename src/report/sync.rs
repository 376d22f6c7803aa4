//! The reporting loops (I/O): pod status to the API server, and mirror pods for static pods.
//!
//! ```text
//!   board (pod workers publish) ──► run_status: status_patch (pure) ──► StatusQueue (pure)
//!                                     ──► PATCH .../pods/NAME/status, one at a time
//!   static pods + mirrors seen ──► run_mirrors: mirror::plan (pure) ──► POST / DELETE
//! ```
//!
//! API pods report to themselves; static pods report to their mirror pod (as kubelet does),
//! once the mirror exists. Both loops keep going through API outages: failures are retried
//! with back-off, and the status queue sends only the latest status per pod.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::FutureExt;

use super::mirror::{self, Action, NodeRef};
use super::queue::{Outcome, Patch, StatusQueue};
use super::status::{self, NodeFacts};
use crate::pod::board::Board;
use crate::source::api::ApiPods;
use crate::source::api::client::PodApi;

/// How often everything is offered again even without a change (safety net).
const RESYNC: Duration = Duration::from_secs(60);

/// Sends pod status changes to the API server, forever.
pub async fn run_status<A: PodApi>(
    api: Rc<A>,
    board: Board,
    pods: Rc<ApiPods>,
    facts: Rc<dyn Fn() -> NodeFacts>,
) {
    let changed = board.subscribe();
    let api_changed = pods.subscribe();
    let mut queue = StatusQueue::new();
    let mut last_resync = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(last_resync) >= RESYNC {
            queue.resend_all();
            last_resync = now;
        }
        offer_all(&mut queue, &board, &pods, &facts());
        while let Some(patch) = queue.next(Instant::now()) {
            let result = api
                .patch_pod_status(&patch.namespace, &patch.name, &patch.body)
                .await;
            let outcome = match &result {
                Ok(()) => Outcome::Sent,
                Err(f) => Outcome::of(f.code),
            };
            match (&result, outcome) {
                (Err(f), Outcome::Gone) => log::info!(
                    "pod {}/{}: status not reported: {f} (the pod with uid {} is gone)",
                    patch.namespace,
                    patch.name,
                    patch.uid
                ),
                (Err(f), _) => log::debug!(
                    "pod {}/{}: status patch: {f}; retrying",
                    patch.namespace,
                    patch.name
                ),
                _ => {}
            }
            queue.finished(patch, outcome, Instant::now());
            // Newer statuses replace older ones before the next patch goes out.
            offer_all(&mut queue, &board, &pods, &facts());
        }
        let wake_at = queue
            .next_wake()
            .unwrap_or(last_resync + RESYNC)
            .min(last_resync + RESYNC);
        async {
            let _ = changed.recv().await;
        }
        .or(async {
            Timer::at(wake_at).await;
        })
        .or(async {
            let _ = api_changed.recv().await;
        })
        .await;
    }
}

/// Offers the status of every pod on the board that has somewhere to go.
fn offer_all(queue: &mut StatusQueue, board: &Board, pods: &ApiPods, facts: &NodeFacts) {
    let snapshot = board.snapshot(0, "", 0);
    let present: HashSet<&str> = snapshot.pods.iter().map(|p| p.uid.as_str()).collect();
    // The mirrors' UIDs stand for their static pods' in the queue.
    let mirror_uids: HashSet<String> = pods.mirrors().into_iter().map(|m| m.uid).collect();
    queue.retain(|uid| present.contains(uid) || mirror_uids.contains(uid));
    let mirrors: HashMap<String, mirror::Mirror> = pods
        .mirrors()
        .into_iter()
        .map(|m| (m.hash.clone(), m))
        .collect();
    let statics: HashMap<String, Rc<crate::k8s::Pod>> = pods
        .static_pods()
        .into_iter()
        .map(|p| (p.metadata.uid.clone(), p))
        .collect();
    for status in &snapshot.pods {
        let (namespace, name, uid, qos) = if let Some(pod) = pods.get(&status.uid) {
            (
                status.namespace.clone(),
                status.name.clone(),
                status.uid.clone(),
                status::qos_class(&pod),
            )
        } else if let (Some(m), Some(pod)) = (mirrors.get(&status.uid), statics.get(&status.uid))
            && !m.deleting
        {
            (
                m.namespace.clone(),
                m.name.clone(),
                m.uid.clone(),
                status::qos_class(pod),
            )
        } else {
            continue;
        };
        let mut body = status::status_patch(status, qos, facts);
        body["metadata"]["uid"] = serde_json::Value::String(uid.clone());
        queue.offer(Patch {
            uid,
            namespace,
            name,
            body,
        });
    }
}

/// Keeps one current mirror pod per static pod, forever.
pub async fn run_mirrors<A: PodApi>(api: Rc<A>, pods: Rc<ApiPods>) {
    let mut node_uid: Option<String> = None;
    // Creations sent whose mirror the watch has not shown yet (by full name).
    let mut creating: HashSet<String> = HashSet::new();
    let mut first_seen: HashMap<String, String> = HashMap::new();
    let mut failures = 0u32;
    let changed = pods.subscribe();
    loop {
        let mut ok = true;
        if pods.is_synced() {
            // The Node's uid is needed only to create mirrors: without static pods, no request.
            let creates = !pods.static_pods().is_empty();
            if node_uid.is_none() && creates {
                match api.node_uid(&pods.node).await {
                    Ok(uid) => node_uid = Some(uid),
                    Err(e) => {
                        log::debug!("mirror pods: node {}: {e}", pods.node);
                        ok = false;
                    }
                }
            }
            if node_uid.is_some() || !creates {
                let node = NodeRef {
                    name: pods.node.clone(),
                    uid: node_uid.clone().unwrap_or_default(),
                };
                ok &= sync_mirrors(&*api, &pods, &node, &mut creating, &mut first_seen).await;
            }
        }
        failures = if ok { 0 } else { failures.saturating_add(1) };
        let retry = if ok {
            RESYNC
        } else {
            crate::source::api::watcher::backoff_delay(failures, 0.5)
        };
        async {
            let _ = changed.recv().await;
        }
        .or(async {
            Timer::after(retry).await;
        })
        .await;
    }
}

async fn sync_mirrors<A: PodApi>(
    api: &A,
    pods: &ApiPods,
    node: &NodeRef,
    creating: &mut HashSet<String>,
    first_seen: &mut HashMap<String, String>,
) -> bool {
    let statics = pods.static_pods();
    let mirrors = pods.mirrors();
    let seen_names: HashSet<String> = mirrors.iter().map(|m| m.full_name()).collect();
    creating.retain(|name| !seen_names.contains(name));
    let now = status::rfc3339(crate::report::unix_now());
    for pod in &statics {
        first_seen
            .entry(pod.metadata.uid.clone())
            .or_insert_with(|| now.clone());
    }
    let seen = |pod: &crate::k8s::Pod| {
        first_seen
            .get(&pod.metadata.uid)
            .cloned()
            .unwrap_or_else(|| now.clone())
    };
    let refs: Vec<&crate::k8s::Pod> = statics.iter().map(|p| &**p).collect();
    let mut ok = true;
    for action in mirror::plan(&refs, &mirrors, node, &seen) {
        match action {
            Action::Create { namespace, body } => {
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                let full = format!("{namespace}/{name}");
                if creating.contains(&full) {
                    continue;
                }
                match api.create_pod(&namespace, &body).await {
                    // 409: it exists already; the watch will show it.
                    Err(e) if e.code != Some(409) => {
                        log::warn!("mirror pod {full}: {e}");
                        ok = false;
                    }
                    _ => {
                        log::info!("mirror pod {full}: created");
                        creating.insert(full);
                    }
                }
            }
            Action::Delete {
                namespace,
                name,
                uid,
            } => match api.delete_pod(&namespace, &name, &uid, 0).await {
                Err(e) if !matches!(e.code, Some(404 | 409)) => {
                    log::warn!("mirror pod {namespace}/{name}: deleting: {e}");
                    ok = false;
                }
                _ => log::info!(
                    "mirror pod {namespace}/{name}: deleted (its static pod changed or went)"
                ),
            },
        }
    }
    ok
}
