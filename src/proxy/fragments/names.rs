//! Names in fragments: the skeleton's shared sets and maps (borrowed, not copied per
//! element), which chains are shared, which keys name a Service port, and how a key reads in
//! an error. Pure.

use std::borrow::Cow;

use super::Name;

/// The skeleton's sets and maps, which elements of every Service name.
pub(super) const SHARED_NAMES: [&str; 11] = {
    use super::super::build::*;
    [
        SERVICE_IPS,
        SERVICE_NODEPORTS,
        NO_ENDPOINT_SERVICES,
        NO_ENDPOINT_NODEPORTS,
        CLUSTER_IPS,
        NODEPORT_IPS,
        SERVICE_BACKENDS,
        SERVICE_LOCAL_BACKENDS,
        NODEPORT_BACKENDS,
        NODEPORT_LOCAL_BACKENDS,
        HAIRPIN,
    ]
};

/// `name` without a copy when it is one of the skeleton's.
pub(super) fn intern(name: &str) -> Name {
    match SHARED_NAMES.iter().find(|n| **n == name) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(name.to_string()),
    }
}

/// Is this one of the chains Services share (per endpoint count), rather than a Service's
/// own (affinity chains are named `<kind>-<namespace>/<name>/…`)?
pub(super) fn is_shared(chain: &str) -> bool {
    !chain.contains('/')
}

/// Does a key of this map name a Service port (rather than one of its endpoints)?
pub(super) fn is_service_key(map: &str) -> bool {
    use super::super::build::{
        NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, SERVICE_IPS, SERVICE_NODEPORTS,
    };
    [
        SERVICE_IPS,
        SERVICE_NODEPORTS,
        NO_ENDPOINT_SERVICES,
        NO_ENDPOINT_NODEPORTS,
    ]
    .contains(&map)
}

/// The map a Service port key's owner is recorded under: `@service-ips` for it and
/// `@no-endpoint-services`, `@service-nodeports` for it and `@no-endpoint-nodeports` (one
/// key is one Service's, with or without endpoints).
pub(super) fn claim_map(map: &str) -> &'static str {
    use super::super::build::{
        NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, SERVICE_IPS, SERVICE_NODEPORTS,
    };
    match map {
        NO_ENDPOINT_SERVICES | SERVICE_IPS => SERVICE_IPS,
        _ => {
            debug_assert!([NO_ENDPOINT_NODEPORTS, SERVICE_NODEPORTS].contains(&map));
            SERVICE_NODEPORTS
        }
    }
}
