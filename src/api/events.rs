//! Events (filled in below).
