//! The Service proxy (kube-proxy's job): Services and EndpointSlices become one nftables
//! table per IP family, owned by nanolet.
//!
//! ```text
//!  JSON ─► model (validated Service, EndpointSlice, NodeConfig)
//!            └► build ─► ruleset (typed tables, chains, maps, sets) ─┬► nft_text (dump, goldens)
//!                                                                    ├► trace (packet tracer)
//!                                                      ruleset::diff ┴► (netlink batch: to do)
//! ```
//!
//! - [`model`]: the inputs, parsed and validated at the edge; errors name the object and field.
//! - [`build`]: the desired ruleset, with kube-proxy's nftables-mode semantics.
//! - [`ruleset`]: the ruleset as a typed value, and the diff between two of them.
//! - [`nft_text`]: the ruleset as `nft -f` text (`nanolet proxy dump`).
//! - [`trace`]: where a packet would go, following the same chains the kernel would.
//!
//! Everything here is pure: no sockets, no files, no clock. Writing to the kernel (one netlink
//! batch per change, nothing until Services and EndpointSlices have both synced) lives elsewhere.

pub mod build;
pub mod model;
pub mod nft_text;
pub mod ruleset;
pub mod trace;

#[cfg(test)]
mod tests;
