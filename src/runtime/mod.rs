//! Containers.

pub mod bundle;
pub mod runc;
