//! Requests and limits → what the kernel enforces, as kubelet decides it. Pure.
//!
//! Owns: the pod's QoS class (`GetPodQOS`), each container's cgroup values
//! (`kuberuntime_container_linux.go`: CPU shares from the request, CFS quota from the limit,
//! memory limit), its `oom_score_adj` (`qos/policy.go`), the pod-level cgroup's values
//! (`ResourceConfigForPod`) and where the pod's cgroup lives (kubelet's
//! `kubepods[/burstable|/besteffort]/pod<uid>`, with nanolet's `cgroupParent` as `kubepods`), and
//! env `resourceFieldRef` values. Never does: I/O; the node's capacity is passed in.
//!
//! Requests default to limits (the API server's defaulting, which static pods get from kubelet).
//! Quantities are checked here: garbage, negatives, values beyond 64 bits and requests above
//! limits are errors naming the container and the field. A limit larger than the node (`100Gi`
//! of memory on a 1 GiB box) is not: kubelet runs such a pod (only the scheduler would have kept
//! it away), and the kernel enforces what there is.
//!
//! Not (yet) modelled: pod-level `spec.resources`, `overhead`, sidecar-aware request sums
//! (restartable init containers count as init containers), the QoS-level cgroups' own values
//! (kubelet's `burstable` shares sum; here they are left at the kernel's defaults), hugepages.

use std::collections::BTreeMap;

use super::config::ConfigError;
use crate::k8s::quantity::{Parsed, Quantity};
use crate::k8s::resources::{CPU, MEMORY};
use crate::k8s::{Container, Pod};
pub use crate::sys::cgroup::CgroupValues;

/// The pod's quality of service class, as `status.qosClass` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// kubelet's QoS cgroup below `kubepods`: Guaranteed pods sit directly in it.
    fn cgroup_dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// kubelet's constants (`pkg/kubelet/cm`, `pkg/kubelet/qos`).
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;
pub const SHARES_PER_CPU: u64 = 1024;
pub const CFS_PERIOD_US: u64 = 100_000;
pub const MIN_QUOTA_PERIOD_US: i64 = 1000;
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;

/// What the node has, for `oom_score_adj` and for `resourceFieldRef` limits that are unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCapacity {
    pub cpu_milli: i64,
    pub memory_bytes: i64,
}

/// One container's requests and limits, parsed, requests defaulted from limits. `None` and 0
/// both mean "not set" to kubelet; zero values are kept as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_request_milli: Option<i64>,
    pub cpu_limit_milli: Option<i64>,
    pub memory_request: Option<i64>,
    pub memory_limit: Option<i64>,
    /// Every quantity by `requests.<name>` / `limits.<name>`, in units (rounded up), for
    /// `resourceFieldRef` on `ephemeral-storage` and friends.
    pub other: BTreeMap<String, i64>,
}

/// Everything this module decides for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResources {
    pub qos: QosClass,
    /// Init containers first, then app containers (the worker's slot order).
    pub containers: Vec<ContainerResources>,
    pub pod_cgroup: CgroupValues,
}

impl PodResources {
    /// Parses and checks every container's resources and decides the pod's cgroup values.
    /// `pids_limit` is `podPidsLimit` from `nanolet.yaml` (-1 or 0: unlimited).
    pub fn of(pod: &Pod, pids_limit: i64) -> Result<PodResources, ConfigError> {
        let spec = &pod.spec;
        let all: Vec<&Container> = spec
            .init_containers
            .iter()
            .chain(&spec.containers)
            .collect();
        let containers = all
            .iter()
            .map(|c| container_resources(c))
            .collect::<Result<Vec<_>, _>>()?;
        let qos = qos_class(&containers);
        let n_init = spec.init_containers.len();
        let (init, app) = containers.split_at(n_init);
        // PodRequests/PodLimits: the larger of the app containers' sum and any one init container.
        let pod_total = |get: &dyn Fn(&ContainerResources) -> Option<i64>| -> i64 {
            let sum: i64 = app.iter().filter_map(get).fold(0, i64::saturating_add);
            init.iter().filter_map(get).fold(sum, i64::max)
        };
        let cpu_request = pod_total(&|c| c.cpu_request_milli);
        let cpu_limit = pod_total(&|c| c.cpu_limit_milli);
        let memory_limit = pod_total(&|c| c.memory_limit);
        let cpu_limits_declared = containers.iter().all(|c| c.cpu_limit_milli.is_some());
        let memory_limits_declared = containers.iter().all(|c| c.memory_limit.is_some());
        let mut pod_cgroup = CgroupValues::default();
        match qos {
            QosClass::BestEffort => pod_cgroup.cpu_shares = Some(MIN_SHARES),
            QosClass::Guaranteed | QosClass::Burstable => {
                pod_cgroup.cpu_shares = Some(milli_cpu_to_shares(cpu_request));
                if cpu_limits_declared {
                    pod_cgroup.cpu_quota = milli_cpu_to_quota(cpu_limit);
                    pod_cgroup.cpu_period = Some(CFS_PERIOD_US);
                }
                if memory_limits_declared {
                    pod_cgroup.memory_limit = Some(memory_limit);
                }
            }
        }
        if pids_limit > 0 {
            pod_cgroup.pids_limit = Some(pids_limit);
        }
        Ok(PodResources {
            qos,
            containers,
            pod_cgroup,
        })
    }

    /// The cgroup values of container `slot` (init containers first).
    pub fn container_cgroup(&self, slot: usize) -> CgroupValues {
        let Some(c) = self.containers.get(slot) else {
            return CgroupValues::default();
        };
        // With requests defaulted from limits, a zero request means none: MIN_SHARES.
        let quota = c.cpu_limit_milli.and_then(milli_cpu_to_quota);
        CgroupValues {
            cpu_shares: Some(milli_cpu_to_shares(c.cpu_request_milli.unwrap_or(0))),
            cpu_quota: quota,
            cpu_period: quota.map(|_| CFS_PERIOD_US),
            memory_limit: c.memory_limit,
            pids_limit: None,
        }
    }

    /// kubelet's `GetContainerOOMScoreAdjust` for container `slot`.
    pub fn oom_score_adj(&self, pod: &Pod, slot: usize, node: &NodeCapacity) -> i32 {
        if is_node_critical(pod) {
            return GUARANTEED_OOM_SCORE_ADJ;
        }
        match self.qos {
            QosClass::Guaranteed => return GUARANTEED_OOM_SCORE_ADJ,
            QosClass::BestEffort => return BEST_EFFORT_OOM_SCORE_ADJ,
            QosClass::Burstable => {}
        }
        let request = self
            .containers
            .get(slot)
            .and_then(|c| c.memory_request)
            .unwrap_or(0) as i128;
        let capacity = i128::from(node.memory_bytes.max(1));
        let adj = 1000 - (1000 * request) / capacity;
        // A burstable container scores above any guaranteed one, and below best effort.
        if adj < i128::from(1000 + GUARANTEED_OOM_SCORE_ADJ) {
            return 1000 + GUARANTEED_OOM_SCORE_ADJ;
        }
        if adj == i128::from(BEST_EFFORT_OOM_SCORE_ADJ) {
            return BEST_EFFORT_OOM_SCORE_ADJ - 1;
        }
        adj as i32
    }

    /// The pod's cgroup, relative to the cgroup root: `<parent>[/<qos>]/pod<uid>`.
    pub fn pod_cgroup_path(&self, cgroup_parent: &str, uid: &str) -> String {
        pod_cgroup_path(cgroup_parent, self.qos, uid)
    }
}

/// `<parent>[/burstable|/besteffort]/pod<uid>`, relative to the cgroup root.
pub fn pod_cgroup_path(cgroup_parent: &str, qos: QosClass, uid: &str) -> String {
    let parent = cgroup_parent.trim_matches('/');
    match qos.cgroup_dir() {
        Some(dir) => format!("{parent}/{dir}/pod{uid}"),
        None => format!("{parent}/pod{uid}"),
    }
}

/// Every place a pod's cgroup may be (its QoS class may not be known when cleaning up).
pub fn pod_cgroup_paths(cgroup_parent: &str, uid: &str) -> [String; 3] {
    [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ]
    .map(|q| pod_cgroup_path(cgroup_parent, q, uid))
}

/// Static pods are critical; with priority class `system-node-critical` they are node-critical.
fn is_node_critical(pod: &Pod) -> bool {
    pod.spec
        .priority_class_name
        .as_ref()
        .and_then(|v| v.as_str())
        == Some("system-node-critical")
}

/// kubelet's `GetPodQOS` over parsed containers: only cpu and memory count.
fn qos_class(containers: &[ContainerResources]) -> QosClass {
    let mut any = false;
    let mut guaranteed = true;
    let (mut req_cpu, mut req_mem, mut lim_cpu, mut lim_mem) = (0i64, 0i64, 0i64, 0i64);
    for c in containers {
        for (v, sum) in [
            (c.cpu_request_milli, &mut req_cpu),
            (c.memory_request, &mut req_mem),
            (c.cpu_limit_milli, &mut lim_cpu),
            (c.memory_limit, &mut lim_mem),
        ] {
            if let Some(v) = v {
                any = true;
                *sum = sum.saturating_add(v);
            }
        }
        if c.cpu_limit_milli.is_none() || c.memory_limit.is_none() {
            guaranteed = false;
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed && req_cpu == lim_cpu && req_mem == lim_mem {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// kubelet's `MilliCPUToShares`.
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli as u64).saturating_mul(SHARES_PER_CPU) / 1000;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// kubelet's `MilliCPUToQuota` with the default 100 ms period; `None` for no limit.
pub fn milli_cpu_to_quota(milli: i64) -> Option<i64> {
    if milli <= 0 {
        return None;
    }
    let quota = milli.saturating_mul(CFS_PERIOD_US as i64) / 1000;
    Some(quota.max(MIN_QUOTA_PERIOD_US))
}

fn parse_field(c: &Container, field: &str, q: &Quantity) -> Result<Parsed, ConfigError> {
    let bad = |problem: String| {
        ConfigError(format!(
            "container {:?}: resources.{field}: {problem}",
            c.name
        ))
    };
    let parsed = q.parse().map_err(|e| bad(e.to_string()))?;
    if parsed.is_negative() {
        return Err(bad(format!(
            "quantity {:?}: must be greater than or equal to 0",
            q.0
        )));
    }
    Ok(parsed)
}

/// Parses one container's resources; requests default to limits.
pub fn container_resources(c: &Container) -> Result<ContainerResources, ConfigError> {
    let mut out = ContainerResources::default();
    let Some(r) = &c.resources else {
        return Ok(out);
    };
    let too_large = |field: &str, q: &Quantity| {
        ConfigError(format!(
            "container {:?}: resources.{field}: quantity {:?}: too large (the most is {} {})",
            c.name,
            q.0,
            i64::MAX,
            if field.ends_with(".cpu") {
                "millicores"
            } else {
                "units"
            }
        ))
    };
    let mut read =
        |kind: &str, map: &BTreeMap<String, Quantity>| -> Result<[Option<i64>; 2], ConfigError> {
            let mut cpu_mem = [None, None];
            for (name, q) in map {
                let field = format!("{kind}.{name}");
                let p = parse_field(c, &field, q)?;
                let units = p.value().ok_or_else(|| too_large(&field, q))?;
                out.other.insert(field.clone(), units);
                let v = match name.as_str() {
                    CPU => p.milli_value().ok_or_else(|| too_large(&field, q))?,
                    _ => units,
                };
                match name.as_str() {
                    CPU if v > 0 => cpu_mem[0] = Some(v),
                    MEMORY if v > 0 => cpu_mem[1] = Some(v),
                    _ => {}
                }
            }
            Ok(cpu_mem)
        };
    let [lim_cpu, lim_mem] = read("limits", &r.limits)?;
    let [req_cpu, req_mem] = read("requests", &r.requests)?;
    for (name, req, lim, unit) in [(CPU, req_cpu, lim_cpu, "m"), (MEMORY, req_mem, lim_mem, "")] {
        if let (Some(req), Some(lim)) = (req, lim)
            && req > lim
        {
            return Err(ConfigError(format!(
                "container {:?}: resources.requests.{name}: {:?} must be less than or equal to {name} limit of {:?}",
                c.name,
                r.requests
                    .get(name)
                    .map_or(format!("{req}{unit}"), |q| q.0.clone()),
                r.limits
                    .get(name)
                    .map_or(format!("{lim}{unit}"), |q| q.0.clone()),
            )));
        }
    }
    // Explicit requests of 0 stay 0 (not defaulted from the limit), as in the API server.
    let explicit_zero = |name: &str| {
        r.requests
            .get(name)
            .and_then(|q| q.parse().ok())
            .is_some_and(|p| p.is_zero())
    };
    out.cpu_limit_milli = lim_cpu;
    out.memory_limit = lim_mem;
    out.cpu_request_milli = req_cpu.or(if explicit_zero(CPU) { None } else { lim_cpu });
    out.memory_request = req_mem.or(if explicit_zero(MEMORY) { None } else { lim_mem });
    Ok(out)
}

/// The value of an env `valueFrom.resourceFieldRef` (`{containerName, resource, divisor}`),
/// as kubelet computes it: rounded up to a whole number of divisors; an unset limit is the
/// node's capacity.
pub fn resource_field_ref(
    pod: &Pod,
    c: &Container,
    env: &str,
    field_ref: &serde_json::Value,
    node: &NodeCapacity,
) -> Result<String, ConfigError> {
    let bad = |problem: String| {
        ConfigError(format!(
            "container {:?}: env {env:?}: resourceFieldRef: {problem}",
            c.name
        ))
    };
    let resource = field_ref
        .get("resource")
        .and_then(|r| r.as_str())
        .ok_or_else(|| bad("resource: required".into()))?;
    let target = match field_ref.get("containerName").and_then(|n| n.as_str()) {
        None | Some("") => c,
        Some(name) => pod
            .spec
            .containers
            .iter()
            .chain(&pod.spec.init_containers)
            .find(|x| x.name == name)
            .ok_or_else(|| bad(format!("containerName {name:?}: no such container")))?,
    };
    let divisor = match field_ref.get("divisor") {
        None | Some(serde_json::Value::Null) => Quantity::from("1"),
        Some(v) => serde_json::from_value::<Quantity>(v.clone())
            .map_err(|e| bad(format!("divisor: {e}")))?,
    };
    let parsed = divisor.parse().map_err(|e| bad(format!("divisor: {e}")))?;
    let r = container_resources(target)?;
    let ceil_div = |v: i64, d: i64| -> Result<String, ConfigError> {
        if d <= 0 {
            return Err(bad(format!(
                "divisor {:?}: must be greater than 0",
                divisor.0
            )));
        }
        Ok(((v + d - 1).div_euclid(d)).to_string())
    };
    let milli_divisor = || parsed.milli_value().unwrap_or(0);
    let divisor_units = || parsed.value().unwrap_or(0);
    match resource {
        "limits.cpu" => ceil_div(r.cpu_limit_milli.unwrap_or(node.cpu_milli), milli_divisor()),
        "requests.cpu" => ceil_div(r.cpu_request_milli.unwrap_or(0), milli_divisor()),
        "limits.memory" => ceil_div(r.memory_limit.unwrap_or(node.memory_bytes), divisor_units()),
        "requests.memory" => ceil_div(r.memory_request.unwrap_or(0), divisor_units()),
        "limits.ephemeral-storage" | "requests.ephemeral-storage" => {
            ceil_div(r.other.get(resource).copied().unwrap_or(0), divisor_units())
        }
        other => Err(bad(format!(
            "resource {other:?}: not supported (limits.cpu, limits.memory, limits.ephemeral-storage, requests.cpu, requests.memory, requests.ephemeral-storage)"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::k8s::resources::ResourceRequirements;

    const NODE: NodeCapacity = NodeCapacity {
        cpu_milli: 2000,
        memory_bytes: 4 << 30,
    };

    fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), Quantity::from(*v)))
                .collect()
        };
        Container {
            name: name.into(),
            resources: (!requests.is_empty() || !limits.is_empty()).then(|| {
                Box::new(ResourceRequirements {
                    requests: map(requests),
                    limits: map(limits),
                    claims: None,
                })
            }),
            ..Container::default()
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = "u1".into();
        p.spec.containers = containers;
        p
    }

    #[test]
    fn qos_class_as_kubelet() {
        let guaranteed = [("cpu", "1"), ("memory", "1Gi")];
        let cases: Vec<(Vec<Container>, QosClass)> = vec![
            (vec![container("a", &[], &[])], QosClass::BestEffort),
            // Requests default to limits: limits alone make a pod Guaranteed.
            (vec![container("a", &[], &guaranteed)], QosClass::Guaranteed),
            (
                vec![container("a", &guaranteed, &guaranteed)],
                QosClass::Guaranteed,
            ),
            (
                vec![container("a", &[("cpu", "500m")], &guaranteed)],
                QosClass::Burstable,
            ),
            (
                vec![container("a", &[], &[("cpu", "1")])],
                QosClass::Burstable,
            ),
            (
                vec![container("a", &[], &guaranteed), container("b", &[], &[])],
                QosClass::Burstable,
            ),
            // Other resources do not count.
            (
                vec![container("a", &[("ephemeral-storage", "1Gi")], &[])],
                QosClass::BestEffort,
            ),
            // Zero requests are no requests.
            (
                vec![container("a", &[("cpu", "0")], &[])],
                QosClass::BestEffort,
            ),
        ];
        for (containers, want) in cases {
            let p = pod(containers.clone());
            let r = PodResources::of(&p, -1).unwrap();
            assert_eq!(r.qos, want, "{containers:?}");
        }
    }

    #[test]
    fn container_cgroup_values() {
        let p = pod(vec![
            container(
                "a",
                &[("cpu", "250m"), ("memory", "64Mi")],
                &[("cpu", "500m"), ("memory", "128Mi")],
            ),
            container("b", &[], &[]),
            container("c", &[], &[("cpu", "1m")]),
        ]);
        let r = PodResources::of(&p, 100).unwrap();
        assert_eq!(
            r.container_cgroup(0),
            CgroupValues {
                cpu_shares: Some(256),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                memory_limit: Some(128 << 20),
                pids_limit: None,
            }
        );
        assert_eq!(r.container_cgroup(1).cpu_shares, Some(2));
        assert_eq!(r.container_cgroup(1).cpu_quota, None);
        // The smallest quota is 1 ms per period.
        assert_eq!(r.container_cgroup(2).cpu_quota, Some(1000));
        assert_eq!(r.container_cgroup(2).cpu_shares, Some(2));
        // Burstable pod: shares from the summed requests; no quota or memory limit because
        // not every container has one.
        assert_eq!(
            r.pod_cgroup,
            CgroupValues {
                cpu_shares: Some(257),
                cpu_quota: None,
                cpu_period: None,
                memory_limit: None,
                pids_limit: Some(100),
            }
        );
        assert_eq!(
            r.pod_cgroup_path("/nanolet/", "u1"),
            "nanolet/burstable/podu1"
        );
    }

    #[test]
    fn pod_cgroup_of_guaranteed_and_best_effort_pods() {
        let lim = [("cpu", "1500m"), ("memory", "256Mi")];
        let mut p = pod(vec![container("a", &[], &lim), container("b", &[], &lim)]);
        p.spec.init_containers = vec![container("init", &[], &[("cpu", "4"), ("memory", "64Mi")])];
        let r = PodResources::of(&p, -1).unwrap();
        assert_eq!(r.qos, QosClass::Guaranteed);
        // The larger of the app containers' sum (3 cpu) and the biggest init container (4 cpu).
        assert_eq!(r.pod_cgroup.cpu_shares, Some(4096));
        assert_eq!(r.pod_cgroup.cpu_quota, Some(400_000));
        assert_eq!(r.pod_cgroup.memory_limit, Some(512 << 20));
        assert_eq!(r.pod_cgroup.pids_limit, None);
        assert_eq!(r.pod_cgroup_path("nanolet", "u1"), "nanolet/podu1");

        let r = PodResources::of(&pod(vec![container("a", &[], &[])]), 0).unwrap();
        assert_eq!(
            r.pod_cgroup,
            CgroupValues {
                cpu_shares: Some(2),
                ..CgroupValues::default()
            }
        );
        assert_eq!(
            r.pod_cgroup_path("nanolet", "u1"),
            "nanolet/besteffort/podu1"
        );
    }

    #[test]
    fn shares_quota_and_weight_conversions() {
        for (milli, shares) in [
            (0, 2),
            (1, 2),
            (2, 2),
            (10, 10),
            (100, 102),
            (1000, 1024),
            (1_000_000, 262_144),
        ] {
            assert_eq!(milli_cpu_to_shares(milli), shares, "{milli}m");
        }
        for (milli, quota) in [
            (0, None),
            (5, Some(1000)),
            (10, Some(1000)),
            (250, Some(25_000)),
            (2000, Some(200_000)),
        ] {
            assert_eq!(milli_cpu_to_quota(milli), quota, "{milli}m");
        }
        for (shares, weight) in [(2, 1), (1024, 39), (262_144, 10_000), (0, 0)] {
            assert_eq!(
                crate::sys::cgroup::shares_to_weight(shares),
                weight,
                "{shares}"
            );
        }
    }

    #[test]
    fn oom_score_adj_as_kubelet() {
        let node = NodeCapacity {
            cpu_milli: 2000,
            memory_bytes: 1000 << 20,
        };
        let adj = |c: Container| {
            let p = pod(vec![c]);
            PodResources::of(&p, -1)
                .unwrap()
                .oom_score_adj(&p, 0, &node)
        };
        assert_eq!(adj(container("a", &[], &[])), 1000);
        assert_eq!(
            adj(container("a", &[], &[("cpu", "1"), ("memory", "1Gi")])),
            -997
        );
        // 1000 - 1000 * request / capacity.
        assert_eq!(adj(container("a", &[("memory", "250Mi")], &[])), 750);
        // Never below 3 (a guaranteed container using all memory scores about that) ...
        assert_eq!(adj(container("a", &[("memory", "999Mi")], &[])), 3);
        // ... and never 1000 (best effort's).
        assert_eq!(adj(container("a", &[("cpu", "1")], &[])), 999);
        let mut p = pod(vec![container("a", &[], &[])]);
        p.spec.priority_class_name = Some("system-node-critical".into());
        let r = PodResources::of(&p, -1).unwrap();
        assert_eq!(r.oom_score_adj(&p, 0, &node), -997);
    }

    #[test]
    fn bad_quantities_name_the_container_and_field() {
        let err = |c: Container| PodResources::of(&pod(vec![c]), -1).unwrap_err().0;
        assert_eq!(
            err(container("app", &[], &[("memory", "1e1000")])),
            format!(
                "container \"app\": resources.limits.memory: quantity \"1e1000\": too large (the most is {} units)",
                i64::MAX
            )
        );
        assert_eq!(
            err(container("app", &[("cpu", "-1")], &[])),
            "container \"app\": resources.requests.cpu: quantity \"-1\": must be greater than or equal to 0"
        );
        assert!(err(container("app", &[], &[("cpu", "lots")])).starts_with(
            "container \"app\": resources.limits.cpu: quantity \"lots\": not a quantity"
        ));
        assert_eq!(
            err(container("app", &[("cpu", "2")], &[("cpu", "1")])),
            "container \"app\": resources.requests.cpu: \"2\" must be less than or equal to cpu limit of \"1\""
        );
        // A limit larger than the node is not an error (kubelet runs it).
        let r =
            PodResources::of(&pod(vec![container("a", &[], &[("memory", "100Gi")])]), -1).unwrap();
        assert_eq!(r.container_cgroup(0).memory_limit, Some(100 << 30));
    }

    #[test]
    fn resource_field_refs_round_up_and_default_to_the_node() {
        let c = container("app", &[("cpu", "250m")], &[("memory", "64Mi")]);
        let p = pod(vec![c.clone()]);
        let get = |v: serde_json::Value| resource_field_ref(&p, &c, "X", &v, &NODE);
        assert_eq!(
            get(serde_json::json!({"resource": "requests.cpu"})).unwrap(),
            "1"
        );
        assert_eq!(
            get(serde_json::json!({"resource": "requests.cpu", "divisor": "1m"})).unwrap(),
            "250"
        );
        assert_eq!(
            get(serde_json::json!({"resource": "limits.cpu"})).unwrap(),
            "2"
        );
        assert_eq!(
            get(serde_json::json!({"resource": "limits.memory", "divisor": "1Mi"})).unwrap(),
            "64"
        );
        assert_eq!(
            get(serde_json::json!({"resource": "requests.memory"})).unwrap(),
            (64 << 20).to_string()
        );
        assert!(
            get(serde_json::json!({"resource": "limits.gpu"}))
                .unwrap_err()
                .0
                .contains("resource \"limits.gpu\": not supported")
        );
        assert!(
            get(serde_json::json!({"resource": "limits.cpu", "divisor": "0"}))
                .unwrap_err()
                .0
                .contains("must be greater than 0")
        );
        assert!(
            get(serde_json::json!({"resource": "limits.cpu", "containerName": "nope"}))
                .unwrap_err()
                .0
                .contains("no such container")
        );
    }
}
