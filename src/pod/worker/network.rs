//! The pod's sandbox and network: host ports and address claimed, namespaces (and veth pair)
//! made by the sandbox child, CNI ADD, then `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf`. A failure anywhere undoes all of it; see [`crate::net`].

use super::*;
use crate::net::dns;

impl Worker {
    pub(super) async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if self.sandbox.is_complete() {
            if self.pod_ips.is_empty() {
                self.pod_ips = self.ctx.network.resume(&self.pod);
            }
            return Ok(());
        }
        let _ = self.sandbox.destroy();
        std::fs::create_dir_all(&self.pod_dir)
            .map_err(|e| format!("{}: {e}", self.pod_dir.display()))?;
        let hostname = if self.pod.spec.host_network {
            crate::config::hostname()
        } else {
            dns::hostname(&self.pod)
        };
        let began = std::time::Instant::now();
        let link = self.ctx.network.prepare(&self.pod)?;
        let prepared = began.elapsed();
        let made = self.make_sandbox(&hostname, link.as_ref()).await;
        if let Err(e) = made {
            self.detach_network().await;
            let _ = self.sandbox.destroy();
            return Err(e);
        }
        log::debug!(
            "pod {}: sandbox ready in {:?} (addresses {:?} in {prepared:?})",
            self.name(),
            began.elapsed(),
            self.pod_ips
        );
        Ok(())
    }

    async fn make_sandbox(
        &mut self,
        hostname: &str,
        link: Option<&crate::net::bridge::PodLink>,
    ) -> Result<(), String> {
        let link_arg = link.map(|l| l.to_string());
        self.sandbox
            .create(
                &self.ctx.reaper,
                &self.ctx.exe,
                hostname,
                link_arg.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let netns = self.sandbox.dir.join("net");
        self.pod_ips = self
            .ctx
            .network
            .attach(&self.ctx.reaper, &self.pod, &netns, link)
            .await?;
        self.write_pod_files(hostname)
            .map_err(|e| format!("writing {}: {e}", self.pod_dir.display()))
    }

    /// After a nanolet restart: the addresses of a pod whose sandbox survived, its host ports
    /// claimed again.
    pub(super) async fn resume_network(&mut self) {
        if !self.sandbox.is_complete() {
            return;
        }
        self.pod_ips = self.ctx.network.resume(&self.pod);
        let netns = self.sandbox.dir.join("net");
        match self
            .ctx
            .network
            .check(&self.ctx.reaper, &self.pod, &netns)
            .await
        {
            Ok(()) => log::debug!("pod {}: network checked", self.name()),
            Err(e) => log::warn!("pod {}: CNI CHECK: {e}", self.name()),
        }
    }

    /// Releases the pod's network (before its namespaces go: CNI DEL needs the namespace).
    pub(super) async fn detach_network(&mut self) {
        let name = self.name();
        let netns = self.sandbox.dir.join("net");
        self.ctx
            .network
            .detach(&self.ctx.reaper, &name, &self.pod.metadata.uid, &netns)
            .await;
        self.pod_ips.clear();
    }

    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` as kubelet writes them.
    pub(super) fn write_pod_files(&self, hostname: &str) -> std::io::Result<()> {
        let net = &self.ctx.network;
        let hosts = if self.pod.spec.host_network {
            let host = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            format!("# Kubernetes-managed hosts file (host network).\n{host}")
        } else {
            dns::hosts_file(
                &self.pod,
                hostname,
                self.pod_ips.first().copied(),
                &net.dns.domain,
            )
        };
        crate::state::write_atomic(&self.files.hosts, hosts.as_bytes())?;
        crate::state::write_atomic(&self.files.hostname, format!("{hostname}\n").as_bytes())?;
        let host_resolv = std::fs::read_to_string(&net.resolv_conf).unwrap_or_default();
        let resolv = dns::resolv_conf(&self.pod, &net.dns, &host_resolv)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        crate::state::write_atomic(&self.files.resolv_conf, resolv.as_bytes())
    }
}
