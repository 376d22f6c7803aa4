//! The proxy loop: events in, syncs of the backend out, on the agent's one thread.
//!
//! ```text
//!  services/ changed ─► scan_dir (changed objects, one at a time) ─► ProxyState::apply ─┐
//!  syncPeriod tick ───► a full sync ────────────────────────────────────────────────────┤
//!  Backend::sync(state, node, full), awaited (which backend, the loop does not know) ◄──┘
//! ```
//!
//! Nothing is written until Services and EndpointSlices have both synced (the state's gate);
//! every later write is a diff against what the kernel accepted last, and every `syncPeriod`
//! the tables are replaced whole, so anything else that touched them is repaired.

use std::path::PathBuf;

use async_io::Timer;
use futures_lite::FutureExt;

use super::backend::{self, Backend};
use super::model::NodeConfig;
use super::source::{Snapshot, scan_dir};
use super::state::{Event, ProxyState};
use crate::config::proxy::ProxyConfig;
use crate::source::DirWatch;
use crate::sys::reaper::Reaper;

/// The proxy: its store, the node's facts and the backend it writes with.
pub struct Proxy<B: Backend> {
    state: ProxyState,
    node: NodeConfig,
    backend: B,
}

impl<B: Backend> Proxy<B> {
    pub fn new(node: NodeConfig, backend: B) -> Proxy<B> {
        Proxy {
            state: ProxyState::default(),
            node,
            backend,
        }
    }

    /// Feeds events from a source; an invalid object is logged and left out.
    pub fn feed(&mut self, events: Vec<Event>) {
        for e in events {
            if let Err(err) = self.state.apply(e) {
                log::warn!("proxy: {err}");
            }
        }
    }

    /// Writes what changed (everything when `full`). Returns whether the kernel now holds
    /// the desired ruleset (false while waiting for the sources, or after a refused write).
    /// Other tasks run while the kernel commits.
    pub async fn sync(&mut self, full: bool) -> bool {
        self.backend.sync(&mut self.state, &self.node, full).await
    }
}

/// Runs the standalone proxy: Services and EndpointSlices from `cfg.services_path`. Commits
/// run in children of `exe`, reaped by `reaper`.
pub async fn run(cfg: ProxyConfig, exe: PathBuf, reaper: Reaper) {
    let backend = match backend::open(cfg.mode, exe, reaper) {
        Ok(b) => b,
        Err(e) => {
            log::error!("proxy: {e}; Services are not proxied");
            return;
        }
    };
    let mut proxy = Proxy::new(cfg.node.clone(), backend);
    let dir: PathBuf = cfg.services_path.clone();
    log::info!("proxy: Services from {}", dir.display());
    let mut watch = DirWatch::new(&dir)
        .map_err(|e| {
            log::warn!(
                "proxy: watching {}: {e}; relying on the periodic resync",
                dir.display()
            )
        })
        .ok();
    let mut prev = Snapshot::default();
    let mut full = true;
    loop {
        // Each changed object goes into the store as it is parsed: the folder's JSON is never
        // held at once.
        let next = scan_dir(&dir, &prev, &mut |e| proxy.feed(vec![e]));
        for p in &next.problems {
            if !prev.problems.contains(p) {
                log::warn!("proxy: {p}");
            }
        }
        prev = next;
        proxy.sync(full).await;
        let tick = async {
            Timer::after(cfg.sync_period).await;
            true
        };
        let changed = async {
            match watch.as_mut() {
                Some(w) => match w.changed().await {
                    Ok(()) => false,
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        full = tick.or(changed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::apply::{Ops, Writer};
    use crate::proxy::backend::Nftables;
    use crate::proxy::ruleset::Op;
    use futures_lite::future::block_on;
    use serde_json::json;
    use std::net::SocketAddr;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<Op>>,
        refuse: bool,
        flushed: Vec<SocketAddr>,
    }

    impl Writer for &mut Recorder {
        async fn write(&mut self, ops: Ops<'_>) -> Result<(), String> {
            self.writes.push(match ops {
                Ops::Listed(ops) => ops,
                Ops::Streamed(stream) => stream.collect(),
            });
            if self.refuse {
                return Err("refused".into());
            }
            Ok(())
        }

        fn forget_udp_flows(&mut self, backend: SocketAddr) -> Result<usize, String> {
            self.flushed.push(backend);
            Ok(1)
        }
    }

    fn dns_slice(addrs: &[&str]) -> Event {
        let eps: Vec<_> = addrs.iter().map(|a| json!({ "addresses": [a] })).collect();
        Event::EndpointSliceApplied(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "dns-1", "namespace": "default",
                          "labels": { "kubernetes.io/service-name": "dns" } },
            "addressType": "IPv4",
            "ports": [{ "name": "dns", "port": 53, "protocol": "UDP" }],
            "endpoints": eps
        }))
    }

    #[test]
    fn udp_flows_to_a_removed_backend_are_flushed_and_only_those() {
        let mut rec = Recorder::default();
        let mut p = Proxy::new(node(), Nftables::new(&mut rec));
        let dns = Event::ServiceApplied(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "dns", "namespace": "default" },
            "spec": { "clusterIP": "10.96.0.53",
                      "ports": [{ "name": "dns", "port": 53, "protocol": "UDP" }] }
        }));
        p.feed(vec![dns, dns_slice(&["10.244.1.5", "10.244.2.6"])]);
        p.feed(vec![Event::ServicesSynced, Event::EndpointSlicesSynced]);
        assert!(block_on(p.sync(false)));
        p.feed(vec![dns_slice(&["10.244.2.6"])]);
        assert!(block_on(p.sync(false)));
        drop(p);
        assert_eq!(rec.flushed, vec!["10.244.1.5:53".parse().unwrap()]);
    }

    fn node() -> NodeConfig {
        NodeConfig {
            node_name: "node-a".into(),
            node_ips: vec!["192.168.1.10".parse().unwrap()],
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            masquerade_bit: 0x4000,
        }
    }

    fn web() -> Event {
        Event::ServiceApplied(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": { "clusterIP": "10.96.0.10", "ports": [{ "port": 80 }] }
        }))
    }

    #[test]
    fn nothing_is_written_until_both_sources_synced_then_only_changes() {
        let mut rec = Recorder::default();
        let mut p = Proxy::new(node(), Nftables::new(&mut rec));
        p.feed(vec![web(), Event::ServicesSynced]);
        assert!(!block_on(p.sync(true)));
        p.feed(vec![Event::EndpointSlicesSynced]);
        assert!(block_on(p.sync(true)));
        assert!(block_on(p.sync(false)), "nothing changed: nothing written");
        p.feed(vec![Event::ServiceDeleted {
            namespace: "default".into(),
            name: "web".into(),
        }]);
        assert!(block_on(p.sync(false)));
        drop(p);
        assert_eq!(rec.writes.len(), 2);
        assert!(
            matches!(rec.writes[0][0], Op::DeleteTable(_)),
            "the first write replaces"
        );
        assert!(
            !rec.writes[1]
                .iter()
                .any(|o| matches!(o, Op::AddTable(_) | Op::DeleteTable(_))),
            "the second write is incremental: {:?}",
            rec.writes[1]
        );
    }

    #[test]
    fn a_refused_write_is_retried_as_a_full_sync() {
        let mut rec = Recorder {
            refuse: true,
            ..Recorder::default()
        };
        let mut p = Proxy::new(node(), Nftables::new(&mut rec));
        p.feed(vec![
            web(),
            Event::ServicesSynced,
            Event::EndpointSlicesSynced,
        ]);
        assert!(!block_on(p.sync(false)));
        assert!(!block_on(p.sync(false)));
        drop(p);
        assert_eq!(rec.writes.len(), 2);
        assert!(matches!(rec.writes[1][0], Op::DeleteTable(_)));
    }
}
