//! A pod's shared namespaces, held open by bind mounts instead of a pause container.
//!
//! `create` runs nanolet's own binary in its hidden `internal-sandbox` mode as a short-lived
//! child. That child unshares the namespaces, sets the pod's hostname, brings loopback up, and
//! bind-mounts `/proc/self/ns/{net,ipc,uts}` onto files in the pod's sandbox folder (what
//! `ip netns add` does). The namespaces then outlive the child; every container of the pod joins
//! them by path in its `config.json`, and a container that crashes takes nothing with it.
//! `destroy` unmounts and removes the files, which frees the namespaces once no process is left
//! in them.
//!
//! ```text
//!   <runDir>/pods/<uid>/ns/net   (nsfs bind mount)
//!   <runDir>/pods/<uid>/ns/ipc
//!   <runDir>/pods/<uid>/ns/uts   (absent for hostNetwork pods: they share the host's)
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::mount::UnmountFlags;
use rustix::thread::UnshareFlags;

use super::process;
use super::reaper::Reaper;

/// The namespaces a sandbox may hold, by their file name under `/proc/self/ns`.
pub const NAMESPACES: [&str; 3] = ["net", "ipc", "uts"];

/// Where a pod sandbox's namespace files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub dir: PathBuf,
    pub host_network: bool,
}

impl Sandbox {
    /// The bind-mounted namespace file, if this sandbox has its own namespace of that kind.
    pub fn namespace_path(&self, name: &str) -> Option<PathBuf> {
        if self.host_network && name != "ipc" {
            return None;
        }
        Some(self.dir.join(name))
    }

    /// Whether every namespace file of this sandbox is still mounted (after a nanolet restart).
    pub fn is_complete(&self) -> bool {
        NAMESPACES
            .iter()
            .filter_map(|n| self.namespace_path(n))
            .all(|p| is_nsfs(&p))
    }

    /// Creates the namespaces by running `exe internal-sandbox …` as a child.
    /// `link` (bridge mode) is passed on as `--link`: the child also makes the pod's veth pair.
    pub async fn create(
        &self,
        reaper: &Reaper,
        exe: &Path,
        hostname: &str,
        link: Option<&str>,
    ) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut cmd = Command::new(exe);
        cmd.arg("internal-sandbox").arg(&self.dir).arg(hostname);
        if self.host_network {
            cmd.arg("--host-network");
        }
        if let Some(link) = link {
            cmd.arg("--link").arg(link);
        }
        let out = process::output(reaper, cmd).await?;
        if out.is_success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "creating pod namespaces in {}: {}",
                self.dir.display(),
                out.stderr_tail()
            )))
        }
    }

    /// Unmounts and removes the namespace files and the folder. Idempotent.
    pub fn destroy(&self) -> io::Result<()> {
        for name in NAMESPACES {
            let path = self.dir.join(name);
            match rustix::mount::unmount(&path, UnmountFlags::DETACH) {
                Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn is_nsfs(path: &Path) -> bool {
    // nsfs files report their own filesystem magic; a plain empty file does not.
    const NSFS_MAGIC: u64 = 0x6e73_6673;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as u64 == NSFS_MAGIC)
}

/// The child side of [`Sandbox::create`]: runs in the short-lived `internal-sandbox` process.
pub fn init_in_child(dir: &Path, hostname: &str, host_network: bool) -> io::Result<()> {
    let mut flags = UnshareFlags::NEWIPC;
    if !host_network {
        flags |= UnshareFlags::NEWNET | UnshareFlags::NEWUTS;
    }
    // SAFETY: this process is single-threaded (the `internal-sandbox` mode starts no executor
    // and no threads), and FILES is not among the flags, so no thread can observe a file
    // descriptor table it does not share.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    if !host_network {
        rustix::system::sethostname(hostname.as_bytes())?;
        // Loopback is index 1 in every new network namespace.
        crate::netlink::route::set_link_up(1)?;
    }
    for name in NAMESPACES {
        if host_network && name != "ipc" {
            continue;
        }
        let target = dir.join(name);
        fs::File::create(&target)?;
        rustix::mount::mount_bind(format!("/proc/self/ns/{name}").as_str(), &target)?;
    }
    Ok(())
}
