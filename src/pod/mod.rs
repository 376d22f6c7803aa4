//! Pod lifecycle with kubelet's semantics.
//!
//! - [`lifecycle`] (pure): which container starts next, back-off, the pod's phase.
//! - [`backoff`] (pure): CrashLoopBackOff timing.
//! - [`probe`] (pure): liveness, readiness and startup probes of a container: when, and what
//!   a run of results means (ready, started, kill).
//! - [`events`] (pure): which Kubernetes Event each transition makes, in kubelet's words.
//! - [`status`]: Kubernetes-shaped pod and container status, and the snapshot `ps` reads.
//! - [`config`] (pure): a container of a Pod plus its image → the runtime configuration.
//! - [`resources`] (pure): QoS class, cgroup values, `oom_score_adj`, `resourceFieldRef`.
//! - [`security`] (pure): the security contexts → user, capabilities, seccomp, sysctls.
//! - [`images`]: imagePullPolicy (pure) and pulls in child processes, shared per reference.
//! - [`pull_secrets`] (pure): a pod's `imagePullSecrets` → credentials for a registry.
//! - [`volumes`]: a pod's volumes (emptyDir, hostPath, configMap, secret, downwardAPI,
//!   projected) prepared before its containers start, and their mounts.
//! - [`board`]: where workers publish status for the snapshot.
//! - [`worker`]: one task per pod that carries out the decisions with the runtime.

pub mod backoff;
pub mod board;
pub mod config;
pub mod events;
pub mod images;
pub mod lifecycle;
pub mod probe;
pub mod pull_secrets;
pub mod resources;
pub mod security;
pub mod status;
pub mod volumes;
pub mod worker;
