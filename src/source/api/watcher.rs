//! The pod watcher: list, then watch, of the pods bound to this node, as one state machine.
//!
//! Shaped after kube-rs's watcher: an enum whose variants carry their data and one [`Watcher::step`]
//! that takes what the last request gave and says what to do next. It never does I/O and never
//! reads a clock: the caller makes the request that [`Watcher::request`] names and feeds the
//! answer back, with `now` and a jitter value.
//!
//! ```text
//!              ┌──────────── page with `continue` ───────────┐
//!              ▼                                              │
//!   Listing{continue} ── last page (rv) ──► Watching{rv} ◄──┐ │  events: ADDED/MODIFIED/DELETED
//!     │  ▲                                     │   │  │      │ │  (rv follows each), BOOKMARK (rv)
//!     │  │ 410 on list, ERROR 410 in stream    │   │  └──────┘ │  stream ended (timeoutSeconds):
//!     │  └─────────────────────────────────────┘   │             watch again from rv, at once
//!     │ error                                      │ error (connect, 5xx, 429, broken stream)
//!     ▼                                            ▼
//!   Backoff{until, attempt, resume: relist | watch from rv} ── timer ──► Listing | Watching
//! ```
//!
//! A full list yields one [`Output::Snapshot`]: the caller replaces its API pods with it (pods not
//! in it were deleted while the watch was down). A [`Watcher::paged`] watcher hands each page on
//! as it comes instead ([`Output::Page`]), so that a list of 10 000 objects is never held whole. Back-off delays double from 1 s up to 30 s with
//! ±50 % jitter, and reset after any successful answer.

use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::api::types::WatchEvent;

/// Pods per list page (`limit`).
pub const PAGE_LIMIT: u32 = 500;
/// How long one watch request lasts before the server ends it (`timeoutSeconds`); spread by jitter
/// so that many nodes do not reconnect at once.
pub const WATCH_TIMEOUT_SECONDS: u32 = 300;
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the watcher stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Listing every pod of the node, page by page; `items` holds the pages so far.
    Listing {
        continue_token: Option<String>,
        items: Vec<Value>,
    },
    /// Watching from `resource_version`.
    Watching { resource_version: String },
    /// Waiting after a failure; then `resume`.
    Backoff { until: Instant, resume: Resume },
}

/// The watcher: its state and how many requests failed in a row (for the back-off delay).
///
/// It knows objects only as JSON, so one machine serves every resource: pods here, Services and
/// EndpointSlices for the proxy ([`Watcher::of`] names the resource in its log lines).
#[derive(Debug, Clone, PartialEq)]
pub struct Watcher {
    pub state: State,
    failures: u32,
    /// The resource in log lines: `pod`, `service`, `endpointslice`.
    what: &'static str,
    /// Hand each list page on as it comes ([`Output::Page`]).
    paged: bool,
}

/// What a back-off resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// List from scratch.
    Relist,
    /// Watch again from this resourceVersion (the list is still good).
    Watch { resource_version: String },
}

/// The request the watcher wants made next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A list page of [`PAGE_LIMIT`] pods with `fieldSelector=spec.nodeName=<node>`, answered
    /// with [`Input::Page`] or [`Input::Failed`].
    List { continue_token: Option<String> },
    /// A watch from `resource_version` with bookmarks, each line fed as [`Input::Event`], then
    /// [`Input::StreamEnded`] or [`Input::Failed`].
    Watch {
        resource_version: String,
        timeout_seconds: u32,
    },
    /// Nothing until `until`, then [`Input::Timer`].
    Wait { until: Instant },
}

/// What a request gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// One list page: its items, `metadata.resourceVersion` and `metadata.continue`.
    Page {
        items: Vec<Value>,
        resource_version: String,
        continue_token: Option<String>,
    },
    /// One watch event (a line of the stream).
    Event(WatchEvent),
    /// The watch stream ended cleanly (the server's `timeoutSeconds`).
    StreamEnded,
    /// The request failed: no connection, an HTTP error status (`code`), a broken stream.
    Failed { code: Option<u16>, error: String },
    /// The back-off timer fired.
    Timer,
}

/// What the caller should do with the pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The complete set of pods bound to the node, from a full list.
    Snapshot(Vec<Value>),
    /// One page of a full list, from a [`Watcher::paged`] watcher: `first` starts a list (what
    /// an unfinished one delivered no longer counts as listed), `last` completes it (objects
    /// that no page of this list had are gone).
    Page {
        items: Vec<Value>,
        first: bool,
        last: bool,
    },
    /// A pod was added or changed.
    Applied(Value),
    /// A pod is gone from the API server.
    Deleted(Value),
    /// A problem worth a log line (the watcher already recovers from it).
    Warning(String),
}

/// `metadata.resourceVersion` of an object.
pub fn resource_version_of(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl Default for Watcher {
    fn default() -> Self {
        Watcher::new()
    }
}

fn relist() -> State {
    State::Listing {
        continue_token: None,
        items: Vec::new(),
    }
}

impl Watcher {
    /// A pod watcher that starts with a full list.
    pub fn new() -> Watcher {
        Watcher::of("pod")
    }

    /// A watcher of the resource `what` (as named in log lines) that starts with a full list.
    pub fn of(what: &'static str) -> Watcher {
        Watcher {
            state: relist(),
            failures: 0,
            what,
            paged: false,
        }
    }

    /// The same watcher, handing each list page on as it comes ([`Output::Page`]) instead of
    /// holding the pages until the last one ([`Output::Snapshot`]).
    pub fn paged(self) -> Watcher {
        Watcher {
            paged: true,
            ..self
        }
    }

    /// The request to make now. `jitter` in `[0, 1)` spreads watch timeouts over 5-10 minutes
    /// (as kubelet does), so that many nodes do not reconnect at once.
    pub fn request(&self, jitter: f64) -> Request {
        match &self.state {
            State::Listing { continue_token, .. } => Request::List {
                continue_token: continue_token.clone(),
            },
            State::Watching { resource_version } => Request::Watch {
                resource_version: resource_version.clone(),
                timeout_seconds: WATCH_TIMEOUT_SECONDS
                    + (f64::from(WATCH_TIMEOUT_SECONDS) * jitter.clamp(0.0, 1.0)) as u32,
            },
            State::Backoff { until, .. } => Request::Wait { until: *until },
        }
    }

    /// Whether a full list has been delivered and is still good: false while listing, or
    /// backing off towards a relist.
    pub fn is_synced(&self) -> bool {
        match &self.state {
            State::Listing { .. } => false,
            State::Watching { .. } => true,
            State::Backoff { resume, .. } => matches!(resume, Resume::Watch { .. }),
        }
    }

    /// How many requests failed in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// One transition. `jitter` in `[0, 1)` spreads back-off delays.
    pub fn step(&mut self, input: Input, now: Instant, jitter: f64) -> Vec<Output> {
        let state = std::mem::replace(&mut self.state, relist());
        if !matches!(input, Input::Failed { .. } | Input::Timer) {
            self.failures = 0;
        }
        let (state, out) = match (state, input) {
            // Listing + page: keep the items; the last page delivers the snapshot and watches.
            // (Paged: hand the page on; the last one completes the list and watches.)
            (
                State::Listing {
                    continue_token: asked,
                    ..
                },
                Input::Page {
                    items,
                    resource_version,
                    continue_token,
                },
            ) if self.paged => {
                let next = continue_token.filter(|t| !t.is_empty());
                let page = Output::Page {
                    items,
                    first: asked.is_none(),
                    last: next.is_none(),
                };
                let state = match next {
                    Some(token) => State::Listing {
                        continue_token: Some(token),
                        items: Vec::new(),
                    },
                    None => State::Watching { resource_version },
                };
                (state, vec![page])
            }
            (
                State::Listing { mut items, .. },
                Input::Page {
                    items: page,
                    resource_version,
                    continue_token,
                },
            ) => {
                items.extend(page);
                match continue_token.filter(|t| !t.is_empty()) {
                    Some(token) => (
                        State::Listing {
                            continue_token: Some(token),
                            items,
                        },
                        Vec::new(),
                    ),
                    None => (
                        State::Watching { resource_version },
                        vec![Output::Snapshot(items)],
                    ),
                }
            }
            // Listing + 410: the continue token expired; list again from the start, at once.
            (
                State::Listing { .. },
                Input::Failed {
                    code: Some(410), ..
                },
            ) => (
                relist(),
                vec![Output::Warning(format!(
                    "{} list: continue token expired (410); listing again",
                    self.what
                ))],
            ),
            // Listing + other failure: back off, then list from the start.
            (State::Listing { .. }, Input::Failed { code, error }) => self.backoff(
                Resume::Relist,
                now,
                jitter,
                describe(&format!("{} list", self.what), code, &error),
            ),
            // Watching + event: follow the resourceVersion.
            (State::Watching { resource_version }, Input::Event(event)) => {
                watch_event(self.what, resource_version, event)
            }
            // Watching + clean end: watch again from where we are.
            (state @ State::Watching { .. }, Input::StreamEnded) => (state, Vec::new()),
            // Watching + 410 as an HTTP status: the version is too old; relist.
            (
                State::Watching { .. },
                Input::Failed {
                    code: Some(410), ..
                },
            ) => (
                relist(),
                vec![Output::Warning(format!(
                    "{} watch: resourceVersion too old (410); listing again",
                    self.what
                ))],
            ),
            // Watching + failure: back off, then watch again from the same version.
            (State::Watching { resource_version }, Input::Failed { code, error }) => self.backoff(
                Resume::Watch { resource_version },
                now,
                jitter,
                describe(&format!("{} watch", self.what), code, &error),
            ),
            // Backoff + timer: resume.
            (State::Backoff { resume, .. }, Input::Timer) => (
                match resume {
                    Resume::Relist => relist(),
                    Resume::Watch { resource_version } => State::Watching { resource_version },
                },
                Vec::new(),
            ),
            // Anything else answers a request this state did not make: ignore it.
            (state, input) => (
                state,
                vec![Output::Warning(format!(
                    "{} watcher: unexpected {}",
                    self.what,
                    input_name(&input)
                ))],
            ),
        };
        self.state = state;
        out
    }

    fn backoff(
        &mut self,
        resume: Resume,
        now: Instant,
        jitter: f64,
        why: String,
    ) -> (State, Vec<Output>) {
        let delay = backoff_delay(self.failures, jitter);
        self.failures = self.failures.saturating_add(1);
        (
            State::Backoff {
                until: now + delay,
                resume,
            },
            vec![Output::Warning(format!(
                "{why}; retrying in {}ms",
                delay.as_millis()
            ))],
        )
    }
}

fn watch_event(what: &str, resource_version: String, event: WatchEvent) -> (State, Vec<Output>) {
    let follow = |object: &Value| resource_version_of(object).unwrap_or(resource_version.clone());
    match event {
        WatchEvent::Added(object) | WatchEvent::Modified(object) => (
            State::Watching {
                resource_version: follow(&object),
            },
            vec![Output::Applied(object)],
        ),
        WatchEvent::Deleted(object) => (
            State::Watching {
                resource_version: follow(&object),
            },
            vec![Output::Deleted(object)],
        ),
        // A bookmark without a version says nothing: keep ours (an empty one would restart
        // the watch with synthetic ADDED events for every pod).
        WatchEvent::Bookmark {
            resource_version: empty,
        } if empty.is_empty() => (State::Watching { resource_version }, Vec::new()),
        WatchEvent::Bookmark { resource_version } => {
            (State::Watching { resource_version }, Vec::new())
        }
        // ERROR 410 inside the stream: the version was compacted away; relist.
        WatchEvent::Error(status) if status.code == 410 => (
            relist(),
            vec![Output::Warning(format!(
                "{what} watch: {} (410); listing again",
                status.message
            ))],
        ),
        // Another ERROR: the stream is over; watch again from the same version.
        WatchEvent::Error(status) => (
            State::Watching { resource_version },
            vec![Output::Warning(format!(
                "{what} watch: error event {}: {}",
                status.code, status.message
            ))],
        ),
    }
}

/// The back-off delay for attempt `n` (0-based): 1 s doubling to 30 s, times 0.5..1.5.
pub fn backoff_delay(attempt: u32, jitter: f64) -> Duration {
    let base = BACKOFF_INITIAL
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

fn describe(what: &str, code: Option<u16>, error: &str) -> String {
    match code {
        Some(code) => format!("{what}: http {code}: {error}"),
        None => format!("{what}: {error}"),
    }
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Page { .. } => "list page",
        Input::Event(_) => "watch event",
        Input::StreamEnded => "end of stream",
        Input::Failed { .. } => "failure",
        Input::Timer => "timer",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, rv: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": name, "resourceVersion": rv}})
    }

    fn page(items: Vec<Value>, rv: &str, cont: Option<&str>) -> Input {
        Input::Page {
            items,
            resource_version: rv.into(),
            continue_token: cont.map(str::to_string),
        }
    }

    fn failed(code: Option<u16>) -> Input {
        Input::Failed {
            code,
            error: "boom".into(),
        }
    }

    fn at(state: State) -> Watcher {
        Watcher {
            state,
            failures: 0,
            what: "pod",
            paged: false,
        }
    }

    fn watching(rv: &str) -> State {
        State::Watching {
            resource_version: rv.into(),
        }
    }

    /// The recorded transcripts of a real kube-apiserver (`tests/fixtures/`).
    pub(crate) fn transcript(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kube-apiserver-v1.20")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The request line (`GET /path?query`) and the response body of a transcript.
    pub(crate) fn request_and_body(text: &str) -> (String, String) {
        let request = text
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("### ")
            .to_string();
        let response = text.split("### response:\n").nth(1).unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("");
        (request, body.to_string())
    }

    #[test]
    fn requests_name_page_and_version() {
        assert_eq!(
            Watcher::new().request(0.0),
            Request::List {
                continue_token: None
            }
        );
        let w = at(State::Listing {
            continue_token: Some("c1".into()),
            items: vec![],
        });
        assert_eq!(
            w.request(0.0),
            Request::List {
                continue_token: Some("c1".into())
            }
        );
        for (jitter, timeout_seconds) in [(0.0, 300), (0.5, 450), (7.0, 600)] {
            assert_eq!(
                at(watching("604")).request(jitter),
                Request::Watch {
                    resource_version: "604".into(),
                    timeout_seconds
                }
            );
        }
    }

    #[test]
    fn paged_list_then_watch_follows_resource_versions() {
        let now = Instant::now();
        let mut w = Watcher::new();
        let out = w.step(page(vec![pod("a", "1")], "642", Some("c1")), now, 0.0);
        assert!(out.is_empty());
        assert!(!w.is_synced());
        let out = w.step(page(vec![pod("b", "2")], "642", None), now, 0.0);
        assert_eq!(
            out,
            vec![Output::Snapshot(vec![pod("a", "1"), pod("b", "2")])]
        );
        assert!(w.is_synced());
        let out = w.step(Input::Event(WatchEvent::Added(pod("c", "700"))), now, 0.0);
        assert_eq!(out, vec![Output::Applied(pod("c", "700"))]);
        let bookmark = WatchEvent::Bookmark {
            resource_version: "800".into(),
        };
        assert!(w.step(Input::Event(bookmark), now, 0.0).is_empty());
        assert_eq!(w.state, watching("800"));
        let empty = WatchEvent::Bookmark {
            resource_version: String::new(),
        };
        w.step(Input::Event(empty), now, 0.0);
        assert_eq!(
            w.state,
            watching("800"),
            "an empty bookmark changes nothing"
        );
        let out = w.step(Input::Event(WatchEvent::Deleted(pod("c", "801"))), now, 0.0);
        assert_eq!(out, vec![Output::Deleted(pod("c", "801"))]);
        // A clean end of stream: watch again from the last version, no back-off.
        w.step(Input::StreamEnded, now, 0.0);
        assert_eq!(w.state, watching("801"));
    }

    #[test]
    fn a_paged_watcher_hands_each_page_on_and_says_which_starts_and_ends_the_list() {
        let now = Instant::now();
        let mut w = Watcher::of("service").paged();
        let out = w.step(page(vec![pod("a", "1")], "642", Some("c1")), now, 0.0);
        assert_eq!(
            out,
            vec![Output::Page {
                items: vec![pod("a", "1")],
                first: true,
                last: false
            }]
        );
        assert!(!w.is_synced(), "synced only after the last page");
        assert_eq!(
            w.request(0.0),
            Request::List {
                continue_token: Some("c1".into())
            }
        );
        // The continue token expired: the list starts again, and says so with `first`.
        w.step(failed(Some(410)), now, 0.0);
        let out = w.step(page(vec![pod("b", "2")], "650", None), now, 0.0);
        assert_eq!(
            out,
            vec![Output::Page {
                items: vec![pod("b", "2")],
                first: true,
                last: true
            }]
        );
        assert!(w.is_synced());
        assert_eq!(w.state, watching("650"));
    }

    #[test]
    fn gone_relists_from_every_place_it_can_come() {
        let now = Instant::now();
        // ERROR event inside the stream (transcript 18).
        let (_, body) = request_and_body(&transcript("18-watch-too-old-resource-version.http"));
        let event = WatchEvent::parse(body.trim().as_bytes()).unwrap();
        let mut w = at(watching("1"));
        let out = w.step(Input::Event(event), now, 0.0);
        assert_eq!(w, Watcher::new());
        assert!(matches!(&out[0], Output::Warning(m) if m.contains("too old resource version")));
        // 410 as the watch's HTTP status.
        let mut w = at(watching("1"));
        w.step(failed(Some(410)), now, 0.0);
        assert_eq!(w, Watcher::new());
        // 410 on a list page (an expired continue token): list again from the start.
        let mut w = at(State::Listing {
            continue_token: Some("old".into()),
            items: vec![pod("a", "1")],
        });
        w.step(failed(Some(410)), now, 0.0);
        assert_eq!(w, Watcher::new());
    }

    #[test]
    fn failures_back_off_with_jitter_and_resume_where_they_were() {
        let now = Instant::now();
        let mut w = at(watching("9"));
        let out = w.step(failed(None), now, 0.5);
        let resume = Resume::Watch {
            resource_version: "9".into(),
        };
        assert_eq!(
            w.state,
            State::Backoff {
                until: now + Duration::from_secs(1),
                resume: resume.clone(),
            }
        );
        assert!(w.is_synced(), "a watch back-off keeps the list");
        assert!(matches!(&out[0], Output::Warning(m) if m.contains("pod watch: boom")));
        assert_eq!(
            w.request(0.0),
            Request::Wait {
                until: now + Duration::from_secs(1)
            }
        );
        w.step(Input::Timer, now, 0.0);
        assert_eq!(w.state, watching("9"));
        // The resumed watch fails too: the delay doubles.
        w.step(failed(Some(503)), now, 0.5);
        assert_eq!(
            w.state,
            State::Backoff {
                until: now + Duration::from_secs(2),
                resume
            }
        );
        // A success resets the count.
        w.step(Input::Timer, now, 0.0);
        w.step(Input::StreamEnded, now, 0.0);
        assert_eq!(w.failures(), 0);
        // A list failure resumes with a relist.
        let mut w = Watcher::new();
        w.step(failed(Some(500)), now, 0.0);
        assert!(!w.is_synced());
        w.step(Input::Timer, now, 0.0);
        assert_eq!(w.state, relist());
        // An answer the state did not ask for changes nothing.
        let mut w = at(watching("3"));
        let out = w.step(page(vec![], "4", None), now, 0.0);
        assert_eq!(w.state, watching("3"));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        assert_eq!(backoff_delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(0, 0.999_999).as_millis(), 1499);
        assert_eq!(backoff_delay(3, 0.5), Duration::from_secs(8));
        assert_eq!(backoff_delay(10, 0.5), Duration::from_secs(30));
        assert_eq!(backoff_delay(u32::MAX, 1.0), Duration::from_secs(45));
    }

    #[test]
    fn watch_lines_parse_like_the_transcript() {
        let (_, body) = request_and_body(&transcript("10-pod-watch-stream.http"));
        let kinds: Vec<&str> = body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| match WatchEvent::parse(l.as_bytes()).unwrap() {
                WatchEvent::Added(_) => "ADDED",
                WatchEvent::Modified(_) => "MODIFIED",
                WatchEvent::Deleted(_) => "DELETED",
                WatchEvent::Bookmark { .. } => "BOOKMARK",
                WatchEvent::Error(_) => "ERROR",
            })
            .collect();
        assert_eq!(kinds[..2], ["ADDED", "MODIFIED"]);
        assert!(kinds.contains(&"DELETED") && kinds.contains(&"BOOKMARK"));
        assert!(WatchEvent::parse(b"{\"type\":\"WHAT\"}").is_err());
        assert!(WatchEvent::parse(b"not json").is_err());
    }
}
