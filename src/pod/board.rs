//! The status board: where pod workers publish their pods' status and the agent picks it up to
//! write the snapshot (and, later, to report it to the API server). Single-threaded, no I/O:
//! a publish marks the board dirty and wakes one waiter.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::status::{PodStatus, Snapshot, SourceError};

#[derive(Default)]
struct Inner {
    pods: BTreeMap<String, PodStatus>,
    source_errors: Vec<SourceError>,
}

/// Shared by the agent and every pod worker. Cheap to clone.
#[derive(Clone)]
pub struct Board {
    inner: Rc<RefCell<Inner>>,
    changed_tx: async_channel::Sender<()>,
    changed_rx: async_channel::Receiver<()>,
    /// Further readers (the API status reporter), each woken on every change.
    subscribers: Rc<RefCell<Vec<async_channel::Sender<()>>>>,
}

impl Default for Board {
    fn default() -> Self {
        // Capacity one: many changes before the writer runs coalesce into one write.
        let (changed_tx, changed_rx) = async_channel::bounded(1);
        Board {
            inner: Rc::default(),
            changed_tx,
            changed_rx,
            subscribers: Rc::default(),
        }
    }
}

impl Board {
    /// Publishes a pod's status (keyed by uid); wakes the writer only if something changed.
    pub fn publish(&self, status: PodStatus) {
        let mut inner = self.inner.borrow_mut();
        if inner.pods.get(&status.uid) != Some(&status) {
            inner.pods.insert(status.uid.clone(), status);
            self.wake();
        }
    }

    pub fn remove(&self, uid: &str) {
        if self.inner.borrow_mut().pods.remove(uid).is_some() {
            self.wake();
        }
    }

    pub fn set_source_errors(&self, errors: Vec<SourceError>) {
        let mut inner = self.inner.borrow_mut();
        if inner.source_errors != errors {
            inner.source_errors = errors;
            self.wake();
        }
    }

    fn wake(&self) {
        let _ = self.changed_tx.try_send(());
        self.subscribers
            .borrow_mut()
            .retain(|tx| !matches!(tx.try_send(()), Err(async_channel::TrySendError::Closed(_))));
    }

    /// A receiver of its own that gets a message after changes (coalesced, like [`Self::changed`]).
    pub fn subscribe(&self) -> async_channel::Receiver<()> {
        let (tx, rx) = async_channel::bounded(1);
        self.subscribers.borrow_mut().push(tx);
        rx
    }

    /// Waits until something changed since the last call.
    pub async fn changed(&self) {
        let _ = self.changed_rx.recv().await;
    }

    /// The snapshot `nanolet ps` reads, pods sorted by namespace and name.
    pub fn snapshot(&self, agent_pid: i32, node_name: &str, now: i64) -> Snapshot {
        let inner = self.inner.borrow();
        let mut pods: Vec<PodStatus> = inner.pods.values().cloned().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Snapshot {
            agent_pid,
            node_name: node_name.to_string(),
            updated_at: now,
            pods,
            source_errors: inner.source_errors.clone(),
        }
    }
}
