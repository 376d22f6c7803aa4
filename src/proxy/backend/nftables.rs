//! The nftables backend: the state's next sync (incremental, or the full sync streamed one
//! Service at a time) handed to a [`Writer`], and what was committed recorded in the state.
//!
//! ```text
//!  full? forget what was applied ─► ProxyState::next_sync ─┬─ None: waiting for the sources
//!                                                          ├─ Incremental(tx) ─► write(Listed(ops))
//!                                                          └─ Full(stream) ───► write(Streamed)
//!  written ─► committed(tx), then flush the UDP flows of backends no longer in the state
//!  refused ─► forget_applied: the next sync replaces the tables whole
//! ```
//!
//! Neither the desired ruleset nor a full sync's operations are held whole here: the writer
//! lowers them as it takes them.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::super::apply::{Ops, Writer};
use super::super::model::NodeConfig;
use super::super::state::{NextSync, ProxyState};
use super::{Backend, forget_gone};

/// The nftables backend over the writer `W` (netlink in the agent, a recorder in tests).
pub struct Nftables<W: Writer> {
    writer: W,
    /// Failed writes in a row (for the log: say it once).
    failures: u32,
    /// The UDP backends of the ruleset the kernel holds: when one goes, its flows are flushed.
    udp_backends: BTreeSet<SocketAddr>,
}

impl<W: Writer> Nftables<W> {
    pub fn new(writer: W) -> Nftables<W> {
        Nftables {
            writer,
            failures: 0,
            udp_backends: BTreeSet::new(),
        }
    }
}

impl<W: Writer> Backend for Nftables<W> {
    async fn sync(&mut self, state: &mut ProxyState, node: &NodeConfig, full: bool) -> bool {
        if full {
            state.forget_applied();
        }
        // A full sync's operations are made one Service at a time as the writer encodes
        // them: neither the desired ruleset nor its operations are ever held whole.
        let (written, tx) = {
            let Some(next) = state.next_sync(node) else {
                log::debug!("proxy: waiting for Services and EndpointSlices to sync");
                return false;
            };
            match next {
                NextSync::Incremental(mut tx) => {
                    for p in &tx.problems {
                        log::warn!("proxy: {p}");
                    }
                    if tx.ops.is_empty() {
                        return true;
                    }
                    let ops = std::mem::take(&mut tx.ops);
                    log::debug!("proxy: writing {} operations", ops.len());
                    (self.writer.write(Ops::Listed(ops)).await, Some(tx))
                }
                NextSync::Full(mut full) => {
                    log::debug!("proxy: replacing the tables (full sync)");
                    let written = self.writer.write(Ops::Streamed(&mut full)).await;
                    // Only a written full sync is finished (its counts recorded).
                    let tx = written.is_ok().then(|| full.finish());
                    for p in tx.iter().flat_map(|tx| &tx.problems) {
                        log::warn!("proxy: {p}");
                    }
                    (written, tx)
                }
            }
        };
        match (written, tx) {
            (Ok(()), Some(tx)) => {
                log::debug!("proxy: committed");
                self.failures = 0;
                state.committed(tx);
                let now = state.udp_backends();
                let writer = &mut self.writer;
                forget_gone(&self.udp_backends, &now, |gone| {
                    writer.forget_udp_flows(gone)
                });
                self.udp_backends = now;
                true
            }
            (Ok(()), None) => false,
            (Err(e), _) => {
                if self.failures == 0 {
                    log::warn!("proxy: writing the ruleset failed: {e}; retrying with a full sync");
                }
                self.failures += 1;
                state.forget_applied();
                false
            }
        }
    }
}
