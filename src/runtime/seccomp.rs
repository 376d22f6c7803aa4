//! The `RuntimeDefault` seccomp profile, as OCI `linux.seccomp`. Pure.
//!
//! containerd's default profile is an allow-list of ~350 syscalls. This one is its compact
//! complement: every syscall is allowed except the ones containerd's list withholds from a
//! container without the matching capability, which fail with `EPERM` (and `clone3` with
//! `ENOSYS`, so libc falls back to `clone`, whose namespace flags can then be checked).
//! Adding a capability (`SYS_ADMIN`, `SYS_PTRACE`, ...) lifts the syscalls it unlocks, as in
//! containerd. `architectures` is left empty: only the native ABI passes the filter, so the
//! 32-bit entry points (where these numbers differ) are refused by the architecture check
//! rather than slipping past the list. runc skips names its libseccomp does not know.
//!
//! Never does: I/O.

use serde_json::{Value, json};

/// Syscalls denied unless the container has the capability (`None`: always denied).
const DENIED: &[(Option<&str>, &[&str])] = &[
    (None, &["add_key", "keyctl", "request_key"]),
    (
        None,
        &[
            "nfsservctl",
            "sysfs",
            "_sysctl",
            "uselib",
            "ustat",
            "vm86",
            "vm86old",
        ],
    ),
    (
        None,
        &[
            "userfaultfd",
            "create_module",
            "get_kernel_syms",
            "query_module",
        ],
    ),
    (Some("CAP_SYS_PACCT"), &["acct"]),
    (
        Some("CAP_SYS_BOOT"),
        &["reboot", "kexec_load", "kexec_file_load"],
    ),
    (
        Some("CAP_SYS_MODULE"),
        &["init_module", "finit_module", "delete_module"],
    ),
    (Some("CAP_SYS_RAWIO"), &["ioperm", "iopl"]),
    (
        Some("CAP_SYS_TIME"),
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    (Some("CAP_SYS_TTY_CONFIG"), &["vhangup"]),
    (
        Some("CAP_SYS_NICE"),
        &["get_mempolicy", "set_mempolicy", "mbind", "move_pages"],
    ),
    (Some("CAP_SYSLOG"), &["syslog"]),
    (Some("CAP_DAC_READ_SEARCH"), &["open_by_handle_at"]),
    (
        Some("CAP_SYS_PTRACE"),
        &["kcmp", "process_vm_readv", "process_vm_writev"],
    ),
    (Some("CAP_BPF"), &["bpf"]),
    (Some("CAP_PERFMON"), &["perf_event_open"]),
    (
        Some("CAP_SYS_ADMIN"),
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "setns",
            "unshare",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "fanotify_init",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
        ],
    ),
];

/// `CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET`, one rule each
/// (a rule's argument checks are ANDed; "any of these bits" needs one rule per bit).
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The profile for a container with `capabilities` (the `CAP_*` names it ends up with).
pub fn runtime_default(capabilities: &[String]) -> Value {
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    let sys_admin = has("CAP_SYS_ADMIN");
    let mut names: Vec<&str> = Vec::new();
    for (cap, calls) in DENIED {
        let lifted = match *cap {
            None => false,
            // containerd lifts bpf and perf_event_open for CAP_SYS_ADMIN too.
            Some("CAP_BPF") | Some("CAP_PERFMON") => has(cap.unwrap_or_default()) || sys_admin,
            Some(cap) => has(cap),
        };
        if !lifted {
            names.extend_from_slice(calls);
        }
    }
    let mut syscalls = vec![json!({
        "names": names,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
    })];
    if !sys_admin {
        syscalls.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }));
        // clone's flags are its first argument on x86_64 and aarch64.
        for flag in CLONE_NAMESPACE_FLAGS {
            syscalls.push(json!({
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": syscalls,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn denied(profile: &Value) -> Vec<String> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn capabilities_lift_what_they_unlock() {
        let plain = runtime_default(&[]);
        let d = denied(&plain);
        for call in [
            "mount", "unshare", "setns", "keyctl", "bpf", "reboot", "clone3",
        ] {
            assert!(d.iter().any(|n| n == call), "{call} allowed by default");
        }
        assert!(
            !d.iter().any(|n| n == "clone"),
            "plain clone (threads, fork) is allowed"
        );
        let admin = runtime_default(&["CAP_SYS_ADMIN".into()]);
        let d = denied(&admin);
        for call in ["mount", "unshare", "setns", "bpf", "clone3"] {
            assert!(
                !d.iter().any(|n| n == call),
                "{call} still denied with SYS_ADMIN"
            );
        }
        assert!(d.iter().any(|n| n == "keyctl"), "keyctl is always denied");
        assert!(d.iter().any(|n| n == "reboot"));
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ALLOW");
        // Seven rules for clone's namespace flags without SYS_ADMIN, none with it.
        let clone_rules = |p: &Value| {
            p["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["names"][0] == "clone")
                .count()
        };
        assert_eq!((clone_rules(&plain), clone_rules(&admin)), (7, 0));
    }
}
