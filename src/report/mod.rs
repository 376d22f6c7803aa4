//! What the node reports to the API server about its pods: status patches and mirror pods.
//!
//! - [`status`] (pure): a pod's status as a `PATCH .../status` body, QoS class, API times.
//! - [`queue`] (pure): which patches to send: only changes, coalesced per pod, retried.
//! - [`mirror`] (pure): mirror pods for static pods: the object, and what to create or delete.
//! - [`sync`] (I/O): the loops that send status patches and keep mirror pods.
//!
//! This module never decides what runs: it only describes what runs to the API server.

pub mod mirror;
pub mod queue;
pub mod status;
pub mod sync;

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
