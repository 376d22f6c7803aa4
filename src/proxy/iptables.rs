//! Services + EndpointSlices + node config → `iptables-restore` input for the `nat` and
//! `filter` tables: the fallback for kernels without nf_tables, with the semantics of
//! [`super::build`] in kube-proxy's iptables-mode shape.
//!
//! ```text
//!  nat   PREROUTING, OUTPUT ─► NANOLET-SERVICES ─┬─ clusterIP:port ──► NANOLET-SVC-… (or -SVL- for internalTrafficPolicy Local)
//!                                                ├─ externalIP:port ─► NANOLET-EXT-…
//!                                                └─ -d nodeIP ───────► NANOLET-NODEPORTS ─ port ─► NANOLET-EXT-…
//!        NANOLET-EXT-… ─► (Cluster) mark, NANOLET-SVC-… │ (Local) pods/host → SVC, others → NANOLET-SVL-…
//!        NANOLET-SVC-…/SVL-… ─► -m recent (affinity), -m statistic --probability 1/n ─► NANOLET-SEP-… ─► DNAT
//!        POSTROUTING ─► NANOLET-POSTROUTING: masquerade what NANOLET-MARK-MASQ marked
//!  filter INPUT ───────► NANOLET-NODEPORTS (no endpoints: REJECT, Local policy: DROP)
//!         INPUT, FORWARD, OUTPUT ─► NANOLET-SERVICES (clusterIPs and externalIPs without endpoints)
//!         FORWARD, OUTPUT ────────► NANOLET-CLUSTER-IPS-CHECK (a clusterIP not translated: REJECT;
//!                                   the rest of the service CIDR: DROP)
//! ```
//!
//! The filter table sees packets after the nat table's DNAT (`filter OUTPUT` runs after
//! `nat OUTPUT`), so a packet that still has a clusterIP as destination was not translated.
//!
//! Chain names are kube-proxy's with nanolet's prefix: `NANOLET-SVC-` + the first 16 base32
//! characters of sha256(`ns/name:port` + protocol), the same hash kube-proxy uses (28
//! characters, iptables' limit). Every chain nanolet owns starts with [`PREFIX`]; the only
//! rules it writes elsewhere are the jumps from the built-in chains, so it never collides
//! with a real kube-proxy or anything else in the tables.
//!
//! Rules are written in the canonical form `iptables-save` prints ([`super::iptables_text`]),
//! so what the kernel holds can be compared with what was rendered, line by line.
//!
//! This module must never do I/O: [`super::iptables_apply`] runs the programs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use super::build::{Backend, BuildError, Selection, backends, external_ips};
use super::iptables_text::{Rule, host};
use super::model::{
    Cidr, EndpointSlice, IpFamily, NodeConfig, Protocol, Service, ServicePort, TrafficPolicy,
};

/// Every chain nanolet owns in the `nat` and `filter` tables starts with this.
pub const PREFIX: &str = "NANOLET-";
pub const SERVICES: &str = "NANOLET-SERVICES";
pub const NODEPORTS: &str = "NANOLET-NODEPORTS";
pub const POSTROUTING: &str = "NANOLET-POSTROUTING";
pub const MARK_MASQ: &str = "NANOLET-MARK-MASQ";
pub const CLUSTER_IPS_CHECK: &str = "NANOLET-CLUSTER-IPS-CHECK";
/// Only with several cluster CIDRs of one family: one `! -s` cannot say "outside all".
pub const MASQ_OFF_CLUSTER: &str = "NANOLET-MASQ-OFF-CLUSTER";

/// One table's share of nanolet: its chains (declared, so flushed, on every write) and the
/// jumps into them from the built-in chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    /// nanolet's chains and their rules (each without `-A CHAIN`), sorted by name as
    /// `iptables-save` prints them.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Jumps from built-in chains, in the order they must come first in those chains.
    pub jumps: Vec<(&'static str, String)>,
}

/// Everything for one IP family: `iptables-restore` for IPv4, `ip6tables-restore` for IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRules {
    pub family: IpFamily,
    pub nat: TableRules,
    pub filter: TableRules,
    /// Every address UDP traffic is DNATed to (their conntrack entries go when they go).
    pub udp_backends: BTreeSet<SocketAddr>,
}

/// The result of [`render`]: the rules per family, and what had to be left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub families: Vec<FamilyRules>,
    pub problems: Vec<BuildError>,
}

impl Rendered {
    /// Every UDP backend of every family.
    pub fn udp_backends(&self) -> BTreeSet<SocketAddr> {
        self.families
            .iter()
            .flat_map(|f| f.udp_backends.iter().copied())
            .collect()
    }
}

/// Renders the rules. Deterministic: the order of `services` and `slices` does not matter.
/// The families are those of the node's IPs and Service CIDRs, as for nftables.
pub fn render(services: &[&Service], slices: &[&EndpointSlice], node: &NodeConfig) -> Rendered {
    let mut services: Vec<&Service> = services.to_vec();
    services.sort_by_key(|s| s.key());
    let mut slices: Vec<&EndpointSlice> = slices.to_vec();
    slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in &slices {
        by_service
            .entry((s.namespace.as_str(), s.service_name.as_str()))
            .or_default()
            .push(s);
    }
    let families = node.families();
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for family in families {
        let mut b = FamilyBuilder::new(family, node);
        for svc in &services {
            let mine = by_service
                .get(&(svc.namespace.as_str(), svc.name.as_str()))
                .map_or(&[][..], Vec::as_slice);
            b.add_service(svc, mine, &mut problems);
        }
        out.push(b.finish());
    }
    Rendered {
        families: out,
        problems,
    }
}

/// `ns/name:port`, or `ns/name` for an unnamed port: kube-proxy's ServicePortName.
fn port_name(svc: &Service, port: &ServicePort) -> String {
    if port.name.is_empty() {
        svc.key()
    } else {
        format!("{}:{}", svc.key(), port.name)
    }
}

/// The first 16 characters of the RFC 4648 base32 encoding of sha256(`s`), as kube-proxy.
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    // 16 characters are 80 bits: the first 10 bytes.
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..16)
        .map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// `NANOLET-SVC-…`, `NANOLET-SVL-…`, `NANOLET-EXT-…` of one Service port.
fn port_chain(kind: &str, port_name: &str, proto: Protocol) -> String {
    format!(
        "{PREFIX}{kind}-{}",
        hash16(&format!("{port_name}{}", proto.as_nft()))
    )
}

/// `NANOLET-SEP-…`: the chain that DNATs to one endpoint of one Service port.
pub fn endpoint_chain(port_name: &str, proto: Protocol, addr: &SocketAddr) -> String {
    format!(
        "{PREFIX}SEP-{}",
        hash16(&format!("{port_name}{}{addr}", proto.as_nft()))
    )
}

/// The nft maps' "first Service wins" claims, one namespace per map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    ServiceIps,
    NodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
}

/// The names of one Service port: `ns/name:port` and its three chains.
struct PortChains<'n> {
    spn: &'n str,
    svc: &'n str,
    svl: &'n str,
    ext: &'n str,
}

struct FamilyBuilder<'a> {
    node: &'a NodeConfig,
    family: IpFamily,
    nat: BTreeMap<String, Vec<String>>,
    filter: BTreeMap<String, Vec<String>>,
    claimed: BTreeSet<(Claim, String)>,
    cluster_ips: BTreeSet<IpAddr>,
    udp_backends: BTreeSet<SocketAddr>,
}

impl<'a> FamilyBuilder<'a> {
    fn new(family: IpFamily, node: &'a NodeConfig) -> FamilyBuilder<'a> {
        let mut nat = BTreeMap::new();
        let mut filter = BTreeMap::new();
        for c in [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ] {
            nat.insert(c.to_string(), Vec::new());
        }
        for c in [SERVICES, NODEPORTS, CLUSTER_IPS_CHECK] {
            filter.insert(c.to_string(), Vec::new());
        }
        let bit = node.masquerade_bit;
        nat.insert(
            POSTROUTING.to_string(),
            vec![
                format!("-m mark ! --mark {bit:#x}/{bit:#x} -j RETURN"),
                format!("-j MARK --set-xmark {bit:#x}/0x0"),
                Rule::new()
                    .comment("nanolet service traffic requiring SNAT")
                    .to("MASQUERADE --random-fully"),
            ],
        );
        nat.insert(
            MARK_MASQ.to_string(),
            vec![format!("-j MARK --set-xmark {bit:#x}/{bit:#x}")],
        );
        let mut b = FamilyBuilder {
            node,
            family,
            nat,
            filter,
            claimed: BTreeSet::new(),
            cluster_ips: BTreeSet::new(),
            udp_backends: BTreeSet::new(),
        };
        let cidrs: Vec<Cidr> = b.cluster_cidrs().collect();
        if cidrs.len() > 1 {
            let mut rules: Vec<String> = cidrs
                .iter()
                .map(|c| Rule::new().src(false, c.to_string()).to("RETURN"))
                .collect();
            rules.push(format!("-j {MARK_MASQ}"));
            b.nat.insert(MASQ_OFF_CLUSTER.to_string(), rules);
        }
        b
    }

    fn cluster_cidrs(&self) -> impl Iterator<Item = Cidr> + '_ {
        let fam = self.family;
        self.node
            .cluster_cidrs
            .iter()
            .copied()
            .filter(move |c| c.family() == fam)
    }

    fn node_ips(&self) -> Vec<IpAddr> {
        let fam = self.family;
        self.node
            .node_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == fam)
            .collect()
    }

    fn reject(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "REJECT --reject-with icmp-port-unreachable",
            IpFamily::V6 => "REJECT --reject-with icmp6-port-unreachable",
        }
    }

    /// The `--mask` `iptables-save` prints for `-m recent` (all ones: one client address).
    fn recent_mask(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "255.255.255.255",
            IpFamily::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        }
    }

    fn push(table: &mut BTreeMap<String, Vec<String>>, chain: &str, rule: String) {
        table.entry(chain.to_string()).or_default().push(rule);
    }

    /// Takes `key` in the claim namespace, unless another Service already has it.
    fn claim(
        &mut self,
        claim: Claim,
        key: String,
        owner: &Service,
        what: &str,
        problems: &mut Vec<BuildError>,
    ) -> bool {
        if !self.claimed.insert((claim, key)) {
            problems.push(BuildError {
                object: format!("service {}", owner.key()),
                problem: format!("{what} is already used by another service, skipped"),
            });
            return false;
        }
        true
    }

    fn add_service(
        &mut self,
        svc: &Service,
        slices: &[&EndpointSlice],
        problems: &mut Vec<BuildError>,
    ) {
        let fam = self.family;
        let Some(cluster_ip) = svc.cluster_ip(fam) else {
            return;
        };
        let external_ips = external_ips(svc, fam, self.node, problems);
        self.cluster_ips.insert(cluster_ip);
        for port in &svc.ports {
            let all = backends(svc, port, slices, fam, &self.node.node_name);
            self.add_service_port(svc, port, cluster_ip, &external_ips, &all, problems);
        }
    }

    /// The rule that marks off-cluster traffic to the clusterIP for masquerade.
    fn masq_off_cluster(&self, cluster_ip: IpAddr, port: &ServicePort) -> String {
        let comment = "masquerade traffic from outside the cluster to the clusterIP";
        let base = Rule::new()
            .dst(host(&cluster_ip))
            .port(port.protocol, port.port)
            .comment(comment);
        let cidrs: Vec<Cidr> = self.cluster_cidrs().collect();
        match cidrs.as_slice() {
            [] => base.to(MARK_MASQ),
            [one] => base.src(true, one.to_string()).to(MARK_MASQ),
            _ => base.to(MASQ_OFF_CLUSTER),
        }
    }

    fn add_service_port(
        &mut self,
        svc: &Service,
        port: &ServicePort,
        cluster_ip: IpAddr,
        external_ips: &[IpAddr],
        all: &[(Backend, bool)],
        problems: &mut Vec<BuildError>,
    ) {
        let spn = port_name(svc, port);
        let proto = port.protocol;
        let Selection {
            cluster,
            local,
            itp_local,
            etp_local,
            is_external,
        } = Selection::new(svc, port, external_ips, all);
        let internal = if itp_local { &local } else { &cluster };
        let external = if etp_local { &local } else { &cluster };
        let svc_chain = port_chain("SVC", &spn, proto);
        let svl_chain = port_chain("SVL", &spn, proto);
        let ext_chain = port_chain("EXT", &spn, proto);

        let needs_cluster_chain = !cluster.is_empty() && (!itp_local || is_external);
        let needs_local_chain = !local.is_empty() && (itp_local || (etp_local && is_external));
        if needs_cluster_chain {
            let first = (!itp_local).then(|| self.masq_off_cluster(cluster_ip, port));
            self.add_policy_chain(&svc_chain, first, &spn, &cluster, svc, proto);
        }
        if needs_local_chain {
            let first = itp_local.then(|| self.masq_off_cluster(cluster_ip, port));
            self.add_policy_chain(&svl_chain, first, &spn, &local, svc, proto);
        }

        // Internal traffic: the clusterIP.
        let key = format!("{cluster_ip} {proto:?} {}", port.port);
        let what = format!("{cluster_ip} {}/{}", port.port, proto.as_kubernetes());
        let to_cluster_ip = Rule::new().dst(host(&cluster_ip));
        if internal.is_empty() {
            if self.claim(Claim::NoEndpointServices, key, svc, &what, problems) {
                let rule = self.no_endpoints(to_cluster_ip, &spn, port, port.port, itp_local);
                Self::push(&mut self.filter, SERVICES, rule);
            }
        } else if self.claim(Claim::ServiceIps, key, svc, &what, problems) {
            let target = if itp_local { &svl_chain } else { &svc_chain };
            let rule = to_cluster_ip
                .port(proto, port.port)
                .comment(&format!("{spn} cluster IP"))
                .to(target);
            Self::push(&mut self.nat, SERVICES, rule);
        }

        if !is_external {
            return;
        }
        let names = PortChains {
            spn: &spn,
            svc: &svc_chain,
            svl: &svl_chain,
            ext: &ext_chain,
        };
        if external.is_empty() {
            self.add_external_without_endpoints(svc, port, external_ips, &names, problems);
        } else {
            self.add_external(svc, port, external_ips, &names, problems);
        }
    }

    /// externalIPs and the NodePort of a port without usable endpoints: REJECT or DROP in
    /// the filter table.
    fn add_external_without_endpoints(
        &mut self,
        svc: &Service,
        port: &ServicePort,
        external_ips: &[IpAddr],
        names: &PortChains,
        problems: &mut Vec<BuildError>,
    ) {
        let proto = port.protocol;
        let etp_local = svc.external_traffic_policy == TrafficPolicy::Local;
        for ip in external_ips {
            let key = format!("{ip} {proto:?} {}", port.port);
            let what = format!("externalIP {ip} {}/{}", port.port, proto.as_kubernetes());
            if self.claim(Claim::NoEndpointServices, key, svc, &what, problems) {
                let to = Rule::new().dst(host(ip));
                let rule = self.no_endpoints(to, names.spn, port, port.port, etp_local);
                Self::push(&mut self.filter, SERVICES, rule);
            }
        }
        if let Some(np) = port.node_port {
            let key = format!("{proto:?} {np}");
            let what = format!("nodePort {np}/{}", proto.as_kubernetes());
            if self.claim(Claim::NoEndpointNodePorts, key, svc, &what, problems) {
                for ip in &self.node_ips() {
                    let to = Rule::new().dst(host(ip));
                    let rule = self.no_endpoints(to, names.spn, port, np, etp_local);
                    Self::push(&mut self.filter, NODEPORTS, rule);
                }
            }
        }
    }

    /// externalIPs and the NodePort of a port with endpoints: through its `NANOLET-EXT-…`
    /// chain, which applies the external traffic policy.
    fn add_external(
        &mut self,
        svc: &Service,
        port: &ServicePort,
        external_ips: &[IpAddr],
        names: &PortChains,
        problems: &mut Vec<BuildError>,
    ) {
        let proto = port.protocol;
        let mut rules = Vec::new();
        if svc.external_traffic_policy == TrafficPolicy::Local {
            for cidr in self.cluster_cidrs() {
                rules.push(
                    Rule::new()
                        .src(false, cidr.to_string())
                        .comment("pod traffic goes to the whole cluster")
                        .to(names.svc),
                );
            }
            let from_host = "-m addrtype --src-type LOCAL".to_string();
            rules.push(
                Rule::new()
                    .comment("masquerade traffic from this host")
                    .matching(from_host.clone())
                    .to(MARK_MASQ),
            );
            rules.push(
                Rule::new()
                    .comment("traffic from this host goes to the whole cluster")
                    .matching(from_host)
                    .to(names.svc),
            );
            rules.push(format!("-j {}", names.svl));
        } else {
            rules.push(format!("-j {MARK_MASQ}"));
            rules.push(format!("-j {}", names.svc));
        }
        self.nat.insert(names.ext.to_string(), rules);
        for ip in external_ips {
            let key = format!("{ip} {proto:?} {}", port.port);
            let what = format!("externalIP {ip} {}/{}", port.port, proto.as_kubernetes());
            if self.claim(Claim::ServiceIps, key, svc, &what, problems) {
                let rule = Rule::new()
                    .dst(host(ip))
                    .port(proto, port.port)
                    .comment(&format!("{} external IP", names.spn))
                    .to(names.ext);
                Self::push(&mut self.nat, SERVICES, rule);
            }
        }
        if let Some(np) = port.node_port {
            let key = format!("{proto:?} {np}");
            let what = format!("nodePort {np}/{}", proto.as_kubernetes());
            if self.claim(Claim::NodePorts, key, svc, &what, problems) {
                let rule = Rule::new().port(proto, np).comment(names.spn).to(names.ext);
                Self::push(&mut self.nat, NODEPORTS, rule);
            }
        }
    }

    /// REJECT (the client learns at once), or DROP where a Local policy leaves the port
    /// without local endpoints (other nodes may serve it), as kube-proxy.
    fn no_endpoints(
        &self,
        to: Rule,
        spn: &str,
        port: &ServicePort,
        dport: u16,
        is_local_policy: bool,
    ) -> String {
        let rule = to.port(port.protocol, dport);
        if is_local_policy {
            rule.comment(&format!("{spn} has no local endpoints"))
                .to("DROP")
        } else {
            rule.comment(&format!("{spn} has no endpoints"))
                .to(self.reject())
        }
    }

    /// A `NANOLET-SVC-…` or `-SVL-…` chain: affinity checks, then one endpoint at random
    /// (rule i of n matches with probability 1/(n-i), so each is chosen with 1/n); and the
    /// endpoint chains it jumps to.
    fn add_policy_chain(
        &mut self,
        name: &str,
        first: Option<String>,
        spn: &str,
        backends: &[Backend],
        svc: &Service,
        proto: Protocol,
    ) {
        let mut rules: Vec<String> = first.into_iter().collect();
        let seps: Vec<String> = backends
            .iter()
            .map(|b| endpoint_chain(spn, proto, &b.addr))
            .collect();
        if let Some(timeout) = svc.session_affinity_timeout {
            for sep in &seps {
                rules.push(format!(
                    "-m recent --rcheck --seconds {timeout} --reap --name {sep} --mask {} --rsource -j {sep}",
                    self.recent_mask()
                ));
            }
        }
        let n = seps.len();
        for (i, sep) in seps.iter().enumerate() {
            if i + 1 < n {
                let p = 1.0 / (n - i) as f64;
                rules.push(format!(
                    "-m statistic --mode random --probability {p:.11} -j {sep}"
                ));
            } else {
                rules.push(format!("-j {sep}"));
            }
        }
        for (b, sep) in backends.iter().zip(&seps) {
            self.add_endpoint_chain(sep, b, svc, proto);
        }
        self.nat.insert(name.to_string(), rules);
    }

    fn add_endpoint_chain(&mut self, sep: &str, b: &Backend, svc: &Service, proto: Protocol) {
        let hairpin = Rule::new()
            .src(false, host(&b.addr.ip()))
            .comment("hairpin: the endpoint talks to itself through the service")
            .to(MARK_MASQ);
        let mut dnat = Rule::new().proto(proto);
        if svc.session_affinity_timeout.is_some() {
            dnat = dnat.matching(format!(
                "-m recent --set --name {sep} --mask {} --rsource",
                self.recent_mask()
            ));
        }
        let dnat = dnat.to(&format!("DNAT --to-destination {}", b.addr));
        if proto == Protocol::Udp {
            self.udp_backends.insert(b.addr);
        }
        self.nat.insert(sep.to_string(), vec![hairpin, dnat]);
    }

    fn finish(mut self) -> FamilyRules {
        for ip in self.node_ips() {
            let rule = Rule::new()
                .dst(host(&ip))
                .comment("nanolet service nodeports")
                .to(NODEPORTS);
            Self::push(&mut self.nat, SERVICES, rule);
        }
        let reject = self.reject();
        let mut check: Vec<String> = self
            .cluster_ips
            .iter()
            .map(|ip| {
                Rule::new()
                    .dst(host(ip))
                    .comment("reject traffic to invalid ports of clusterIPs")
                    .to(reject)
            })
            .collect();
        for cidr in self
            .node
            .service_cidrs
            .iter()
            .filter(|c| c.family() == self.family)
        {
            check.push(
                Rule::new()
                    .dst(cidr.to_string())
                    .comment("drop traffic to unallocated clusterIPs")
                    .to("DROP"),
            );
        }
        self.filter.insert(CLUSTER_IPS_CHECK.to_string(), check);
        let new = "-m conntrack --ctstate NEW";
        let portals = format!("-m comment --comment \"nanolet service portals\" -j {SERVICES}");
        let nat_jumps = vec![
            ("PREROUTING", portals.clone()),
            ("OUTPUT", portals),
            (
                "POSTROUTING",
                format!("-m comment --comment \"nanolet postrouting rules\" -j {POSTROUTING}"),
            ),
        ];
        let services = format!(
            "{new} -m comment --comment \"nanolet service ports without endpoints\" -j {SERVICES}"
        );
        let nodeports = format!(
            "{new} -m comment --comment \"nanolet nodeports without endpoints\" -j {NODEPORTS}"
        );
        let check = format!(
            "{new} -m comment --comment \"nanolet clusterIPs not translated\" -j {CLUSTER_IPS_CHECK}"
        );
        let filter_jumps = vec![
            ("INPUT", nodeports),
            ("INPUT", services.clone()),
            ("FORWARD", services.clone()),
            ("FORWARD", check.clone()),
            ("OUTPUT", services),
            ("OUTPUT", check),
        ];
        FamilyRules {
            family: self.family,
            nat: TableRules {
                chains: self.nat,
                jumps: nat_jumps,
            },
            filter: TableRules {
                chains: self.filter,
                jumps: filter_jumps,
            },
            udp_backends: self.udp_backends,
        }
    }
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;
