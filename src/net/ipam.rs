//! host-local style IP address management for the built-in bridge: the pure choice of the next
//! free address ([`Subnet`], [`next_free`]) and the allocations on disk ([`Store`]).
//!
//! As CNI's host-local plugin: one file per allocated address, named by the address and holding
//! the pod UID, plus `last_reserved_ip.0`, so the next pod gets the address after the last one
//! handed out (an address just released is not reused at once). The files live in the data dir,
//! so neither an agent restart nor a reboot loses or doubles an allocation. The agent reconciles
//! them against its live pods at start ([`Store::retain`]).
//!
//! Files are replaced atomically (a temporary file renamed over the target) but not fsynced:
//! the fsyncs of `state::write_atomic` cost 20–80 ms per pod start on a busy disk, and the
//! allocations do not need them. Only a power cut can lose an unsynced file, and after a power
//! cut every pod starts afresh: a lost file means that pod gets a new address (never one a
//! durable file holds, so never a doubled one), and a file left empty names no live pod and is
//! released by the reconciliation at start.
//!
//! ```text
//!   <dataDir>/networks/<bridge>/10.88.0.2          "<pod uid>\n"
//!   <dataDir>/networks/<bridge>/last_reserved_ip.0  "10.88.0.2\n"
//! ```
//!
//! Only IPv4. The first address of the subnet is the gateway (the bridge), the network and
//! broadcast addresses are never handed out.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// An IPv4 subnet such as `10.88.0.0/24`, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/n`. Host bits must be zero; the prefix must leave room for a gateway and
    /// at least one pod (at most /30).
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: want an IPv4 CIDR such as 10.88.0.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("{text:?}: the prefix length must be a number up to 30"))?;
        let subnet = Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        };
        if subnet.network != addr {
            return Err(format!(
                "{text:?}: host bits are set; did you mean {}/{prefix}?",
                subnet.network
            ));
        }
        Ok(subnet)
    }

    /// The gateway: the first address after the network address (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The first and last address pods may get.
    pub fn range(&self) -> (u32, u32) {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !mask(self.prefix);
        (first, broadcast - 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether `ip` may be handed to a pod.
    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.range();
        (first..=last).contains(&u32::from(ip))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// The next free address after `last` (wrapping around the range), as host-local picks it.
/// `None` when every address is taken.
pub fn next_free(
    subnet: &Subnet,
    used: &dyn Fn(Ipv4Addr) -> bool,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (first, end) = subnet.range();
    let size = end - first + 1;
    let start = match last {
        Some(l) if subnet.is_assignable(l) => u32::from(l) - first + 1,
        _ => 0,
    };
    (0..size)
        .map(|i| Ipv4Addr::from(first + (start + i) % size))
        .find(|ip| !used(*ip))
}

/// Why an address could not be allocated.
#[derive(Debug)]
pub enum IpamError {
    /// Every address of the subnet is taken.
    Exhausted(Subnet),
    Io(PathBuf, io::Error),
}

impl fmt::Display for IpamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpamError::Exhausted(s) => write!(f, "podCIDR {s}: no free address left"),
            IpamError::Io(p, e) => write!(f, "ip allocations {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for IpamError {}

const LAST_RESERVED: &str = "last_reserved_ip.0";

/// The allocations of one network on disk.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub subnet: Subnet,
}

impl Store {
    pub fn new(dir: PathBuf, subnet: Subnet) -> Store {
        Store { dir, subnet }
    }

    /// Every allocation on disk: address → pod UID (files that are not addresses are skipped).
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, IpamError> {
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(IpamError::Io(self.dir.clone(), e)),
        };
        for entry in entries.flatten() {
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            if let Ok(uid) = std::fs::read_to_string(entry.path()) {
                out.insert(ip, uid.trim().to_string());
            }
        }
        Ok(out)
    }

    /// The address held by pod `uid` in this subnet, if any.
    pub fn get(&self, uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(ip, owner)| owner == uid && self.subnet.contains(*ip))
            .map(|(ip, _)| ip))
    }

    /// The address of pod `uid`: the one it holds, or the next free one (recorded before it is
    /// returned). Idempotent.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        let all = self.allocations()?;
        if let Some((ip, _)) = all
            .iter()
            .find(|(ip, owner)| *owner == uid && self.subnet.contains(**ip))
        {
            return Ok(*ip);
        }
        let io = |p: &Path, e| IpamError::Io(p.to_path_buf(), e);
        let last = std::fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let ip = next_free(&self.subnet, &|ip| all.contains_key(&ip), last)
            .ok_or(IpamError::Exhausted(self.subnet))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let file = self.dir.join(ip.to_string());
        replace(&file, format!("{uid}\n").as_bytes()).map_err(|e| io(&file, e))?;
        let last = self.dir.join(LAST_RESERVED);
        replace(&last, format!("{ip}\n").as_bytes()).map_err(|e| io(&last, e))?;
        Ok(ip)
    }

    /// Releases every address pod `uid` holds. Idempotent.
    pub fn release(&self, uid: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.release_where(|owner| owner == uid)
    }

    /// Releases the addresses of pods for which `keep` says no; returns them with their owner.
    pub fn retain(
        &self,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let all = self.allocations()?;
        let gone: Vec<(Ipv4Addr, String)> = all.into_iter().filter(|(_, o)| !keep(o)).collect();
        for (ip, _) in &gone {
            self.remove(*ip)?;
        }
        Ok(gone)
    }

    fn release_where(&self, pred: impl Fn(&str) -> bool) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut out = Vec::new();
        for (ip, owner) in self.allocations()? {
            if pred(&owner) {
                self.remove(ip)?;
                out.push(ip);
            }
        }
        Ok(out)
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let file = self.dir.join(ip.to_string());
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(IpamError::Io(file, e)),
            _ => Ok(()),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it (readers never see half a
/// file); no fsync (see the module doc).
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_parse_with_clear_errors() {
        let s = Subnet::parse("10.88.0.0/24").unwrap();
        assert_eq!(s.gateway(), ip("10.88.0.1"));
        assert_eq!(
            s.range(),
            (u32::from(ip("10.88.0.2")), u32::from(ip("10.88.0.254")))
        );
        assert!(s.is_assignable(ip("10.88.0.254")));
        assert!(!s.is_assignable(ip("10.88.0.255")));
        assert!(!s.is_assignable(ip("10.88.0.1")));
        for (bad, want) in [
            ("10.88.0.0", "want an IPv4 CIDR"),
            ("10.88.0.1/24", "did you mean 10.88.0.0/24"),
            ("10.88.0.0/31", "prefix length"),
            ("nope/24", "not an IPv4 address"),
            ("fd00::/64", "not an IPv4 address"),
        ] {
            let e = Subnet::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn next_free_rotates_after_the_last_reserved_and_wraps() {
        let s = Subnet::parse("10.0.0.0/29").unwrap(); // pods: .2 ..= .6
        let none = |_| false;
        assert_eq!(next_free(&s, &none, None), Some(ip("10.0.0.2")));
        assert_eq!(
            next_free(&s, &none, Some(ip("10.0.0.3"))),
            Some(ip("10.0.0.4"))
        );
        assert_eq!(
            next_free(&s, &none, Some(ip("10.0.0.6"))),
            Some(ip("10.0.0.2"))
        );
        let used = |a: Ipv4Addr| a != ip("10.0.0.3");
        assert_eq!(
            next_free(&s, &used, Some(ip("10.0.0.5"))),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(next_free(&s, &|_| true, None), None);
        // A last address outside the range (podCIDR changed) starts from the beginning.
        assert_eq!(
            next_free(&s, &none, Some(ip("192.168.0.9"))),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn the_store_is_idempotent_persistent_and_never_double_assigns() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subnet::parse("10.0.0.0/29").unwrap();
        let store = Store::new(dir.path().join("net"), s);
        let a = store.allocate("uid-a").unwrap();
        assert_eq!(
            store.allocate("uid-a").unwrap(),
            a,
            "same pod, same address"
        );
        let b = store.allocate("uid-b").unwrap();
        assert_ne!(a, b);
        // A second store over the same folder (an agent restart) sees the same allocations.
        let again = Store::new(dir.path().join("net"), s);
        assert_eq!(again.get("uid-b").unwrap(), Some(b));
        let c = again.allocate("uid-c").unwrap();
        assert!(c != a && c != b);
        assert_eq!(again.release("uid-a").unwrap(), vec![a]);
        // The released address is not reused at once.
        let d = again.allocate("uid-d").unwrap();
        assert_ne!(d, a);
        let gone = again.retain(&|uid| uid != "uid-b").unwrap();
        assert_eq!(gone, vec![(b, "uid-b".to_string())]);
        assert_eq!(again.get("uid-b").unwrap(), None);
    }

    #[test]
    fn an_empty_file_left_by_a_power_cut_holds_its_address_until_reconciled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().into(), Subnet::parse("10.0.0.0/29").unwrap());
        std::fs::write(dir.path().join("10.0.0.2"), b"").unwrap();
        assert_ne!(store.allocate("uid-a").unwrap(), ip("10.0.0.2"));
        let gone = store.retain(&|uid| uid == "uid-a").unwrap();
        assert_eq!(gone, vec![(ip("10.0.0.2"), String::new())]);
    }

    #[test]
    fn an_exhausted_subnet_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().into(), Subnet::parse("10.0.0.0/30").unwrap());
        store.allocate("one").unwrap();
        let e = store.allocate("two").unwrap_err().to_string();
        assert_eq!(e, "podCIDR 10.0.0.0/30: no free address left");
    }
}
