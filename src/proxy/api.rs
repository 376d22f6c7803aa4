//! The proxy fed by the API server: Services and EndpointSlices listed and watched.
//!
//! ```text
//!  watch(services) ─ Watcher ─ Feed(Services) ───────────────┐
//!  watch(endpointslices v1 │ v1beta1 │ endpoints) ─ Watcher ─ Feed ─┴► channel ─► Proxy::feed
//!        404 on the first list: the next SliceApi                     sync on change, full
//!                                                                     resync every syncPeriod
//! ```
//!
//! Both watches are the pods' list + watch state machine ([`Watcher`]): resourceVersion,
//! bookmarks, relist on 410, jittered back-off; paged, so each list page goes to the proxy as
//! it comes (10 000 Services are never held as JSON at once). Nothing is written until both have delivered
//! a full list ([`super::state`]'s gate). With a kubeconfig the API server is the only source:
//! the `services/` folder is not read (kube-proxy has one source too).

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use async_io::Timer;
use futures_lite::FutureExt;

use super::backend;
use super::convert::{Feed, Kind, SliceApi};
use super::run::Proxy;
use super::state::Event;
use crate::api::Client;
use crate::api::request::{ListParams, Resource, WatchParams};
use crate::api::types::{List, WatchEvent};
use crate::config::proxy::ProxyConfig;
use crate::source::api::Jitter;
use crate::source::api::watcher::{Input, Request, Watcher};
use crate::sys::reaper::Reaper;

/// Objects per list page. A page is held as JSON values until the store has taken it (about
/// 7 KiB per object as `serde_json::Value`s, averaged over Services and EndpointSlices of 10
/// endpoints): 100 keep that under a MiB, for 200 requests to list 10 000 Services and their
/// slices (kube-proxy's informers ask for 500).
const PAGE_LIMIT: u32 = 100;
/// Batches of events waiting for the proxy: a watch waits while the proxy commits, rather than
/// queueing a whole relist as JSON.
const QUEUED_BATCHES: usize = 2;

/// What kube-proxy leaves to others: Services another proxy implements, headless Services.
const SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

fn resource(kind: Kind) -> Resource {
    match kind {
        Kind::Services => Resource::SERVICES,
        Kind::Slices(api) => {
            let (prefix, plural) = api.path();
            Resource::new(prefix, plural, true)
        }
    }
}

fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Services => "service",
        Kind::Slices(SliceApi::Endpoints) => "endpoints",
        Kind::Slices(_) => "endpointslice",
    }
}

fn selector() -> ListParams {
    ListParams {
        label_selector: Some(SELECTOR.to_string()),
        ..ListParams::default()
    }
}

fn failed(e: crate::api::Error) -> Input {
    let code = match &e {
        crate::api::Error::Status { code, .. } => Some(*code),
        _ => None,
    };
    Input::Failed {
        code,
        error: e.to_string(),
    }
}

/// Lists and watches one kind forever, sending the proxy's events to `tx`. For endpoints, a
/// 404 on the first list page means the server does not serve that API: the next one is tried.
async fn watch_kind(client: Rc<Client>, mut kind: Kind, tx: async_channel::Sender<Vec<Event>>) {
    let mut feed = Feed::new(kind);
    let mut watcher = Watcher::of(what(kind)).paged();
    let mut jitter = Jitter::seeded();
    loop {
        let res = resource(kind);
        let mut inputs = Vec::new();
        match watcher.request(jitter.fraction()) {
            Request::List { continue_token } => {
                let first = continue_token.is_none();
                let params = ListParams {
                    limit: Some(PAGE_LIMIT),
                    continue_token,
                    ..selector()
                };
                let input = match client.json::<List>(&res.list(None, &params)).await {
                    Ok(list) => Input::Page {
                        items: list.items,
                        resource_version: list.metadata.resource_version,
                        continue_token: Some(list.metadata.continue_token)
                            .filter(|t| !t.is_empty()),
                    },
                    Err(e) => failed(e),
                };
                if let (
                    true,
                    Input::Failed {
                        code: Some(404), ..
                    },
                    Kind::Slices(api),
                ) = (first, &input, kind)
                    && let Some(next) = api.fallback()
                {
                    log::info!(
                        "proxy: the API server does not serve {} (404); using {}",
                        api.name(),
                        next.name()
                    );
                    kind = Kind::Slices(next);
                    feed = Feed::new(kind);
                    watcher = Watcher::of(what(kind)).paged();
                    continue;
                }
                inputs.push(input);
            }
            Request::Watch {
                resource_version,
                timeout_seconds,
            } => {
                let params = WatchParams {
                    list: selector(),
                    resource_version: Some(resource_version),
                    bookmarks: true,
                    timeout_seconds,
                };
                match client.watch(&res.watch(None, &params)).await {
                    Err(e) => inputs.push(failed(e)),
                    Ok(mut stream) => loop {
                        let (input, last) = match stream.next().await {
                            None => (Input::StreamEnded, true),
                            Some(Err(e)) => (failed(e), true),
                            Some(Ok(event)) => {
                                let last = matches!(event, WatchEvent::Error(_));
                                (Input::Event(event), last)
                            }
                        };
                        let outputs = watcher.step(input, Instant::now(), jitter.fraction());
                        if !send(&mut feed, outputs, &tx).await || last {
                            break;
                        }
                    },
                }
            }
            Request::Wait { until } => {
                Timer::at(until).await;
                inputs.push(Input::Timer);
            }
        }
        for input in inputs {
            let outputs = watcher.step(input, Instant::now(), jitter.fraction());
            if !send(&mut feed, outputs, &tx).await {
                return;
            }
        }
    }
}

/// Sends the events for `outputs`; false once the proxy is gone.
async fn send(
    feed: &mut Feed,
    outputs: Vec<crate::source::api::watcher::Output>,
    tx: &async_channel::Sender<Vec<Event>>,
) -> bool {
    let (events, warnings) = feed.events(outputs);
    for w in warnings {
        log::warn!("proxy: {w}");
    }
    events.is_empty() || tx.send(events).await.is_ok()
}

/// Runs the proxy on Services and EndpointSlices from the API server. Commits run in children
/// of `exe`, reaped by `reaper`; the watches go on meanwhile.
pub async fn run(cfg: ProxyConfig, client: Rc<Client>, exe: PathBuf, reaper: Reaper) {
    let backend = match backend::open(cfg.mode, exe, reaper) {
        Ok(b) => b,
        Err(e) => {
            log::error!("proxy: {e}; Services are not proxied");
            return;
        }
    };
    log::info!(
        "proxy: Services and EndpointSlices from the API server {}",
        client.server().authority()
    );
    let mut proxy = Proxy::new(cfg.node.clone(), backend);
    let (tx, rx) = async_channel::bounded::<Vec<Event>>(QUEUED_BATCHES);
    let services = watch_kind(client.clone(), Kind::Services, tx.clone());
    let slices = watch_kind(client, Kind::Slices(SliceApi::V1), tx);
    let apply = async move {
        let mut full = true;
        loop {
            proxy.sync(full).await;
            let tick = async {
                Timer::after(cfg.sync_period).await;
                true
            };
            let changed = async {
                match rx.recv().await {
                    Ok(events) => {
                        proxy.feed(events);
                        // Everything already queued goes into the same transaction.
                        while let Ok(more) = rx.try_recv() {
                            proxy.feed(more);
                        }
                        false
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            full = tick.or(changed).await;
        }
    };
    futures_lite::future::zip(services, slices).or(apply).await;
}
