//! The one seam for syscalls that need root, `unsafe`, or process-wide state.
//!
//! Everything here is small and mechanical: it does what it is told and decides nothing.
//! Decision logic lives in [`crate::pod`]; the runtime layer calls these functions.
//!
//! - [`reaper`]: nanolet is a child subreaper; one task reaps every child on `SIGCHLD` and hands
//!   exit statuses to whoever waits for that pid (runc invocations and container processes alike).
//! - [`process`]: run a helper program (runc, `cp`, nanolet's own child modes) asynchronously.
//! - [`sandbox`]: a pod's shared namespaces (network, IPC, UTS) kept alive by bind mounts, so the
//!   containers of a pod share them without a pause container.
//! - [`mount`]: overlay and bind mounts, and unmounting.
//! - [`inroot`]: reading files inside a container rootfs without following links out.
//! - [`cgroup`]: finding and removing a pod's cgroup directories in every hierarchy.

pub mod cgroup;
pub mod inroot;
pub mod mount;
pub mod process;
pub mod reaper;
pub mod sandbox;
