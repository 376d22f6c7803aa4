//! Syscalls.
