//! Node settings from `nanolet.yaml`.
