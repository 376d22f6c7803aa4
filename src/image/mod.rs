//! The image store.
pub mod digest;
pub mod oci;
pub mod reference;
pub mod unpack;
