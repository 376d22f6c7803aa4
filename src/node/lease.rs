//! The node's Lease in `kube-node-lease` (its heartbeat), as pure values and one clock.
//!
//! kubelet renews every 10 s (a quarter of the 40 s duration). `renewTime` comes from a
//! [`LeaseClock`]: the wall clock read once at start, advanced by the monotonic clock, so a wall
//! clock stepped backwards (NTP after a boot without RTC, common on gateways) never makes
//! renewTime go backwards; a Lease found on the server with a later renewTime (from before a
//! reboot with a clock that was ahead) moves the clock forward to it.

use std::time::{Duration, Instant, SystemTime};

use crate::api::time::{format_micro_time, parse_time};
use crate::api::types::{Lease, LeaseSpec, ObjectMeta, OwnerReference};

/// The Lease namespace.
pub const NAMESPACE: &str = "kube-node-lease";
/// kubelet's default `leaseDurationSeconds` (`nodeLeaseDurationSeconds`).
pub const DURATION_SECONDS: u32 = 40;
/// How often the Lease is renewed at that default (a quarter of it).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// Wall time that never goes backwards.
#[derive(Debug, Clone, Copy)]
pub struct LeaseClock {
    wall: SystemTime,
    mono: Instant,
}

impl LeaseClock {
    /// Anchors the clock: `wall` and `mono` read at the same moment.
    pub fn new(wall: SystemTime, mono: Instant) -> LeaseClock {
        LeaseClock { wall, mono }
    }

    /// The time at `mono`.
    pub fn at(&self, mono: Instant) -> SystemTime {
        self.wall + mono.saturating_duration_since(self.mono)
    }

    /// Never report earlier than `seen` (a renewTime already on the server) from now on.
    pub fn not_before(&mut self, seen: SystemTime, mono: Instant) {
        let now = self.at(mono);
        if let Ok(ahead) = seen.duration_since(now) {
            // 1 µs past it: MicroTime has microseconds, and the new value must differ.
            self.wall += ahead + Duration::from_micros(1);
        }
    }
}

/// The Lease to send: a renewal of `current` (keeping its resourceVersion, so a concurrent
/// change is a 409), or a new one; `duration` is `leaseDurationSeconds`.
pub fn renewal(
    node: &str,
    node_uid: Option<&str>,
    current: Option<&Lease>,
    renew: SystemTime,
    duration: u32,
) -> Lease {
    let mut metadata = match current {
        Some(c) => c.metadata.clone(),
        None => ObjectMeta {
            name: node.to_string(),
            namespace: NAMESPACE.to_string(),
            ..ObjectMeta::default()
        },
    };
    if let Some(uid) = node_uid
        && metadata.owner_references.is_empty()
    {
        metadata.owner_references = vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_string(),
            uid: uid.to_string(),
            controller: None,
        }];
    }
    // Only what nanolet sends matters; server-set fields stay out of the body.
    metadata.creation_timestamp = None;
    Lease {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        metadata,
        spec: LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(i32::try_from(duration).unwrap_or(i32::MAX)),
            renew_time: Some(format_micro_time(renew)),
            acquire_time: current.and_then(|c| c.spec.acquire_time.clone()),
        },
    }
}

/// The renewTime of a Lease, if it has a readable one.
pub fn renew_time(lease: &Lease) -> Option<SystemTime> {
    lease.spec.renew_time.as_deref().and_then(parse_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn the_clock_follows_monotonic_time_not_the_wall_clock() {
        let m0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(1_795_830_565);
        let clock = LeaseClock::new(w0, m0);
        // Whatever the wall clock does meanwhile, 10 s of monotonic time is 10 s later.
        assert_eq!(
            clock.at(m0 + Duration::from_secs(10)),
            w0 + Duration::from_secs(10)
        );
        assert!(clock.at(m0 + Duration::from_secs(20)) > clock.at(m0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_later_renew_time_on_the_server_moves_the_clock_forward_only() {
        let m0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(1_795_830_565);
        let mut clock = LeaseClock::new(w0, m0);
        clock.not_before(w0 - Duration::from_secs(3600), m0);
        assert_eq!(clock.at(m0), w0, "an earlier time changes nothing");
        let ahead = w0 + Duration::from_secs(3600);
        clock.not_before(ahead, m0);
        assert!(clock.at(m0) > ahead);
        assert!(clock.at(m0 + RENEW_INTERVAL) > clock.at(m0));
    }

    #[test]
    fn renewal_matches_the_transcript_and_keeps_the_resource_version() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_830_565);
        let new = renewal("edge-1", None, None, t, DURATION_SECONDS);
        assert_eq!(
            serde_json::to_string(&new).unwrap(),
            r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"edge-1","namespace":"kube-node-lease"},"spec":{"holderIdentity":"edge-1","leaseDurationSeconds":40,"renewTime":"2026-11-28T01:49:25.000000Z"}}"#
        );
        let mut current = new.clone();
        current.metadata.resource_version = "604".into();
        current.metadata.uid = "u".into();
        let next = renewal(
            "edge-1",
            Some("node-uid"),
            Some(&current),
            t + RENEW_INTERVAL,
            DURATION_SECONDS,
        );
        assert_eq!(next.metadata.resource_version, "604");
        assert_eq!(next.metadata.owner_references[0].uid, "node-uid");
        assert_eq!(
            next.spec.renew_time.as_deref(),
            Some("2026-11-28T01:49:35.000000Z")
        );
        assert_eq!(renew_time(&next), Some(t + RENEW_INTERVAL));
    }
}
