//! rtnetlink (`linux/rtnetlink.h`): the link, address and route requests nanolet makes.
//!
//! Links: bring one up (`RTM_NEWLINK` with `IFF_UP` in `ifi_change`), create a bridge or a veth
//! pair whose peer lands in another network namespace (`IFLA_LINKINFO` → `VETH_INFO_PEER` with
//! `IFLA_NET_NS_FD`), look one up by name, delete one. Addresses (`RTM_NEWADDR`, IPv4) and
//! routes (`RTM_NEWROUTE`, the default route of a pod). A link request is a `nlmsghdr` followed
//! by a 16-byte `ifinfomsg` (native endian) and attributes; an address request has an 8-byte
//! `ifaddrmsg`, a route request a 12-byte `rtmsg`.
//!
//! Every function takes the [`Socket`] to use: a socket is bound to the network namespace it was
//! opened in, which is how the sandbox child talks to the host's namespace and the pod's at once.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{
    Builder, Family, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, Socket, attrs, messages,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_NEWROUTE: u16 = 24;
pub const IFF_UP: u32 = 0x1;

// linux/if_link.h
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
// linux/veth.h
pub const VETH_INFO_PEER: u16 = 1;
// linux/if_addr.h
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_BROADCAST: u16 = 4;
// linux/rtnetlink.h
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RT_TABLE_MAIN: u8 = 254;
pub const RTPROT_BOOT: u8 = 3;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RTN_UNICAST: u8 = 1;
const AF_INET: u8 = 2;

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

/// Sends one request and collects the kernel's answers up to its acknowledgement.
fn query(sock: &mut Socket, b: Builder, seq: u32) -> io::Result<Vec<(u16, Vec<u8>)>> {
    sock.send(&b.finish())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = sock.recv(&mut buf)?;
        for msg in messages(&buf[..n]) {
            let msg = msg?;
            match msg.kind {
                NLMSG_ERROR if msg.error_seq().unwrap_or(msg.seq) == seq => {
                    return match msg.error_code() {
                        Some(0) | None => Ok(out),
                        Some(code) => Err(io::Error::from_raw_os_error(-code)),
                    };
                }
                NLMSG_DONE => return Ok(out),
                kind if msg.seq == seq => out.push((kind, msg.payload.to_vec())),
                _ => {}
            }
        }
    }
}

/// Sends one request that only wants an acknowledgement.
fn ack(sock: &mut Socket, b: Builder, seq: u32) -> io::Result<()> {
    sock.request(&b.finish(), &[seq]).map_err(keep_errno)
}

/// A refused single request as the kernel's errno, so callers can match on it (`ENODEV`: no
/// such link, `EEXIST`: a leftover veth); the `From` conversion keeps only its text.
fn keep_errno(e: super::RequestError) -> io::Error {
    match e.error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => e.into(),
    }
}

/// The index of link `name`, or `None` if there is no such link.
pub fn link_index(sock: &mut Socket, name: &str) -> io::Result<Option<i32>> {
    let seq = sock.next_seq();
    let mut b = Builder::new();
    b.begin(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .raw(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name);
    match query(sock, b, seq) {
        Ok(answers) => Ok(answers
            .iter()
            .find(|(kind, p)| *kind == RTM_NEWLINK && p.len() >= 16)
            .map(|(_, p)| i32::from_ne_bytes([p[4], p[5], p[6], p[7]]))),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

const ENODEV: i32 = 19;

/// The `IFLA_LINKINFO` kind (`"bridge"`, `"veth"`) of link `name`, if it exists.
pub fn link_kind(sock: &mut Socket, name: &str) -> io::Result<Option<String>> {
    let seq = sock.next_seq();
    let mut b = Builder::new();
    b.begin(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .raw(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name);
    let answers = match query(sock, b, seq) {
        Ok(a) => a,
        Err(e) if e.raw_os_error() == Some(ENODEV) => return Ok(None),
        Err(e) => return Err(e),
    };
    for (kind, p) in answers {
        if kind != RTM_NEWLINK || p.len() < 16 {
            continue;
        }
        for (t, info) in attrs(&p[16..]) {
            if t != IFLA_LINKINFO {
                continue;
            }
            for (it, v) in attrs(info) {
                if it == IFLA_INFO_KIND {
                    let v = v.split(|b| *b == 0).next().unwrap_or(&[]);
                    return Ok(Some(String::from_utf8_lossy(v).into_owned()));
                }
            }
        }
        return Ok(Some(String::new()));
    }
    Ok(None)
}

/// Builds the request that creates bridge `name`, up (or updates it if it exists).
pub fn bridge_request(name: &str, seq: u32) -> Builder {
    let mut b = Builder::new();
    b.begin(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, seq)
        .raw(&ifinfomsg(0, IFF_UP, IFF_UP))
        .attr_str(IFLA_IFNAME, name)
        .nest_begin(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "bridge")
        .nest_end();
    b
}

/// Creates bridge `name` (up) unless it exists; returns its index.
pub fn ensure_bridge(sock: &mut Socket, name: &str) -> io::Result<i32> {
    match link_kind(sock, name)? {
        Some(kind) if kind == "bridge" => {}
        Some(kind) => {
            return Err(io::Error::other(format!(
                "link {name:?} exists and is not a bridge (kind {kind:?})"
            )));
        }
        None => {}
    }
    let seq = sock.next_seq();
    ack(sock, bridge_request(name, seq), seq)?;
    link_index(sock, name)?
        .ok_or_else(|| io::Error::other(format!("bridge {name:?} vanished after creation")))
}

/// A veth pair to create: `host` stays in the socket's namespace (up, enslaved to `master`),
/// `peer` is created in the namespace `peer_netns` refers to.
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    pub master: Option<i32>,
    pub mtu: Option<u32>,
    pub peer_netns: BorrowedFd<'a>,
}

/// Builds the `RTM_NEWLINK` request for a veth pair (fails with `EEXIST` if `host` exists).
pub fn veth_request(v: &Veth, seq: u32) -> Builder {
    let mut b = Builder::new();
    b.begin(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
    .raw(&ifinfomsg(0, IFF_UP, IFF_UP))
    .attr_str(IFLA_IFNAME, v.host);
    if let Some(mtu) = v.mtu {
        b.attr_u32_ne(IFLA_MTU, mtu);
    }
    if let Some(master) = v.master {
        b.attr_u32_ne(IFLA_MASTER, master as u32);
    }
    b.nest_begin(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "veth")
        .nest_begin(IFLA_INFO_DATA)
        .nest_begin(VETH_INFO_PEER)
        .raw(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, v.peer)
        .attr_u32_ne(IFLA_NET_NS_FD, v.peer_netns.as_raw_fd() as u32);
    if let Some(mtu) = v.mtu {
        b.attr_u32_ne(IFLA_MTU, mtu);
    }
    b.nest_end().nest_end().nest_end();
    b
}

/// Creates a veth pair (see [`Veth`]).
pub fn create_veth(sock: &mut Socket, v: &Veth) -> io::Result<()> {
    let seq = sock.next_seq();
    ack(sock, veth_request(v, seq), seq)
}

/// Deletes link `name`; true if it existed. Deleting one end of a veth pair deletes both.
pub fn delete_link(sock: &mut Socket, name: &str) -> io::Result<bool> {
    let seq = sock.next_seq();
    let mut b = Builder::new();
    b.begin(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .raw(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name);
    match ack(sock, b, seq) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `IFF_UP` on link `index` through `sock`.
pub fn link_up(sock: &mut Socket, index: i32) -> io::Result<()> {
    let seq = sock.next_seq();
    sock.request(&link_up_request(index, seq), &[seq])?;
    Ok(())
}

/// Builds the `RTM_NEWADDR` request for `address/prefix` on link `index` (replacing the same
/// address if it is there), with the subnet's broadcast address.
pub fn address_request(index: i32, address: Ipv4Addr, prefix: u8, seq: u32) -> Builder {
    let mut h = [0u8; 8];
    h[0] = AF_INET;
    h[1] = prefix;
    h[3] = RT_SCOPE_UNIVERSE;
    h[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    let host_bits = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
    let broadcast = Ipv4Addr::from(u32::from(address) | host_bits);
    let mut b = Builder::new();
    b.begin(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
    .raw(&h)
    .attr(IFA_LOCAL, &address.octets())
    .attr(IFA_ADDRESS, &address.octets())
    .attr(IFA_BROADCAST, &broadcast.octets());
    b
}

/// Adds `address/prefix` to link `index`.
pub fn add_address(sock: &mut Socket, index: i32, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let seq = sock.next_seq();
    ack(sock, address_request(index, address, prefix, seq), seq)
}

/// Builds the `RTM_NEWROUTE` request for the default route via `gateway` on link `index`.
pub fn default_route_request(index: i32, gateway: Ipv4Addr, seq: u32) -> Builder {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut h = [0u8; 12];
    h[0] = AF_INET;
    h[4] = RT_TABLE_MAIN;
    h[5] = RTPROT_BOOT;
    h[6] = RT_SCOPE_UNIVERSE;
    h[7] = RTN_UNICAST;
    let mut b = Builder::new();
    b.begin(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
    .raw(&h)
    .attr(RTA_GATEWAY, &gateway.octets())
    .attr_u32_ne(RTA_OIF, index as u32);
    b
}

/// Adds (or replaces) the default route via `gateway` on link `index`.
pub fn add_default_route(sock: &mut Socket, index: i32, gateway: Ipv4Addr) -> io::Result<()> {
    let seq = sock.next_seq();
    ack(sock, default_route_request(index, gateway, seq), seq)
}

/// Opens a route socket in the caller's current network namespace.
pub fn open() -> io::Result<Socket> {
    Socket::open(Family::Route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_keeps_the_errno_callers_match_on() {
        let refused = |code| super::super::RequestError {
            seq: Some(3),
            error: io::Error::from_raw_os_error(code),
        };
        // delete_link treats ENODEV as "already gone"; the veth code replaces on EEXIST.
        assert_eq!(keep_errno(refused(ENODEV)).raw_os_error(), Some(ENODEV));
        assert_eq!(keep_errno(refused(17)).raw_os_error(), Some(17));
        let other = super::super::RequestError {
            seq: None,
            error: io::Error::other("short read"),
        };
        assert!(keep_errno(other).to_string().contains("short read"));
    }
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
