//! Pod networking: what a pod's network namespace gets besides loopback, and the node-wide
//! books (addresses, host ports) that keep pods from colliding.
//!
//! One mode per node, from `nanolet.yaml` ([`crate::config::NetworkMode`]):
//!
//! - isolated (no `podCIDR`, no `cniConfDir`): loopback only, as before;
//! - bridge ([`bridge`]): nanolet's own bridge and veth pairs over rtnetlink, addresses from
//!   [`ipam`];
//! - CNI ([`cni`]): standard CNI plugins run as child processes.
//!
//! A pod goes through [`Network::prepare`] (host ports claimed, address allocated: nothing in
//! the kernel yet), the sandbox child (namespaces, and the veth pair in bridge mode),
//! [`Network::attach`] (CNI ADD), and at the end [`Network::detach`]. A failure at any step
//! undoes the earlier ones, so a refused pod leaves nothing half-programmed. [`dns`] and
//! [`ports`] are pure.

pub mod bridge;
pub mod cni;
pub mod dns;
pub mod ipam;
pub mod nat;
pub mod ports;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::config::{NetworkMode, NodeConfig};
use crate::k8s::{self, Pod};
use crate::sys::reaper::Reaper;
use bridge::PodLink;
use ports::HostPortBook;

enum Mode {
    Isolated,
    Bridge {
        bridge: String,
        ipam: ipam::Store,
        /// hostPort DNATs by pod uid, written to the NAT table whole on every change.
        dnats: RefCell<BTreeMap<String, Vec<nat::Dnat>>>,
    },
    Cni(cni::Cni),
}

/// The node's pod network.
pub struct Network {
    mode: Mode,
    pub dns: dns::ClusterDns,
    pub resolv_conf: PathBuf,
    /// `status.hostIP`.
    pub host_ip: Option<Ipv4Addr>,
    ports: RefCell<HostPortBook>,
}

impl Network {
    /// The network `config` describes. No I/O but finding the host's address.
    pub fn new(config: &NodeConfig) -> Result<Network, String> {
        let net = &config.network;
        let mode = match &net.mode {
            NetworkMode::Isolated => Mode::Isolated,
            NetworkMode::Bridge { pod_cidr, bridge } => {
                let subnet = ipam::Subnet::parse(pod_cidr).map_err(|e| format!("podCIDR: {e}"))?;
                Mode::Bridge {
                    bridge: bridge.clone(),
                    ipam: ipam::Store::new(config.data_dir.join("networks").join(bridge), subnet),
                    dnats: RefCell::new(BTreeMap::new()),
                }
            }
            NetworkMode::Cni { conf_dir, bin_dirs } => Mode::Cni(cni::Cni::new(
                conf_dir.clone(),
                bin_dirs.clone(),
                config.data_dir.join("cni"),
            )),
        };
        Ok(Network {
            mode,
            dns: dns::ClusterDns {
                servers: net.cluster_dns.clone(),
                domain: net.cluster_domain.clone(),
            },
            resolv_conf: net.resolv_conf.clone(),
            host_ip: net.node_ip.or_else(outbound_address),
            ports: RefCell::new(HostPortBook::default()),
        })
    }

    /// Host-side setup at agent start: the bridge, its gateway address, the NAT table (its
    /// hostPorts come back as the workers resume their pods).
    pub fn setup_host(&self) -> std::io::Result<()> {
        match &self.mode {
            Mode::Bridge { bridge, ipam, .. } => {
                bridge::setup_host(bridge, &ipam.subnet)?;
                self.write_nat()
            }
            Mode::Isolated | Mode::Cni(_) => Ok(()),
        }
    }

    /// Bridge mode: records pod `uid`'s hostPort DNATs (none when `ip` is `None`) and rewrites
    /// the NAT table when they changed.
    fn set_dnats(&self, uid: &str, pod: Option<(&Pod, Ipv4Addr)>) -> std::io::Result<()> {
        let Mode::Bridge { dnats, .. } = &self.mode else {
            return Ok(());
        };
        let wanted: Vec<nat::Dnat> = match pod {
            Some((pod, ip)) => ports::host_ports(pod)
                .unwrap_or_default()
                .into_iter()
                .map(|mapping| nat::Dnat {
                    mapping,
                    pod_ip: ip,
                })
                .collect(),
            None => Vec::new(),
        };
        let changed = {
            let mut all = dnats.borrow_mut();
            let before = all.get(uid).cloned().unwrap_or_default();
            if wanted.is_empty() {
                all.remove(uid);
            } else {
                all.insert(uid.to_string(), wanted.clone());
            }
            before != wanted
        };
        if changed { self.write_nat() } else { Ok(()) }
    }

    fn write_nat(&self) -> std::io::Result<()> {
        let Mode::Bridge {
            bridge,
            ipam,
            dnats,
        } = &self.mode
        else {
            return Ok(());
        };
        let all: Vec<nat::Dnat> = dnats.borrow().values().flatten().cloned().collect();
        nat::apply(bridge, &ipam.subnet, &all)
    }

    /// Before the sandbox exists: claims the pod's host ports and (bridge mode) its address.
    /// Returns the link the sandbox child must make. Nothing in the kernel changes.
    pub fn prepare(&self, pod: &Pod) -> Result<Option<PodLink>, String> {
        let uid = &pod.metadata.uid;
        let wanted = ports::host_ports(pod)?;
        self.ports
            .borrow_mut()
            .claim(uid, &k8s::pod_full_name(pod), &wanted)?;
        if pod.spec.host_network {
            return Ok(None);
        }
        match &self.mode {
            Mode::Bridge { bridge, ipam, .. } => match ipam.allocate(uid) {
                Ok(ip) => Ok(Some(bridge::pod_link(bridge, &ipam.subnet, uid, ip))),
                Err(e) => {
                    self.ports.borrow_mut().release(uid);
                    Err(e.to_string())
                }
            },
            Mode::Isolated | Mode::Cni(_) => Ok(None),
        }
    }

    /// After the sandbox exists (and, in bridge mode, its veth pair): CNI ADD. Returns the
    /// pod's addresses. On error the caller runs [`Network::detach`].
    pub async fn attach(
        &self,
        reaper: &Reaper,
        pod: &Pod,
        netns: &Path,
        link: Option<&PodLink>,
    ) -> Result<Vec<Ipv4Addr>, String> {
        if pod.spec.host_network {
            return Ok(self.host_ip.into_iter().collect());
        }
        match &self.mode {
            Mode::Isolated => Ok(Vec::new()),
            Mode::Bridge { .. } => {
                let Some(link) = link else {
                    return Ok(Vec::new());
                };
                self.set_dnats(&pod.metadata.uid, Some((pod, link.address)))
                    .map_err(|e| format!("hostPorts: {e}"))?;
                Ok(vec![link.address])
            }
            Mode::Cni(cni) => {
                let mappings = ports::host_ports(pod)?;
                cni.add(reaper, pod, netns, &mappings).await
            }
        }
    }

    /// The addresses of a pod whose sandbox is already there (after a nanolet restart); its
    /// host ports are claimed again.
    pub fn resume(&self, pod: &Pod) -> Vec<Ipv4Addr> {
        if let Ok(wanted) = ports::host_ports(pod)
            && let Err(e) =
                self.ports
                    .borrow_mut()
                    .claim(&pod.metadata.uid, &k8s::pod_full_name(pod), &wanted)
        {
            log::warn!("pod {}: {e}", k8s::pod_full_name(pod));
        }
        if pod.spec.host_network {
            return self.host_ip.into_iter().collect();
        }
        let uid = &pod.metadata.uid;
        match &self.mode {
            Mode::Isolated => Vec::new(),
            Mode::Bridge { ipam, .. } => {
                let ip = ipam.get(uid).ok().flatten();
                if let Some(ip) = ip
                    && let Err(e) = self.set_dnats(uid, Some((pod, ip)))
                {
                    log::warn!("pod {}: hostPorts: {e}", k8s::pod_full_name(pod));
                }
                ip.into_iter().collect()
            }
            Mode::Cni(cni) => cni.cached_ips(uid),
        }
    }

    /// CNI CHECK of a pod found running after a nanolet restart (other modes: nothing to ask).
    pub async fn check(&self, reaper: &Reaper, pod: &Pod, netns: &Path) -> Result<(), String> {
        match &self.mode {
            Mode::Cni(cni) if !pod.spec.host_network => {
                cni.check(reaper, &pod.metadata.uid, netns).await
            }
            _ => Ok(()),
        }
    }

    /// Undoes everything of pod `uid`: CNI DEL, the veth pair, the address, the host ports.
    /// Idempotent; problems are logged, the rest still runs.
    pub async fn detach(&self, reaper: &Reaper, name: &str, uid: &str, netns: &Path) {
        self.ports.borrow_mut().release(uid);
        match &self.mode {
            Mode::Isolated => {}
            Mode::Bridge { ipam, .. } => {
                if let Err(e) = self.set_dnats(uid, None) {
                    log::warn!("pod {name}: removing its hostPorts: {e}");
                }
                if let Err(e) = bridge::delete_veth(uid) {
                    log::warn!("pod {name}: deleting veth {}: {e}", bridge::veth_name(uid));
                }
                if let Err(e) = ipam.release(uid) {
                    log::warn!("pod {name}: releasing its address: {e}");
                }
            }
            Mode::Cni(cni) => {
                if let Err(e) = cni.del(reaper, uid, Some(netns)).await {
                    log::warn!("pod {name}: CNI DEL: {e}");
                }
            }
        }
    }

    /// At agent start, after the first full scan: releases what pods no longer alive held (the
    /// agent was down when they went, or a reboot took them).
    pub async fn reconcile(&self, reaper: &Reaper, live: &HashSet<String>) {
        match &self.mode {
            Mode::Isolated => {}
            Mode::Bridge { ipam, .. } => match ipam.retain(&|uid| live.contains(uid)) {
                Ok(gone) => {
                    for (ip, uid) in gone {
                        log::info!("pod uid {uid}: gone; released its address {ip}");
                        let _ = bridge::delete_veth(&uid);
                    }
                }
                Err(e) => log::warn!("reconciling addresses: {e}"),
            },
            Mode::Cni(cni) => {
                for uid in cni.cached_uids() {
                    if !live.contains(&uid) {
                        log::info!("pod uid {uid}: gone; running CNI DEL");
                        if let Err(e) = cni.del(reaper, &uid, None).await {
                            log::warn!("pod uid {uid}: CNI DEL: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// The source address of the host's route to the outside: a UDP socket is "connected" to a
/// TEST-NET address, which only picks a route; no packet is sent.
fn outbound_address() -> Option<Ipv4Addr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    match sock.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}
