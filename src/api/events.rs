//! Kubernetes Events (`v1` Event) for what users look for in `kubectl describe pod`: Pulling,
//! Pulled, Created, Started, Killing, BackOff, Unhealthy, FailedMount. Which event a pod's
//! transition makes, and its words, is decided in [`crate::pod::events`] (pure); this module
//! only queues, correlates and sends.
//!
//! ```text
//!  pod code ── Recorder::record() ──► bounded channel ──► run(): Correlator::observe() ──► POST / PATCH
//!             (never blocks; drops when full)                 (pure: dedup, aggregate, rate-limit)
//! ```
//!
//! The [`Correlator`] is client-go's event correlator, as kubelet uses it:
//! - an identical event (same object, type, reason, message) within 10 minutes is not a new
//!   Event: the existing one gets `count + 1` and a new `lastTimestamp` (a PATCH);
//! - more than 10 similar events (same object, type, reason; different messages) within 10
//!   minutes are aggregated into one whose message starts `(combined from similar events): `;
//! - a token bucket per object (burst 25, one token per 5 minutes) drops the rest, so a pod
//!   crash-looping for a week does not flood etcd.
//!
//! Events are best effort: when the API server is unreachable they are retried briefly, then
//! dropped (logged at debug). Nothing waits for them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::client::Client;
use super::request::{PatchKind, Resource};
use super::time::format_time;

/// The reasons kubelet uses, for the events nanolet records.
pub mod reason {
    /// Pulling an image.
    pub const PULLING: &str = "Pulling";
    /// An image was pulled (or was present).
    pub const PULLED: &str = "Pulled";
    /// A container was created.
    pub const CREATED: &str = "Created";
    /// A container was started.
    pub const STARTED: &str = "Started";
    /// A container is being stopped.
    pub const KILLING: &str = "Killing";
    /// A container failed and waits before its restart (CrashLoopBackOff, ImagePullBackOff).
    pub const BACK_OFF: &str = "BackOff";
    /// A probe failed.
    pub const UNHEALTHY: &str = "Unhealthy";
    /// A volume could not be mounted.
    pub const FAILED_MOUNT: &str = "FailedMount";
    /// A container or pull failed.
    pub const FAILED: &str = "Failed";
}

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Information.
    Normal,
    /// Something went wrong.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The object an event is about (`involvedObject`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// `Pod`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// uid.
    pub uid: String,
    /// `spec.containers{app}` for container events, else empty.
    pub field_path: String,
}

impl ObjectRef {
    /// A pod (or, with `container`, one of its containers).
    pub fn pod(namespace: &str, name: &str, uid: &str, container: Option<&str>) -> ObjectRef {
        ObjectRef {
            kind: "Pod".into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            field_path: container
                .map(|c| format!("spec.containers{{{c}}}"))
                .unwrap_or_default(),
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// About what.
    pub object: ObjectRef,
    /// Normal or Warning.
    pub event_type: EventType,
    /// `Started`, `BackOff`, ... (see [`reason`]).
    pub reason: String,
    /// Human-readable.
    pub message: String,
}

/// What pod code holds to record events. Cheap to clone; recording never blocks or fails.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: Option<async_channel::Sender<EventRecord>>,
}

/// Events waiting for the API server, at most.
pub const QUEUE: usize = 1000;

impl Recorder {
    /// A recorder whose events go nowhere (no API server).
    pub fn disabled() -> Recorder {
        Recorder { tx: None }
    }

    /// A recorder and the receiving end for [`run`].
    pub fn channel() -> (Recorder, async_channel::Receiver<EventRecord>) {
        // Unbounded, with the bound checked in `record`: a bounded channel allocates all its
        // QUEUE slots up front (~180 KiB), while this one grows with what is queued.
        let (tx, rx) = async_channel::unbounded();
        (Recorder { tx: Some(tx) }, rx)
    }

    /// Records an event (dropped when the queue is full or there is no API server).
    pub fn record(
        &self,
        object: &ObjectRef,
        event_type: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        if let Some(tx) = &self.tx {
            let record = EventRecord {
                object: object.clone(),
                event_type,
                reason: reason.to_string(),
                message: message.into(),
            };
            if tx.len() >= QUEUE || tx.try_send(record).is_err() {
                log::debug!("event queue full: dropped a {reason} event");
            }
        }
    }
}

/// What to do about an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// POST this new Event in `namespace`.
    Create {
        /// The namespace.
        namespace: String,
        /// The Event.
        event: Value,
    },
    /// PATCH the existing Event `name` (a repeat: count and lastTimestamp).
    Patch {
        /// The namespace.
        namespace: String,
        /// The Event's name.
        name: String,
        /// The patch.
        patch: Value,
    },
    /// Rate-limited away.
    Drop,
}

/// How long repeats are folded into one Event.
const WINDOW: Duration = Duration::from_secs(600);
/// Similar events (differing messages) before they are aggregated.
const AGGREGATE_AFTER: usize = 10;
/// Token bucket per object.
const BURST: f64 = 25.0;
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// Entries kept per map before old ones are swept.
const MAX_ENTRIES: usize = 4096;

/// A key of the correlator's maps: the SipHash (random keys, like `HashMap`'s) of the object
/// and the words it stands for, instead of copies of them. Two of n different keys in a map
/// collide with a probability of about n²/2⁶⁵ (for the 4096 entries a map holds before it is
/// swept: ~10⁻¹²), and a pod's messages cannot be crafted to collide without the process's
/// random keys.
type Key = u64;

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    count: u64,
    last: Instant,
}

/// The pure correlator (see the module doc). Time is passed in.
///
/// Its maps hold keys ([`Key`]), not the objects, reasons and messages (each of those was a
/// few hundred bytes per event, ~0.3 MiB after 100 pods had started).
#[derive(Debug, Default)]
pub struct Correlator {
    /// By object, type, reason and message (or "combined"): the Event to PATCH on a repeat.
    exact: HashMap<Key, Seen>,
    /// By object, type and reason: the keys of the messages seen in the window, and its start.
    similar: HashMap<Key, (Vec<Key>, Instant)>,
    /// By object: the token bucket.
    buckets: HashMap<Key, (f64, Instant)>,
    hasher: RandomState,
    /// The last sweep of all expired entries (one per window, so that a quiet node lets the
    /// maps shrink; an expired entry acts as an absent one, so sweeping changes no decision).
    swept: Option<Instant>,
}

impl Correlator {
    /// Decides what `record` becomes; `node` is the source host.
    pub fn observe(
        &mut self,
        record: &EventRecord,
        node: &str,
        wall: SystemTime,
        now: Instant,
    ) -> Action {
        self.sweep(now);
        let object = &record.object;
        let kind = record.event_type;
        let reason = &record.reason;
        // The spam filter first: a dropped event leaves no trace in the other caches.
        let bucket_key = self.key(object);
        let (tokens, last) = self.buckets.entry(bucket_key).or_insert((BURST, now));
        let refill =
            now.saturating_duration_since(*last).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        *tokens = (*tokens + refill).min(BURST);
        *last = now;
        if *tokens < 1.0 {
            return Action::Drop;
        }
        *tokens -= 1.0;

        let similar_key = self.key((object, kind, reason));
        let message_key = self.key(&record.message);
        let (messages, since) = self
            .similar
            .entry(similar_key)
            .or_insert_with(|| (Vec::new(), now));
        if now.saturating_duration_since(*since) > WINDOW {
            messages.clear();
            *since = now;
        }
        if !messages.contains(&message_key) {
            messages.push(message_key);
        }
        let aggregated = messages.len() > AGGREGATE_AFTER;
        let message = if aggregated {
            format!("(combined from similar events): {}", record.message)
        } else {
            record.message.clone()
        };
        let exact_key = if aggregated {
            // All aggregated events fold into one Event.
            self.key((object, kind, reason, "(combined)"))
        } else {
            self.key((object, kind, reason, &record.message))
        };
        let stamp = format_time(wall);
        if let Some(seen) = self.exact.get_mut(&exact_key)
            && now.saturating_duration_since(seen.last) <= WINDOW
        {
            seen.count += 1;
            seen.last = now;
            return Action::Patch {
                namespace: record.object.namespace.clone(),
                name: seen.name.clone(),
                patch: json!({"count": seen.count, "lastTimestamp": stamp, "message": message}),
            };
        }
        let nanos = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{}.{nanos:x}", record.object.name);
        self.exact.insert(
            exact_key,
            Seen {
                name: name.clone(),
                count: 1,
                last: now,
            },
        );
        let mut involved = json!({
            "kind": record.object.kind,
            "namespace": record.object.namespace,
            "name": record.object.name,
            "apiVersion": "v1",
        });
        if !record.object.uid.is_empty() {
            involved["uid"] = json!(record.object.uid);
        }
        if !record.object.field_path.is_empty() {
            involved["fieldPath"] = json!(record.object.field_path);
        }
        Action::Create {
            namespace: record.object.namespace.clone(),
            event: json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": record.object.namespace},
                "involvedObject": involved,
                "reason": record.reason,
                "message": message,
                "source": {"component": "kubelet", "host": node},
                "type": record.event_type.as_str(),
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }),
        }
    }

    fn key(&self, value: impl Hash) -> Key {
        self.hasher.hash_one(value)
    }

    /// Forgets an Event that the server no longer has (404 on its PATCH).
    pub fn forget(&mut self, name: &str) {
        self.exact.retain(|_, s| s.name != name);
    }

    fn sweep(&mut self, now: Instant) {
        let due = self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= WINDOW);
        if due {
            self.swept = Some(now);
        }
        if due || self.exact.len() > MAX_ENTRIES {
            self.exact
                .retain(|_, s| now.saturating_duration_since(s.last) <= WINDOW);
        }
        if due || self.similar.len() > MAX_ENTRIES {
            self.similar
                .retain(|_, (_, since)| now.saturating_duration_since(*since) <= WINDOW);
        }
        if due || self.buckets.len() > MAX_ENTRIES {
            // A bucket left alone for BURST refills is full again: nothing lost by dropping it.
            self.buckets
                .retain(|_, (_, last)| now.saturating_duration_since(*last) <= REFILL_EVERY * 25);
        }
    }
}

/// Sends recorded events to the API server until every [`Recorder`] is gone.
pub async fn run(client: Rc<Client>, node: String, events: async_channel::Receiver<EventRecord>) {
    let mut correlator = Correlator::default();
    while let Ok(record) = events.recv().await {
        let action = correlator.observe(&record, &node, SystemTime::now(), Instant::now());
        let (req, name) = match &action {
            Action::Create { namespace, event } => {
                (Resource::EVENTS.create(Some(namespace), event), None)
            }
            Action::Patch {
                namespace,
                name,
                patch,
            } => (
                Resource::EVENTS.patch(Some(namespace), name, None, PatchKind::Strategic, patch),
                Some(name.clone()),
            ),
            Action::Drop => continue,
        };
        match client.send(&req).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() && name.is_some() => {
                // The Event expired on the server (1 h TTL): next time, a new one.
                if let Some(n) = name {
                    correlator.forget(&n);
                }
            }
            Err(e) => log::debug!(
                "event {} for {}/{}: not sent: {e}",
                record.reason,
                record.object.namespace,
                record.object.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> EventRecord {
        EventRecord {
            object: ObjectRef::pod("default", "web", "uid-1", Some("app")),
            event_type: EventType::Warning,
            reason: reason::BACK_OFF.into(),
            message: message.into(),
        }
    }

    #[test]
    fn first_event_is_created_like_the_transcript() {
        let mut c = Correlator::default();
        let wall = UNIX_EPOCH + Duration::from_secs(1_795_830_578);
        match c.observe(
            &record("Back-off restarting failed container"),
            "edge-1",
            wall,
            Instant::now(),
        ) {
            Action::Create { namespace, event } => {
                assert_eq!(namespace, "default");
                assert_eq!(
                    event["source"],
                    json!({"component": "kubelet", "host": "edge-1"})
                );
                assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{app}");
                assert_eq!(event["firstTimestamp"], "2026-11-28T01:49:38Z");
                assert_eq!(event["count"], 1);
                assert!(
                    event["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("web.")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repeats_within_ten_minutes_count_up_then_start_over() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(1_795_830_578);
        let Action::Create { event, .. } = c.observe(&record("m"), "n", w0, t0) else {
            panic!()
        };
        let name = event["metadata"]["name"].as_str().unwrap().to_string();
        for i in 2..=4 {
            let at = Duration::from_secs(60 * i);
            match c.observe(&record("m"), "n", w0 + at, t0 + at) {
                Action::Patch { name: n, patch, .. } => {
                    assert_eq!(n, name);
                    assert_eq!(patch["count"], i);
                }
                other => panic!("{other:?}"),
            }
        }
        let later = Duration::from_secs(60 * 4 + 601);
        assert!(matches!(
            c.observe(&record("m"), "n", w0 + later, t0 + later),
            Action::Create { .. }
        ));
    }

    #[test]
    fn many_different_messages_are_aggregated() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(1_795_830_578);
        for i in 0..10 {
            assert!(matches!(
                c.observe(&record(&format!("m{i}")), "n", w0, t0),
                Action::Create { .. }
            ));
        }
        match c.observe(&record("m10"), "n", w0, t0) {
            Action::Create { event, .. } => {
                assert_eq!(event["message"], "(combined from similar events): m10")
            }
            other => panic!("{other:?}"),
        }
        match c.observe(&record("m11"), "n", w0, t0) {
            Action::Patch { patch, .. } => {
                assert_eq!(patch["message"], "(combined from similar events): m11");
                assert_eq!(patch["count"], 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flood_is_rate_limited_per_object_and_refills() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        let w0 = UNIX_EPOCH;
        let sent = (0..100)
            .filter(|_| c.observe(&record("m"), "n", w0, t0) != Action::Drop)
            .count();
        assert_eq!(sent, 25);
        let other = EventRecord {
            object: ObjectRef::pod("default", "db", "uid-2", None),
            ..record("m")
        };
        assert_ne!(
            c.observe(&other, "n", w0, t0),
            Action::Drop,
            "other pods are not limited"
        );
        let later = t0 + REFILL_EVERY;
        assert_ne!(c.observe(&record("m"), "n", w0, later), Action::Drop);
        assert_eq!(c.observe(&record("m"), "n", w0, later), Action::Drop);
    }

    #[test]
    fn a_quiet_node_forgets_expired_events() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        for pod in ["a", "b", "c"] {
            let r = EventRecord {
                object: ObjectRef::pod("default", pod, pod, None),
                ..record("m")
            };
            c.observe(&r, "n", UNIX_EPOCH, t0);
        }
        assert_eq!((c.exact.len(), c.similar.len(), c.buckets.len()), (3, 3, 3));
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert!(matches!(
            c.observe(&record("m"), "n", UNIX_EPOCH, later),
            Action::Create { .. }
        ));
        // The buckets are kept until they would be full again (25 refills).
        assert_eq!((c.exact.len(), c.similar.len(), c.buckets.len()), (1, 1, 4));
        let much_later = later + REFILL_EVERY * 26;
        c.observe(&record("m"), "n", UNIX_EPOCH, much_later);
        assert_eq!((c.exact.len(), c.similar.len(), c.buckets.len()), (1, 1, 1));
    }

    #[test]
    fn a_disabled_recorder_and_a_full_queue_never_block() {
        Recorder::disabled().record(&record("m").object, EventType::Normal, reason::STARTED, "x");
        let (r, rx) = Recorder::channel();
        for _ in 0..QUEUE + 10 {
            r.record(&record("m").object, EventType::Normal, reason::STARTED, "x");
        }
        assert_eq!(rx.len(), QUEUE);
    }
}
