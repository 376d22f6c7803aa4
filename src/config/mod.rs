//! Node settings from `<config-dir>/nanolet.yaml`, and the YAML→JSON bridge ([`yaml`]).
//!
//! Owns the configuration reference: every field of [`NodeConfig`] is optional in the file, its
//! doc comment states the default, and names follow kubelet's `KubeletConfiguration` where one
//! exists. An unknown field is an error naming it, so a typo never silently falls back to a
//! default. [`parse`] is pure apart from reading the hostname for the `nodeName` default;
//! [`load`] adds the file read.
//!
//! It must never start anything or create directories: it only describes them.

pub mod network;
pub mod proxy;
pub mod yaml;

pub use network::{NetworkConfig, NetworkMode};

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file name inside the config dir.
pub const CONFIG_FILE_NAME: &str = "nanolet.yaml";

/// The resolved node configuration. All paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// `nodeName`: the node's name, suffixed to static pod names. Must be a DNS-1123 subdomain.
    /// Default: the hostname, lowercased.
    pub node_name: String,
    /// `staticPodPath`: the folder of static pod manifests. Default: `manifests` (relative paths
    /// are resolved against the config dir).
    pub static_pod_path: PathBuf,
    /// `imagesPath`: the folder of image archives/OCI layouts to import. Default: `images`
    /// (relative to the config dir).
    pub images_path: PathBuf,
    /// `configMapsPath`: the folder of ConfigMap objects (one per file) that static pods'
    /// volumes and environment read. nanolet's addition. Default: `configmaps` (relative to
    /// the config dir).
    pub config_maps_path: PathBuf,
    /// `secretsPath`: the folder of Secret objects, as `configMapsPath`. Default: `secrets`.
    pub secrets_path: PathBuf,
    /// `syncFrequency`: how often a running pod's configMap, secret, downwardAPI and projected
    /// volumes are refreshed from their sources; a Go duration, positive. Default: `1m`.
    pub sync_frequency: Duration,
    /// `maxPods`: the most pods this node runs. Default: 110.
    pub max_pods: u32,
    /// `podLogsDir`: where container logs are written. Default: `/var/log/pods`.
    pub pod_logs_dir: PathBuf,
    /// `containerLogMaxSize`: the size at which a container log is rotated, in bytes; the file
    /// holds a quantity such as `10Mi`, `500K` or `1048576`. Default: `10Mi`.
    pub container_log_max_size: u64,
    /// `containerLogMaxFiles`: how many log files (current + rotated) to keep per container;
    /// at least 2. Default: 5.
    pub container_log_max_files: u32,
    /// `dataDir`: durable state (image store, pod state). Default: `/var/lib/nanolet`.
    pub data_dir: PathBuf,
    /// `runDir`: state that must not survive a reboot. Default: `/run/nanolet`.
    pub run_dir: PathBuf,
    /// `runcRoot`: runc's `--root`. Default: `<runDir>/runc`.
    pub runc_root: PathBuf,
    /// `runcPath`: the runc binary. A bare name (no `/`) is looked up in `PATH`; a relative path
    /// is resolved against the config dir. Default: `runc`.
    pub runc_path: PathBuf,
    /// `cgroupParent`: the cgroup (v2) under which pod cgroups are created. Default: `nanolet`.
    pub cgroup_parent: String,
    /// `fileCheckFrequency`: the period of the full rescan of `staticPodPath`, on top of the
    /// inotify watch; a Go duration such as `20s` or `1m30s`; must be positive. Default: `20s`.
    pub file_check_frequency: Duration,
    /// `shutdownGracePeriod`: how long the node waits for pods to stop on shutdown; a Go
    /// duration. Default: `30s`.
    pub shutdown_grace_period: Duration,
    /// `logLevel`: one of `off`, `error`, `warn`, `info`, `debug`, `trace`. Default: `info`.
    pub log_level: log::LevelFilter,
    /// `crashLoopBackOff.initialContainerRestartPeriod` (default `10s`): the wait before the
    /// second restart of a crashing container; each later one doubles. nanolet's addition
    /// (kubelet fixes it at 10 s); tests and impatient appliances shorten it.
    pub crash_loop_backoff_initial: Duration,
    /// `crashLoopBackOff.maxContainerRestartPeriod` (default `300s`): the cap of the back-off,
    /// as in KubeletConfiguration (feature gate KubeletCrashLoopBackOffMax).
    pub crash_loop_backoff_max: Duration,
    /// `insecureRegistries`: registries (`host` or `host:port`, as in an image reference) that
    /// `nanolet pull` reaches over plain HTTP instead of TLS. Registries on loopback
    /// (`localhost`, `127.0.0.0/8`, `[::1]`) always are, as with docker. Default: none.
    pub insecure_registries: Vec<String>,
    /// `imageGCHighThresholdPercent`: disk usage (of the filesystem holding the image store) at
    /// or above which unused images are removed, least recently used first; 0–100, where 100
    /// disables image GC. Default: 85.
    pub image_gc_high_threshold_percent: u8,
    /// `imageGCLowThresholdPercent`: the disk usage image GC frees space down to; less than
    /// the high threshold. Default: 80.
    pub image_gc_low_threshold_percent: u8,
    /// `imageMinimumGCAge`: how long an image stays after it was first seen or last used by a
    /// container start, whatever the disk usage; a Go duration. Default: `2m`.
    pub image_minimum_gc_age: Duration,
    /// `nodeStatusUpdateFrequency`: how often the node's conditions are checked (and reported
    /// to the API server when they changed); a Go duration. Default: `10s`.
    pub node_status_update_frequency: Duration,
    /// `nodeStatusReportFrequency`: the longest time between two node status reports when
    /// nothing changed; a Go duration. Default: `5m`.
    pub node_status_report_frequency: Duration,
    /// `nodeLeaseDurationSeconds`: the node Lease's duration; it is renewed every quarter of
    /// it. Default: 40.
    pub node_lease_duration_seconds: u32,
    /// `proxy`: Services in nftables (see [`proxy`]); `None` leaves nftables alone.
    pub proxy: Option<proxy::ProxyConfig>,
    /// Pod networking: `podCIDR`, `podBridgeName`, `clusterDNS`, `clusterDomain`, `resolvConf`,
    /// `cniConfDir`, `cniBinDir`, `nodeIP` (see [`network`]).
    pub network: NetworkConfig,
    /// `podPidsLimit`: the most processes in one pod (its cgroup's `pids.max`); -1 or 0 means
    /// no limit. Default: -1.
    pub pod_pids_limit: i64,
    /// `allowedUnsafeSysctls`: sysctls beyond kubelet's safe set that pods may set (names, or
    /// prefixes ending in `*` such as `net.core.*`); only namespaced ones ever are. Default: none.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// `imageUnpackLimits` (nanolet's): what one image may unpack to, so a hostile image
    /// stops with a clear error instead of filling the disk.
    pub image_unpack_limits: ImageUnpackLimits,
}

/// `imageUnpackLimits`: bounds on one image's unpacked layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageUnpackLimits {
    /// `maxSize`: uncompressed bytes over all layers (tar headers included), a quantity such
    /// as `2Gi`. Default: `16Gi`.
    pub max_size: u64,
    /// `maxFiles`: tar entries over all layers. Default: 1000000.
    pub max_files: u64,
    /// `maxPathLength`: bytes of an entry path or link target. Default: 4096 (PATH_MAX).
    pub max_path_length: usize,
}

/// The file as written: everything optional, unknown fields rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    node_name: Option<String>,
    static_pod_path: Option<PathBuf>,
    images_path: Option<PathBuf>,
    config_maps_path: Option<PathBuf>,
    secrets_path: Option<PathBuf>,
    sync_frequency: Option<String>,
    max_pods: Option<u32>,
    pod_logs_dir: Option<PathBuf>,
    container_log_max_size: Option<Quantity>,
    container_log_max_files: Option<u32>,
    data_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    runc_root: Option<PathBuf>,
    runc_path: Option<PathBuf>,
    cgroup_parent: Option<String>,
    file_check_frequency: Option<String>,
    shutdown_grace_period: Option<String>,
    log_level: Option<String>,
    crash_loop_back_off: Option<RawCrashLoopBackOff>,
    insecure_registries: Option<Vec<String>>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: Option<u8>,
    #[serde(rename = "imageGCLowThresholdPercent")]
    image_gc_low_threshold_percent: Option<u8>,
    #[serde(rename = "imageMinimumGCAge")]
    image_minimum_gc_age: Option<String>,
    node_status_update_frequency: Option<String>,
    node_status_report_frequency: Option<String>,
    node_lease_duration_seconds: Option<u32>,
    proxy: Option<proxy::RawProxy>,
    #[serde(flatten)]
    network: network::RawNetwork,
    pod_pids_limit: Option<i64>,
    allowed_unsafe_sysctls: Option<Vec<String>>,
    image_unpack_limits: Option<RawImageUnpackLimits>,
}

/// `imageUnpackLimits`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawImageUnpackLimits {
    max_size: Option<Quantity>,
    max_files: Option<u64>,
    max_path_length: Option<usize>,
}

/// `crashLoopBackOff`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCrashLoopBackOff {
    initial_container_restart_period: Option<String>,
    max_container_restart_period: Option<String>,
}

/// A quantity as written: `10Mi`, or a plain number of bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Bytes(u64),
    Text(String),
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The file exists but could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The file is not valid YAML.
    Yaml {
        path: PathBuf,
        source: yaml::YamlError,
    },
    /// The YAML does not match the schema (unknown field, wrong type).
    Decode { path: PathBuf, message: String },
    /// A field has an invalid value.
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "config {}: cannot read: {source}", path.display())
            }
            ConfigError::Yaml { path, source } => write!(f, "config {}: {source}", path.display()),
            ConfigError::Decode { path, message } => {
                write!(f, "config {}: {message}", path.display())
            }
            ConfigError::Invalid {
                path,
                field,
                message,
            } => write!(f, "config {}: {field}: {message}", path.display()),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Yaml { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Loads `<config_dir>/nanolet.yaml`; a missing file means all defaults.
pub fn load(config_dir: &Path) -> Result<NodeConfig, ConfigError> {
    let config_dir = absolute(config_dir);
    let path = config_dir.join(CONFIG_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&config_dir, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => parse(&config_dir, ""),
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

/// Parses the text of `nanolet.yaml` found in `config_dir`. Pure except that a missing
/// `nodeName` reads the hostname.
pub fn parse(config_dir: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
    let config_dir = absolute(config_dir);
    let path = config_dir.join(CONFIG_FILE_NAME);
    let value = yaml::parse_one(text).map_err(|source| ConfigError::Yaml {
        path: path.clone(),
        source,
    })?;
    let decode_error = |message: String| ConfigError::Decode {
        path: path.clone(),
        message,
    };
    let raw: RawConfig = match &value {
        serde_json::Value::Null => RawConfig::default(),
        serde_json::Value::Object(_) => RawConfig::deserialize(&value)
            .map_err(|e| decode_error(name_bad_field(&value).unwrap_or_else(|| e.to_string())))?,
        _ => return Err(decode_error("expected a mapping of settings".into())),
    };
    raw.resolve(&config_dir)
        .map_err(|(field, message)| ConfigError::Invalid {
            path,
            field,
            message,
        })
}

impl RawConfig {
    /// Applies defaults and checks values; an error names the field.
    fn resolve(self, config_dir: &Path) -> Result<NodeConfig, (&'static str, String)> {
        let path = |p: Option<PathBuf>, default: &str| config_dir.join(p.unwrap_or(default.into()));
        let from_hostname = self.node_name.is_none();
        let node_name = self.node_name.unwrap_or_else(hostname);
        if let Some(problem) = crate::k8s::validate::dns1123_subdomain_problem(&node_name) {
            let origin = if from_hostname { " (the hostname)" } else { "" };
            return Err(("nodeName", format!("{node_name:?}{origin}: {problem}")));
        }
        let max_pods = self.max_pods.unwrap_or(110);
        if max_pods == 0 {
            return Err(("maxPods", "0: must be at least 1".into()));
        }
        let container_log_max_size = match self.container_log_max_size {
            None => 10 * 1024 * 1024,
            Some(Quantity::Bytes(0)) => {
                return Err(("containerLogMaxSize", "0: must be positive".into()));
            }
            Some(Quantity::Bytes(n)) => n,
            Some(Quantity::Text(q)) => {
                parse_quantity(&q).map_err(|m| ("containerLogMaxSize", m))?
            }
        };
        let container_log_max_files = self.container_log_max_files.unwrap_or(5);
        if container_log_max_files < 2 {
            let message = format!("{container_log_max_files}: must be at least 2");
            return Err(("containerLogMaxFiles", message));
        }
        let duration = |field, text: Option<String>, default| match text {
            None => Ok(Duration::from_secs(default)),
            Some(d) => parse_duration(&d).map_err(|m| (field, m)),
        };
        let file_check_frequency = duration("fileCheckFrequency", self.file_check_frequency, 20)?;
        let sync_frequency = duration("syncFrequency", self.sync_frequency, 60)?;
        if sync_frequency.is_zero() {
            return Err(("syncFrequency", "must be positive".to_string()));
        }
        if file_check_frequency.is_zero() {
            return Err(("fileCheckFrequency", "must be positive".into()));
        }
        let shutdown_grace_period =
            duration("shutdownGracePeriod", self.shutdown_grace_period, 30)?;
        let log_level = match self.log_level {
            None => log::LevelFilter::Info,
            Some(l) => l.parse().map_err(|_| {
                let message =
                    format!("{l:?}: expected one of off, error, warn, info, debug, trace");
                ("logLevel", message)
            })?,
        };
        let backoff = self.crash_loop_back_off.unwrap_or_default();
        let crash_loop_backoff_initial = duration(
            "crashLoopBackOff.initialContainerRestartPeriod",
            backoff.initial_container_restart_period,
            10,
        )?;
        let crash_loop_backoff_max = duration(
            "crashLoopBackOff.maxContainerRestartPeriod",
            backoff.max_container_restart_period,
            300,
        )?;
        if crash_loop_backoff_initial.is_zero()
            || crash_loop_backoff_max < crash_loop_backoff_initial
        {
            let message = "initialContainerRestartPeriod must be positive and at most maxContainerRestartPeriod";
            return Err(("crashLoopBackOff", message.into()));
        }
        let cgroup_parent = self.cgroup_parent.unwrap_or_else(|| "nanolet".into());
        if cgroup_parent.is_empty() || cgroup_parent.split('/').any(|c| c == "..") {
            let message =
                format!("{cgroup_parent:?}: must be a non-empty cgroup path without \"..\"");
            return Err(("cgroupParent", message));
        }
        let run_dir = path(self.run_dir, "/run/nanolet");
        let runc_root = match self.runc_root {
            Some(p) => config_dir.join(p),
            None => run_dir.join("runc"),
        };
        let runc_path = match self.runc_path {
            // A bare name is left for PATH lookup.
            Some(p) if p.components().count() > 1 || p.is_absolute() => config_dir.join(p),
            Some(p) => p,
            None => PathBuf::from("runc"),
        };
        let insecure_registries = self.insecure_registries.unwrap_or_default();
        if let Some(bad) = insecure_registries
            .iter()
            .find(|r| r.is_empty() || r.contains(['/', '@', ' ']))
        {
            let message = format!("{bad:?}: want host or host:port, without scheme or path");
            return Err(("insecureRegistries", message));
        }
        let image_gc_high_threshold_percent = self.image_gc_high_threshold_percent.unwrap_or(85);
        if image_gc_high_threshold_percent > 100 {
            let message = format!("{image_gc_high_threshold_percent}: must be at most 100");
            return Err(("imageGCHighThresholdPercent", message));
        }
        let image_gc_low_threshold_percent = self.image_gc_low_threshold_percent.unwrap_or(80);
        if image_gc_low_threshold_percent >= image_gc_high_threshold_percent {
            let message = format!(
                "{image_gc_low_threshold_percent}: must be less than imageGCHighThresholdPercent ({image_gc_high_threshold_percent})"
            );
            return Err(("imageGCLowThresholdPercent", message));
        }
        let image_minimum_gc_age = duration("imageMinimumGCAge", self.image_minimum_gc_age, 120)?;
        let image_unpack_limits = unpack_limits(self.image_unpack_limits.unwrap_or_default())
            .map_err(|m| ("imageUnpackLimits", m))?;
        let network = self.network.resolve(config_dir)?;
        let proxy = match self.proxy {
            Some(p) => Some(p.resolve(config_dir, &node_name)?),
            None => None,
        };
        let node_status_update_frequency = duration(
            "nodeStatusUpdateFrequency",
            self.node_status_update_frequency,
            10,
        )?;
        let node_status_report_frequency = duration(
            "nodeStatusReportFrequency",
            self.node_status_report_frequency,
            300,
        )?;
        if node_status_update_frequency.is_zero() || node_status_report_frequency.is_zero() {
            let message =
                "nodeStatusUpdateFrequency and nodeStatusReportFrequency must be positive";
            return Err(("nodeStatusUpdateFrequency", message.into()));
        }
        let node_lease_duration_seconds = self.node_lease_duration_seconds.unwrap_or(40);
        if node_lease_duration_seconds == 0 {
            return Err(("nodeLeaseDurationSeconds", "0: must be at least 1".into()));
        }
        Ok(NodeConfig {
            node_name,
            static_pod_path: path(self.static_pod_path, "manifests"),
            images_path: path(self.images_path, "images"),
            config_maps_path: path(self.config_maps_path, "configmaps"),
            secrets_path: path(self.secrets_path, "secrets"),
            sync_frequency,
            max_pods,
            pod_logs_dir: path(self.pod_logs_dir, "/var/log/pods"),
            container_log_max_size,
            container_log_max_files,
            data_dir: path(self.data_dir, "/var/lib/nanolet"),
            run_dir,
            runc_root,
            runc_path,
            cgroup_parent,
            file_check_frequency,
            shutdown_grace_period,
            log_level,
            crash_loop_backoff_initial,
            crash_loop_backoff_max,
            insecure_registries,
            image_gc_high_threshold_percent,
            image_gc_low_threshold_percent,
            image_minimum_gc_age,
            image_unpack_limits,
            pod_pids_limit: self.pod_pids_limit.unwrap_or(-1),
            allowed_unsafe_sysctls: self.allowed_unsafe_sysctls.unwrap_or_default(),
            network,
            proxy,
            node_status_update_frequency,
            node_status_report_frequency,
            node_lease_duration_seconds,
        })
    }
}

fn unpack_limits(raw: RawImageUnpackLimits) -> Result<ImageUnpackLimits, String> {
    let max_size = match raw.max_size {
        None => 16 << 30,
        Some(Quantity::Bytes(n)) => n,
        Some(Quantity::Text(q)) => parse_quantity(&q).map_err(|m| format!("maxSize: {m}"))?,
    };
    let limits = ImageUnpackLimits {
        max_size,
        max_files: raw.max_files.unwrap_or(1_000_000),
        max_path_length: raw.max_path_length.unwrap_or(4096),
    };
    match limits {
        ImageUnpackLimits { max_size: 0, .. } => Err("maxSize: 0: must be positive".into()),
        ImageUnpackLimits { max_files: 0, .. } => Err("maxFiles: 0: must be positive".into()),
        ImageUnpackLimits {
            max_path_length: 0, ..
        } => Err("maxPathLength: 0: must be positive".into()),
        ok => Ok(ok),
    }
}

/// serde does not say which field failed to decode; every field is optional, so the first key
/// that fails on its own is the one. Returns "key: serde message".
fn name_bad_field(value: &serde_json::Value) -> Option<String> {
    let map = value.as_object()?;
    map.iter().find_map(|(key, v)| {
        let single =
            serde_json::Value::Object(serde_json::Map::from_iter([(key.clone(), v.clone())]));
        let e = serde_json::from_value::<RawConfig>(single).err()?;
        Some(if e.to_string().starts_with("unknown field") {
            e.to_string()
        } else {
            format!("{key}: {e}")
        })
    })
}

/// The kernel's hostname (`uname -n`), lowercased, as kubelet's default node name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_lowercase()
}

fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Parses a byte size as kubelet parses `containerLogMaxSize`: a Kubernetes quantity
/// ([`crate::k8s::quantity`]: `10Mi`, `1.5Gi`, `500k`, `1e6`, `1048576`), rounded up to whole
/// bytes. Must be positive.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let parsed = crate::k8s::quantity::Quantity::from(text)
        .parse()
        .map_err(|e| {
            format!(
                "{text:?}: {}; expected e.g. 10Mi, 500Ki, 1G or 1048576",
                e.problem
            )
        })?;
    if parsed.is_negative() || parsed.is_zero() {
        return Err(format!("{text:?}: must be positive"));
    }
    let bytes = parsed
        .value()
        .ok_or_else(|| format!("{text:?}: too large"))?;
    u64::try_from(bytes).map_err(|_| format!("{text:?}: must be positive"))
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers with a unit
/// (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `1m30s`, `1.5h`, `500ms`; `0` alone is zero.
/// Negative durations are rejected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &[(&str, u128)] = &[
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let bad = || format!("{text:?}: expected a duration such as 20s, 1m30s or 500ms");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, s)| *s)
            .ok_or_else(bad)?;
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(bad());
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut part = int.checked_mul(scale).ok_or_else(bad)?;
        // Fractions: keep at most 18 digits, enough for nanosecond precision of hours.
        let frac = &frac[..frac.len().min(18)];
        if !frac.is_empty() {
            let f: u128 = frac.parse().map_err(|_| bad())?;
            part += f * scale / 10u128.pow(frac.len() as u32);
        }
        nanos = nanos.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn dir() -> &'static Path {
        Path::new("/etc/nanolet")
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse(dir(), "").unwrap();
        assert_eq!(c.node_name, hostname());
        assert_eq!(c.static_pod_path, PathBuf::from("/etc/nanolet/manifests"));
        assert_eq!(c.images_path, PathBuf::from("/etc/nanolet/images"));
        assert_eq!(c.config_maps_path, PathBuf::from("/etc/nanolet/configmaps"));
        assert_eq!(c.secrets_path, PathBuf::from("/etc/nanolet/secrets"));
        assert_eq!(c.sync_frequency, Duration::from_secs(60));
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.pod_logs_dir, PathBuf::from("/var/log/pods"));
        assert_eq!(c.container_log_max_size, 10 * 1024 * 1024);
        assert_eq!(c.container_log_max_files, 5);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/nanolet"));
        assert_eq!(c.run_dir, PathBuf::from("/run/nanolet"));
        assert_eq!(c.runc_root, PathBuf::from("/run/nanolet/runc"));
        assert_eq!(c.runc_path, PathBuf::from("runc"));
        assert_eq!(c.cgroup_parent, "nanolet");
        assert_eq!(c.file_check_frequency, Duration::from_secs(20));
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(30));
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert!(c.insecure_registries.is_empty());
        assert_eq!(c.image_gc_high_threshold_percent, 85);
        assert_eq!(c.image_gc_low_threshold_percent, 80);
        assert_eq!(c.image_minimum_gc_age, Duration::from_secs(120));
    }

    #[test]
    fn image_gc_settings_are_read_with_kubelets_names() {
        let text = "imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 1h\n";
        let c = parse(dir(), text).unwrap();
        assert_eq!(c.image_gc_high_threshold_percent, 100);
        assert_eq!(c.image_gc_low_threshold_percent, 0);
        assert_eq!(c.image_minimum_gc_age, Duration::from_secs(3600));
    }

    #[test]
    fn image_unpack_limits_are_read_and_checked() {
        let defaults = parse(dir(), "").unwrap().image_unpack_limits;
        assert_eq!(
            defaults,
            ImageUnpackLimits {
                max_size: 16 << 30,
                max_files: 1_000_000,
                max_path_length: 4096
            }
        );
        let text = "imageUnpackLimits:\n  maxSize: 2Gi\n  maxFiles: 5000\n  maxPathLength: 1024\n";
        let c = parse(dir(), text).unwrap();
        assert_eq!(
            c.image_unpack_limits,
            ImageUnpackLimits {
                max_size: 2 << 30,
                max_files: 5000,
                max_path_length: 1024
            }
        );
        for (text, want) in [
            (
                "imageUnpackLimits:\n  maxFiles: 0\n",
                "maxFiles: 0: must be positive",
            ),
            ("imageUnpackLimits:\n  maxSize: 2Gx\n", "maxSize: "),
        ] {
            let e = parse(dir(), text).unwrap_err().to_string();
            assert!(
                e.contains("imageUnpackLimits") && e.contains(want),
                "{text}: {e}"
            );
        }
        let e = parse(dir(), "imageUnpackLimits:\n  maxDepth: 3\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `maxDepth`"), "{e}");
    }

    #[test]
    fn insecure_registries_are_read() {
        let text = "insecureRegistries:\n  - registry.local\n  - 10.0.0.5:5000\n";
        let c = parse(dir(), text).unwrap();
        assert_eq!(c.insecure_registries, ["registry.local", "10.0.0.5:5000"]);
    }

    #[test]
    fn missing_file_gives_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let c = load(tmp.path()).unwrap();
        assert_eq!(c.static_pod_path, tmp.path().join("manifests"));
    }

    #[test]
    fn fields_are_read_and_paths_resolved() {
        let text = "\
nodeName: edge-01
staticPodPath: /srv/pods
imagesPath: img
maxPods: 8
containerLogMaxSize: 1048576
containerLogMaxFiles: 2
runDir: /run/x
runcPath: bin/runc
cgroupParent: edge
fileCheckFrequency: 1m30s
shutdownGracePeriod: 500ms
logLevel: debug
";
        let c = parse(dir(), text).unwrap();
        assert_eq!(c.node_name, "edge-01");
        assert_eq!(c.static_pod_path, PathBuf::from("/srv/pods"));
        assert_eq!(c.images_path, PathBuf::from("/etc/nanolet/img"));
        assert_eq!(c.max_pods, 8);
        assert_eq!(c.container_log_max_size, 1 << 20);
        assert_eq!(c.container_log_max_files, 2);
        assert_eq!(c.runc_root, PathBuf::from("/run/x/runc"));
        assert_eq!(c.runc_path, PathBuf::from("/etc/nanolet/bin/runc"));
        assert_eq!(c.cgroup_parent, "edge");
        assert_eq!(c.file_check_frequency, Duration::from_secs(90));
        assert_eq!(c.shutdown_grace_period, Duration::from_millis(500));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn bad_files_are_errors_naming_file_and_field() {
        let cases: &[(&str, &str)] = &[
            ("nodname: x", "unknown field `nodname`"),
            ("maxPods: many", "maxPods: invalid type: string \"many\""),
            ("containerLogMaxSize: 10MB", "containerLogMaxSize: \"10MB\""),
            (
                "containerLogMaxSize: 0",
                "containerLogMaxSize: 0: must be positive",
            ),
            (
                "containerLogMaxSize: 0Mi",
                "containerLogMaxSize: \"0Mi\": must be positive",
            ),
            (
                "containerLogMaxFiles: 1",
                "containerLogMaxFiles: 1: must be at least 2",
            ),
            (
                "fileCheckFrequency: 20",
                "fileCheckFrequency: invalid type: integer `20`",
            ),
            ("fileCheckFrequency: 2d", "fileCheckFrequency: \"2d\""),
            (
                "fileCheckFrequency: 0s",
                "fileCheckFrequency: must be positive",
            ),
            ("shutdownGracePeriod: -1s", "shutdownGracePeriod"),
            ("logLevel: loud", "logLevel: \"loud\""),
            (
                "nodeName: Edge_01",
                "nodeName: \"Edge_01\": a lowercase RFC 1123 subdomain",
            ),
            ("maxPods: 0", "maxPods: 0: must be at least 1"),
            ("cgroupParent: ../x", "cgroupParent: \"../x\""),
            (
                "insecureRegistries: [\"http://r.local\"]",
                "insecureRegistries: \"http://r.local\": want host or host:port",
            ),
            (
                "insecureRegistries: r.local",
                "insecureRegistries: invalid type",
            ),
            (
                "imageGCHighThresholdPercent: 101",
                "imageGCHighThresholdPercent: 101: must be at most 100",
            ),
            (
                "imageGCLowThresholdPercent: 85",
                "imageGCLowThresholdPercent: 85: must be less than imageGCHighThresholdPercent (85)",
            ),
            (
                "imageGCHighThresholdPercent: 50",
                "imageGCLowThresholdPercent: 80: must be less than imageGCHighThresholdPercent (50)",
            ),
            (
                "imageGCHighThresholdPercent: -1",
                "imageGCHighThresholdPercent: invalid value",
            ),
            (
                "imageMinimumGCAge: 2 minutes",
                "imageMinimumGCAge: \"2 minutes\"",
            ),
            ("- a\n- b\n", "expected a mapping of settings"),
            ("maxPods: 1\nmaxPods: 2", "duplicate mapping key"),
        ];
        for (text, fragment) in cases {
            let err = parse(dir(), text).expect_err(text).to_string();
            assert!(
                err.starts_with("config /etc/nanolet/nanolet.yaml: "),
                "{err}"
            );
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn quantities() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1048576", Some(1 << 20)),
            ("10Mi", Some(10 << 20)),
            ("2Ki", Some(2048)),
            ("1Gi", Some(1 << 30)),
            ("5k", Some(5000)),
            ("1.5Mi", Some(3 << 19)),
            ("1e3", Some(1000)),
            ("5K", None),
            ("3M", Some(3_000_000)),
            ("1G", Some(1_000_000_000)),
            ("", None),
            ("Mi", None),
            ("-1", None),
            ("0", None),
            ("10MB", None),
            ("99999999999999999999", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity(text).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Option<Duration>)] = &[
            ("20s", Some(ms(20_000))),
            ("1m30s", Some(ms(90_000))),
            ("500ms", Some(ms(500))),
            ("1.5h", Some(ms(5_400_000))),
            ("2h45m", Some(ms(9_900_000))),
            ("10us", Some(Duration::from_micros(10))),
            ("7ns", Some(Duration::from_nanos(7))),
            ("0", Some(Duration::ZERO)),
            (".5s", Some(ms(500))),
            ("", None),
            ("20", None),
            ("s", None),
            ("1d", None),
            ("-1s", None),
            ("1..5s", None),
            ("1 s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), *want, "{text:?}");
        }
    }
}
