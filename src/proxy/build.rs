//! Services + EndpointSlices + node config → the desired [`Ruleset`], with kube-proxy's
//! nftables-mode semantics in the "shared-map" shape: a Service is map elements, not chains.
//!
//! ```text
//!  filter-output ──┐ (priority dstnat-10, ct state new)
//!  filter-forward ─┼─► service-endpoints-check: daddr.proto.port vmap @no-endpoint-services
//!  filter-input ───┴─► nodeport-endpoints-check: @nodeport-ips, proto.port vmap @no-endpoint-nodeports
//!  filter-forward, filter-output-post-dnat (after DNAT)
//!                  ──► cluster-ips-check: @cluster-ips → reject; service CIDR → drop
//!
//!  nat-prerouting ─┐
//!  nat-output ─────┴─► services ─► @service-ips ──────► clusterip-N / external-N / external-local-C-L
//!                               └► @service-nodeports ─► nodeport-N / nodeport-local-C-L
//!                      ──► endpoints-N: dnat to daddr . proto . dport . numgen mod N map @service-backends
//!                          (nodeport-endpoints-N: proto . dport . numgen … map @nodeport-backends)
//!  nat-postrouting ─► @hairpin → mark; masquerading (only packets marked by mark-for-masquerade)
//! ```
//!
//! [`shared`] builds that shape; a Service with session affinity keeps per-Service chains
//! (`service-…`, `local-…`, `external-…`), an affinity set and a chain per endpoint, as the
//! affinity lookups need them.
//!
//! Endpoint choice follows kube-proxy: ready endpoints; if there are none, endpoints that are
//! serving and terminating. A Service port without usable endpoints is rejected (dropped
//! when a Local traffic policy leaves it without local endpoints).
//!
//! Per-Service chain names are `<kind>-<namespace>/<name>/<protocol>/<port name or number>`,
//! plus `__<ip>/<port>` for endpoints (IPv6 colons written as `-`). Every component is a DNS
//! label, a protocol or an address, so names are unique without kube-proxy's hash prefix and
//! stay well under nftables' 256-byte limit (at most ~200 bytes with 63-character names).
//!
//! Problems that concern one object (an externalIP that is the node's own address, two
//! Services claiming one NodePort) skip that object and are returned; they never fail the build.
//! This module must never do I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

mod shared;
use shared::PortInput;

use super::model::{
    EndpointSlice, IpFamily, NodeConfig, Protocol, Service, ServicePort, TrafficPolicy,
};
use super::ruleset::{
    Action, AddrMatch, BaseChain, Chain, ChainType, DnatMap, Hook, Key, KeyPart, KeyType,
    LookupKey, Map, MapVerdict, Match, PRIORITY_DSTNAT, PRIORITY_SRCNAT, Rule, Ruleset, Set, Table,
};

pub const FILTER_INPUT: &str = "filter-input";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";
pub const FILTER_OUTPUT_POST_DNAT: &str = "filter-output-post-dnat";
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";
pub const SERVICES: &str = "services";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const MASQUERADING: &str = "masquerading";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const SERVICE_BACKENDS: &str = "service-backends";
pub const SERVICE_LOCAL_BACKENDS: &str = "service-local-backends";
pub const NODEPORT_BACKENDS: &str = "nodeport-backends";
pub const NODEPORT_LOCAL_BACKENDS: &str = "nodeport-local-backends";
pub const HAIRPIN: &str = "hairpin";

/// A Service (or part of one) that was left out of the ruleset, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// `service default/web`.
    pub object: String,
    pub problem: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.problem)
    }
}

impl std::error::Error for BuildError {}

/// The result of [`build`]: the ruleset, and what had to be left out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub ruleset: Ruleset,
    pub problems: Vec<BuildError>,
}

/// Builds the desired ruleset. Deterministic: the order of `services` and `slices` does not
/// matter. The families are those of the node's IPs and Service CIDRs.
pub fn build(services: &[Service], slices: &[EndpointSlice], node: &NodeConfig) -> Built {
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by_key(|s| s.key());
    let mut slices: Vec<&EndpointSlice> = slices.iter().collect();
    slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let families = node.families();

    let mut problems = Vec::new();
    let mut ruleset = Ruleset::default();
    // Each Service's slices, looked up once (scanning every slice per Service is quadratic:
    // seconds at 10 000 Services). Slice-name order is kept within each group.
    let mut by_service: std::collections::BTreeMap<(&str, &str), Vec<&EndpointSlice>> =
        std::collections::BTreeMap::new();
    for s in &slices {
        by_service
            .entry((s.namespace.as_str(), s.service_name.as_str()))
            .or_default()
            .push(s);
    }
    for family in families {
        let mut b = TableBuilder::new(family, node, &|_, _, _| false);
        for svc in &services {
            let mine = by_service
                .get(&(svc.namespace.as_str(), svc.name.as_str()))
                .map_or(&[][..], Vec::as_slice);
            b.add_service(svc, mine, &mut problems);
        }
        ruleset.tables.push(b.table);
    }
    Built { ruleset, problems }
}

/// Whether a Service port's map key (family, map, key) is already held by a Service outside
/// the build: such a key is left out and reported, as one held by a Service built before it.
pub type Taken<'a> = &'a dyn Fn(IpFamily, &str, &Key) -> bool;

/// One Service's share of the ruleset for the proxy state, which builds each Service alone:
/// its chains and its elements in the skeleton's sets and maps (declared as in `skeleton`,
/// empty), without the skeleton's own chains. `slices` are the Service's.
pub fn build_service(
    svc: &Service,
    slices: &[EndpointSlice],
    node: &NodeConfig,
    skeleton: &Ruleset,
    taken: Taken<'_>,
) -> Built {
    let mut slices: Vec<&EndpointSlice> = slices.iter().collect();
    slices.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut problems = Vec::new();
    let mut ruleset = Ruleset::default();
    for base in &skeleton.tables {
        let mut table = Table::new(base.family);
        for (name, set) in &base.sets {
            let empty = Set {
                key: set.key.clone(),
                timeout_seconds: set.timeout_seconds,
                comment: None,
                elements: Default::default(),
            };
            table.sets.insert(name.clone(), empty);
        }
        for (name, map) in &base.maps {
            let empty = Map {
                key: map.key.clone(),
                comment: None,
                elements: BTreeMap::new(),
            };
            table.maps.insert(name.clone(), empty);
        }
        for (name, map) in &base.dnat_maps {
            let empty = DnatMap {
                key: map.key,
                comment: None,
                elements: BTreeMap::new(),
            };
            table.dnat_maps.insert(name.clone(), empty);
        }
        let mut b = TableBuilder { node, taken, table };
        b.add_service(svc, &slices, &mut problems);
        ruleset.tables.push(b.table);
    }
    Built { ruleset, problems }
}

/// One usable endpoint of one Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    pub(crate) is_local: bool,
}

/// The chain names of one Service port.
fn port_id(svc: &Service, port: &ServicePort) -> String {
    let port_name = if port.name.is_empty() {
        port.port.to_string()
    } else {
        port.name.to_string()
    };
    format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        port.protocol.as_nft(),
        port_name
    )
}

/// `endpoint-…` chain and `affinity-…` set suffix for one backend.
fn backend_id(port_id: &str, addr: &SocketAddr) -> String {
    let ip = addr.ip().to_string().replace(':', "-");
    format!("{port_id}__{ip}/{}", addr.port())
}

/// The name of the chain that DNATs to one endpoint.
pub fn endpoint_chain(port_id: &str, addr: &SocketAddr) -> String {
    format!("endpoint-{}", backend_id(port_id, addr))
}

/// The name of the dynamic set that remembers clients of one endpoint (session affinity).
pub fn affinity_set(port_id: &str, addr: &SocketAddr) -> String {
    format!("affinity-{}", backend_id(port_id, addr))
}

struct TableBuilder<'a> {
    node: &'a NodeConfig,
    taken: Taken<'a>,
    table: Table,
}

impl<'a> TableBuilder<'a> {
    fn new(family: IpFamily, node: &'a NodeConfig, taken: Taken<'a>) -> TableBuilder<'a> {
        let mut table = Table::new(family);
        let bit = node.masquerade_bit;
        let base = |chain_type, hook, priority| {
            Some(BaseChain {
                chain_type,
                hook,
                priority,
            })
        };
        let new = || Match::CtStateNew;
        let jump = |c: &str| Action::Jump(c.to_string());
        let mut add = |name: &str, base: Option<BaseChain>, rules: Vec<Rule>| {
            table.chains.insert(name.to_string(), Chain { base, rules });
        };
        let filter = PRIORITY_DSTNAT - 10;
        add(
            FILTER_INPUT,
            base(ChainType::Filter, Hook::Input, filter),
            vec![
                Rule::new(vec![new()], jump(NODEPORT_ENDPOINTS_CHECK)),
                Rule::new(vec![new()], jump(SERVICE_ENDPOINTS_CHECK)),
            ],
        );
        add(
            FILTER_FORWARD,
            base(ChainType::Filter, Hook::Forward, filter),
            vec![
                Rule::new(vec![new()], jump(SERVICE_ENDPOINTS_CHECK)),
                Rule::new(vec![new()], jump(CLUSTER_IPS_CHECK)),
            ],
        );
        add(
            FILTER_OUTPUT,
            base(ChainType::Filter, Hook::Output, filter),
            vec![Rule::new(vec![new()], jump(SERVICE_ENDPOINTS_CHECK))],
        );
        // Forwarded traffic reaches filter-forward after DNAT; local traffic needs a chain of
        // its own after nat-output, or every clusterIP would be rejected before it is DNATed.
        add(
            FILTER_OUTPUT_POST_DNAT,
            base(ChainType::Filter, Hook::Output, PRIORITY_DSTNAT + 10),
            vec![Rule::new(vec![new()], jump(CLUSTER_IPS_CHECK))],
        );
        for (name, hook) in [
            (NAT_PREROUTING, Hook::Prerouting),
            (NAT_OUTPUT, Hook::Output),
        ] {
            add(
                name,
                base(ChainType::Nat, hook, PRIORITY_DSTNAT),
                vec![Rule::always(jump(SERVICES))],
            );
        }
        add(
            NAT_POSTROUTING,
            base(ChainType::Nat, Hook::Postrouting, PRIORITY_SRCNAT),
            vec![
                Rule::new(
                    vec![Match::HairpinInSet(HAIRPIN.to_string())],
                    jump(MARK_FOR_MASQUERADE),
                )
                .with_comment("hairpin: an endpoint talks to itself through a service"),
                Rule::always(jump(MASQUERADING)),
            ],
        );
        add(
            SERVICES,
            None,
            vec![
                Rule::always(Action::Vmap {
                    key: LookupKey::DaddrProtoPort,
                    map: SERVICE_IPS.to_string(),
                }),
                Rule::new(
                    vec![Match::Daddr(AddrMatch::InSet(NODEPORT_IPS.to_string()))],
                    Action::Vmap {
                        key: LookupKey::ProtoPort,
                        map: SERVICE_NODEPORTS.to_string(),
                    },
                ),
            ],
        );
        add(
            SERVICE_ENDPOINTS_CHECK,
            None,
            vec![Rule::always(Action::Vmap {
                key: LookupKey::DaddrProtoPort,
                map: NO_ENDPOINT_SERVICES.to_string(),
            })],
        );
        add(
            NODEPORT_ENDPOINTS_CHECK,
            None,
            vec![Rule::new(
                vec![Match::Daddr(AddrMatch::InSet(NODEPORT_IPS.to_string()))],
                Action::Vmap {
                    key: LookupKey::ProtoPort,
                    map: NO_ENDPOINT_NODEPORTS.to_string(),
                },
            )],
        );
        let mut cluster_ips_check = vec![
            Rule::new(
                vec![Match::Daddr(AddrMatch::InSet(CLUSTER_IPS.to_string()))],
                Action::Reject,
            )
            .with_comment("reject traffic to invalid ports of clusterIPs"),
        ];
        for cidr in node.service_cidrs.iter().filter(|c| c.family() == family) {
            cluster_ips_check.push(
                Rule::new(vec![Match::Daddr(AddrMatch::In(*cidr))], Action::Drop)
                    .with_comment("drop traffic to unallocated clusterIPs"),
            );
        }
        add(CLUSTER_IPS_CHECK, None, cluster_ips_check);
        add(
            MASQUERADING,
            None,
            vec![
                Rule::new(vec![Match::MarkBitClear(bit)], Action::Return),
                Rule::always(Action::ToggleMarkBit(bit)),
                Rule::always(Action::Masquerade),
            ],
        );
        add(
            MARK_FOR_MASQUERADE,
            None,
            vec![Rule::always(Action::SetMarkBit(bit))],
        );
        add(REJECT_CHAIN, None, vec![Rule::always(Action::Reject)]);

        let addr_proto_port = vec![KeyType::Addr, KeyType::Proto, KeyType::Port];
        let proto_port = vec![KeyType::Proto, KeyType::Port];
        for (name, key, comment) in [
            (
                SERVICE_IPS,
                &addr_proto_port,
                "clusterIP and externalIP traffic",
            ),
            (SERVICE_NODEPORTS, &proto_port, "NodePort traffic"),
            (
                NO_ENDPOINT_SERVICES,
                &addr_proto_port,
                "service ports without usable endpoints",
            ),
            (
                NO_ENDPOINT_NODEPORTS,
                &proto_port,
                "NodePorts without usable endpoints",
            ),
        ] {
            table.maps.insert(
                name.to_string(),
                Map {
                    key: key.clone(),
                    comment: Some(comment.to_string()),
                    elements: BTreeMap::new(),
                },
            );
        }
        let node_ips = node
            .node_ips
            .iter()
            .filter(|ip| IpFamily::of(ip) == family)
            .map(|ip| vec![KeyPart::Addr(*ip)])
            .collect();
        for (name, elements, comment) in [
            (CLUSTER_IPS, Default::default(), "active clusterIPs"),
            (NODEPORT_IPS, node_ips, "addresses NodePorts answer on"),
        ] {
            table.sets.insert(
                name.to_string(),
                Set {
                    key: vec![KeyType::Addr],
                    timeout_seconds: None,
                    comment: Some(comment.to_string()),
                    elements,
                },
            );
        }
        table.sets.insert(
            HAIRPIN.to_string(),
            Set {
                key: vec![KeyType::Addr, KeyType::Addr, KeyType::Port],
                timeout_seconds: None,
                comment: Some("endpoint . endpoint . port: hairpin traffic".to_string()),
                elements: Default::default(),
            },
        );
        for (name, key, comment) in [
            (
                SERVICE_BACKENDS,
                LookupKey::DaddrProtoPort,
                "endpoints of clusterIPs and externalIPs",
            ),
            (
                SERVICE_LOCAL_BACKENDS,
                LookupKey::DaddrProtoPort,
                "this node's endpoints of clusterIPs and externalIPs",
            ),
            (
                NODEPORT_BACKENDS,
                LookupKey::ProtoPort,
                "endpoints of NodePorts",
            ),
            (
                NODEPORT_LOCAL_BACKENDS,
                LookupKey::ProtoPort,
                "this node's endpoints of NodePorts",
            ),
        ] {
            table.dnat_maps.insert(
                name.to_string(),
                DnatMap {
                    key,
                    comment: Some(comment.to_string()),
                    elements: BTreeMap::new(),
                },
            );
        }
        TableBuilder { node, taken, table }
    }

    fn family(&self) -> IpFamily {
        self.table.family
    }

    /// Inserts a map element unless another Service already owns the key (in this map or
    /// its no-endpoint twin: one address, protocol and port is one Service's, with or
    /// without endpoints); says whether it did.
    fn claim(
        &mut self,
        map: &str,
        key: Key,
        verdict: MapVerdict,
        owner: &Service,
        what: &str,
        problems: &mut Vec<BuildError>,
    ) -> bool {
        let twin = claim_twin(map);
        let in_twin = self
            .table
            .maps
            .get(twin)
            .is_some_and(|m| m.elements.contains_key(&key));
        let Some(m) = self.table.maps.get_mut(map) else {
            return false;
        };
        if m.elements.contains_key(&key) || in_twin || (self.taken)(self.table.family, map, &key) {
            problems.push(BuildError {
                object: format!("service {}", owner.key()),
                problem: format!("{what} is already used by another service, skipped"),
            });
            return false;
        }
        m.elements.insert(key, verdict);
        true
    }

    fn add_service(
        &mut self,
        svc: &Service,
        slices: &[&EndpointSlice],
        problems: &mut Vec<BuildError>,
    ) {
        let fam = self.family();
        let Some(cluster_ip) = svc.cluster_ip(fam) else {
            return;
        };
        let external_ips = external_ips(svc, fam, self.node, problems);
        if let Some(set) = self.table.sets.get_mut(CLUSTER_IPS) {
            set.elements.insert(vec![KeyPart::Addr(cluster_ip)]);
        }
        for port in &svc.ports {
            let backends = backends(svc, port, slices, fam, &self.node.node_name);
            let p = PortInput {
                svc,
                port,
                cluster_ip,
                external_ips: &external_ips,
                all: &backends,
            };
            if svc.session_affinity_timeout.is_some() {
                self.add_service_port(&p, problems);
            } else {
                self.add_shared_port(&p, problems);
            }
        }
    }

    /// A Service port with session affinity: per-Service chains, one chain and one affinity
    /// set per endpoint (the affinity lookups need them).
    fn add_service_port(&mut self, p: &PortInput<'_>, problems: &mut Vec<BuildError>) {
        let PortInput {
            svc,
            port,
            cluster_ip,
            external_ips,
            all,
        } = *p;
        let id = port_id(svc, port);
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

        let cluster_chain = format!("service-{id}");
        let local_chain = format!("local-{id}");
        let external_chain = format!("external-{id}");
        // Off-cluster traffic to the clusterIP is masqueraded so replies come back through us.
        let masq_off_cluster = {
            let mut m = vec![
                Match::Daddr(AddrMatch::Is(cluster_ip)),
                Match::Dport(proto, port.port),
            ];
            m.extend(
                self.cluster_cidrs()
                    .map(|c| Match::Saddr(AddrMatch::NotIn(c))),
            );
            Rule::new(m, Action::Jump(MARK_FOR_MASQUERADE.to_string()))
                .with_comment("masquerade traffic from outside the cluster to the clusterIP")
        };
        let needs_cluster_chain = !cluster.is_empty() && (!itp_local || is_external);
        let needs_local_chain = !local.is_empty() && (itp_local || (etp_local && is_external));
        if needs_cluster_chain {
            let first = (!itp_local).then(|| masq_off_cluster.clone());
            self.add_policy_chain(&cluster_chain, first, &id, &cluster, svc, proto);
        }
        if needs_local_chain {
            let first = itp_local.then(|| masq_off_cluster.clone());
            self.add_policy_chain(&local_chain, first, &id, &local, svc, proto);
        }

        // Internal traffic: the clusterIP.
        let key = vec![
            KeyPart::Addr(cluster_ip),
            KeyPart::Proto(proto),
            KeyPart::Port(port.port),
        ];
        let what = format!("{cluster_ip} {}/{}", port.port, proto.as_kubernetes());
        if internal.is_empty() {
            let verdict = no_endpoints_verdict(itp_local);
            self.claim(NO_ENDPOINT_SERVICES, key, verdict, svc, &what, problems);
        } else {
            let target = if itp_local {
                &local_chain
            } else {
                &cluster_chain
            };
            let verdict = MapVerdict::Goto(target.clone());
            self.claim(SERVICE_IPS, key, verdict, svc, &what, problems);
        }

        if !is_external {
            return;
        }
        // External traffic: externalIPs and NodePorts.
        let (map_ips, map_ports, verdict) = if external.is_empty() {
            (
                NO_ENDPOINT_SERVICES,
                NO_ENDPOINT_NODEPORTS,
                no_endpoints_verdict(etp_local),
            )
        } else {
            let mut rules = Vec::new();
            if etp_local {
                for cidr in self.cluster_cidrs() {
                    rules.push(
                        Rule::new(
                            vec![Match::Saddr(AddrMatch::In(cidr))],
                            Action::Goto(cluster_chain.clone()),
                        )
                        .with_comment("pod traffic goes to the whole cluster"),
                    );
                }
                rules.push(
                    Rule::new(
                        vec![Match::FibSaddrLocal],
                        Action::Jump(MARK_FOR_MASQUERADE.to_string()),
                    )
                    .with_comment("masquerade traffic from this host"),
                );
                rules.push(
                    Rule::new(
                        vec![Match::FibSaddrLocal],
                        Action::Goto(cluster_chain.clone()),
                    )
                    .with_comment("traffic from this host goes to the whole cluster"),
                );
                rules.push(Rule::always(Action::Goto(local_chain.clone())));
            } else {
                rules.push(Rule::always(Action::Jump(MARK_FOR_MASQUERADE.to_string())));
                rules.push(Rule::always(Action::Goto(cluster_chain.clone())));
            }
            self.table
                .chains
                .insert(external_chain.clone(), Chain { base: None, rules });
            (
                SERVICE_IPS,
                SERVICE_NODEPORTS,
                MapVerdict::Goto(external_chain),
            )
        };
        for ip in external_ips {
            let key = vec![
                KeyPart::Addr(*ip),
                KeyPart::Proto(proto),
                KeyPart::Port(port.port),
            ];
            let what = format!("externalIP {ip} {}/{}", port.port, proto.as_kubernetes());
            self.claim(map_ips, key, verdict.clone(), svc, &what, problems);
        }
        if let Some(node_port) = port.node_port {
            let key = vec![KeyPart::Proto(proto), KeyPart::Port(node_port)];
            let what = format!("nodePort {node_port}/{}", proto.as_kubernetes());
            self.claim(map_ports, key, verdict, svc, &what, problems);
        }
    }

    fn cluster_cidrs(&self) -> impl Iterator<Item = super::model::Cidr> + '_ {
        let fam = self.family();
        self.node
            .cluster_cidrs
            .iter()
            .copied()
            .filter(move |c| c.family() == fam)
    }

    /// A `service-…` or `local-…` chain: affinity lookups, then a random endpoint; and the
    /// endpoint chains (and affinity sets) it refers to.
    fn add_policy_chain(
        &mut self,
        name: &str,
        first: Option<Rule>,
        id: &str,
        backends: &[Backend],
        svc: &Service,
        proto: Protocol,
    ) {
        let mut rules: Vec<Rule> = first.into_iter().collect();
        let mut targets = Vec::new();
        for b in backends {
            let chain = endpoint_chain(id, &b.addr);
            if let Some(timeout) = svc.session_affinity_timeout {
                let set = affinity_set(id, &b.addr);
                rules.push(Rule::new(
                    vec![Match::Saddr(AddrMatch::InSet(set.clone()))],
                    Action::Goto(chain.clone()),
                ));
                self.table.sets.insert(
                    set,
                    Set {
                        key: vec![KeyType::Addr],
                        timeout_seconds: Some(timeout),
                        comment: None,
                        elements: Default::default(),
                    },
                );
            }
            self.add_endpoint_chain(&chain, id, b, svc, proto);
            targets.push(chain);
        }
        rules.push(Rule::always(Action::NumgenGoto(targets)));
        self.table
            .chains
            .insert(name.to_string(), Chain { base: None, rules });
    }

    fn add_endpoint_chain(
        &mut self,
        chain: &str,
        id: &str,
        b: &Backend,
        svc: &Service,
        proto: Protocol,
    ) {
        let mut rules = vec![
            Rule::new(
                vec![Match::Saddr(AddrMatch::Is(b.addr.ip()))],
                Action::Jump(MARK_FOR_MASQUERADE.to_string()),
            )
            .with_comment("hairpin: the endpoint talks to itself through the service"),
        ];
        if svc.session_affinity_timeout.is_some() {
            rules.push(Rule::always(Action::UpdateSetWithSaddr(affinity_set(
                id, &b.addr,
            ))));
        }
        rules.push(Rule::always(Action::Dnat(proto, b.addr)));
        self.table
            .chains
            .insert(chain.to_string(), Chain { base: None, rules });
    }
}

/// The map holding the same Service port keys as `map` for the other case (endpoints or
/// none); `map` itself for other maps.
pub fn claim_twin(map: &str) -> &str {
    match map {
        SERVICE_IPS => NO_ENDPOINT_SERVICES,
        NO_ENDPOINT_SERVICES => SERVICE_IPS,
        SERVICE_NODEPORTS => NO_ENDPOINT_NODEPORTS,
        NO_ENDPOINT_NODEPORTS => SERVICE_NODEPORTS,
        other => other,
    }
}

/// Reject (the client learns at once), except where a Local policy leaves a port without
/// local endpoints: then kube-proxy drops, as other nodes may still serve it.
fn no_endpoints_verdict(is_local_policy: bool) -> MapVerdict {
    if is_local_policy {
        MapVerdict::Drop
    } else {
        MapVerdict::Goto(REJECT_CHAIN.to_string())
    }
}

/// The Service's externalIPs of family `fam` that may be proxied; the node's own addresses and
/// addresses inside the service CIDR are skipped, each with a problem naming the Service.
pub(crate) fn external_ips(
    svc: &Service,
    fam: IpFamily,
    node: &NodeConfig,
    problems: &mut Vec<BuildError>,
) -> Vec<IpAddr> {
    let mut usable = Vec::new();
    for ip in svc.external_ips.iter().filter(|ip| IpFamily::of(ip) == fam) {
        if node.is_node_ip(ip) {
            problems.push(BuildError {
                object: format!("service {}", svc.key()),
                problem: format!(
                    "externalIP {ip} is this node's own address, skipped (it would capture the node's own ports)"
                ),
            });
        } else if node.service_cidrs.iter().any(|c| c.contains(ip)) {
            problems.push(BuildError {
                object: format!("service {}", svc.key()),
                problem: format!("externalIP {ip} is inside the service CIDR, skipped"),
            });
        } else {
            usable.push(*ip);
        }
    }
    usable
}

/// All endpoints of one Service port in one family, deduplicated by address and port, in
/// slice-name order. Endpoints that are neither ready nor serving+terminating are kept out.
pub(crate) fn backends(
    svc: &Service,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    fam: IpFamily,
    node_name: &str,
) -> Vec<(Backend, bool)> {
    let mut out: Vec<(Backend, bool)> = Vec::new();
    for slice in slices.iter().filter(|s| {
        s.namespace == svc.namespace && s.service_name == svc.name && s.address_type == fam
    }) {
        let Some(ep_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for e in &slice.endpoints {
            let c = e.conditions;
            if !c.is_usable() {
                continue;
            }
            let addr = SocketAddr::new(e.address, ep_port.port);
            if out.iter().any(|(b, _)| b.addr == addr) {
                continue;
            }
            let is_local = e.node_name == Some(node_name);
            out.push((Backend { addr, is_local }, c.ready));
        }
    }
    out.sort_by_key(|(b, _)| b.addr);
    out
}

/// One Service port's endpoints as kube-proxy's traffic policies select them: the nftables
/// builder, its shared-map shape and the iptables fallback all start from this.
pub(crate) struct Selection {
    /// Usable endpoints on any node.
    pub cluster: Vec<Backend>,
    /// Usable endpoints on this node.
    pub local: Vec<Backend>,
    /// `internalTrafficPolicy: Local`.
    pub itp_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub etp_local: bool,
    /// Reachable from outside: a NodePort or externalIPs.
    pub is_external: bool,
}

impl Selection {
    pub fn new(
        svc: &Service,
        port: &ServicePort,
        external_ips: &[IpAddr],
        all: &[(Backend, bool)],
    ) -> Selection {
        Selection {
            cluster: usable(all, false),
            local: usable(all, true),
            itp_local: svc.internal_traffic_policy == TrafficPolicy::Local,
            etp_local: svc.external_traffic_policy == TrafficPolicy::Local,
            is_external: port.node_port.is_some() || !external_ips.is_empty(),
        }
    }
}

/// kube-proxy's rule: the ready endpoints; if there are none, the serving+terminating ones.
pub(crate) fn usable(all: &[(Backend, bool)], only_local: bool) -> Vec<Backend> {
    let candidates = all.iter().filter(|(b, _)| !only_local || b.is_local);
    let ready: Vec<Backend> = candidates
        .clone()
        .filter(|(_, is_ready)| *is_ready)
        .map(|(b, _)| *b)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates.map(|(b, _)| *b).collect()
}
