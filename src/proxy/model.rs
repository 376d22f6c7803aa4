//! The proxy's inputs as typed, validated values: v1 Services, discovery.k8s.io/v1
//! EndpointSlices and the node's own network facts ([`NodeConfig`]).
//!
//! Everything is parsed once here, at the edge, from a `serde_json::Value` as the API server
//! sends it; the ruleset builder then trusts the types. Errors name the object and the field:
//! `service default/web: spec.ports[1]: duplicate port 80/TCP`.
//!
//! IP addresses are parsed strictly: no leading zeros (`010.0.0.1` is octal to some parsers
//! and decimal to others), no IPv4-mapped IPv6 (its family is ambiguous), and each address must
//! have the family its field promises.
//!
//! The values are compact ([`compact`]): the store keeps every Service and EndpointSlice for
//! as long as the agent runs, so endpoints are packed, repeated names shared, lists of one item
//! inline.
//!
//! This module must never do I/O, and never look at the ruleset: it only knows Kubernetes.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

pub mod compact;

use compact::EndpointsBuilder;
pub use compact::{Endpoint, Endpoints, Few, Interner, Name, Shared};

/// The longest DNS-1123 label: namespaces, Service names, port names are all labels.
pub const MAX_LABEL_LEN: usize = 63;
/// The API server's limit on endpoints in one EndpointSlice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 1000;
/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;
/// The API server's upper bound for `timeoutSeconds` (one day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86400;

/// A problem with one input object, naming it and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    /// `service default/web`, `endpointslice default/web-abc12`, `node config`.
    pub object: String,
    /// The field path, e.g. `spec.ports[1]`; empty for the object as a whole.
    pub field: String,
    /// What is wrong, lowercase.
    pub problem: String,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.problem)
        } else {
            write!(f, "{}: {}: {}", self.object, self.field, self.problem)
        }
    }
}

impl std::error::Error for ModelError {}

/// IPv4 or IPv6; one nftables table per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The Kubernetes spelling (`IPv4`, `IPv6`).
    pub fn as_kubernetes(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// The L4 protocols a Service port may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling (`TCP`).
    pub fn as_kubernetes(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The nftables spelling (`tcp`).
    pub fn as_nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// An address prefix such as `10.244.0.0/16`, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::/n` strictly; host bits must be zero.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected an address prefix like 10.244.0.0/16"))?;
        let addr = parse_ip(addr)?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix_len: u8 = match len.parse() {
            Ok(n) if n <= max && !(len.len() > 1 && len.starts_with('0')) => n,
            _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
        };
        let cidr = Cidr { addr, prefix_len };
        if cidr.network() != addr {
            return Err(format!("{s:?}: host bits must be zero"));
        }
        Ok(cidr)
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }

    /// The address with all host bits cleared.
    fn network(&self) -> IpAddr {
        mask(self.addr, self.prefix_len)
    }

    /// Is `addr` inside this prefix? Never for the other family.
    pub fn contains(&self, addr: &IpAddr) -> bool {
        IpFamily::of(addr) == self.family() && mask(*addr, self.prefix_len) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Parses an IP address as the API server's strict validation does.
///
/// Rejects IPv4 octets with leading zeros (`010.0.0.1`) and IPv4-mapped IPv6
/// (`::ffff:10.0.0.1`), both of which older parsers read differently.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let looks_v4 = !s.contains(':');
    if looks_v4
        && s.split('.')
            .any(|octet| octet.len() > 1 && octet.starts_with('0'))
    {
        return Err(format!("{s:?}: IPv4 address must not have leading zeros"));
    }
    let addr: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?}: not a valid IP address"))?;
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "{s:?}: IPv4-mapped IPv6 address is not allowed, use the IPv4 form"
        ));
    }
    Ok(addr)
}

/// `spec.type`, reduced to what the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    /// Proxied like NodePort; `status.loadBalancer` ingress IPs are not programmed yet.
    LoadBalancer,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// May be empty only when the Service has a single port.
    pub name: Shared,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// A v1 Service the proxy programs. Headless and ExternalName Services never become one:
/// [`Service::from_json`] returns `Ok(None)` for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: Shared,
    pub name: Name,
    pub service_type: ServiceType,
    /// At most one per family (`spec.clusterIPs`).
    pub cluster_ips: Few<IpAddr>,
    pub ports: Few<ServicePort>,
    pub external_ips: Few<IpAddr>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub session_affinity_timeout: Option<u32>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The ClusterIP of one family, if the Service has that family.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// Does this Service expose node ports?
    pub fn has_node_ports(&self) -> bool {
        matches!(
            self.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        )
    }

    /// Decodes and validates a v1 Service. `Ok(None)` for Services the proxy skips
    /// (headless: `clusterIP: None`; `type: ExternalName`).
    pub fn from_json(value: &Value) -> Result<Option<Service>, ModelError> {
        let (namespace, name) = object_meta(value, "service")?;
        let cx = Cx {
            object: format!("service {namespace}/{name}"),
        };
        let spec = value.get("spec").unwrap_or(&Value::Null);
        let service_type = match opt_str(&cx, spec, "type", "spec.type")? {
            None | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => return Ok(None),
            Some(other) => return Err(cx.err("spec.type", format!("unknown type {other:?}"))),
        };
        let cluster_ips = cluster_ips(&cx, spec)?;
        let Some(cluster_ips) = cluster_ips else {
            return Ok(None);
        };
        let ports = service_ports(&cx, spec, service_type)?;
        let mut external_ips = Vec::new();
        for (i, ip) in str_list(&cx, spec, "externalIPs", "spec.externalIPs")?
            .iter()
            .enumerate()
        {
            let field = format!("spec.externalIPs[{i}]");
            let addr = parse_ip(ip).map_err(|p| cx.err(&field, p))?;
            if addr.is_loopback() || addr.is_unspecified() || addr.is_multicast() {
                return Err(cx.err(
                    &field,
                    format!("{addr} is a loopback, unspecified or multicast address"),
                ));
            }
            if !cluster_ips
                .iter()
                .any(|c| IpFamily::of(c) == IpFamily::of(&addr))
            {
                return Err(cx.err(
                    &field,
                    format!(
                        "{addr} is {} but the service has no {} clusterIP",
                        IpFamily::of(&addr).as_kubernetes(),
                        IpFamily::of(&addr).as_kubernetes()
                    ),
                ));
            }
            if external_ips.contains(&addr) {
                return Err(cx.err(&field, format!("duplicate external IP {addr}")));
            }
            external_ips.push(addr);
        }
        let external_traffic_policy = policy(&cx, spec, "externalTrafficPolicy")?;
        let internal_traffic_policy = policy(&cx, spec, "internalTrafficPolicy")?;
        let session_affinity_timeout = session_affinity(&cx, spec)?;
        Ok(Some(Service {
            namespace: Shared::from(namespace.as_str()),
            name: Name::from(name.as_str()),
            service_type,
            cluster_ips: cluster_ips.into(),
            ports: ports.into(),
            external_ips: external_ips.into(),
            external_traffic_policy,
            internal_traffic_policy,
            session_affinity_timeout,
        }))
    }
}

/// The readiness of one endpoint, with EndpointSlice defaults applied:
/// `ready` unset means ready, `serving` unset means the value of `ready`,
/// `terminating` unset means not terminating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    /// May this endpoint get new connections at all: ready, or serving while terminating
    /// (the latter only when no endpoint is ready: see `build`)?
    pub fn is_usable(&self) -> bool {
        self.ready || (self.serving && self.terminating)
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    /// Matches the Service port's name; empty for an unnamed port.
    pub name: Shared,
    pub protocol: Protocol,
    pub port: u16,
}

/// A discovery.k8s.io/v1 EndpointSlice. FQDN slices are skipped: `from_json` returns `Ok(None)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: Shared,
    pub name: Name,
    /// From the `kubernetes.io/service-name` label.
    pub service_name: Name,
    pub address_type: IpFamily,
    pub ports: Few<EndpointPort>,
    pub endpoints: Endpoints,
}

impl EndpointSlice {
    /// Decodes and validates an EndpointSlice; `Ok(None)` for `addressType: FQDN`.
    pub fn from_json(value: &Value) -> Result<Option<EndpointSlice>, ModelError> {
        let (namespace, name) = object_meta(value, "endpointslice")?;
        let cx = Cx {
            object: format!("endpointslice {namespace}/{name}"),
        };
        let service_name = value
            .pointer("/metadata/labels/kubernetes.io~1service-name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                cx.err(
                    "metadata.labels",
                    "missing label kubernetes.io/service-name".to_string(),
                )
            })?;
        check_label(service_name)
            .map_err(|p| cx.err("metadata.labels[kubernetes.io/service-name]", p))?;
        let address_type = match opt_str(&cx, value, "addressType", "addressType")? {
            Some("IPv4") => IpFamily::V4,
            Some("IPv6") => IpFamily::V6,
            Some("FQDN") => return Ok(None),
            Some(other) => {
                return Err(cx.err("addressType", format!("unknown address type {other:?}")));
            }
            None => return Err(cx.err("addressType", "must be set".to_string())),
        };
        let mut ports = Vec::new();
        for (i, p) in list(&cx, value, "ports", "ports")?.iter().enumerate() {
            let field = format!("ports[{i}]");
            let name = opt_str(&cx, p, "name", &field)?.unwrap_or("");
            let protocol = protocol(&cx, p, &field)?;
            // A null port means "all ports": only meaningful for headless Services; skip it.
            let Some(port) = opt_port(&cx, p, "port", &format!("{field}.port"))? else {
                continue;
            };
            if ports
                .iter()
                .any(|q: &EndpointPort| q.name == name && q.protocol == protocol)
            {
                return Err(cx.err(&field, format!("duplicate port name {name:?}")));
            }
            ports.push(EndpointPort {
                name: Shared::from(name),
                protocol,
                port,
            });
        }
        let raw = list(&cx, value, "endpoints", "endpoints")?;
        if raw.len() > MAX_ENDPOINTS_PER_SLICE {
            return Err(cx.err(
                "endpoints",
                format!(
                    "{} endpoints, at most {MAX_ENDPOINTS_PER_SLICE} are allowed in one slice",
                    raw.len()
                ),
            ));
        }
        let mut endpoints = EndpointsBuilder::new(address_type, raw.len());
        for (i, e) in raw.iter().enumerate() {
            let field = format!("endpoints[{i}]");
            let conditions = e.get("conditions").unwrap_or(&Value::Null);
            let flag = |key: &str| -> Result<Option<bool>, ModelError> {
                match conditions.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Bool(b)) => Ok(Some(*b)),
                    Some(_) => Err(cx.err(
                        &format!("{field}.conditions.{key}"),
                        "must be a boolean".to_string(),
                    )),
                }
            };
            let ready = flag("ready")?.unwrap_or(true);
            let conditions = Conditions {
                ready,
                serving: flag("serving")?.unwrap_or(ready),
                terminating: flag("terminating")?.unwrap_or(false),
            };
            let node_name = opt_str(&cx, e, "nodeName", &format!("{field}.nodeName"))?;
            let addresses = str_list(&cx, e, "addresses", &format!("{field}.addresses"))?;
            if addresses.is_empty() {
                return Err(cx.err(
                    &format!("{field}.addresses"),
                    "must have at least one address".to_string(),
                ));
            }
            // Consumers use only the first address (the API allows exactly one today).
            let f = format!("{field}.addresses[0]");
            let address = parse_ip(addresses[0]).map_err(|p| cx.err(&f, p))?;
            if IpFamily::of(&address) != address_type {
                return Err(cx.err(
                    &f,
                    format!(
                        "{address} is not an {} address (addressType {})",
                        address_type.as_kubernetes(),
                        address_type.as_kubernetes()
                    ),
                ));
            }
            endpoints.push(address, conditions, node_name);
        }
        Ok(Some(EndpointSlice {
            namespace: Shared::from(namespace.as_str()),
            name: Name::from(name.as_str()),
            service_name: Name::from(service_name),
            address_type,
            ports: ports.into(),
            endpoints: endpoints.finish(),
        }))
    }
}

/// The node's own network facts, from `nanolet.yaml` and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
    /// The node's own addresses: NodePorts answer on these.
    pub node_ips: Vec<IpAddr>,
    /// The pod network of the whole cluster (`clusterCIDR`): traffic from outside it to a
    /// ClusterIP is masqueraded.
    pub cluster_cidrs: Vec<Cidr>,
    /// The Service network: traffic to an address in it that no Service has is dropped.
    pub service_cidrs: Vec<Cidr>,
    /// The packet mark bit for "masquerade this" (kube-proxy's default is `0x4000`).
    pub masquerade_bit: u32,
}

impl NodeConfig {
    /// The IP families the proxy programs: those of the node's IPs and Service CIDRs, sorted.
    pub fn families(&self) -> Vec<IpFamily> {
        let mut families: Vec<IpFamily> = self
            .node_ips
            .iter()
            .map(IpFamily::of)
            .chain(self.service_cidrs.iter().map(|c| c.family()))
            .collect();
        families.sort();
        families.dedup();
        families
    }

    /// Checks the node config itself; the ruleset builder relies on this.
    pub fn validate(&self) -> Result<(), ModelError> {
        let cx = Cx {
            object: "node config".to_string(),
        };
        if !self.masquerade_bit.is_power_of_two() {
            return Err(cx.err(
                "masqueradeBit",
                format!("{:#x} must have exactly one bit set", self.masquerade_bit),
            ));
        }
        let mut seen = BTreeSet::new();
        for ip in &self.node_ips {
            if ip.is_loopback() || ip.is_unspecified() || !seen.insert(*ip) {
                return Err(cx.err(
                    "nodeIPs",
                    format!("{ip} is loopback, unspecified or duplicate"),
                ));
            }
        }
        Ok(())
    }

    /// Is `addr` one of this node's own addresses?
    pub fn is_node_ip(&self, addr: &IpAddr) -> bool {
        self.node_ips.contains(addr)
    }
}

/// The object name used in error messages.
struct Cx {
    object: String,
}

impl Cx {
    fn err(&self, field: &str, problem: String) -> ModelError {
        ModelError {
            object: self.object.clone(),
            field: field.to_string(),
            problem,
        }
    }
}

/// An object's `metadata.namespace` (default `default`) and `metadata.name` (empty when
/// missing), unchecked.
pub fn namespace_name(v: &Value) -> (&str, &str) {
    let namespace = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    (namespace, name)
}

/// `namespace/name` of an object: the key the store and the source use.
pub fn object_key(v: &Value) -> String {
    let (ns, name) = namespace_name(v);
    format!("{ns}/{name}")
}

/// `metadata.namespace` (default `default`) and `metadata.name`, both DNS labels.
fn object_meta(value: &Value, kind: &str) -> Result<(String, String), ModelError> {
    let (namespace, name) = namespace_name(value);
    let object = format!("{kind} {namespace}/{name}");
    let cx = Cx { object };
    if !value.is_object() {
        return Err(cx.err("", "expected a JSON object".to_string()));
    }
    check_label(name).map_err(|p| cx.err("metadata.name", p))?;
    check_label(namespace).map_err(|p| cx.err("metadata.namespace", p))?;
    Ok((namespace.to_string(), name.to_string()))
}

/// A DNS-1123 label: 1..=63 of `[a-z0-9-]`, starting and ending alphanumeric. These names
/// become nftables chain names, so this also keeps them within nft's identifier alphabet.
pub fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(format!(
            "{s:?}: {} characters, at most {MAX_LABEL_LEN} are allowed",
            s.len()
        ));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !s.starts_with('-') && !s.ends_with('-');
    if !ok_chars || !ok_ends {
        return Err(format!(
            "{s:?}: must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn opt_str<'a>(
    cx: &Cx,
    v: &'a Value,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(cx.err(field, "must be a string".to_string())),
    }
}

fn list<'a>(cx: &Cx, v: &'a Value, key: &str, field: &str) -> Result<&'a [Value], ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(cx.err(field, "must be a list".to_string())),
    }
}

fn str_list<'a>(cx: &Cx, v: &'a Value, key: &str, field: &str) -> Result<Vec<&'a str>, ModelError> {
    list(cx, v, key, field)?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str()
                .ok_or_else(|| cx.err(&format!("{field}[{i}]"), "must be a string".to_string()))
        })
        .collect()
}

fn opt_port(cx: &Cx, v: &Value, key: &str, field: &str) -> Result<Option<u16>, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => match n.as_u64() {
            Some(p @ 1..=65535) => Ok(Some(p as u16)),
            _ => Err(cx.err(field, format!("port {n} must be 1..=65535"))),
        },
    }
}

fn protocol(cx: &Cx, v: &Value, field: &str) -> Result<Protocol, ModelError> {
    let field = format!("{field}.protocol");
    match opt_str(cx, v, "protocol", &field)? {
        None => Ok(Protocol::Tcp),
        Some(p) => Protocol::parse(p)
            .ok_or_else(|| cx.err(&field, format!("{p:?}: must be TCP, UDP or SCTP"))),
    }
}

fn policy(cx: &Cx, spec: &Value, key: &str) -> Result<TrafficPolicy, ModelError> {
    let field = format!("spec.{key}");
    match opt_str(cx, spec, key, &field)? {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        // The pre-1.22 spelling, still accepted by the API server.
        Some("Global") => Ok(TrafficPolicy::Cluster),
        Some(other) => Err(cx.err(&field, format!("{other:?}: must be Cluster or Local"))),
    }
}

/// `spec.clusterIPs` (or `spec.clusterIP`); `None` for a headless Service.
fn cluster_ips(cx: &Cx, spec: &Value) -> Result<Option<Vec<IpAddr>>, ModelError> {
    let mut raw = str_list(cx, spec, "clusterIPs", "spec.clusterIPs")?;
    let mut field = "spec.clusterIPs";
    if raw.is_empty() {
        field = "spec.clusterIP";
        if let Some(ip) = opt_str(cx, spec, "clusterIP", field)? {
            raw.push(ip);
        }
    }
    if raw.first() == Some(&"None") {
        return Ok(None);
    }
    if raw.is_empty() || raw.iter().all(|s| s.is_empty()) {
        return Err(cx.err(field, "no clusterIP allocated".to_string()));
    }
    if raw.len() > 2 {
        return Err(cx.err(field, "at most one IP per family is allowed".to_string()));
    }
    // `spec.clusterIP` is one value; `spec.clusterIPs` a list.
    let at = |i: usize| {
        if field == "spec.clusterIP" {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        }
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let f = at(i);
        let ip = parse_ip(s).map_err(|p| cx.err(&f, p))?;
        if ips.iter().any(|o| IpFamily::of(o) == IpFamily::of(&ip)) {
            return Err(cx.err(
                &f,
                format!(
                    "{ip}: a second {} clusterIP, a dual-stack service has one of each family",
                    IpFamily::of(&ip).as_kubernetes()
                ),
            ));
        }
        ips.push(ip);
    }
    // `spec.ipFamilies`, when given, must agree with the addresses family by family.
    for (i, fam) in str_list(cx, spec, "ipFamilies", "spec.ipFamilies")?
        .iter()
        .enumerate()
    {
        if let Some(ip) = ips.get(i)
            && IpFamily::of(ip).as_kubernetes() != *fam
        {
            return Err(cx.err(
                &at(i),
                format!("{ip} is not an {fam} address (spec.ipFamilies[{i}] is {fam})"),
            ));
        }
    }
    Ok(Some(ips))
}

fn service_ports(
    cx: &Cx,
    spec: &Value,
    service_type: ServiceType,
) -> Result<Vec<ServicePort>, ModelError> {
    let raw = list(cx, spec, "ports", "spec.ports")?;
    if raw.is_empty() {
        return Err(cx.err("spec.ports", "must have at least one port".to_string()));
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let name = opt_str(cx, p, "name", &format!("{field}.name"))?
            .unwrap_or("")
            .to_string();
        if name.is_empty() && raw.len() > 1 {
            return Err(cx.err(
                &format!("{field}.name"),
                "must be set when the service has more than one port".to_string(),
            ));
        }
        if !name.is_empty() {
            check_label(&name).map_err(|e| cx.err(&format!("{field}.name"), e))?;
        }
        let protocol = protocol(cx, p, &field)?;
        let port = opt_port(cx, p, "port", &format!("{field}.port"))?
            .ok_or_else(|| cx.err(&format!("{field}.port"), "must be set".to_string()))?;
        let node_port = if service_type == ServiceType::ClusterIp {
            None
        } else {
            opt_port(cx, p, "nodePort", &format!("{field}.nodePort"))?
        };
        for other in &ports {
            if other.port == port && other.protocol == protocol {
                return Err(cx.err(
                    &field,
                    format!("duplicate port {port}/{}", protocol.as_kubernetes()),
                ));
            }
            if !name.is_empty() && other.name == name.as_str() {
                return Err(cx.err(&field, format!("duplicate port name {name:?}")));
            }
            if node_port.is_some() && other.node_port == node_port && other.protocol == protocol {
                return Err(cx.err(
                    &field,
                    format!(
                        "duplicate nodePort {}/{}",
                        node_port.unwrap_or_default(),
                        protocol.as_kubernetes()
                    ),
                ));
            }
        }
        ports.push(ServicePort {
            name: Shared::from(name.as_str()),
            protocol,
            port,
            node_port,
        });
    }
    Ok(ports)
}

fn session_affinity(cx: &Cx, spec: &Value) -> Result<Option<u32>, ModelError> {
    match opt_str(cx, spec, "sessionAffinity", "spec.sessionAffinity")? {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
            match spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds") {
                None | Some(Value::Null) => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)),
                Some(n) => match n.as_u64() {
                    Some(t @ 1..=86400) => Ok(Some(t as u32)),
                    _ => Err(cx.err(
                        field,
                        format!("{n} must be 1..={MAX_AFFINITY_TIMEOUT_SECONDS}"),
                    )),
                },
            }
        }
        Some(other) => Err(cx.err(
            "spec.sessionAffinity",
            format!("{other:?}: must be None or ClientIP"),
        )),
    }
}
