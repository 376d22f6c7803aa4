//! The rtnetlink requests nanolet makes itself (see `linux/rtnetlink.h`).
//!
//! Today only one: bring a link up (`RTM_NEWLINK` with `IFF_UP` in `ifi_change`), used on the
//! loopback device of a new pod network namespace. The messages are built by hand: a 16-byte
//! `nlmsghdr` followed by a 16-byte `ifinfomsg`, native endian.

use std::io;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const RTM_NEWLINK: u16 = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const IFF_UP: u32 = 0x1;

/// Builds an `RTM_NEWLINK` request that sets `IFF_UP` on link `index`.
pub fn link_up_request(index: i32, seq: u32) -> [u8; 32] {
    let mut msg = [0u8; 32];
    msg[0..4].copy_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes()); // nlmsg_flags
    msg[8..12].copy_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
    // nlmsg_pid 0: the kernel. ifinfomsg: family AF_UNSPEC, pad, type 0.
    msg[20..24].copy_from_slice(&index.to_ne_bytes()); // ifi_index
    msg[24..28].copy_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg[28..32].copy_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    msg
}

/// Brings link `index` up in the current network namespace.
pub fn set_link_up(index: i32) -> io::Result<()> {
    let sock = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    rustix::net::bind(&sock, &SocketAddrNetlink::new(0, 0))?;
    let req = link_up_request(index, 1);
    rustix::net::sendto(
        &sock,
        &req,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = [0u8; 256];
    let (n, _) = rustix::net::recv(&sock, &mut buf, RecvFlags::empty())?;
    parse_ack(&buf[..n])
}

/// Reads the kernel's `NLMSG_ERROR` answer: error 0 is the acknowledgement.
fn parse_ack(buf: &[u8]) -> io::Result<()> {
    let field = |at: usize| buf.get(at..at + 4).map(|b| [b[0], b[1], b[2], b[3]]);
    let (Some(kind), Some(errno)) = (buf.get(4..6), field(16)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink answer",
        ));
    };
    if u16::from_ne_bytes([kind[0], kind[1]]) != NLMSG_ERROR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected netlink answer",
        ));
    }
    match i32::from_ne_bytes(errno) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_up_request_has_the_uapi_layout() {
        let m = link_up_request(1, 7);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 32);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWLINK);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes([m[8], m[9], m[10], m[11]]), 7);
        assert_eq!(i32::from_ne_bytes([m[20], m[21], m[22], m[23]]), 1);
        assert_eq!(u32::from_ne_bytes([m[24], m[25], m[26], m[27]]), IFF_UP);
    }

    #[test]
    fn ack_errors_are_reported_as_os_errors() {
        let mut ack = [0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(parse_ack(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(parse_ack(&ack).unwrap_err().raw_os_error(), Some(1));
        assert!(parse_ack(&ack[..8]).is_err());
    }
}
