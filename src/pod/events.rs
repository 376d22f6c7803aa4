//! Which Kubernetes Event each transition of a pod makes, in kubelet's words (pure).
//!
//! The pod worker says what happened ([`Transition`]); [`events`] answers with the Events
//! kubelet records for it: same reason, type and message wording, and the container's
//! `fieldPath` (`spec.containers{app}`) for container events. Sending is not done here: the
//! worker hands the answer to [`crate::api::events::Recorder`], whose I/O task correlates,
//! rate-limits and sends.
//!
//! ```text
//!   transition                          reason              type     involvedObject
//!   pull starts                         Pulling             Normal   container
//!   pull done / image present           Pulled              Normal   container
//!   pull failed                         Failed (x2)         Warning  container
//!     (then, when it is retried)        BackOff             Normal   container
//!   image missing, policy Never         ErrImageNeverPull   Warning  container  (+ Failed)
//!   container config / create error     Failed              Warning  container
//!   volume setup error                  FailedMount         Warning  pod
//!   imagePullSecret missing/unreadable  FailedToRetrieveImagePullSecret Warning pod
//!   sandbox error                       FailedCreatePodSandBox Warning pod
//!   runc run ok                         Created, Started    Normal   container
//!   runc run failed                     Failed              Warning  container
//!   exit, restart waits for back-off    BackOff             Warning  container
//!   probe failed                        Unhealthy           Warning  container
//!   probe succeeded with a warning      ProbeWarning        Warning  container
//!   liveness/startup kill, pod stop     Killing             Normal   container
//!   postStart failed                    FailedPostStartHook Warning  container (+ Killing)
//! ```

use std::time::Duration;

use crate::api::events::{EventType, reason};
use crate::k8s::probe::ProbeKind;

/// Something that happened to a pod or one of its containers, as the worker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition<'a> {
    /// A pull of `image` starts.
    Pulling { image: &'a str },
    /// `image` was pulled: `pull` is the pull itself, `total` includes waiting for it.
    Pulled {
        image: &'a str,
        pull: Duration,
        total: Duration,
        size: u64,
    },
    /// The policy let an image already in the store be used.
    AlreadyPresent { image: &'a str },
    /// A pull failed with `error`.
    PullFailed { image: &'a str, error: &'a str },
    /// The container could not be created: nanolet's waiting `reason` (`ErrImagePull`,
    /// `ImagePullBackOff`, `ErrImageNeverPull`, `CreateContainerConfigError`, ...) and message.
    CreateFailed {
        image: &'a str,
        reason: &'a str,
        message: &'a str,
    },
    /// A volume of the pod could not be set up (`MountVolume.SetUp failed ...`).
    MountFailed { message: &'a str },
    /// The pod's sandbox (namespaces, network) could not be set up.
    SandboxFailed { message: &'a str },
    /// These imagePullSecrets could not be retrieved (missing, or refused); the pull goes on.
    PullSecretsUnretrievable { names: &'a [&'a str] },
    /// `runc run` made and started the container.
    Started,
    /// `runc run` failed.
    StartFailed { error: &'a str },
    /// The container exited and its restart waits for back-off.
    BackOff {
        namespace: &'a str,
        pod: &'a str,
        uid: &'a str,
    },
    /// A probe failed with `output`.
    Unhealthy { kind: ProbeKind, output: &'a str },
    /// A probe succeeded with a warning (an httpGet redirected to another host).
    ProbeWarning { kind: ProbeKind, output: &'a str },
    /// A liveness or startup probe failed its threshold: the container is killed;
    /// `restarts` is whether the pod's restartPolicy starts it again.
    ProbeKill { kind: ProbeKind, restarts: bool },
    /// The postStart hook failed with `output`: the container is killed.
    PostStartFailed { output: &'a str },
    /// The pod stops (deleted, manifest removed, node shutdown): the container is stopped.
    Stopping,
}

/// One Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// About this container (`fieldPath`), or the pod itself when `false`.
    pub about_container: bool,
    pub event_type: EventType,
    pub reason: &'static str,
    pub message: String,
}

fn container(event_type: EventType, reason: &'static str, message: String) -> PodEvent {
    PodEvent {
        about_container: true,
        event_type,
        reason,
        message,
    }
}

fn pod(event_type: EventType, reason: &'static str, message: String) -> PodEvent {
    PodEvent {
        about_container: false,
        event_type,
        reason,
        message,
    }
}

/// kubelet's reason for an image missing under `imagePullPolicy: Never`.
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
/// kubelet's reason for a failed postStart hook.
pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
/// kubelet's reason for a pod sandbox that could not be created.
pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
/// kubelet's reason for a probe that succeeded with a warning.
pub const PROBE_WARNING: &str = "ProbeWarning";
/// kubelet's reason for imagePullSecrets it could not retrieve.
pub const FAILED_TO_RETRIEVE_IMAGE_PULL_SECRET: &str = "FailedToRetrieveImagePullSecret";

/// The Events kubelet records for `t` in container `name`.
pub fn events(name: &str, t: &Transition<'_>) -> Vec<PodEvent> {
    use EventType::{Normal, Warning};
    match *t {
        Transition::Pulling { image } => {
            vec![container(
                Normal,
                reason::PULLING,
                format!("Pulling image {}", quote(image)),
            )]
        }
        Transition::Pulled {
            image,
            pull,
            total,
            size,
        } => vec![container(
            Normal,
            reason::PULLED,
            format!(
                "Successfully pulled image {} in {} ({} including waiting). Image size: {size} bytes.",
                quote(image),
                go_duration(pull),
                go_duration(total)
            ),
        )],
        Transition::AlreadyPresent { image } => vec![container(
            Normal,
            reason::PULLED,
            format!(
                "Container image {} already present on machine",
                quote(image)
            ),
        )],
        Transition::PullFailed { image, error } => vec![container(
            Warning,
            reason::FAILED,
            format!("Failed to pull image {}: {error}", quote(image)),
        )],
        Transition::CreateFailed {
            image,
            reason: why,
            message,
        } => match why {
            "ErrImagePull" => vec![container(Warning, reason::FAILED, format!("Error: {why}"))],
            "ImagePullBackOff" => vec![
                container(
                    Normal,
                    reason::BACK_OFF,
                    format!("Back-off pulling image {}", quote(image)),
                ),
                container(Warning, reason::FAILED, format!("Error: {why}")),
            ],
            ERR_IMAGE_NEVER_PULL => vec![
                container(
                    Warning,
                    ERR_IMAGE_NEVER_PULL,
                    format!(
                        "Container image {} is not present with pull policy of Never",
                        quote(image)
                    ),
                ),
                container(Warning, reason::FAILED, format!("Error: {why}")),
            ],
            _ => vec![container(
                Warning,
                reason::FAILED,
                format!("Error: {message}"),
            )],
        },
        Transition::MountFailed { message } => {
            vec![pod(Warning, reason::FAILED_MOUNT, message.to_string())]
        }
        Transition::SandboxFailed { message } => vec![pod(
            Warning,
            FAILED_CREATE_POD_SANDBOX,
            format!("Failed to create pod sandbox: {message}"),
        )],
        Transition::PullSecretsUnretrievable { names } => vec![pod(
            Warning,
            FAILED_TO_RETRIEVE_IMAGE_PULL_SECRET,
            format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                names.join(", ")
            ),
        )],
        Transition::Started => vec![
            container(Normal, reason::CREATED, format!("Created container {name}")),
            container(Normal, reason::STARTED, format!("Started container {name}")),
        ],
        Transition::StartFailed { error } => {
            vec![container(
                Warning,
                reason::FAILED,
                format!("Error: {error}"),
            )]
        }
        Transition::BackOff {
            namespace,
            pod: pod_name,
            uid,
        } => vec![container(
            Warning,
            reason::BACK_OFF,
            // kubelet's format.Pod: name_namespace(uid).
            format!(
                "Back-off restarting failed container {name} in pod {pod_name}_{namespace}({uid})"
            ),
        )],
        Transition::Unhealthy { kind, output } => vec![container(
            Warning,
            reason::UNHEALTHY,
            format!("{} probe failed: {output}", kind.word()),
        )],
        Transition::ProbeWarning { kind, output } => vec![container(
            Warning,
            PROBE_WARNING,
            format!("{} probe warning: {output}", kind.word()),
        )],
        Transition::ProbeKill { kind, restarts } => {
            let word = kind.word().to_lowercase();
            let then = if restarts { ", will be restarted" } else { "" };
            vec![container(
                Normal,
                reason::KILLING,
                format!("Container {name} failed {word} probe{then}"),
            )]
        }
        Transition::PostStartFailed { output } => vec![
            container(Warning, FAILED_POST_START_HOOK, output.to_string()),
            container(Normal, reason::KILLING, FAILED_POST_START_HOOK.to_string()),
        ],
        Transition::Stopping => vec![container(
            Normal,
            reason::KILLING,
            format!("Stopping container {name}"),
        )],
    }
}

/// Go's `%q` for the strings that occur here (image references): quotes and backslashes
/// escaped.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Go's `time.Duration.String()` of `d` truncated to milliseconds, as kubelet prints pull
/// times: `523ms`, `1.286s`, `2m3.5s`, `1h0m0s`; zero is `0s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, t: Transition<'_>) -> (bool, EventType, &'static str, String) {
        let mut e = events(name, &t);
        assert_eq!(e.len(), 1, "{e:?}");
        let e = e.remove(0);
        (e.about_container, e.event_type, e.reason, e.message)
    }

    #[test]
    fn go_durations_read_as_kubelet_prints_them() {
        let cases = [
            (0, "0s"),
            (7, "7ms"),
            (523, "523ms"),
            (1000, "1s"),
            (1286, "1.286s"),
            (1500, "1.5s"),
            (123_500, "2m3.5s"),
            (3_600_000, "1h0m0s"),
            (3_723_040, "1h2m3.04s"),
        ];
        for (ms, want) in cases {
            assert_eq!(go_duration(Duration::from_millis(ms)), want, "{ms} ms");
        }
        // Truncated, not rounded.
        assert_eq!(go_duration(Duration::from_micros(1_286_999)), "1.286s");
    }

    #[test]
    fn image_events_use_kubelets_words() {
        use EventType::*;
        assert_eq!(
            one(
                "app",
                Transition::Pulling {
                    image: "busybox:1.36"
                }
            ),
            (
                true,
                Normal,
                "Pulling",
                "Pulling image \"busybox:1.36\"".into()
            )
        );
        assert_eq!(
            one(
                "app",
                Transition::Pulled {
                    image: "nginx",
                    pull: Duration::from_millis(1286),
                    total: Duration::from_millis(1290),
                    size: 59_774_010
                }
            ),
            (
                true,
                Normal,
                "Pulled",
                "Successfully pulled image \"nginx\" in 1.286s (1.29s including waiting). Image size: 59774010 bytes.".into()
            )
        );
        assert_eq!(
            one("app", Transition::AlreadyPresent { image: "busybox" }).3,
            "Container image \"busybox\" already present on machine"
        );
        assert_eq!(
            one(
                "app",
                Transition::PullFailed {
                    image: "127.0.0.1:1/x",
                    error: "connection refused"
                }
            ),
            (
                true,
                Warning,
                "Failed",
                "Failed to pull image \"127.0.0.1:1/x\": connection refused".into()
            )
        );
    }

    #[test]
    fn create_errors_map_to_kubelets_events() {
        use EventType::*;
        let failed = |why: &str, message: &str| {
            events(
                "app",
                &Transition::CreateFailed {
                    image: "x",
                    reason: why,
                    message,
                },
            )
            .into_iter()
            .map(|e| (e.event_type, e.reason, e.message))
            .collect::<Vec<_>>()
        };
        assert_eq!(
            failed("ErrImagePull", "image \"x\": refused"),
            vec![(Warning, "Failed", "Error: ErrImagePull".to_string())]
        );
        assert_eq!(
            failed("ImagePullBackOff", "image \"x\": refused"),
            vec![
                (
                    Normal,
                    "BackOff",
                    "Back-off pulling image \"x\"".to_string()
                ),
                (Warning, "Failed", "Error: ImagePullBackOff".to_string())
            ]
        );
        assert_eq!(
            failed("ErrImageNeverPull", "not there"),
            vec![
                (
                    Warning,
                    "ErrImageNeverPull",
                    "Container image \"x\" is not present with pull policy of Never".to_string()
                ),
                (Warning, "Failed", "Error: ErrImageNeverPull".to_string())
            ]
        );
        assert_eq!(
            failed(
                "CreateContainerConfigError",
                "configmap \"settings\" not found"
            ),
            vec![(
                Warning,
                "Failed",
                "Error: configmap \"settings\" not found".to_string()
            )]
        );
    }

    #[test]
    fn lifecycle_events_name_the_container_and_pod() {
        use EventType::*;
        let started: Vec<_> = events("app", &Transition::Started)
            .into_iter()
            .map(|e| (e.reason, e.message))
            .collect();
        assert_eq!(
            started,
            vec![
                ("Created", "Created container app".to_string()),
                ("Started", "Started container app".to_string())
            ]
        );
        assert_eq!(
            one(
                "app",
                Transition::BackOff {
                    namespace: "default",
                    pod: "web",
                    uid: "u-1"
                }
            ),
            (
                true,
                Warning,
                "BackOff",
                "Back-off restarting failed container app in pod web_default(u-1)".into()
            )
        );
        let mount = "MountVolume.SetUp failed for volume \"cfg\" : hostPath type check failed";
        assert_eq!(
            one("app", Transition::MountFailed { message: mount }),
            (false, Warning, "FailedMount", mount.to_string()),
            "FailedMount is about the pod"
        );
        assert_eq!(one("app", Transition::Stopping).3, "Stopping container app");
        assert_eq!(
            one(
                "app",
                Transition::PullSecretsUnretrievable {
                    names: &["regcred", "gone"]
                }
            ),
            (
                false,
                Warning,
                "FailedToRetrieveImagePullSecret",
                "Unable to retrieve some image pull secrets (regcred, gone); attempting to pull the image may not succeed.".into()
            )
        );
    }

    #[test]
    fn probe_events_say_which_probe_and_whether_it_restarts() {
        use EventType::*;
        assert_eq!(
            one(
                "app",
                Transition::Unhealthy {
                    kind: ProbeKind::Readiness,
                    output: "HTTP probe failed with statuscode: 503"
                }
            ),
            (
                true,
                Warning,
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 503".into()
            )
        );
        assert_eq!(
            one(
                "app",
                Transition::ProbeWarning {
                    kind: ProbeKind::Readiness,
                    output: "Probe terminated redirects, Response body: moved"
                }
            ),
            (
                true,
                Warning,
                "ProbeWarning",
                "Readiness probe warning: Probe terminated redirects, Response body: moved".into()
            )
        );
        let kill = |kind, restarts| one("app", Transition::ProbeKill { kind, restarts }).3;
        assert_eq!(
            kill(ProbeKind::Liveness, true),
            "Container app failed liveness probe, will be restarted"
        );
        assert_eq!(
            kill(ProbeKind::Startup, false),
            "Container app failed startup probe"
        );
        let hook: Vec<_> = events("app", &Transition::PostStartFailed { output: "boom" })
            .into_iter()
            .map(|e| (e.reason, e.message))
            .collect();
        assert_eq!(
            hook,
            vec![
                ("FailedPostStartHook", "boom".to_string()),
                ("Killing", "FailedPostStartHook".to_string())
            ]
        );
    }
}
