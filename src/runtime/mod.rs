//! Containers.

pub mod runc;
