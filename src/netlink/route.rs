//! rtnetlink (`linux/rtnetlink.h`): the link, address and route requests nanolet makes.
//!
//! Today: bring a link up (`RTM_NEWLINK` with `IFF_UP` in `ifi_change`), used on the loopback
//! device of a new pod network namespace. A request is a `nlmsghdr` followed by a 16-byte
//! `ifinfomsg` (native endian) and attributes.

use std::io;

use super::{Builder, Family, NLM_F_ACK, NLM_F_REQUEST, Socket};

pub const RTM_NEWLINK: u16 = 16;
pub const IFF_UP: u32 = 0x1;

/// `struct ifinfomsg`: family, pad, type, index, flags, change.
pub fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    // ifi_family AF_UNSPEC (0), pad, ifi_type 0.
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// Builds an `RTM_NEWLINK` request that sets `IFF_UP` on link `index`.
pub fn link_up_request(index: i32, seq: u32) -> Vec<u8> {
    let mut b = Builder::new();
    b.begin(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .raw(&ifinfomsg(index, IFF_UP, IFF_UP));
    b.finish()
}

/// Brings link `index` up in the current network namespace.
pub fn set_link_up(index: i32) -> io::Result<()> {
    let mut sock = Socket::open(Family::Route)?;
    let seq = sock.next_seq();
    sock.request(&link_up_request(index, seq), &[seq])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::messages;

    #[test]
    fn link_up_request_has_the_uapi_layout() {
        let m = link_up_request(1, 7);
        assert_eq!(m.len(), 32);
        let msg = messages(&m).next().unwrap().unwrap();
        assert_eq!(msg.kind, RTM_NEWLINK);
        assert_eq!(msg.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msg.seq, 7);
        let p = msg.payload;
        assert_eq!(i32::from_ne_bytes([p[4], p[5], p[6], p[7]]), 1);
        assert_eq!(u32::from_ne_bytes([p[8], p[9], p[10], p[11]]), IFF_UP);
        assert_eq!(u32::from_ne_bytes([p[12], p[13], p[14], p[15]]), IFF_UP);
    }
}
