//! The agent's link to the API server: pods bound to this node run beside the static pods,
//! their status and the static pods' mirror pods are reported, and the Node (registration,
//! Lease, status) and its Events are kept current. Everything here runs on tasks of its own
//! beside the pods and only logs its trouble: an API server that is down never holds a pod up.
//!
//! ```text
//!   join_cluster: proxy ◄── client ──► connect_api: PodStore ─► ApiPods ◄─ run_watch (list+watch)
//!                                                                   ├──► run_status (status patches)
//!                                                                   ├──► run_mirrors (mirror pods)
//!                                                                   └──► confirm (final DELETE)
//!                 node::Api::run (Node, Lease, Events) after `runc --version`
//! ```

use std::rc::Rc;

use super::Agent;
use crate::report::{self, status::NodeFacts};
use crate::source::api::client::PodApi;
use crate::source::api::set::Terminating;
use crate::source::api::{ApiPods, confirm_deletion};
use crate::state::pods::PodStore;

/// The agent's side of the API pod source (see [`crate::source::api`]).
pub(super) struct ApiLink {
    pub(super) pods: Rc<ApiPods>,
    /// Starts the final DELETE of a terminated pod (on a task of its own).
    pub(super) confirm: Rc<dyn Fn(Terminating)>,
}

impl Agent {
    /// Makes this agent a node of the cluster `api` talks to (see the module doc).
    pub(super) fn join_cluster(&mut self, api: crate::node::Api) {
        let client = api.client();
        let facts_client = client.clone();
        let facts = Rc::new(move || NodeFacts {
            host_ip: facts_client.local_ip().map(|ip| ip.to_string()),
        });
        self.proxy_api = Some(client.clone());
        self.connect_api(client, facts);
        // The API tasks never hold up pods: they start beside them and only log their trouble.
        let ctx = self.ctx.clone();
        self.ctx
            .executor
            .spawn(async move {
                let version = ctx.runc.version().await.unwrap_or_else(|e| {
                    log::warn!("runc --version: {e}");
                    "unknown".into()
                });
                api.run(version).await;
            })
            .detach();
    }

    /// Makes this agent a node of a cluster: pods bound to it by the API server run next to the
    /// static pods (stored ones at once, before the API server answers), their status is
    /// reported, static pods get mirror pods. `facts` tells the node's host IP.
    fn connect_api<A: PodApi + 'static>(&mut self, api: Rc<A>, facts: Rc<dyn Fn() -> NodeFacts>) {
        let cfg = self.config();
        let store = match PodStore::open(&cfg.data_dir.join("api-pods")) {
            Ok(store) => store,
            Err(e) => {
                log::error!(
                    "pod store {}: {e}; API pods are not run",
                    cfg.data_dir.display()
                );
                return;
            }
        };
        let pods = Rc::new(ApiPods::new(
            cfg.node_name.clone(),
            store,
            self.reconcile_tx.clone(),
        ));
        let executor = &self.ctx.executor;
        executor
            .spawn(crate::source::api::run_watch(api.clone(), pods.clone()))
            .detach();
        executor
            .spawn(report::sync::run_status(
                api.clone(),
                self.ctx.board.clone(),
                pods.clone(),
                facts,
            ))
            .detach();
        executor
            .spawn(report::sync::run_mirrors(api.clone(), pods.clone()))
            .detach();
        let confirm_pods = pods.clone();
        let confirm_executor = executor.clone();
        let confirm = Rc::new(move |t: Terminating| {
            let (api, pods) = (api.clone(), confirm_pods.clone());
            confirm_executor
                .spawn(async move { confirm_deletion(&*api, &pods, t).await })
                .detach();
        });
        self.api = Some(ApiLink { pods, confirm });
        // What pods deleted while nanolet was away used (the stored pods are kept).
        self.prune_api_objects();
    }

    /// Removes the kept ConfigMaps, Secrets and tokens that no pod bound to this node (as the
    /// pod store holds them) references any more: at start and when a pod is forgotten.
    pub(super) fn prune_api_objects(&self) {
        if let (Some(api), Some(objects)) = (&self.api, &self.ctx.api_objects) {
            let (keep, tokens) = api.pods.referenced();
            objects.prune(&keep, &tokens);
        }
    }
}
