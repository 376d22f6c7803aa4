//! Writes transactions to the kernel: the proxy's one file of netlink I/O.
//!
//! A [`Writer`] takes the operations of one transaction ([`super::ruleset::Op`]) and
//! commits them atomically or not at all. [`Netlink`] lowers them into one nf_tables batch
//! ([`super::lower`]) and sends it over a `NETLINK_NETFILTER` socket; tests inject their own
//! writer to record transactions.
//!
//! Blocking: the kernel answers a batch at once (10 000 Services take tens of milliseconds),
//! so the write runs inline on the agent's thread.

use std::io;
use std::time::Duration;

use crate::netlink::Socket;
use crate::netlink::nftables::{self, Batch};

use super::lower::lower_ops;
use super::ruleset::Op;

/// Something that commits a transaction as a whole.
pub trait Writer {
    fn write(&mut self, ops: &[Op]) -> Result<(), String>;

    /// Deletes the UDP conntrack entries translated to `backend`, a backend that went away.
    /// Returns how many there were.
    fn forget_udp_flows(&mut self, backend: std::net::SocketAddr) -> Result<usize, String>;

    /// The iptables fallback renders the proxy's store itself instead of taking operations.
    fn iptables(&mut self) -> Option<&mut super::iptables_apply::Iptables> {
        None
    }
}

/// The kernel's nf_tables, over netlink, in the caller's network namespace.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    next_seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let sock = nftables::open()?;
        // A batch is answered at once; a minute without an answer means a lost one.
        sock.set_recv_timeout(Duration::from_secs(60))?;
        Ok(Netlink { sock, next_seq: 1 })
    }
}

impl Writer for Netlink {
    fn write(&mut self, ops: &[Op]) -> Result<(), String> {
        let mut batch = Batch::new(self.next_seq);
        lower_ops(ops, &mut batch);
        self.next_seq = self.next_seq.wrapping_add(batch.len() + 1);
        nftables::apply(&mut self.sock, batch).map_err(|e| e.to_string())
    }

    fn forget_udp_flows(&mut self, backend: std::net::SocketAddr) -> Result<usize, String> {
        crate::netlink::conntrack::delete_udp_to(backend).map_err(|e| format!("conntrack: {e}"))
    }
}
