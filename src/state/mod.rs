//! State on disk.
