//! The pod network settings of `nanolet.yaml` (KubeletConfiguration names where kubelet has
//! them: `podCIDR`, `clusterDNS`, `clusterDomain`, `resolvConf`; the CNI settings follow
//! kubelet's old `--cni-conf-dir`/`--cni-bin-dir` flags). Pure.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How pods that are not hostNetwork get their network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// Neither `podCIDR` nor `cniConfDir`: a private loopback only.
    Isolated,
    /// `podCIDR` set: nanolet's own bridge, veth pairs and host-local style IPAM.
    Bridge { pod_cidr: String, bridge: String },
    /// `cniConfDir` set: the first network configuration found there, run with CNI plugins.
    Cni {
        conf_dir: PathBuf,
        bin_dirs: Vec<PathBuf>,
    },
}

/// Resolved network settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    /// `clusterDNS`: nameservers for `dnsPolicy: ClusterFirst` pods. Default: none (pods get the
    /// host's resolv.conf, as kubelet does without it).
    pub cluster_dns: Vec<String>,
    /// `clusterDomain`: the DNS domain of the cluster. Default: `cluster.local`.
    pub cluster_domain: String,
    /// `resolvConf`: the host's resolver file pods inherit. Default: `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// `nodeIP`: the node's address, reported as `status.hostIP`. Default: the source address of
    /// the host's route to the outside (no packet is sent to find it).
    pub node_ip: Option<Ipv4Addr>,
}

/// The fields as written (flattened into the top level of `nanolet.yaml`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawNetwork {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    pub pod_bridge_name: Option<String>,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<String>>,
    pub cluster_domain: Option<String>,
    pub resolv_conf: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dir: Option<String>,
    #[serde(rename = "nodeIP")]
    pub node_ip: Option<String>,
}

impl RawNetwork {
    pub(super) fn resolve(
        self,
        config_dir: &Path,
    ) -> Result<NetworkConfig, (&'static str, String)> {
        let bridge = self.pod_bridge_name.unwrap_or_else(|| "nanolet0".into());
        if bridge.is_empty()
            || bridge.len() > 15
            || bridge.contains(['/', ' ', ':'])
            || bridge == "."
            || bridge == ".."
        {
            let message = format!("{bridge:?}: want an interface name of 1 to 15 characters");
            return Err(("podBridgeName", message));
        }
        if let Some(cidr) = &self.pod_cidr {
            crate::net::ipam::Subnet::parse(cidr).map_err(|m| ("podCIDR", m))?;
        }
        let mode = match (self.cni_conf_dir, self.pod_cidr) {
            (Some(dir), _) => {
                let bin = self
                    .cni_bin_dir
                    .unwrap_or_else(|| "/opt/cni/bin:/usr/lib/cni".into());
                NetworkMode::Cni {
                    conf_dir: config_dir.join(dir),
                    bin_dirs: bin
                        .split(':')
                        .filter(|d| !d.is_empty())
                        .map(|d| config_dir.join(d))
                        .collect(),
                }
            }
            (None, Some(pod_cidr)) => NetworkMode::Bridge { pod_cidr, bridge },
            (None, None) => NetworkMode::Isolated,
        };
        let cluster_dns = self.cluster_dns.unwrap_or_default();
        if let Some(bad) = cluster_dns
            .iter()
            .find(|s| s.parse::<std::net::IpAddr>().is_err())
        {
            return Err(("clusterDNS", format!("{bad:?} is not an IP address")));
        }
        let cluster_domain = self
            .cluster_domain
            .unwrap_or_else(|| "cluster.local".into());
        if let Some(p) = crate::k8s::validate::dns1123_subdomain_problem(&cluster_domain) {
            return Err(("clusterDomain", format!("{cluster_domain:?}: {p}")));
        }
        let node_ip = match self.node_ip {
            None => None,
            Some(ip) => Some(
                ip.parse()
                    .map_err(|_| ("nodeIP", format!("{ip:?} is not an IPv4 address")))?,
            ),
        };
        Ok(NetworkConfig {
            mode,
            cluster_dns,
            cluster_domain,
            resolv_conf: config_dir.join(self.resolv_conf.unwrap_or("/etc/resolv.conf".into())),
            node_ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{NetworkMode, parse};
    use std::path::Path;

    #[test]
    fn pod_cidr_selects_the_bridge_and_cni_conf_dir_selects_cni() {
        let dir = Path::new("/etc/nanolet");
        let c = parse(
            dir,
            "nodeName: n\npodCIDR: 10.88.0.0/24\nclusterDNS: [10.96.0.10]\n",
        )
        .unwrap();
        assert_eq!(
            c.network.mode,
            NetworkMode::Bridge {
                pod_cidr: "10.88.0.0/24".into(),
                bridge: "nanolet0".into()
            }
        );
        assert_eq!(c.network.cluster_domain, "cluster.local");
        let c = parse(
            dir,
            "nodeName: n\ncniConfDir: cni\ncniBinDir: /usr/lib/cni\n",
        )
        .unwrap();
        assert_eq!(
            c.network.mode,
            NetworkMode::Cni {
                conf_dir: "/etc/nanolet/cni".into(),
                bin_dirs: vec!["/usr/lib/cni".into()]
            }
        );
        assert_eq!(
            parse(dir, "nodeName: n\n").unwrap().network.mode,
            NetworkMode::Isolated
        );
    }

    #[test]
    fn bad_network_settings_name_the_field() {
        let dir = Path::new("/etc/nanolet");
        for (text, want) in [
            (
                "podCIDR: 10.88.0.1/24",
                "podCIDR: \"10.88.0.1/24\": host bits are set",
            ),
            ("podBridgeName: a-very-long-bridge-name", "podBridgeName"),
            (
                "clusterDNS: [dns]",
                "clusterDNS: \"dns\" is not an IP address",
            ),
            ("nodeIP: x", "nodeIP"),
            ("podCidr: 10.0.0.0/24", "unknown field `podCidr`"),
        ] {
            let e = parse(dir, &format!("nodeName: n\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
