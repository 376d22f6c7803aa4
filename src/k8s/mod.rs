//! Kubernetes object types.
