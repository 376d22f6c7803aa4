//! Writes the iptables fallback's rules ([`super::iptables`]) to the kernel: the proxy's one
//! file of iptables I/O, through child processes.
//!
//! ```text
//!  ProxyState::objects ─► iptables::render ─► per family:  iptables-save  (what is there)
//!                                                          ─► restore_input ─► iptables-restore --noflush
//! ```
//!
//! Each family is one `iptables-restore --noflush` run (`ip6tables-restore` for IPv6) holding
//! the `nat` and `filter` tables; the kernel replaces each table in one commit, so a packet
//! sees the old or the new rules of a table, never half of them. The legacy programs
//! (`iptables-legacy-restore`) are preferred when installed: on a kernel without nf_tables,
//! `iptables-nft` cannot work. `-w 5` waits for the xtables lock other writers hold.
//!
//! The iptables backend ([`Backend`]) renders from the state's store ([`ProxyState::objects`])
//! rather than taking its transactions: the whole set is rewritten when it changed.
//!
//! Blocking: the children run inline on the agent's thread, as the netlink writer's batches
//! do (a restore of a few hundred rules takes milliseconds; 1 000 Services about a second).
//! Waiting inline also keeps the agent's reaper, which runs on the same thread, from taking
//! the child's exit status first.

use std::collections::BTreeSet;
use std::io::{Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::backend::{Backend, forget_gone};
use super::iptables::{FamilyRules, Rendered, render};
use super::iptables_text::{parse_save, restore_input};
use super::model::{IpFamily, NodeConfig};
use super::state::ProxyState;

/// The programs for one family.
#[derive(Debug, Clone)]
struct Tools {
    restore: PathBuf,
    save: PathBuf,
}

/// The iptables writer: the programs it found, and what it wrote last.
#[derive(Debug)]
pub struct Iptables {
    v4: Option<Tools>,
    v6: Option<Tools>,
    /// The rules the kernel holds since the last successful write (`None`: unknown).
    last: Option<Rendered>,
    /// Failed writes in a row (for the log: say it once, then at debug).
    failures: u32,
}

/// `name` in one of the directories of `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `<cmd>-legacy-restore`/`-save` when installed, else `<cmd>-restore`/`-save`.
fn tools(cmd: &str) -> Option<Tools> {
    let pair = |variant: &str| {
        Some(Tools {
            restore: find_in_path(&format!("{cmd}{variant}-restore"))?,
            save: find_in_path(&format!("{cmd}{variant}-save"))?,
        })
    };
    pair("-legacy").or_else(|| pair(""))
}

impl Iptables {
    /// Finds the programs. IPv4's are required; IPv6's only once IPv6 rules are written.
    pub fn open() -> Result<Iptables, String> {
        let v4 = tools("iptables").ok_or(
            "neither iptables-legacy-restore nor iptables-restore (with its -save) is in PATH",
        )?;
        log::info!(
            "proxy: iptables mode, writing with {}",
            v4.restore.display()
        );
        Ok(Iptables {
            v4: Some(v4),
            v6: tools("ip6tables"),
            last: None,
            failures: 0,
        })
    }

    fn tools(&self, family: IpFamily) -> Result<&Tools, String> {
        let (tools, name) = match family {
            IpFamily::V4 => (&self.v4, "iptables"),
            IpFamily::V6 => (&self.v6, "ip6tables"),
        };
        tools
            .as_ref()
            .ok_or_else(|| format!("{name}-restore is not in PATH"))
    }

    /// Makes the kernel hold `rules` for one family, whatever nanolet wrote there before.
    fn write_family(&self, rules: &FamilyRules) -> Result<(), String> {
        let tools = self.tools(rules.family)?;
        let saved = run(&tools.save, &[], None)?;
        let input = restore_input(rules, &parse_save(&saved));
        run(&tools.restore, &["--noflush", "-w", "5"], Some(&input))?;
        Ok(())
    }

    /// Writes every family; the first failure ends the write.
    pub fn write(&mut self, rendered: &Rendered) -> Result<(), String> {
        for f in &rendered.families {
            self.write_family(f)?;
        }
        Ok(())
    }
}

/// Runs `program` with `input` on its stdin (from a memfd: nothing to deadlock on) and
/// returns its stdout; a failure carries the program's last line of stderr.
fn run(program: &Path, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let name = program.display();
    let mut cmd = Command::new(program);
    cmd.args(args);
    match input {
        Some(text) => {
            let fd = rustix::fs::memfd_create("nanolet-iptables", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| format!("{name}: memfd: {e}"))?;
            let mut file = std::fs::File::from(fd);
            file.write_all(text.as_bytes())
                .and_then(|()| file.rewind())
                .map_err(|e| format!("{name}: writing its input: {e}"))?;
            cmd.stdin(Stdio::from(file));
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let out = cmd.output().map_err(|e| format!("{name}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(format!(
            "{name} failed ({}): {}",
            out.status,
            why.join("; ")
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("{name}: output is not UTF-8"))
}

impl Backend for Iptables {
    async fn sync(&mut self, state: &mut ProxyState, node: &NodeConfig, full: bool) -> bool {
        sync(self, state, node, full, forget_udp_flows)
    }
}

/// One sync of the iptables backend: renders the store and writes it when it changed (every
/// time when `full`). Returns whether the kernel now holds the desired rules (false while
/// waiting for the sources, or after a refused write, which the next sync retries whole).
/// `forget_udp` flushes the conntrack entries of a UDP backend that went away.
pub fn sync(
    ipt: &mut Iptables,
    state: &ProxyState,
    node: &NodeConfig,
    full: bool,
    mut forget_udp: impl FnMut(SocketAddr) -> Result<usize, String>,
) -> bool {
    let Some((services, slices)) = state.objects() else {
        log::debug!("proxy: waiting for Services and EndpointSlices to sync");
        return false;
    };
    let rendered = render(&services, &slices, node);
    for p in &rendered.problems {
        log::warn!("proxy: {p}");
    }
    if !full && ipt.last.as_ref() == Some(&rendered) {
        return true;
    }
    match ipt.write(&rendered) {
        Ok(()) => {
            log::debug!("proxy: iptables rules written");
            ipt.failures = 0;
            let before: BTreeSet<SocketAddr> = ipt
                .last
                .as_ref()
                .map(Rendered::udp_backends)
                .unwrap_or_default();
            forget_gone(&before, &rendered.udp_backends(), &mut forget_udp);
            ipt.last = Some(rendered);
            true
        }
        Err(e) => {
            if ipt.failures == 0 {
                log::warn!("proxy: writing the iptables rules failed: {e}; retrying whole");
            } else {
                log::debug!("proxy: writing the iptables rules failed again: {e}");
            }
            ipt.failures += 1;
            ipt.last = None;
            false
        }
    }
}

/// Deletes the UDP conntrack entries translated to `backend` (ctnetlink works whichever
/// table did the translation).
pub fn forget_udp_flows(backend: SocketAddr) -> Result<usize, String> {
    crate::netlink::conntrack::delete_udp_to(backend).map_err(|e| format!("conntrack: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::state::Event;
    use serde_json::json;

    /// A writer whose "iptables-save" and "iptables-restore" are `program`.
    fn writer(program: &str) -> Iptables {
        let tools = Tools {
            restore: program.into(),
            save: program.into(),
        };
        Iptables {
            v4: Some(tools.clone()),
            v6: Some(tools),
            last: None,
            failures: 0,
        }
    }

    fn node() -> NodeConfig {
        NodeConfig {
            node_name: "node-a".into(),
            node_ips: vec!["192.168.1.10".parse().unwrap()],
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            masquerade_bit: 0x4000,
        }
    }

    fn synced_state() -> ProxyState {
        let mut state = ProxyState::default();
        let web = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": { "clusterIP": "10.96.0.10", "ports": [{ "port": 80 }] }
        });
        for e in [
            Event::ServiceApplied(web),
            Event::ServicesSynced,
            Event::EndpointSlicesSynced,
        ] {
            state.apply(e).unwrap();
        }
        state
    }

    fn no_flush(_: SocketAddr) -> Result<usize, String> {
        Ok(0)
    }

    #[test]
    fn nothing_runs_until_both_sources_synced() {
        // A program that does not exist would fail any write: none is attempted.
        let mut ipt = writer("/nonexistent/iptables-restore");
        let state = ProxyState::default();
        assert!(!sync(&mut ipt, &state, &node(), true, no_flush));
        assert_eq!(ipt.failures, 0);
    }

    #[test]
    fn writes_when_changed_and_on_full_syncs_and_retries_after_a_refusal() {
        let state = synced_state();
        let mut ipt = writer("/bin/false");
        assert!(!sync(&mut ipt, &state, &node(), false, no_flush), "refused");
        assert_eq!(ipt.failures, 1);
        ipt.v4 = writer("/bin/true").v4;
        assert!(
            sync(&mut ipt, &state, &node(), false, no_flush),
            "retried whole"
        );
        assert!(ipt.last.is_some());
        // Unchanged: nothing is run (a failing program would say otherwise)...
        ipt.v4 = writer("/bin/false").v4;
        assert!(sync(&mut ipt, &state, &node(), false, no_flush));
        // ...but a full sync rewrites, and its refusal is reported and forgotten.
        assert!(!sync(&mut ipt, &state, &node(), true, no_flush));
        assert!(ipt.last.is_none());
    }
}
