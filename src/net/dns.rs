//! A pod's `/etc/resolv.conf` and `/etc/hosts`, as kubelet writes them. Pure: the host's
//! resolv.conf text is passed in.
//!
//! `dnsPolicy` (kubelet's `getPodDNSType`):
//! - `ClusterFirst` (the default): the cluster's DNS (`clusterDNS`) with the search path
//!   `<namespace>.svc.<clusterDomain> svc.<clusterDomain> <clusterDomain>` then the host's, and
//!   `options ndots:5`. Without `clusterDNS` kubelet falls back to `Default`, and so does a
//!   hostNetwork pod.
//! - `ClusterFirstWithHostNet`: `ClusterFirst`, also for hostNetwork pods.
//! - `Default`: the host's nameservers, search path and options.
//! - `None`: only what `dnsConfig` says.
//!
//! `dnsConfig` (`nameservers`, `searches`, `options` of `name`/`value`) is merged on top, as
//! kubelet's `appendDNSConfig` does.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::k8s::Pod;

/// The node's DNS settings (from `nanolet.yaml`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterDns {
    /// `clusterDNS`: nameserver addresses.
    pub servers: Vec<String>,
    /// `clusterDomain`, e.g. `cluster.local`.
    pub domain: String,
}

/// kubelet's limits: at most 3 nameservers and 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

#[derive(Debug, Default, PartialEq, Eq)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

fn parse_host(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
            Some("search" | "domain") => r.searches = words.map(String::from).collect(),
            Some("options") => r.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    r
}

/// The text of the pod's `/etc/resolv.conf`; an error names the bad field.
pub fn resolv_conf(pod: &Pod, cluster: &ClusterDns, host_resolv: &str) -> Result<String, String> {
    let policy = match &pod.spec.dns_policy {
        None => "ClusterFirst",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("dnsPolicy: {other}: want a string")),
    };
    let host = parse_host(host_resolv);
    let cluster_first = || {
        let domain = &cluster.domain;
        let ns = &pod.metadata.namespace;
        let mut searches = if domain.is_empty() {
            Vec::new()
        } else {
            vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ]
        };
        searches.extend(host.searches.iter().cloned());
        Resolv {
            nameservers: cluster.servers.clone(),
            searches,
            options: vec!["ndots:5".to_string()],
        }
    };
    let mut r = match policy {
        "ClusterFirst" if cluster.servers.is_empty() || pod.spec.host_network => {
            if pod.spec.dns_config.is_none() {
                // The host's file as it is: nothing to merge.
                return Ok(host_resolv.to_string());
            }
            host
        }
        "ClusterFirst" | "ClusterFirstWithHostNet" if !cluster.servers.is_empty() => {
            cluster_first()
        }
        "ClusterFirstWithHostNet" | "Default" => host,
        "None" => Resolv::default(),
        other => {
            return Err(format!(
                "dnsPolicy: {other:?}: want ClusterFirst, ClusterFirstWithHostNet, Default or None"
            ));
        }
    };
    if let Some(cfg) = &pod.spec.dns_config {
        merge_dns_config(&mut r, cfg)?;
    }
    if policy == "None" && r.nameservers.is_empty() {
        return Err("dnsPolicy None: dnsConfig must list at least one nameserver".to_string());
    }
    r.nameservers.truncate(MAX_NAMESERVERS);
    dedup(&mut r.searches);
    r.searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    for ns in &r.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !r.searches.is_empty() {
        out.push_str(&format!("search {}\n", r.searches.join(" ")));
    }
    if !r.options.is_empty() {
        out.push_str(&format!("options {}\n", r.options.join(" ")));
    }
    Ok(out)
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

fn strings(v: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("dnsConfig.{field}: {i}: want a string"))
            })
            .collect(),
        Some(other) => Err(format!(
            "dnsConfig.{field}: {other}: want a list of strings"
        )),
    }
}

fn merge_dns_config(r: &mut Resolv, cfg: &Value) -> Result<(), String> {
    let Value::Object(map) = cfg else {
        return Err(format!("dnsConfig: {cfg}: want an object"));
    };
    if let Some(unknown) = map
        .keys()
        .find(|k| !["nameservers", "searches", "options"].contains(&k.as_str()))
    {
        return Err(format!("dnsConfig: unknown field {unknown:?}"));
    }
    for ns in strings(map.get("nameservers"), "nameservers")? {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "dnsConfig.nameservers: {ns:?} is not an IP address"
            ));
        }
        if !r.nameservers.contains(&ns) {
            r.nameservers.push(ns);
        }
    }
    r.searches.extend(strings(map.get("searches"), "searches")?);
    let options = match map.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => return Err(format!("dnsConfig.options: {other}: want a list")),
    };
    for o in options {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("dnsConfig.options: {o}: want a name"))?;
        let text = match o.get("value").and_then(Value::as_str) {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        // A pod's option replaces the same option from the policy (kubelet's mergeDNSOptions).
        r.options
            .retain(|existing| existing.split(':').next() != Some(name));
        r.options.push(text);
    }
    Ok(())
}

/// The pod's hostname: `spec.hostname` or the pod's name, at most 63 characters (kubelet's
/// `GeneratePodHostNameAndDomain`, without the trailing dot or dash).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone());
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}

/// The pod's `/etc/hosts` (kubelet's `managedHostsFileContent`), for a pod with its own network
/// namespace. `ip` is the pod's address, if it has one.
pub fn hosts_file(pod: &Pod, hostname: &str, ip: Option<Ipv4Addr>, domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let address = ip.map_or_else(|| "127.0.1.1".to_string(), |ip| ip.to_string());
    match pod.spec.subdomain.as_deref() {
        Some(sub) if !sub.is_empty() && !domain.is_empty() => {
            let ns = &pod.metadata.namespace;
            out.push_str(&format!(
                "{address}\t{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}\n"
            ));
        }
        _ => out.push_str(&format!("{address}\t{hostname}\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "a", "image": "busybox"}]}
        });
        for (k, val) in extra.as_object().unwrap() {
            v["spec"][k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    const HOST: &str = "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example\noptions edns0\n";

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.96.0.10".into()],
            domain: "cluster.local".into(),
        }
    }

    #[test]
    fn cluster_first_uses_cluster_dns_and_the_namespace_search_path() {
        let got = resolv_conf(&pod(serde_json::json!({})), &cluster(), HOST).unwrap();
        assert_eq!(
            got,
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
    }

    #[test]
    fn without_cluster_dns_and_for_host_network_the_host_file_is_used() {
        let p = pod(serde_json::json!({}));
        assert_eq!(resolv_conf(&p, &ClusterDns::default(), HOST).unwrap(), HOST);
        let hn = pod(serde_json::json!({"hostNetwork": true}));
        assert_eq!(resolv_conf(&hn, &cluster(), HOST).unwrap(), HOST);
        let with =
            pod(serde_json::json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert!(
            resolv_conf(&with, &cluster(), HOST)
                .unwrap()
                .starts_with("nameserver 10.96.0.10\n")
        );
    }

    #[test]
    fn default_and_none_policies_with_dns_config() {
        let d = pod(serde_json::json!({"dnsPolicy": "Default", "dnsConfig": {
            "searches": ["extra.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&d, &cluster(), HOST).unwrap(),
            "nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example extra.example\noptions ndots:2 edns0\n"
        );
        let n = pod(
            serde_json::json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"]}}),
        );
        assert_eq!(
            resolv_conf(&n, &cluster(), HOST).unwrap(),
            "nameserver 1.2.3.4\n"
        );
    }

    #[test]
    fn bad_dns_settings_are_errors_naming_the_field() {
        for (extra, want) in [
            (
                serde_json::json!({"dnsPolicy": "Sometimes"}),
                "dnsPolicy: \"Sometimes\"",
            ),
            (
                serde_json::json!({"dnsPolicy": "None"}),
                "at least one nameserver",
            ),
            (
                serde_json::json!({"dnsConfig": {"nameservers": ["dns.example"]}}),
                "not an IP address",
            ),
            (
                serde_json::json!({"dnsConfig": {"nameserver": []}}),
                "unknown field \"nameserver\"",
            ),
        ] {
            let e = resolv_conf(&pod(extra.clone()), &cluster(), HOST).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn hosts_file_names_the_pod_at_its_address() {
        let p = pod(serde_json::json!({"hostname": "h1", "subdomain": "sub"}));
        let text = hosts_file(
            &p,
            &hostname(&p),
            Some("10.88.0.5".parse().unwrap()),
            "cluster.local",
        );
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(
            text.ends_with("10.88.0.5\th1.sub.shop.svc.cluster.local\th1\n"),
            "{text}"
        );
        let plain = pod(serde_json::json!({}));
        assert!(hosts_file(&plain, "web", None, "").ends_with("127.0.1.1\tweb\n"));
    }
}
