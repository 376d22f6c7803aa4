//! Netlink: the kernel's message protocol, spoken by nanolet itself (no `ip`, `nft` or library).
//!
//! This module knows bytes and sockets, not Kubernetes: it frames messages (`nlmsghdr`, a
//! family header, then attributes), parses the kernel's answers, and runs the request/ack
//! exchange. The families live beside it, one file each:
//!
//! - [`route`]: rtnetlink (`linux/rtnetlink.h`): links, addresses, routes.
//! - [`conntrack`]: ctnetlink: delete the UDP entries of a backend that went away.
//! - [`nftables`]: nf_tables over nfnetlink: tables, chains, sets, rules, in atomic batches.
//!
//! Layouts follow `linux/netlink.h`: every message and attribute is padded to 4 bytes; header
//! fields are native endian; attribute payloads are whatever the family says (nf_tables uses
//! big endian numbers, rtnetlink native).

pub mod conntrack;
pub mod nftables;
pub mod route;

use std::io;

use rustix::fd::OwnedFd;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

/// `nlmsghdr` size.
pub const HEADER_LEN: usize = 16;
/// `nlattr` header size.
pub const ATTR_HEADER_LEN: usize = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLMSG_NOOP: u16 = 0x1;
pub const NLMSG_ERROR: u16 = 0x2;
pub const NLMSG_DONE: u16 = 0x3;

/// Set on an attribute type that holds nested attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | 0x4000);

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Writes one or more netlink messages into one buffer (a batch when there are several).
///
/// `begin` opens a message, `end` closes it; attributes go in between, nests inside nests.
/// Lengths are patched when a message or nest ends, so callers never count bytes.
#[derive(Debug, Default)]
pub struct Builder {
    buf: Vec<u8>,
    message: Option<usize>,
    nests: Vec<usize>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Opens a message of type `kind`. Ends the previous one if it is still open.
    pub fn begin(&mut self, kind: u16, flags: u16, seq: u32) -> &mut Builder {
        if self.message.is_some() {
            self.end();
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched by end()
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel answers us
        self.message = Some(start);
        self
    }

    /// Appends raw bytes (a family's fixed header such as `ifinfomsg` or `nfgenmsg`), padded.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Builder {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// Appends attribute `kind` with `payload`.
    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Builder {
        let len = (ATTR_HEADER_LEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A NUL-terminated string attribute (`NLA_STRING`/`NLA_NUL_STRING`).
    pub fn attr_str(&mut self, kind: u16, s: &str) -> &mut Builder {
        let mut payload = Vec::with_capacity(s.len() + 1);
        payload.extend_from_slice(s.as_bytes());
        payload.push(0);
        self.attr(kind, &payload)
    }

    pub fn attr_u8(&mut self, kind: u16, v: u8) -> &mut Builder {
        self.attr(kind, &[v])
    }

    pub fn attr_u16_ne(&mut self, kind: u16, v: u16) -> &mut Builder {
        self.attr(kind, &v.to_ne_bytes())
    }

    pub fn attr_u32_ne(&mut self, kind: u16, v: u32) -> &mut Builder {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A big-endian (network order) u32, as nf_tables encodes its numbers.
    pub fn attr_u32_be(&mut self, kind: u16, v: u32) -> &mut Builder {
        self.attr(kind, &v.to_be_bytes())
    }

    /// A big-endian u64.
    pub fn attr_u64_be(&mut self, kind: u16, v: u64) -> &mut Builder {
        self.attr(kind, &v.to_be_bytes())
    }

    /// Opens a nested attribute; close it with [`Builder::nest_end`].
    pub fn nest_begin(&mut self, kind: u16) -> &mut Builder {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost open nest.
    pub fn nest_end(&mut self) -> &mut Builder {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// Closes the open message (and any nest left open in it).
    pub fn end(&mut self) -> &mut Builder {
        while !self.nests.is_empty() {
            self.nest_end();
        }
        if let Some(start) = self.message.take() {
            let len = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// Closes the open message and returns every byte so far; [`Builder::clear`] then starts
    /// an empty buffer (a long batch can be handed on in parts).
    pub fn finished_bytes(&mut self) -> &[u8] {
        self.end();
        &self.buf
    }

    /// Drops the bytes so far, keeping the buffer's memory for the next ones.
    pub fn clear(&mut self) {
        self.end();
        self.buf.clear();
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The finished bytes (closing what is still open).
    pub fn finish(mut self) -> Vec<u8> {
        self.end();
        self.buf
    }

    fn pad(&mut self) {
        let n = align(self.buf.len());
        self.buf.resize(n, 0);
    }
}

/// One message read from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the 16-byte header (family header, then attributes).
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// For `NLMSG_ERROR`: the (negative) errno, 0 for an acknowledgement.
    pub fn error_code(&self) -> Option<i32> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        let b = self.payload.get(0..4)?;
        Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// For `NLMSG_ERROR`: the sequence number of the request it answers.
    pub fn error_seq(&self) -> Option<u32> {
        // struct nlmsgerr { int error; struct nlmsghdr msg; } — msg.nlmsg_seq at offset 4+8.
        let b = self.payload.get(12..16)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Splits a buffer into messages; stops (with an error) at the first malformed one.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = io::Result<Message<'_>>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let Some(h) = buf.get(..HEADER_LEN) else {
            buf = &[];
            return Some(Err(invalid("truncated netlink header")));
        };
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < HEADER_LEN || len > buf.len() {
            buf = &[];
            return Some(Err(invalid("netlink message length out of range")));
        }
        let msg = Message {
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            pid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
            payload: &buf[HEADER_LEN..len],
        };
        buf = buf.get(align(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// Iterates the attributes in `buf` as `(type, payload)`, flags masked off. Stops at the first
/// malformed attribute.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let h = buf.get(..ATTR_HEADER_LEN)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let kind = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        if len < ATTR_HEADER_LEN || len > buf.len() {
            buf = &[];
            return None;
        }
        let payload = &buf[ATTR_HEADER_LEN..len];
        buf = buf.get(align(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The netlink families nanolet opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Route,
    Netfilter,
}

/// A netlink socket bound to the kernel, with its own sequence numbers. Blocking: the kernel
/// answers these requests at once, so they are made inline even on the agent's thread.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens a socket of `family` in the caller's network namespace.
    pub fn open(family: Family) -> io::Result<Socket> {
        // NETLINK_ROUTE is protocol 0, which rustix spells as `None`.
        let protocol = match family {
            Family::Route => None,
            Family::Netfilter => Some(netlink::NETFILTER),
        };
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, protocol)?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        Ok(Socket { fd, seq: 0 })
    }

    /// A fresh sequence number for the next message.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sizes the send buffer for datagrams of up to `bytes` (`force`: `SO_SNDBUFFORCE`,
    /// which lets root exceed `net.core.wmem_max`).
    pub fn set_send_buffer(&self, bytes: usize, force: bool) -> io::Result<()> {
        use rustix::net::sockopt;
        if force {
            sockopt::set_socket_send_buffer_size_force(&self.fd, bytes)?;
        } else {
            sockopt::set_socket_send_buffer_size(&self.fd, bytes)?;
        }
        Ok(())
    }

    /// Bounds how long a receive waits, so that a lost answer cannot hang the caller.
    pub fn set_recv_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        rustix::net::sockopt::set_socket_timeout(
            &self.fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )?;
        Ok(())
    }

    /// Sends a buffer of messages as one datagram.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let n = rustix::net::sendto(
            &self.fd,
            bytes,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        if n != bytes.len() {
            return Err(invalid("short netlink send"));
        }
        Ok(())
    }

    /// Receives one datagram (one or more messages) into `buf`; returns its length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, _) = rustix::net::recv(&self.fd, buf, RecvFlags::empty())?;
        Ok(n)
    }

    /// Sends `bytes` and waits for the acknowledgement of each sequence number in `acks`
    /// (every message sent with `NLM_F_ACK`). The first error the kernel reports is returned,
    /// with the sequence number of the message it refused.
    pub fn request(&self, bytes: &[u8], acks: &[u32]) -> Result<(), RequestError> {
        self.send(bytes).map_err(RequestError::io)?;
        let mut pending: Vec<u32> = acks.to_vec();
        let mut first_error: Option<RequestError> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = self.recv(&mut buf).map_err(RequestError::io)?;
            for msg in messages(&buf[..n]) {
                let msg = msg.map_err(RequestError::io)?;
                let Some(code) = msg.error_code() else {
                    continue;
                };
                let seq = msg.error_seq().unwrap_or(msg.seq);
                pending.retain(|s| *s != seq);
                if code != 0 && first_error.is_none() {
                    first_error = Some(RequestError {
                        seq: Some(seq),
                        error: io::Error::from_raw_os_error(-code),
                    });
                    // After an error the kernel aborts a netfilter batch: no more acks come.
                    pending.clear();
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends a dump request and collects every answer message (payload bytes with their type)
    /// until `NLMSG_DONE`.
    pub fn dump(&self, bytes: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.send(bytes)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for msg in messages(&buf[..n]) {
                let msg = msg?;
                match msg.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => match msg.error_code() {
                        Some(0) | None => {}
                        Some(code) => return Err(io::Error::from_raw_os_error(-code)),
                    },
                    NLMSG_NOOP => {}
                    kind => out.push((kind, msg.payload.to_vec())),
                }
            }
        }
    }
}

/// A refused netlink request: the errno, and which message (by sequence number) it was.
#[derive(Debug)]
pub struct RequestError {
    pub seq: Option<u32>,
    pub error: io::Error,
}

impl RequestError {
    fn io(error: io::Error) -> RequestError {
        RequestError { seq: None, error }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "netlink message {seq} refused: {}", self.error),
            None => write!(f, "netlink: {}", self.error),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<RequestError> for io::Error {
    fn from(e: RequestError) -> io::Error {
        io::Error::new(e.error.kind(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_pads_attributes_and_patches_lengths() {
        let mut b = Builder::new();
        b.begin(16, NLM_F_REQUEST | NLM_F_ACK, 7).raw(&[1, 2, 3]);
        b.attr_str(3, "eth0");
        b.nest_begin(18).attr_u32_ne(1, 42).nest_end();
        let bytes = b.finish();
        assert_eq!(bytes.len() % 4, 0);
        let msgs: Vec<_> = messages(&bytes).collect::<io::Result<_>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let m = msgs[0];
        assert_eq!((m.kind, m.flags, m.seq), (16, NLM_F_REQUEST | NLM_F_ACK, 7));
        assert_eq!(&m.payload[..3], &[1, 2, 3]);
        let found: Vec<_> = attrs(&m.payload[4..]).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], (3, &b"eth0\0"[..]));
        assert_eq!(found[1].0, 18, "the nested flag is masked off");
        let inner: Vec<_> = attrs(found[1].1).collect();
        assert_eq!(inner, vec![(1, &42u32.to_ne_bytes()[..])]);
    }

    #[test]
    fn a_batch_holds_several_messages() {
        let mut b = Builder::new();
        b.begin(1, 0, 1).attr_u8(1, 9);
        b.begin(2, 0, 2).attr_u32_be(1, 0x0a00_0001);
        let bytes = b.finish();
        let kinds: Vec<_> = messages(&bytes).map(|m| m.unwrap().kind).collect();
        assert_eq!(kinds, vec![1, 2]);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        assert!(messages(&[1, 2, 3]).next().unwrap().is_err());
        let mut bad = vec![0u8; 16];
        bad[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(messages(&bad).next().unwrap().is_err());
        assert_eq!(attrs(&[255, 255, 1, 0]).count(), 0);
    }

    #[test]
    fn error_messages_carry_errno_and_sequence() {
        let mut b = Builder::new();
        b.begin(NLMSG_ERROR, 0, 0)
            .raw(&(-17i32).to_ne_bytes())
            .raw(&[0u8; 8])
            .raw(&5u32.to_ne_bytes())
            .raw(&[0u8; 4]);
        let bytes = b.finish();
        let m = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(m.error_code(), Some(-17));
        assert_eq!(m.error_seq(), Some(5));
    }
}
