//! The Node: nanolet as a member of a cluster (when `<config-dir>/kubeconfig` exists).
//!
//! - [`machine`]: what the machine is (CPUs, memory, disk, ids, kernel, OS) and its usage.
//! - [`status`] (pure): the Node's registration body, its status, the four conditions with
//!   their transition times, and when to report.
//! - [`lease`] (pure): the Lease renewal body and a clock that never goes backwards.
//! - [`heartbeat`]: the task that registers the Node and keeps Lease and status current.
//!
//! Pods never depend on this module: an unreachable API server changes nothing for them.

pub mod heartbeat;
pub mod lease;
pub mod machine;
pub mod status;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::api::events::{self, EventRecord, Recorder};
use crate::api::{Client, kubeconfig};
use crate::config::NodeConfig;

/// The API side of the agent, ready to run: see [`connect`].
pub struct Api {
    client: Rc<Client>,
    setup: heartbeat::Setup,
    events: async_channel::Receiver<EventRecord>,
}

/// Reads `<config_dir>/kubeconfig`. Without one (or with an unusable one, which is logged as
/// an error naming the problem), nanolet runs standalone: the recorder drops events and there
/// is nothing to run. Static pods run either way.
pub fn connect(config_dir: &Path, config: &NodeConfig) -> (Recorder, Option<Api>) {
    let path = config_dir.join(kubeconfig::FILE_NAME);
    if !path.exists() {
        return (Recorder::disabled(), None);
    }
    let client = match kubeconfig::load(&path).and_then(|k| Client::new(&k)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}; running without the API server (static pods only)");
            return (Recorder::disabled(), None);
        }
    };
    log::info!(
        "node {}: API server {} (from {})",
        config.node_name,
        client.server().authority(),
        path.display()
    );
    let runc = config.runc_path.clone();
    let (recorder, events) = Recorder::channel();
    let setup = heartbeat::Setup {
        identity: status::Identity {
            name: config.node_name.clone(),
            hostname: crate::config::hostname(),
            internal_ip: None,
            runtime_version: String::new(),
            max_pods: config.max_pods,
            kubelet_port: 10250,
        },
        data_dir: config.data_dir.clone(),
        status_every: config.node_status_update_frequency,
        report_every: config.node_status_report_frequency,
        lease_duration_seconds: config.node_lease_duration_seconds,
        runtime_check: Box::new(move || runtime_present(&runc)),
    };
    (
        recorder,
        Some(Api {
            client: Rc::new(client),
            setup,
            events,
        }),
    )
}

impl Api {
    /// The API client (the pod source and the status reporter share it).
    pub fn client(&self) -> Rc<Client> {
        self.client.clone()
    }

    /// Registers the node and keeps it current; sends events. Runs for as long as the agent.
    pub async fn run(mut self, runtime_version: String) {
        self.setup.identity.runtime_version = format!("runc://{runtime_version}");
        let name = self.setup.identity.name.clone();
        futures_lite::future::zip(
            heartbeat::run(self.client.clone(), self.setup),
            events::run(self.client, name, self.events),
        )
        .await;
    }
}

/// Whether the runc binary is there (the Ready condition's runtime check).
fn runtime_present(runc: &Path) -> Result<(), String> {
    let found = if runc.components().count() > 1 {
        runc.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d: PathBuf| d.join(runc).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(format!("{} not found", runc.display()))
    }
}
