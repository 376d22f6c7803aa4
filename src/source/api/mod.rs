//! Pods from the API server: the pods bound to this node, next to the static pods.
//!
//! - [`watcher`] (pure): list + watch as one state machine (resourceVersion, bookmarks, 410).
pub mod decode;
pub mod set;
pub mod watcher;
