//! The shared-map shape of a Service port (every port without session affinity): no chain
//! and no set of its own, only elements.
//!
//! ```text
//!  @service-ips      clusterIP . tcp . 80 ─► goto clusterip-N ──► endpoints-N
//!                    externalIP . tcp . 80 ─► goto external-N ───► endpoints-N
//!  @service-nodeports          tcp . 30080 ─► goto nodeport-N ───► nodeport-endpoints-N
//!  endpoints-N: dnat to ip daddr . meta l4proto . th dport . numgen random mod N
//!               map @service-backends   (elements: clusterIP . tcp . 80 . i : endpoint i)
//! ```
//!
//! One chain per endpoint count (and policy), made on first use, serves every Service with
//! that many endpoints: the kernel's cost of a Service is its map elements. A Local policy
//! uses the `*-local-*` chains and maps, holding this node's endpoints; an external Local
//! policy that still sends pod and host traffic to the whole cluster uses
//! `external-local-C-L` (C cluster, L local endpoints). NodePorts are keyed by protocol and
//! port only, so they answer on every address in `@nodeport-ips`. Hairpin traffic (an
//! endpoint reaching itself through the Service) is masqueraded in nat-postrouting through
//! one set of `endpoint . endpoint . port`.

use std::net::IpAddr;

use super::{
    Backend, BuildError, HAIRPIN, MARK_FOR_MASQUERADE, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES,
    NODEPORT_BACKENDS, NODEPORT_LOCAL_BACKENDS, SERVICE_BACKENDS, SERVICE_IPS,
    SERVICE_LOCAL_BACKENDS, SERVICE_NODEPORTS, Selection, TableBuilder, no_endpoints_verdict,
};
use crate::proxy::model::{Protocol, Service, ServicePort};
use crate::proxy::ruleset::{
    Action, AddrMatch, Chain, Key, KeyPart, LookupKey, MapVerdict, Match, Rule,
};

/// One Service port and what [`super::build`] found for it.
#[derive(Clone, Copy)]
pub(super) struct PortInput<'a> {
    pub svc: &'a Service,
    pub port: &'a ServicePort,
    pub cluster_ip: IpAddr,
    pub external_ips: &'a [IpAddr],
    /// Every endpoint, and whether it is ready.
    pub all: &'a [(Backend, bool)],
}

/// Where a Service is reached: an address and port (`@service-ips`), or a NodePort.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    Addr,
    NodePort,
}

impl Entry {
    fn lookup(self) -> LookupKey {
        match self {
            Entry::Addr => LookupKey::DaddrProtoPort,
            Entry::NodePort => LookupKey::ProtoPort,
        }
    }

    /// The endpoint map for a cluster (`false`) or local (`true`) selection.
    fn backends(self, local: bool) -> &'static str {
        match (self, local) {
            (Entry::Addr, false) => SERVICE_BACKENDS,
            (Entry::Addr, true) => SERVICE_LOCAL_BACKENDS,
            (Entry::NodePort, false) => NODEPORT_BACKENDS,
            (Entry::NodePort, true) => NODEPORT_LOCAL_BACKENDS,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Entry::Addr => "",
            Entry::NodePort => "nodeport-",
        }
    }
}

impl TableBuilder<'_> {
    pub(super) fn add_shared_port(&mut self, p: &PortInput<'_>, problems: &mut Vec<BuildError>) {
        let PortInput {
            svc,
            port,
            cluster_ip,
            external_ips,
            all,
        } = *p;
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

        // Internal traffic: the clusterIP.
        let key = addr_key(cluster_ip, proto, port.port);
        let what = format!("{cluster_ip} {}/{}", port.port, proto.as_kubernetes());
        if internal.is_empty() {
            let verdict = no_endpoints_verdict(itp_local);
            self.claim(NO_ENDPOINT_SERVICES, key, verdict, svc, &what, problems);
        } else {
            let chain = self.clusterip_chain(itp_local, internal.len());
            if self.claim(SERVICE_IPS, key.clone(), goto(&chain), svc, &what, problems) {
                self.put_backends(SERVICE_BACKENDS_FOR[usize::from(itp_local)], &key, internal);
            }
        }
        if !is_external {
            return;
        }

        // External traffic: externalIPs and NodePorts.
        let mut entries: Vec<(Entry, Key, String)> = external_ips
            .iter()
            .map(|ip| {
                let what = format!("externalIP {ip} {}/{}", port.port, proto.as_kubernetes());
                (Entry::Addr, addr_key(*ip, proto, port.port), what)
            })
            .collect();
        if let Some(node_port) = port.node_port {
            let key = vec![KeyPart::Proto(proto), KeyPart::Port(node_port)];
            let what = format!("nodePort {node_port}/{}", proto.as_kubernetes());
            entries.push((Entry::NodePort, key, what));
        }
        for (entry, key, what) in entries {
            let (vmap, no_endpoints) = match entry {
                Entry::Addr => (SERVICE_IPS, NO_ENDPOINT_SERVICES),
                Entry::NodePort => (SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS),
            };
            if external.is_empty() {
                let verdict = no_endpoints_verdict(etp_local);
                self.claim(no_endpoints, key, verdict, svc, &what, problems);
                continue;
            }
            let chain = if etp_local {
                self.external_local_chain(entry, cluster.len(), local.len())
            } else {
                self.external_chain(entry, cluster.len())
            };
            if !self.claim(vmap, key.clone(), goto(&chain), svc, &what, problems) {
                continue;
            }
            self.put_backends(entry.backends(false), &key, &cluster);
            if etp_local {
                self.put_backends(entry.backends(true), &key, &local);
            }
        }
    }

    /// `key . i : endpoint i` for each endpoint, and each endpoint in the hairpin set.
    fn put_backends(&mut self, map: &str, key: &Key, backends: &[Backend]) {
        if let Some(m) = self.table.dnat_maps.get_mut(map) {
            for (i, b) in backends.iter().enumerate() {
                let mut k = key.clone();
                k.push(KeyPart::Index(i as u32));
                m.elements.insert(k, b.addr);
            }
        }
        if let Some(set) = self.table.sets.get_mut(HAIRPIN) {
            for b in backends {
                let ip = KeyPart::Addr(b.addr.ip());
                set.elements
                    .insert(vec![ip, ip, KeyPart::Port(b.addr.port())]);
            }
        }
    }

    fn ensure_chain(&mut self, name: &str, rules: impl FnOnce(&Self) -> Vec<Rule>) {
        if !self.table.chains.contains_key(name) {
            let rules = rules(self);
            self.table
                .chains
                .insert(name.to_string(), Chain { base: None, rules });
        }
    }

    /// `endpoints-N` (and its local and NodePort kin): DNAT to one of N endpoints.
    fn dnat_chain(&mut self, entry: Entry, local: bool, n: usize) -> String {
        let locality = if local { "local-" } else { "" };
        let name = format!("{}{locality}endpoints-{n}", entry.prefix());
        self.ensure_chain(&name, |_| {
            [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .map(|proto| {
                    Rule::new(
                        vec![Match::L4Proto(proto)],
                        Action::DnatMap {
                            key: entry.lookup(),
                            modulus: n as u32,
                            map: entry.backends(local).to_string(),
                        },
                    )
                })
                .collect()
        });
        name
    }

    /// `clusterip-N` / `clusterip-local-N`: masquerade off-cluster clients, then DNAT.
    fn clusterip_chain(&mut self, local: bool, n: usize) -> String {
        let target = self.dnat_chain(Entry::Addr, local, n);
        let locality = if local { "local-" } else { "" };
        let name = format!("clusterip-{locality}{n}");
        self.ensure_chain(&name, |b| {
            let saddr: Vec<Match> = b
                .cluster_cidrs()
                .map(|c| Match::Saddr(AddrMatch::NotIn(c)))
                .collect();
            vec![
                Rule::new(saddr, Action::Jump(MARK_FOR_MASQUERADE.to_string()))
                    .with_comment("masquerade traffic from outside the cluster to the clusterIP"),
                Rule::always(Action::Goto(target)),
            ]
        });
        name
    }

    /// `external-N` / `nodeport-N` (Cluster policy): masquerade, then DNAT.
    fn external_chain(&mut self, entry: Entry, n: usize) -> String {
        let target = self.dnat_chain(entry, false, n);
        let name = match entry {
            Entry::Addr => format!("external-{n}"),
            Entry::NodePort => format!("nodeport-{n}"),
        };
        self.ensure_chain(&name, |_| {
            vec![
                Rule::always(Action::Jump(MARK_FOR_MASQUERADE.to_string())),
                Rule::always(Action::Goto(target)),
            ]
        });
        name
    }

    /// `external-local-C-L` / `nodeport-local-C-L` (Local policy): pods and this host reach
    /// the whole cluster (C endpoints), other clients this node's L endpoints, unmasqueraded.
    fn external_local_chain(&mut self, entry: Entry, c: usize, l: usize) -> String {
        let cluster = self.dnat_chain(entry, false, c);
        let local = self.dnat_chain(entry, true, l);
        let name = match entry {
            Entry::Addr => format!("external-local-{c}-{l}"),
            Entry::NodePort => format!("nodeport-local-{c}-{l}"),
        };
        self.ensure_chain(&name, |b| {
            let mut rules: Vec<Rule> = b
                .cluster_cidrs()
                .map(|cidr| {
                    Rule::new(
                        vec![Match::Saddr(AddrMatch::In(cidr))],
                        Action::Goto(cluster.clone()),
                    )
                    .with_comment("pod traffic goes to the whole cluster")
                })
                .collect();
            rules.push(
                Rule::new(
                    vec![Match::FibSaddrLocal],
                    Action::Jump(MARK_FOR_MASQUERADE.to_string()),
                )
                .with_comment("masquerade traffic from this host"),
            );
            rules.push(
                Rule::new(vec![Match::FibSaddrLocal], Action::Goto(cluster.clone()))
                    .with_comment("traffic from this host goes to the whole cluster"),
            );
            rules.push(Rule::always(Action::Goto(local)));
            rules
        });
        name
    }
}

/// The clusterIP's endpoint map by internalTrafficPolicy (Cluster, Local).
const SERVICE_BACKENDS_FOR: [&str; 2] = [SERVICE_BACKENDS, SERVICE_LOCAL_BACKENDS];

fn addr_key(ip: IpAddr, proto: Protocol, port: u16) -> Key {
    vec![
        KeyPart::Addr(ip),
        KeyPart::Proto(proto),
        KeyPart::Port(port),
    ]
}

fn goto(chain: &str) -> MapVerdict {
    MapVerdict::Goto(chain.to_string())
}
