//! Which kernel interface the proxy programs (`proxy.mode`), chosen once at start: nftables
//! over netlink ([`super::apply::Netlink`]), or the iptables fallback
//! ([`super::iptables_apply::Iptables`]) for kernels without nf_tables.
//!
//! `auto` asks the kernel for the nf_tables ruleset generation (`NFT_MSG_GETGEN`): a kernel
//! without nf_tables refuses it (`EINVAL`: no such nfnetlink subsystem) or has no netfilter
//! netlink at all (`EPROTONOSUPPORT`). The decision ([`choose`]) is pure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::apply::{Netlink, Ops, Writer};
use super::iptables_apply::Iptables;
use crate::config::proxy::ProxyMode;
use crate::netlink::nftables::{self, msg_type};
use crate::netlink::{Builder, NLM_F_ACK, NLM_F_REQUEST};
use crate::sys::reaper::Reaper;

const NFT_MSG_GETGEN: u16 = 16;

/// The writer the proxy uses.
pub enum Backend {
    Nftables(Netlink),
    Iptables(Iptables),
}

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
    let mut sock = nftables::open().map_err(|e| format!("netfilter netlink socket: {e}"))?;
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

impl Backend {
    /// Opens the backend `mode` asks for (for `auto`: the one the kernel supports). nftables
    /// commits run in children of `exe`, reaped by `reaper`.
    pub fn open(mode: ProxyMode, exe: PathBuf, reaper: Reaper) -> Result<Backend, String> {
        let probe = match mode {
            ProxyMode::Auto => nf_tables_answers(),
            _ => Ok(()),
        };
        match choose(mode, probe) {
            (ProxyMode::Iptables, why) => {
                if let Some(why) = why {
                    log::info!("proxy: the kernel has no nf_tables ({why}); using iptables");
                }
                Iptables::open().map(Backend::Iptables)
            }
            _ => Netlink::open(exe, reaper)
                .map(Backend::Nftables)
                .map_err(|e| format!("cannot open a netfilter netlink socket: {e}")),
        }
    }
}

impl Writer for Backend {
    async fn write(&mut self, ops: Ops<'_>) -> Result<(), String> {
        match self {
            Backend::Nftables(n) => n.write(ops).await,
            // The proxy hands the iptables backend its store instead (see `iptables`).
            Backend::Iptables(_) => Err("the iptables backend takes no nftables operations".into()),
        }
    }

    fn forget_udp_flows(&mut self, backend: SocketAddr) -> Result<usize, String> {
        super::iptables_apply::forget_udp_flows(backend)
    }

    fn iptables(&mut self) -> Option<&mut Iptables> {
        match self {
            Backend::Iptables(i) => Some(i),
            Backend::Nftables(_) => None,
        }
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
