//! Containers: everything between "run this process from this rootfs" and runc.
//!
//! This layer knows OCI and runc, never Kubernetes: the pod layer converts a Pod into a
//! [`spec::ContainerConfig`] and hands it down.
//!
//! - [`spec`]: the OCI runtime `config.json` for runc, as containerd's CRI plugin would write it
//!   (pure: no I/O, host facts passed in).
//! - [`seccomp`]: the `RuntimeDefault` seccomp profile (pure).
//! - [`user`]: resolves an image `User` ("name", "uid:gid", …) against the image's `/etc/passwd`
//!   and `/etc/group` text, like runc/containerd (pure).
//! - [`bundle`]: a container's bundle folder, rootfs mount, stdio FIFOs and adoption record.
//! - [`runc`]: the only file that runs runc.
//! - [`logs`]: CRI-format container log files (`<time> <stream> <F|P> <content>`): the writer with
//!   kubelet-style rotation and the reader behind `nanolet logs`.
//! - [`log_pump`]: copies a container's stdout and stderr FIFOs into its log through one read
//!   buffer shared by all containers.

pub mod bundle;
pub mod log_pump;
pub mod logs;
pub mod runc;
pub mod seccomp;
pub mod spec;
pub mod user;
