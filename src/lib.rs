//! nanolet: a Kubernetes node agent for embedded and edge appliances.
//!
//! The folder tree is the architecture. Dependencies point down this list, never up:
//!
//! ```text
//!  cli ──► agent ──► pod ──────► runtime ──► sys
//!   │        │        │            │
//!   │        │        ├► k8s       └► image
//!   │        │        └► prober ──► runtime (runc exec), sockets
//!   │        │        └► net (pod networking) ─► netlink
//!   │        ├► source (manifests/; api/: pods from the API server) ─► k8s, config, api
//!   │        ├► proxy (services/) ─► netlink
//!   │        ├► report (status patches, mirror pods) ─► source, pod
//!   │        ├► node (Node, Lease) ─► api (client, kubeconfig, events)
//!   │        └► state (atomic files, status snapshot)
//!   └► ctl (ps, logs, images: read what the agent wrote; never run a second state machine)
//! ```
//!
//! - [`config`]: `nanolet.yaml` (KubeletConfiguration field names) and the YAML→JSON bridge.
//! - [`k8s`]: the Kubernetes object types nanolet reads (Pod and friends), validated at the edge.
//! - [`source`]: static pods from the manifests folder: parsing (pure) and the inotify watch;
//!   pods from the API server (`source::api`): the list+watch state machine, decoding, the set of
//!   API pods (pure), the watch loop, the checksummed store that keeps them across reboots.
//! - [`report`]: what the node tells the API server about pods: status patches (only changes,
//!   per pod) and mirror pods for static pods.
//! - [`image`]: the image store: import of OCI layouts and archives, digests, safe layer unpacking.
//! - [`runtime`]: containers: OCI `config.json` generation (pure), bundles and rootfs mounts,
//!   the `runc` driver, CRI-format logs.
//! - [`pod`]: pod lifecycle with kubelet's semantics: the per-container state machine, restart
//!   back-off and the Events of each transition (pure), and the pod worker that drives the
//!   runtime.
//! - [`prober`]: probe and hook I/O: exec (runc exec), httpGet, tcpSocket, grpc; one file each.
//! - [`net`]: pod networking: the built-in bridge (rtnetlink) with host-local style IPAM, CNI
//!   plugins, hostPorts, and each pod's resolv.conf and hosts file (pure parts apart).
//! - [`proxy`]: Services in nftables (kube-proxy's job): model, desired ruleset, nft text, tracer,
//!   lowering to nf_tables messages, the sync loop; fed by the `services/` folder or, with a
//!   kubeconfig, by the API server (the pods' watcher).
//! - [`netlink`]: netlink framing and sockets, one file per family (rtnetlink, nf_tables); bytes,
//!   not Kubernetes.
//! - [`api`]: the Kubernetes API client: pure request builders, kubeconfig, HTTP/1.1 (ureq-proto)
//!   over async-io with rustls, typed answers and `Status` errors, watch streams, Events.
//! - [`node`]: the Node in the cluster: registration, status and conditions (pure), the Lease
//!   (pure), and the heartbeat task that keeps them current.
//! - [`agent`]: wires sources, pod workers and the status snapshot on one executor thread.
//! - [`state`]: durable and runtime state: atomic writes, boot id, the status snapshot, the API
//!   pod store.
//! - [`sys`]: the one seam for syscalls that need `unsafe` or root: child reaping, namespaces,
//!   mounts.
//! - [`ctl`]: the read-only commands (`ps`, `logs`, `images`).
//! - [`cli`]: the command line.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod image;
pub mod k8s;
pub mod logger;
pub mod net;
pub mod netlink;
pub mod node;
pub mod pod;
pub mod prober;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod source;
pub mod state;
pub mod sys;
