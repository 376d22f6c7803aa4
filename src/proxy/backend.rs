//! The proxy's one seam to the kernel: a [`Backend`] brings the kernel to what the
//! [`ProxyState`] wants, and the loop ([`super::run`]) does not know which one it drives.
//! `proxy.mode` picks one at start ([`open`]): nftables over netlink ([`Nftables`], over
//! [`super::apply::Netlink`]), or the iptables fallback ([`super::iptables_apply::Iptables`])
//! for kernels without nf_tables.
//!
//! ```text
//!  run: feed events ─► ProxyState ─► Backend::sync(state, node, full)
//!    Nftables: state.next_sync (incremental, or full streamed) ─► Writer::write ─► committed
//!    Iptables: state.objects ─► iptables::render ─► iptables-restore children
//!    both, once written: the UDP conntrack flows of backends that went away are flushed
//! ```
//!
//! `auto` asks the kernel for the nf_tables ruleset generation (`NFT_MSG_GETGEN`): a kernel
//! without nf_tables refuses it (`EINVAL`: no such nfnetlink subsystem) or has no netfilter
//! netlink at all (`EPROTONOSUPPORT`). The decision ([`choose`]) is pure.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::apply::Netlink;
use super::iptables_apply::Iptables;
use super::model::NodeConfig;
use super::state::ProxyState;
use crate::config::proxy::ProxyMode;
use crate::netlink::nftables::{self as nf_netlink, msg_type};
use crate::netlink::{Builder, NLM_F_ACK, NLM_F_REQUEST};
use crate::sys::reaper::Reaper;

mod nftables;
pub use self::nftables::Nftables;

/// A kernel interface the proxy programs.
// The agent's executor is single-threaded: these futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Writes what changed in `state` since the last sync (everything when `full`), and
    /// flushes the UDP conntrack flows of backends that went away. Returns whether the kernel
    /// now holds the desired rules (false while waiting for the sources, or after a refused
    /// write, which the next sync retries whole). Other tasks may run while the kernel works.
    async fn sync(&mut self, state: &mut ProxyState, node: &NodeConfig, full: bool) -> bool;
}

/// The backend `proxy.mode` chose.
pub enum Chosen {
    Nftables(Nftables<Netlink>),
    Iptables(Iptables),
}

impl Backend for Chosen {
    async fn sync(&mut self, state: &mut ProxyState, node: &NodeConfig, full: bool) -> bool {
        match self {
            Chosen::Nftables(n) => n.sync(state, node, full).await,
            Chosen::Iptables(i) => i.sync(state, node, full).await,
        }
    }
}

/// Flushes the UDP flows of each backend in `before` but not in `now` with `forget`, and logs
/// what it did (a failure is logged, never fatal: the flows time out anyway).
pub(super) fn forget_gone(
    before: &BTreeSet<SocketAddr>,
    now: &BTreeSet<SocketAddr>,
    mut forget: impl FnMut(SocketAddr) -> Result<usize, String>,
) {
    for gone in before.difference(now) {
        match forget(*gone) {
            Ok(0) => {}
            Ok(n) => log::debug!("proxy: flushed {n} UDP flows to {gone}"),
            Err(e) => log::warn!("proxy: flushing UDP flows to {gone}: {e}"),
        }
    }
}

const NFT_MSG_GETGEN: u16 = 16;

/// The backend `mode` picks, given whether the kernel answered for nf_tables (`Err`: why not).
/// For `iptables` under `auto`, the reason to log.
pub fn choose(mode: ProxyMode, nf_tables: Result<(), String>) -> (ProxyMode, Option<String>) {
    match (mode, nf_tables) {
        (ProxyMode::Auto, Ok(())) => (ProxyMode::Nftables, None),
        (ProxyMode::Auto, Err(why)) => (ProxyMode::Iptables, Some(why)),
        (mode, _) => (mode, None),
    }
}

/// Does the kernel answer for nf_tables in this network namespace?
fn nf_tables_answers() -> Result<(), String> {
    let mut sock = nf_netlink::open().map_err(|e| format!("netfilter netlink socket: {e}"))?;
    sock.set_recv_timeout(Duration::from_secs(5))
        .map_err(|e| format!("netfilter netlink socket: {e}"))?;
    let seq = sock.next_seq();
    let mut b = Builder::new();
    // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id 0.
    b.begin(msg_type(NFT_MSG_GETGEN), NLM_F_REQUEST | NLM_F_ACK, seq)
        .raw(&[0, 0, 0, 0]);
    sock.request(&b.finish(), &[seq])
        .map_err(|e| format!("NFT_MSG_GETGEN refused: {}", e.error))
}

/// Opens the backend `mode` asks for (for `auto`: the one the kernel supports). nftables
/// commits run in children of `exe`, reaped by `reaper`.
pub fn open(mode: ProxyMode, exe: PathBuf, reaper: Reaper) -> Result<Chosen, String> {
    let probe = match mode {
        ProxyMode::Auto => nf_tables_answers(),
        _ => Ok(()),
    };
    match choose(mode, probe) {
        (ProxyMode::Iptables, why) => {
            if let Some(why) = why {
                log::info!("proxy: the kernel has no nf_tables ({why}); using iptables");
            }
            Iptables::open().map(Chosen::Iptables)
        }
        _ => Netlink::open(exe, reaper)
            .map(|n| Chosen::Nftables(Nftables::new(n)))
            .map_err(|e| format!("cannot open a netfilter netlink socket: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_iptables_only_without_nf_tables_and_says_why() {
        assert_eq!(choose(ProxyMode::Auto, Ok(())), (ProxyMode::Nftables, None));
        let (mode, why) = choose(
            ProxyMode::Auto,
            Err("NFT_MSG_GETGEN refused: EINVAL".into()),
        );
        assert_eq!(mode, ProxyMode::Iptables);
        assert!(why.unwrap().contains("EINVAL"));
        // An explicit mode is what it says, whatever the kernel.
        assert_eq!(
            choose(ProxyMode::Iptables, Ok(())),
            (ProxyMode::Iptables, None)
        );
        assert_eq!(
            choose(ProxyMode::Nftables, Err("x".into())),
            (ProxyMode::Nftables, None)
        );
    }
}
