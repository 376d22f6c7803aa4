//! hostPort: the port mappings a pod asks for (from its containers' `ports`) and the node-wide
//! book of which pod holds which host port. Pure.
//!
//! Two pods may not hold the same host port and protocol on overlapping host IPs (an unset
//! `hostIP` means every address), which is the scheduler's `NodePorts` rule; a static pod has no
//! scheduler, so the second pod is refused here, before anything of its network is set up.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde_json::Value;

use crate::k8s::Pod;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol's name as in a Pod (`TCP`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The name CNI's portmap plugin wants (`tcp`).
    pub fn cni(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One `hostPort` of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub container: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `hostIP`; `None` means every address of the node.
    pub host_ip: Option<Ipv4Addr>,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(
                f,
                "hostPort {ip}:{}/{}",
                self.host_port,
                self.protocol.as_str()
            ),
            None => write!(f, "hostPort {}/{}", self.host_port, self.protocol.as_str()),
        }
    }
}

fn port(v: Option<&Value>, what: &str, container: &str) -> Result<Option<u16>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(n) => match n.as_u64() {
            Some(p) if (1..=65535).contains(&p) => Ok(Some(p as u16)),
            _ => Err(format!(
                "container {container:?}: ports: {what} {n}: must be between 1 and 65535"
            )),
        },
    }
}

/// The host ports a pod asks for. A hostNetwork pod's ports are host ports (Kubernetes
/// defaults `hostPort` to `containerPort` there): they are held the same way, and never mapped.
pub fn host_ports(pod: &Pod) -> Result<Vec<PortMapping>, String> {
    let mut out: Vec<PortMapping> = Vec::new();
    let containers = pod.spec.init_containers.iter().chain(&pod.spec.containers);
    for c in containers {
        let items = match &c.ports {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(format!(
                    "container {:?}: ports: {other}: want a list",
                    c.name
                ));
            }
        };
        for item in items {
            let container_port = port(item.get("containerPort"), "containerPort", &c.name)?;
            let host_port = match port(item.get("hostPort"), "hostPort", &c.name)? {
                Some(p) => p,
                None if pod.spec.host_network => match container_port {
                    Some(p) => p,
                    None => continue,
                },
                None => continue,
            };
            let container_port = container_port.ok_or_else(|| {
                format!("container {:?}: ports: containerPort is required", c.name)
            })?;
            let protocol = match item.get("protocol").and_then(Value::as_str) {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(p) => {
                    return Err(format!(
                        "container {:?}: ports: protocol {p:?}: want TCP, UDP or SCTP",
                        c.name
                    ));
                }
            };
            let host_ip = match item.get("hostIP").and_then(Value::as_str) {
                None | Some("") | Some("0.0.0.0") => None,
                Some(ip) => Some(ip.parse().map_err(|_| {
                    format!(
                        "container {:?}: ports: hostIP {ip:?} is not an IPv4 address",
                        c.name
                    )
                })?),
            };
            let m = PortMapping {
                container: c.name.clone(),
                host_port,
                container_port,
                protocol,
                host_ip,
            };
            if let Some(dup) = out.iter().find(|o| overlaps(o, &m)) {
                return Err(format!(
                    "container {:?}: {m} is also asked for by container {:?}",
                    c.name, dup.container
                ));
            }
            out.push(m);
        }
    }
    Ok(out)
}

fn overlaps(a: &PortMapping, b: &PortMapping) -> bool {
    a.host_port == b.host_port
        && a.protocol == b.protocol
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

/// Which pod holds which host ports on this node.
#[derive(Debug, Default)]
pub struct HostPortBook {
    /// pod uid → (pod name, its mappings)
    held: BTreeMap<String, (String, Vec<PortMapping>)>,
}

impl HostPortBook {
    /// Records `ports` for pod `uid` unless one of them overlaps a port another pod holds; then
    /// nothing is recorded and the error names the port and the pod holding it.
    pub fn claim(&mut self, uid: &str, pod: &str, ports: &[PortMapping]) -> Result<(), String> {
        for m in ports {
            for (other_uid, (other, theirs)) in &self.held {
                if other_uid != uid && theirs.iter().any(|t| overlaps(t, m)) {
                    return Err(format!(
                        "container {:?}: {m} is already taken by pod {other} (node(s) didn't have free ports for the requested pod ports)",
                        m.container
                    ));
                }
            }
        }
        if !ports.is_empty() {
            self.held
                .insert(uid.to_string(), (pod.to_string(), ports.to_vec()));
        }
        Ok(())
    }

    pub fn release(&mut self, uid: &str) {
        self.held.remove(uid);
    }

    /// Every mapping held, with its pod uid (for the NAT rules).
    pub fn all(&self) -> impl Iterator<Item = (&str, &PortMapping)> {
        self.held
            .iter()
            .flat_map(|(uid, (_, ms))| ms.iter().map(move |m| (uid.as_str(), m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ports: Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "busybox", "ports": ports}]}
        }))
        .unwrap()
    }

    #[test]
    fn host_ports_are_read_with_defaults() {
        let p = pod(serde_json::json!([
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
            {"containerPort": 9000}
        ]));
        let got = host_ports(&p).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].to_string(), "hostPort 8080/TCP");
        assert_eq!(got[1].to_string(), "hostPort 127.0.0.1:5353/UDP");
        assert_eq!(got[1].container_port, 53);
    }

    #[test]
    fn host_network_ports_are_host_ports() {
        let mut p = pod(
            serde_json::json!([{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}]),
        );
        assert!(host_ports(&p).unwrap().is_empty());
        p.spec.host_network = true;
        let got: Vec<String> = host_ports(&p)
            .unwrap()
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(got, ["hostPort 80/TCP", "hostPort 53/UDP"]);
    }

    #[test]
    fn bad_ports_are_errors_naming_the_container() {
        for (ports, want) in [
            (
                serde_json::json!([{"containerPort": 80, "hostPort": 70000}]),
                "hostPort 70000",
            ),
            (
                serde_json::json!([{"hostPort": 80}]),
                "containerPort is required",
            ),
            (
                serde_json::json!([{"containerPort": 1, "hostPort": 80, "protocol": "ICMP"}]),
                "protocol \"ICMP\"",
            ),
            (
                serde_json::json!([{"containerPort": 1, "hostPort": 80}, {"containerPort": 2, "hostPort": 80}]),
                "also asked for",
            ),
        ] {
            let e = host_ports(&pod(ports.clone())).unwrap_err();
            assert!(
                e.starts_with("container \"app\": ") && e.contains(want),
                "{ports}: {e}"
            );
        }
    }

    #[test]
    fn a_second_pod_cannot_take_a_held_port_and_nothing_is_recorded() {
        let mut book = HostPortBook::default();
        let a = host_ports(&pod(
            serde_json::json!([{"containerPort": 80, "hostPort": 8080}]),
        ))
        .unwrap();
        book.claim("uid-a", "default/a", &a).unwrap();
        let b = host_ports(&pod(serde_json::json!([
            {"containerPort": 81, "hostPort": 8081},
            {"containerPort": 80, "hostPort": 8080, "hostIP": "127.0.0.1"}
        ])))
        .unwrap();
        let e = book.claim("uid-b", "default/b", &b).unwrap_err();
        assert!(
            e.contains("hostPort 127.0.0.1:8080/TCP is already taken by pod default/a"),
            "{e}"
        );
        assert_eq!(book.all().count(), 1, "nothing of pod b is recorded");
        // UDP on the same number is another port; the same pod may claim again (adoption).
        let udp = host_ports(&pod(
            serde_json::json!([{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]),
        ))
        .unwrap();
        book.claim("uid-c", "default/c", &udp).unwrap();
        book.claim("uid-a", "default/a", &a).unwrap();
        book.release("uid-a");
        book.claim("uid-b", "default/b", &b).unwrap();
    }
}
