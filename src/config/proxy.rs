//! The `proxy:` section of `nanolet.yaml`: whether nanolet does kube-proxy's job, where the
//! standalone Service and EndpointSlice manifests live, and the node's network facts.
//!
//! ```yaml
//! proxy:
//!   servicesPath: services          # default; relative to the config dir
//!   clusterCIDR: 10.244.0.0/16      # comma-separated, one per family (kube-proxy's spelling)
//!   serviceCIDR: 10.96.0.0/12       # comma-separated; unallocated addresses in it are dropped
//!   nodeIPs: [192.168.1.10]         # addresses NodePorts answer on
//!   masqueradeBit: 14               # kube-proxy's default: mark 0x4000
//!   syncPeriod: 30s                 # the periodic full resync
//!   mode: auto                      # auto | nftables | iptables (the fallback)
//! ```
//!
//! Without a `proxy:` section nanolet leaves nftables alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::proxy::model::{Cidr, NodeConfig as ProxyNode, parse_ip};

/// The section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawProxy {
    services_path: Option<PathBuf>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    #[serde(rename = "serviceCIDR")]
    service_cidr: Option<String>,
    #[serde(rename = "nodeIPs")]
    node_ips: Option<Vec<String>>,
    masquerade_bit: Option<u32>,
    sync_period: Option<String>,
    mode: Option<String>,
}

/// `proxy.mode`: which kernel interface the proxy programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// nftables when the kernel answers for nf_tables, else iptables (said once in the log).
    #[default]
    Auto,
    Nftables,
    /// `iptables-restore` (the legacy variant when installed), for kernels without nf_tables.
    Iptables,
}

/// The proxy settings, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `proxy.servicesPath`: the folder of Service and EndpointSlice manifests (standalone
    /// mode). Default: `services` in the config dir.
    pub services_path: PathBuf,
    /// `proxy.syncPeriod`: how often the whole table is rewritten. Default: `30s`.
    pub sync_period: Duration,
    /// `proxy.mode`. Default: `auto`.
    pub mode: ProxyMode,
    /// What the ruleset builder needs to know about this node.
    pub node: ProxyNode,
}

fn cidrs(field: &'static str, text: Option<String>) -> Result<Vec<Cidr>, (&'static str, String)> {
    text.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Cidr::parse(s).map_err(|m| (field, format!("{s:?}: {m}"))))
        .collect()
}

impl RawProxy {
    pub(super) fn resolve(
        self,
        config_dir: &Path,
        node_name: &str,
    ) -> Result<ProxyConfig, (&'static str, String)> {
        let services_path = config_dir.join(self.services_path.unwrap_or("services".into()));
        let sync_period = match self.sync_period {
            None => Duration::from_secs(30),
            Some(d) => super::parse_duration(&d).map_err(|m| ("proxy.syncPeriod", m))?,
        };
        if sync_period.is_zero() {
            return Err(("proxy.syncPeriod", "must be positive".into()));
        }
        let mode = match self.mode.as_deref() {
            None | Some("auto") => ProxyMode::Auto,
            Some("nftables") => ProxyMode::Nftables,
            Some("iptables") => ProxyMode::Iptables,
            Some(other) => {
                return Err((
                    "proxy.mode",
                    format!("{other:?}: must be auto, nftables or iptables"),
                ));
            }
        };
        let bit = self.masquerade_bit.unwrap_or(14);
        if bit > 31 {
            return Err(("proxy.masqueradeBit", format!("{bit}: must be 0 to 31")));
        }
        let node_ips = self
            .node_ips
            .unwrap_or_default()
            .iter()
            .map(|s| parse_ip(s).map_err(|m| ("proxy.nodeIPs", format!("{s:?}: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let node = ProxyNode {
            node_name: node_name.to_string(),
            node_ips,
            cluster_cidrs: cidrs("proxy.clusterCIDR", self.cluster_cidr)?,
            service_cidrs: cidrs("proxy.serviceCIDR", self.service_cidr)?,
            masquerade_bit: 1 << bit,
        };
        node.validate().map_err(|e| ("proxy", e.to_string()))?;
        Ok(ProxyConfig {
            services_path,
            sync_period,
            mode,
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str) -> Result<ProxyConfig, (&'static str, String)> {
        let v = crate::config::yaml::parse_one(yaml).unwrap();
        let raw = RawProxy::deserialize(&v).unwrap();
        raw.resolve(Path::new("/etc/nanolet"), "node-a")
    }

    #[test]
    fn defaults_and_fields() {
        let c = resolve("clusterCIDR: 10.244.0.0/16, fd00:244::/48\nnodeIPs: [192.168.1.10]\n")
            .unwrap();
        assert_eq!(c.services_path, Path::new("/etc/nanolet/services"));
        assert_eq!(c.sync_period, Duration::from_secs(30));
        assert_eq!(c.node.cluster_cidrs.len(), 2);
        assert_eq!(c.node.masquerade_bit, 0x4000);
        assert_eq!(c.node.node_name, "node-a");
        assert_eq!(c.mode, ProxyMode::Auto);
        assert_eq!(resolve("mode: iptables").unwrap().mode, ProxyMode::Iptables);
        assert_eq!(resolve("mode: nftables").unwrap().mode, ProxyMode::Nftables);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = resolve("serviceCIDR: 10.96.0.1/12").unwrap_err();
        assert_eq!(e.0, "proxy.serviceCIDR");
        let e = resolve("nodeIPs: [\"010.0.0.1\"]").unwrap_err();
        assert_eq!(e.0, "proxy.nodeIPs");
        let e = resolve("nodeIPs: [127.0.0.1]").unwrap_err();
        assert_eq!(e.0, "proxy");
        assert!(e.1.contains("loopback"), "{}", e.1);
        let e = resolve("mode: ipvs").unwrap_err();
        assert_eq!(e.0, "proxy.mode");
        assert!(e.1.contains("auto, nftables or iptables"), "{}", e.1);
        assert_eq!(
            resolve("masqueradeBit: 32").unwrap_err().0,
            "proxy.masqueradeBit"
        );
    }
}
