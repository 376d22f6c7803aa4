//! CNI: standard plugins (spec 1.0/1.1, and 0.4) run as child processes on the agent's executor.
//!
//! As libcni does it for kubelet's runtime:
//! - the network configuration is the first `*.conflist`, `*.conf` or `*.json` file (sorted by
//!   name) in `cniConfDir`; a single-plugin `.conf` is wrapped into a list;
//! - each plugin gets its configuration on stdin with `name` and `cniVersion` of the list,
//!   `prevResult` (the previous plugin's result on ADD, the stored ADD result on DEL and CHECK)
//!   and `runtimeConfig` for the capabilities it declares (`portMappings` from hostPorts);
//! - the environment carries `CNI_COMMAND`, `CNI_CONTAINERID` (the pod UID), `CNI_NETNS` (the
//!   pod's bind-mounted network namespace), `CNI_IFNAME=eth0`, `CNI_PATH` (`cniBinDir`) and
//!   `CNI_ARGS` with `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID` and
//!   `K8S_POD_INFRA_CONTAINER_ID`;
//! - ADD runs the plugins in order, DEL in reverse; the ADD result is stored atomically with the
//!   configuration it was made with, so DEL (even after a restart or a changed conf dir) undoes
//!   exactly what ADD did.
//!
//! ```text
//!   <dataDir>/cni/results/<pod uid>.json   {"networkName","config","cniArgs","capabilityArgs","result",…}
//! ```

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::ports::PortMapping;
use crate::k8s::Pod;
use crate::sys::process;
use crate::sys::reaper::Reaper;

pub const IFNAME: &str = "eth0";

/// The CNI settings of the node.
#[derive(Debug, Clone)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// `<dataDir>/cni`: the stored ADD results.
    pub cache_dir: PathBuf,
}

/// The one network configuration list in use.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The file it came from, for messages.
    pub source: PathBuf,
}

/// Picks and parses the network configuration in `dir` (libcni's `ConfFiles` + the first
/// valid one). Pure apart from reading the folder.
pub fn load_conf(dir: &Path) -> Result<ConfList, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cniConfDir {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["conflist", "conf", "json"].contains(&e))
        })
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        let text = match std::fs::read(file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        match parse_conf(&text, file) {
            Ok(c) => return Ok(c),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Err(format!(
            "cniConfDir {}: no network configuration (*.conflist, *.conf, *.json)",
            dir.display()
        ))
    } else {
        Err(problems.join("; "))
    }
}

/// Parses one configuration file's text (a list, or a single plugin's configuration).
pub fn parse_conf(text: &[u8], file: &Path) -> Result<ConfList, String> {
    let at = |m: &str| format!("{}: {m}", file.display());
    let v: Value = serde_json::from_slice(text).map_err(|e| at(&format!("invalid JSON: {e}")))?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| at("missing \"name\""))?
        .to_string();
    let cni_version = v
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.4.0")
        .to_string();
    let plugins = match v.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p.clone(),
        Some(_) => return Err(at("\"plugins\" must be a non-empty list")),
        // A single plugin's configuration (`.conf`).
        None => vec![v.clone()],
    };
    for p in &plugins {
        let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
        if ty.is_empty() || ty.contains('/') {
            return Err(at(&format!(
                "plugin {p}: want a \"type\" naming a plugin binary"
            )));
        }
    }
    Ok(ConfList {
        name,
        cni_version,
        plugins,
        source: file.to_path_buf(),
    })
}

/// The configuration one plugin gets on stdin.
pub fn plugin_config(
    list_name: &str,
    cni_version: &str,
    plugin: &Value,
    prev_result: Option<&Value>,
    capability_args: &Value,
) -> Value {
    let mut conf = plugin.clone();
    if let Value::Object(map) = &mut conf {
        map.insert("name".into(), json!(list_name));
        map.insert("cniVersion".into(), json!(cni_version));
        if let Some(prev) = prev_result {
            map.insert("prevResult".into(), prev.clone());
        }
        // Only the capabilities the plugin declares reach it (libcni's injectRuntimeConfig).
        let mut runtime = serde_json::Map::new();
        if let (Some(Value::Object(caps)), Value::Object(args)) =
            (plugin.get("capabilities"), capability_args)
        {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(arg) = args.get(cap)
                {
                    runtime.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !runtime.is_empty() {
            map.insert("runtimeConfig".into(), Value::Object(runtime));
        }
    }
    conf
}

/// `CNI_ARGS` for a pod, as kubelet's dockershim/CRI runtimes set it.
pub fn cni_args(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        m.namespace, m.name, m.uid, m.uid
    )
}

/// The `portMappings` capability argument.
pub fn port_mappings(mappings: &[PortMapping]) -> Value {
    Value::Array(
        mappings
            .iter()
            .map(|m| {
                let mut v = json!({
                    "hostPort": m.host_port,
                    "containerPort": m.container_port,
                    "protocol": m.protocol.cni(),
                });
                if let Some(ip) = m.host_ip {
                    v["hostIP"] = json!(ip.to_string());
                }
                v
            })
            .collect(),
    )
}

/// The IPv4 addresses of a CNI result (`ips[].address`, without the prefix length).
pub fn result_ips(result: &Value) -> Vec<Ipv4Addr> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// What one plugin run failed with: the CNI error's `msg` (and `details`) or its stderr.
fn plugin_error(plugin: &str, command: &str, out: &process::Output) -> String {
    let err: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    let msg = err
        .as_ref()
        .and_then(|e| {
            let msg = e.get("msg")?.as_str()?;
            let code = e.get("code").and_then(Value::as_u64).unwrap_or(0);
            Some(match e.get("details").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!("{msg} ({d}; code {code})"),
                _ => format!("{msg} (code {code})"),
            })
        })
        .unwrap_or_else(|| out.stderr_tail());
    format!("plugin {plugin:?} {command}: {msg}")
}

/// A stored ADD, as the cache file holds it.
#[derive(Debug, Clone)]
struct Cached {
    conf: ConfList,
    cni_args: String,
    capability_args: Value,
    result: Value,
    netns: String,
}

impl Cni {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Cni {
        Cni {
            conf_dir,
            bin_dirs,
            cache_dir,
        }
    }

    fn cache_file(&self, uid: &str) -> PathBuf {
        self.cache_dir.join("results").join(format!("{uid}.json"))
    }

    fn find_plugin(&self, ty: &str) -> Result<PathBuf, String> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                let dirs: Vec<String> = self
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                format!("plugin {ty:?} not found in cniBinDir {}", dirs.join(":"))
            })
    }

    async fn exec(
        &self,
        reaper: &Reaper,
        command: &str,
        uid: &str,
        netns: &str,
        args: &str,
        config: &Value,
    ) -> Result<Value, String> {
        let ty = config.get("type").and_then(Value::as_str).unwrap_or("");
        let bin = self.find_plugin(ty)?;
        let path: Vec<String> = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", uid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path.join(":"));
        let input = serde_json::to_vec(config).map_err(|e| e.to_string())?;
        let out = process::output_with_input(reaper, cmd, &input)
            .await
            .map_err(|e| format!("plugin {ty:?} {command}: running {}: {e}", bin.display()))?;
        if !out.is_success() {
            return Err(plugin_error(ty, command, &out));
        }
        if command != "ADD" || out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("plugin {ty:?} {command}: result is not JSON: {e}"))
    }

    /// CNI ADD for `pod` in network namespace `netns`; stores the result; returns its
    /// addresses. On failure whatever the plugins set up is deleted again.
    pub async fn add(
        &self,
        reaper: &Reaper,
        pod: &Pod,
        netns: &Path,
        mappings: &[PortMapping],
    ) -> Result<Vec<Ipv4Addr>, String> {
        let conf = load_conf(&self.conf_dir)?;
        let uid = &pod.metadata.uid;
        let args = cni_args(pod);
        let capability_args = json!({ "portMappings": port_mappings(mappings) });
        let netns_text = netns.display().to_string();
        let mut prev: Option<Value> = None;
        for (n, plugin) in conf.plugins.iter().enumerate() {
            let config = plugin_config(
                &conf.name,
                &conf.cni_version,
                plugin,
                prev.as_ref(),
                &capability_args,
            );
            match self
                .exec(reaper, "ADD", uid, &netns_text, &args, &config)
                .await
            {
                Ok(Value::Null) => {}
                Ok(result) => prev = Some(result),
                Err(e) => {
                    // Undo what the plugins before (and this one, partly) did, as libcni's
                    // callers do: DEL through the same plugins with what is known.
                    let partial = ConfList {
                        plugins: conf.plugins[..=n].to_vec(),
                        ..conf.clone()
                    };
                    let cached = Cached {
                        conf: partial,
                        cni_args: args.clone(),
                        capability_args: capability_args.clone(),
                        result: prev.clone().unwrap_or(Value::Null),
                        netns: netns_text.clone(),
                    };
                    let _ = self.run_del(reaper, uid, &cached, Some(netns)).await;
                    return Err(format!(
                        "network {:?} ({}): {e}",
                        conf.name,
                        conf.source.display()
                    ));
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let ips = result_ips(&result);
        let record = json!({
            "kind": "cniCacheV1",
            "containerId": uid,
            "ifName": IFNAME,
            "netns": netns_text,
            "networkName": conf.name,
            "cniVersion": conf.cni_version,
            "plugins": conf.plugins,
            "source": conf.source,
            "cniArgs": args,
            "capabilityArgs": capability_args,
            "result": result,
        });
        let file = self.cache_file(uid);
        let stored = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| {
                let bytes = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
                crate::state::write_atomic(&file, &bytes)
            });
        if let Err(e) = stored {
            let cached = Cached {
                conf: conf.clone(),
                cni_args: args,
                capability_args,
                result: record["result"].clone(),
                netns: netns_text,
            };
            let _ = self.run_del(reaper, uid, &cached, Some(netns)).await;
            return Err(format!("storing the CNI result {}: {e}", file.display()));
        }
        if ips.is_empty() {
            log::warn!(
                "pod {}/{}: network {:?} gave the pod no IPv4 address",
                pod.metadata.namespace,
                pod.metadata.name,
                conf.name
            );
        }
        Ok(ips)
    }

    fn read_cache(&self, uid: &str) -> Option<Cached> {
        let bytes = std::fs::read(self.cache_file(uid)).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Some(Cached {
            conf: ConfList {
                name: text("networkName"),
                cni_version: text("cniVersion"),
                plugins: v.get("plugins")?.as_array()?.clone(),
                source: PathBuf::from(text("source")),
            },
            cni_args: text("cniArgs"),
            capability_args: v.get("capabilityArgs").cloned().unwrap_or(Value::Null),
            result: v.get("result").cloned().unwrap_or(Value::Null),
            netns: text("netns"),
        })
    }

    async fn run_del(
        &self,
        reaper: &Reaper,
        uid: &str,
        c: &Cached,
        netns: Option<&Path>,
    ) -> Result<(), String> {
        // A namespace that is gone is passed as empty: plugins then clean up host state only.
        let netns = netns
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| c.netns.clone());
        let netns = if Path::new(&netns).exists() {
            netns
        } else {
            String::new()
        };
        let prev = (!c.result.is_null()).then_some(&c.result);
        let mut first_error = None;
        for plugin in c.conf.plugins.iter().rev() {
            let config = plugin_config(
                &c.conf.name,
                &c.conf.cni_version,
                plugin,
                prev,
                &c.capability_args,
            );
            if let Err(e) = self
                .exec(reaper, "DEL", uid, &netns, &c.cni_args, &config)
                .await
            {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// CNI DEL with the stored configuration and result; removes the stored result once every
    /// plugin agreed. Nothing stored means nothing to delete.
    pub async fn del(
        &self,
        reaper: &Reaper,
        uid: &str,
        netns: Option<&Path>,
    ) -> Result<(), String> {
        let Some(cached) = self.read_cache(uid) else {
            return Ok(());
        };
        self.run_del(reaper, uid, &cached, netns).await?;
        let file = self.cache_file(uid);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(format!("removing {}: {e}", file.display()))
            }
            _ => Ok(()),
        }
    }

    /// CNI CHECK of a pod's stored network (spec 0.4.0 and later; earlier versions skip it).
    pub async fn check(&self, reaper: &Reaper, uid: &str, netns: &Path) -> Result<(), String> {
        let Some(c) = self.read_cache(uid) else {
            return Err("no stored CNI result".to_string());
        };
        if c.conf.cni_version.starts_with("0.1")
            || c.conf.cni_version.starts_with("0.2")
            || c.conf.cni_version.starts_with("0.3")
        {
            return Ok(());
        }
        let netns = netns.display().to_string();
        for plugin in &c.conf.plugins {
            let config = plugin_config(
                &c.conf.name,
                &c.conf.cni_version,
                plugin,
                Some(&c.result),
                &c.capability_args,
            );
            self.exec(reaper, "CHECK", uid, &netns, &c.cni_args, &config)
                .await?;
        }
        Ok(())
    }

    /// The addresses in pod `uid`'s stored result.
    pub fn cached_ips(&self, uid: &str) -> Vec<Ipv4Addr> {
        self.read_cache(uid)
            .map(|c| result_ips(&c.result))
            .unwrap_or_default()
    }

    /// The pods with a stored result.
    pub fn cached_uids(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.cache_dir.join("results"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(String::from)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_valid_file_by_name_wins_and_a_conf_is_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00-broken.conflist"), b"{").unwrap();
        std::fs::write(dir.path().join("README"), b"not a conf").unwrap();
        std::fs::write(
            dir.path().join("10-net.conf"),
            br#"{"cniVersion":"1.0.0","name":"podnet","type":"bridge","bridge":"cni0"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-other.conflist"),
            br#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"loopback"}]}"#,
        )
        .unwrap();
        let c = load_conf(dir.path()).unwrap();
        assert_eq!(c.name, "podnet");
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0]["type"], "bridge");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            load_conf(empty.path())
                .unwrap_err()
                .contains("no network configuration")
        );
    }

    #[test]
    fn bad_confs_name_the_file_and_the_problem() {
        for (text, want) in [
            (
                &br#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#[..],
                "missing \"name\"",
            ),
            (br#"{"name":"n","plugins":[]}"#, "non-empty list"),
            (
                br#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "want a \"type\"",
            ),
        ] {
            let e = parse_conf(text, Path::new("/etc/cni/x.conflist")).unwrap_err();
            assert!(
                e.starts_with("/etc/cni/x.conflist: ") && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn plugins_get_name_version_prev_result_and_only_their_capabilities() {
        let caps =
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
        let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]});
        let got = plugin_config("podnet", "1.0.0", &portmap, Some(&prev), &caps);
        assert_eq!(got["name"], "podnet");
        assert_eq!(got["cniVersion"], "1.0.0");
        assert_eq!(got["prevResult"], prev);
        assert_eq!(got["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        let bridge = json!({"type": "bridge"});
        let got = plugin_config("podnet", "1.0.0", &bridge, None, &caps);
        assert!(got.get("runtimeConfig").is_none() && got.get("prevResult").is_none());
        assert_eq!(
            result_ips(&prev),
            vec!["10.1.0.5".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn cni_args_name_the_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": {"containers": [{"name": "a", "image": "busybox"}]}
        }))
        .unwrap();
        assert_eq!(
            cni_args(&pod),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=u-1;K8S_POD_UID=u-1"
        );
    }
}
