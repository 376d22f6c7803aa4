//! The node's conversation with the API server: register the Node, then renew its Lease and
//! report its status for as long as the agent runs. The only file of `node/` that does I/O.
//!
//! ```text
//!  Registering ──201 / 409 + GET──► Running { lease every duration/4, status every update period }
//!      ▲  │ error: back-off (Retry-After as a floor), log once                 │
//!      └──┴──────────────────── status PATCH 404 (the Node was deleted) ◄──────┘
//! ```
//!
//! Nothing here can disturb pods: the task only talks to the API server, and an API server that
//! is down, slow, or refusing (401/403) only makes it log and wait. The decisions (what the
//! Node looks like, when to report, what renewTime to send) are in [`super::status`] and
//! [`super::lease`].

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use async_io::Timer;
use serde_json::Value;

use super::lease::{self, LeaseClock};
use super::machine::{self, Machine};
use super::status::{self, Identity, Reporter};
use crate::api::backoff::{self, Backoff};
use crate::api::request::{PatchKind, Resource};
use crate::api::types::Lease;
use crate::api::{Client, Error};

/// What the heartbeat needs from the agent.
pub struct Setup {
    /// Who the node is (the InternalIP is filled in from the API connection).
    pub identity: Identity,
    /// Where ephemeral storage lives.
    pub data_dir: std::path::PathBuf,
    /// `nodeStatusUpdateFrequency`.
    pub status_every: Duration,
    /// `nodeStatusReportFrequency`.
    pub report_every: Duration,
    /// `nodeLeaseDurationSeconds`.
    pub lease_duration_seconds: u32,
    /// Whether the container runtime works (checked every status period).
    pub runtime_check: Box<dyn Fn() -> Result<(), String>>,
}

/// Logs API failures once per distinct problem, and the recovery.
struct Trouble {
    what: &'static str,
    last: Option<String>,
    since: Option<Instant>,
}

impl Trouble {
    fn new(what: &'static str) -> Trouble {
        Trouble {
            what,
            last: None,
            since: None,
        }
    }

    fn failed(&mut self, node: &str, e: &Error) {
        let text = e.to_string();
        if self.last.as_deref() != Some(text.as_str()) {
            if e.is_auth() || matches!(e, Error::Config(_)) {
                log::error!("node {node}: {}: {text}", self.what);
            } else {
                log::warn!("node {node}: {}: {text}; retrying", self.what);
            }
            self.last = Some(text);
        } else {
            log::debug!("node {node}: {}: {text}", self.what);
        }
        self.since.get_or_insert_with(Instant::now);
    }

    fn ok(&mut self, node: &str) {
        if let Some(since) = self.since.take() {
            log::info!(
                "node {node}: {} works again after {}s",
                self.what,
                since.elapsed().as_secs()
            );
        }
        self.last = None;
    }
}

/// Registers the Node, then keeps its Lease and status current. Never returns.
pub async fn run(client: Rc<Client>, mut setup: Setup) {
    let name = setup.identity.name.clone();
    let machine = machine::read(&setup.data_dir);
    let mut reg_trouble = Trouble::new("registering with the API server");
    let mut lease_trouble = Trouble::new("renewing the node lease");
    let mut status_trouble = Trouble::new("reporting the node status");
    let seed = backoff::seed();
    let mut reg_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), seed);
    // kubelet retries a failed lease renewal from 200 ms up to 7 s.
    let mut lease_backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(7),
        seed >> 1,
    );
    let mut status_backoff =
        Backoff::new(Duration::from_millis(500), setup.status_every, seed >> 2);
    let renew_every = Duration::from_secs(u64::from(setup.lease_duration_seconds)).div_f64(4.0);
    let mut clock = LeaseClock::new(SystemTime::now(), Instant::now());

    let node = register(
        &client,
        &setup,
        &machine,
        &mut reg_trouble,
        &mut reg_backoff,
    )
    .await;
    let mut node_uid = node["metadata"]["uid"].as_str().map(str::to_string);
    setup.identity.internal_ip = client.local_ip();
    let mut reporter = Reporter::new(
        status::static_status(&setup.identity, &machine),
        setup.report_every,
    );
    reporter.adopt(&node);
    let mut current_lease: Option<Lease> = None;
    let mut next_lease = Instant::now();
    let mut next_status = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_lease {
            let who = LeaseRef {
                node: &name,
                node_uid: node_uid.as_deref(),
                duration: setup.lease_duration_seconds,
            };
            match renew(&client, &who, &mut clock, current_lease.take()).await {
                Ok(l) => {
                    lease_trouble.ok(&name);
                    lease_backoff.reset();
                    current_lease = Some(l);
                    next_lease = Instant::now() + renew_every;
                }
                Err(e) => {
                    lease_trouble.failed(&name, &e);
                    next_lease = Instant::now() + lease_backoff.next_delay(e.retry_after());
                }
            }
        }
        if now >= next_status {
            next_status = now + setup.status_every;
            if client.local_ip().is_some() && client.local_ip() != setup.identity.internal_ip {
                setup.identity.internal_ip = client.local_ip();
                reporter.set_static(status::static_status(&setup.identity, &machine));
            }
            let usage = machine::usage(&setup.data_dir);
            let observed = status::observe(&usage, (setup.runtime_check)());
            if let Some(report) = reporter.plan(&observed, SystemTime::now(), Instant::now()) {
                let req = Resource::NODES.patch(
                    None,
                    &name,
                    Some("status"),
                    PatchKind::Strategic,
                    &report.patch,
                );
                match client.send(&req).await {
                    Ok(_) => {
                        status_trouble.ok(&name);
                        status_backoff.reset();
                        reporter.confirm(report, Instant::now());
                    }
                    Err(e) if e.is_not_found() => {
                        log::warn!(
                            "node {name}: the Node was deleted from the API server; registering again"
                        );
                        let node = register(
                            &client,
                            &setup,
                            &machine,
                            &mut reg_trouble,
                            &mut reg_backoff,
                        )
                        .await;
                        node_uid = node["metadata"]["uid"].as_str().map(str::to_string);
                        reporter.forget_sent();
                        current_lease = None;
                        next_status = Instant::now();
                    }
                    Err(e) => {
                        status_trouble.failed(&name, &e);
                        next_status = Instant::now() + status_backoff.next_delay(e.retry_after());
                    }
                }
            }
        }
        Timer::at(next_lease.min(next_status)).await;
    }
}

/// Creates the Node, or adopts the one that exists (409). Retries until it succeeds.
async fn register(
    client: &Client,
    setup: &Setup,
    machine: &Machine,
    trouble: &mut Trouble,
    backoff: &mut Backoff,
) -> Value {
    let name = &setup.identity.name;
    let body = status::registration(&setup.identity, machine);
    loop {
        let attempt = match client
            .json::<Value>(&Resource::NODES.create(None, &body))
            .await
        {
            Ok(node) => {
                log::info!(
                    "node {name}: registered with the API server at {}",
                    client.server().authority()
                );
                Ok(node)
            }
            Err(e) if e.is_already_exists() => adopt(client, name, &body).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(node) => {
                trouble.ok(name);
                backoff.reset();
                return node;
            }
            Err(e) => {
                trouble.failed(name, &e);
                Timer::after(backoff.next_delay(e.retry_after())).await;
            }
        }
    }
}

/// The Node exists (a restart, or a re-installed gateway): take it over, fixing its labels.
async fn adopt(client: &Client, name: &str, body: &Value) -> Result<Value, Error> {
    let node: Value = client.json(&Resource::NODES.get(None, name)).await?;
    let want = &body["metadata"]["labels"];
    let wrong = want
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| node["metadata"]["labels"][k] != *v);
    log::info!("node {name}: already registered; adopting the existing Node");
    if wrong {
        let patch = serde_json::json!({"metadata": {"labels": want}});
        return client
            .json(&Resource::NODES.patch(None, name, None, PatchKind::Strategic, &patch))
            .await;
    }
    Ok(node)
}

/// Whose Lease, and how long it lasts.
struct LeaseRef<'a> {
    node: &'a str,
    node_uid: Option<&'a str>,
    duration: u32,
}

impl LeaseRef<'_> {
    fn body(&self, current: Option<&Lease>, renew: SystemTime) -> Lease {
        lease::renewal(self.node, self.node_uid, current, renew, self.duration)
    }
}

/// Renews the Lease: PUT over the last one known; on a conflict (someone else wrote it) or
/// without one, GET it first (create it when there is none).
async fn renew(
    client: &Client,
    who: &LeaseRef<'_>,
    clock: &mut LeaseClock,
    current: Option<Lease>,
) -> Result<Lease, Error> {
    let leases = Resource::LEASES;
    let ns = Some(lease::NAMESPACE);
    let name = who.node;
    if let Some(cur) = current {
        let body = who.body(Some(&cur), clock.at(Instant::now()));
        match client.json::<Lease>(&leases.replace(ns, name, &body)).await {
            Ok(l) => return Ok(l),
            Err(e) if e.is_conflict() || e.is_not_found() => {
                log::debug!("node {name}: lease renewal: {e}; reading it again");
            }
            Err(e) => return Err(e),
        }
    }
    match client.json::<Lease>(&leases.get(ns, name)).await {
        Ok(found) => {
            if let Some(t) = lease::renew_time(&found) {
                clock.not_before(t, Instant::now());
            }
            let body = who.body(Some(&found), clock.at(Instant::now()));
            client.json(&leases.replace(ns, name, &body)).await
        }
        Err(e) if e.is_not_found() => {
            let body = who.body(None, clock.at(Instant::now()));
            client.json(&leases.create(ns, &body)).await
        }
        Err(e) => Err(e),
    }
}
