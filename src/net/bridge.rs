//! The built-in bridge network, all over rtnetlink (no `ip`, no CNI):
//!
//! ```text
//!   host netns                                  pod netns (<runDir>/pods/<uid>/ns/net)
//!   nanolet0 10.88.0.1/24 ──┬── nl<hash> ═════ veth ═════ eth0 10.88.0.7/24
//!   (bridge, up)            └── nl<hash> ═══ …            default via 10.88.0.1
//! ```
//!
//! The agent makes the bridge and its gateway address at start ([`setup_host`]). Each pod's veth
//! pair is made by the short-lived `internal-sandbox` child ([`plumb_in_child`]): it opens a
//! route socket in the host's namespace *before* it unshares a new one, then creates the veth
//! pair through that socket with the peer placed in the new namespace (`IFLA_NET_NS_FD`), and
//! configures `eth0` through a second socket opened inside. The agent's thread never enters a
//! pod's namespace. Removing a pod deletes the host end ([`delete_veth`]), which deletes both.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ipam::Subnet;
use crate::netlink::route;

/// What the sandbox child needs to plumb a pod into the bridge; travels as one argument,
/// `<bridge>,<veth>,<address>/<prefix>,<gateway>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    pub bridge: String,
    pub veth: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl fmt::Display for PodLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{}/{},{}",
            self.bridge, self.veth, self.address, self.prefix, self.gateway
        )
    }
}

impl std::str::FromStr for PodLink {
    type Err = String;

    fn from_str(s: &str) -> Result<PodLink, String> {
        let bad = || format!("{s:?}: want <bridge>,<veth>,<address>/<prefix>,<gateway>");
        let parts: Vec<&str> = s.split(',').collect();
        let [bridge, veth, cidr, gateway] = parts[..] else {
            return Err(bad());
        };
        let (address, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        Ok(PodLink {
            bridge: bridge.to_string(),
            veth: veth.to_string(),
            address: address.parse().map_err(|_| bad())?,
            prefix: prefix.parse().map_err(|_| bad())?,
            gateway: gateway.parse().map_err(|_| bad())?,
        })
    }
}

/// The host end's name for pod `uid`: `nl` and 13 hex digits of a hash of the uid (15
/// characters, the kernel's limit), stable across restarts so a leftover can be found.
pub fn veth_name(uid: &str) -> String {
    let digest = Sha256::digest(uid.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("nl{}", &hex[..13])
}

/// The link the sandbox child makes for pod `uid` at `address`.
pub fn pod_link(bridge: &str, subnet: &Subnet, uid: &str, address: Ipv4Addr) -> PodLink {
    PodLink {
        bridge: bridge.to_string(),
        veth: veth_name(uid),
        address,
        prefix: subnet.prefix,
        gateway: subnet.gateway(),
    }
}

/// Creates the bridge (up) with the gateway address, and turns on IPv4 forwarding.
pub fn setup_host(bridge: &str, subnet: &Subnet) -> io::Result<()> {
    let mut sock = route::open()?;
    let index = route::ensure_bridge(&mut sock, bridge)
        .map_err(|e| io::Error::new(e.kind(), format!("bridge {bridge:?}: {e}")))?;
    route::add_address(&mut sock, index, subnet.gateway(), subnet.prefix).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "bridge {bridge:?}: address {}/{}: {e}",
                subnet.gateway(),
                subnet.prefix
            ),
        )
    })?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .map_err(|e| io::Error::new(e.kind(), format!("enabling ip_forward: {e}")))
}

/// Deletes pod `uid`'s veth pair, if it is there; true if it was.
pub fn delete_veth(uid: &str) -> io::Result<bool> {
    let mut sock = route::open()?;
    route::delete_link(&mut sock, &veth_name(uid))
}

/// The sandbox child with a bridge link: opens the host-side socket, lets
/// [`crate::sys::sandbox::init_in_child`] make the namespaces, then plumbs the veth pair.
pub fn sandbox_child(dir: &Path, hostname: &str, link: &PodLink) -> io::Result<()> {
    // Opened before unshare: it stays bound to the host's network namespace.
    let mut host = route::open()?;
    crate::sys::sandbox::init_in_child(dir, hostname, false)?;
    plumb_in_child(&mut host, link)
}

/// Runs in the sandbox child, inside the pod's new network namespace, with `host` a route
/// socket of the host's namespace.
fn plumb_in_child(host: &mut crate::netlink::Socket, link: &PodLink) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let pod_ns = std::fs::File::open("/proc/self/ns/net")?;
    let master = route::link_index(host, &link.bridge)?
        .ok_or_else(|| io::Error::other(format!("bridge {:?} does not exist", link.bridge)))?;
    let veth = route::Veth {
        host: &link.veth,
        peer: "eth0",
        master: Some(master),
        mtu: None,
        peer_netns: pod_ns.as_fd(),
    };
    match route::create_veth(host, &veth) {
        // A leftover of an attempt that did not finish: replace it.
        Err(e) if e.raw_os_error() == Some(17) => {
            route::delete_link(host, &link.veth).map_err(|e| ctx("deleting a stale veth", e))?;
            route::create_veth(host, &veth)
        }
        other => other,
    }
    .map_err(|e| ctx(&format!("creating veth {}", link.veth), e))?;
    let mut pod = route::open()?;
    let eth0 = route::link_index(&mut pod, "eth0")?
        .ok_or_else(|| io::Error::other("eth0 did not arrive in the pod's namespace"))?;
    route::add_address(&mut pod, eth0, link.address, link.prefix)
        .map_err(|e| ctx(&format!("eth0 address {}/{}", link.address, link.prefix), e))?;
    route::link_up(&mut pod, eth0).map_err(|e| ctx("eth0 up", e))?;
    route::add_default_route(&mut pod, eth0, link.gateway)
        .map_err(|e| ctx(&format!("default route via {}", link.gateway), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_links_round_trip_through_the_argument() {
        let s = Subnet::parse("10.88.0.0/24").unwrap();
        let l = pod_link("nanolet0", &s, "uid-1", "10.88.0.7".parse().unwrap());
        assert_eq!(l.gateway, "10.88.0.1".parse::<Ipv4Addr>().unwrap());
        let text = l.to_string();
        assert_eq!(text.parse::<PodLink>().unwrap(), l);
        assert!("a,b,c".parse::<PodLink>().is_err());
    }

    #[test]
    fn veth_names_fit_the_kernel_and_are_stable() {
        let a = veth_name("0f0e5a7c-uid");
        assert_eq!(a.len(), 15);
        assert_eq!(a, veth_name("0f0e5a7c-uid"));
        assert_ne!(a, veth_name("another"));
    }
}
