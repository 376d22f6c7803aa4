//! The Service proxy (kube-proxy's job): Services and EndpointSlices become one nftables
//! table per IP family, owned by nanolet.
//!
//! ```text
//!  JSON ─► model (validated Service, EndpointSlice, NodeConfig) ─► store
//!            └► build ─► ruleset (typed tables, chains, maps, sets) ─┬► nft_text (dump, goldens)
//!                                                                    └► trace (packet tracer)
//!  store ─► state: per Service build alone ─► fragment ─┬► full sync: streamed, one Service at a time
//!           (applied: counts and owners, no elements)   └► incremental: plan(old, new fragments)
//!                                          ─► Op ─► lower ─► apply (one netlink batch)
//!  run: events ─► state ─► Backend::sync ─┬► backend/nftables.rs: next_sync ─► apply (Writer)
//!                                         └► iptables_apply: store ─► iptables ─► -restore
//! ```
//!
//! - [`model`]: the inputs, parsed and validated at the edge; errors name the object and field.
//! - [`build`]: the desired ruleset, with kube-proxy's nftables-mode semantics, in the
//!   shared-map shape (a Service is map elements; one chain per endpoint count).
//! - [`ruleset`]: the ruleset as a typed value, and the diff between two of them.
//! - [`nft_text`]: the ruleset as `nft -f` text (`nanolet proxy dump`).
//! - [`store`]: the Services and EndpointSlices fed by the watches; [`state`]: the sync gate,
//!   the next transaction (`state/full.rs`: the full sync, streamed);
//!   [`fragments`]: what each Service adds to the ruleset, what is kept of what was applied
//!   (packed counts and owners), and the incremental diff of fragments.
//! - [`trace`]: where a packet would go, following the same chains the kernel would.
//!
//! - [`lower`]: the ruleset as nf_tables netlink messages (pure); `lower_dnat` the shared
//!   endpoint maps (nft's `typeof` user data) and the hairpin lookup.
//! - [`source`]: Services and EndpointSlices as events: the standalone `services/` folder.
//! - [`backend`]: the one seam to the kernel: `Backend::sync(state, node, full)`, the UDP
//!   conntrack flush of removed backends included; `proxy.mode` picks one at start.
//!   `backend/nftables.rs`: the state's next sync (incremental or streamed full) handed to
//!   a [`apply::Writer`], and the commit recorded.
//! - [`apply`]: the nftables backend's kernel I/O: a transaction as one atomic netlink batch.
//! - [`iptables`], [`iptables_text`] (pure) and [`iptables_apply`]: the fallback for kernels
//!   without nf_tables: the same Services, rendered from the state's store, as
//!   `iptables-restore` input in kube-proxy's iptables shape, written by
//!   `iptables-restore --noflush` children.
//! - [`run`]: the loop on the agent's thread: sources in, backend syncs out, periodic resync;
//!   it does not know which backend it drives.
//! - [`convert`] (pure): API objects (v1 and v1beta1 EndpointSlices, core/v1 Endpoints) as the
//!   proxy's events; [`api`]: Services and EndpointSlices listed and watched from the API server.
//!
//! Everything but `api`, `apply`, `backend` (its choice probes the kernel; its syncs await
//! writers), `iptables_apply`, `run` and `source`'s folder scan is pure: no sockets, no
//! files, no clock.

pub mod api;
pub mod apply;
pub mod backend;
pub mod build;
pub mod convert;
pub mod fragments;
pub mod iptables;
pub mod iptables_apply;
pub mod iptables_text;
pub mod lower;
mod lower_dnat;
pub mod model;
pub mod nft_text;
pub mod ruleset;
pub mod run;
pub mod source;
pub mod state;
pub mod store;
pub mod trace;

#[cfg(test)]
mod tests;

use serde_json::Value;

/// What `nanolet proxy dump` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// The nftables ruleset as `nft -f` text.
    Nft,
    /// The iptables fallback's rules as `iptables-restore` input per family.
    Iptables,
}

/// `nanolet proxy dump`: the desired rules for these objects in `format`, and one line per
/// object that was skipped (invalid, or partly unusable), naming it.
pub fn dump(
    services: &[Value],
    slices: &[Value],
    node: &model::NodeConfig,
    format: DumpFormat,
) -> (String, Vec<String>) {
    let (services, slices, mut problems) = match decode(services, slices, node) {
        Ok(decoded) => decoded,
        Err(e) => return (String::new(), vec![e]),
    };
    let text = match format {
        DumpFormat::Nft => {
            let built = build::build(&services, &slices, node);
            problems.extend(built.problems.iter().map(ToString::to_string));
            nft_text::render(&built.ruleset)
        }
        DumpFormat::Iptables => {
            let services: Vec<&model::Service> = services.iter().collect();
            let slices: Vec<&model::EndpointSlice> = slices.iter().collect();
            let rendered = iptables::render(&services, &slices, node);
            problems.extend(rendered.problems.iter().map(ToString::to_string));
            iptables_text::render_text(&rendered)
        }
    };
    (text, problems)
}

/// The valid objects, and one line per invalid one; the node config's error when it is invalid.
type Decoded = (Vec<model::Service>, Vec<model::EndpointSlice>, Vec<String>);

fn decode(
    services: &[Value],
    slices: &[Value],
    node: &model::NodeConfig,
) -> Result<Decoded, String> {
    node.validate().map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let services: Vec<model::Service> = services
        .iter()
        .filter_map(|v| {
            model::Service::from_json(v)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
                .flatten()
        })
        .collect();
    let slices: Vec<model::EndpointSlice> = slices
        .iter()
        .filter_map(|v| {
            model::EndpointSlice::from_json(v)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
                .flatten()
        })
        .collect();
    Ok((services, slices, problems))
}
