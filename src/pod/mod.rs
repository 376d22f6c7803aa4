//! Pod lifecycle with kubelet's semantics.
//!
//! - [`lifecycle`] (pure): which container starts next, back-off, the pod's phase.
//! - [`backoff`] (pure): CrashLoopBackOff timing.
//! - [`status`]: Kubernetes-shaped pod and container status, and the snapshot `ps` reads.
//! - [`worker`]: one task per pod that carries out the decisions with the runtime.

pub mod backoff;
pub mod lifecycle;
pub mod status;
