//! The Kubernetes API client: what nanolet says to the API server, and how.
//!
//! ```text
//!  node/ , pod code ──► request.rs (pure: method, path, query, body)   kubeconfig.rs (pure parse)
//!                           │                                             │
//!                           ▼                                             ▼
//!                       client.rs  ── auth header, retries' back-off ── tls.rs (rustls, ring)
//!                           │
//!                           ▼
//!                       http.rs (ureq-proto framing over async-io sockets; gzip; bounded reads)
//!                           │
//!                           ▼                answers: types.rs (typed), error.rs (Status → Error)
//!                     TCP / TLS socket
//! ```
//!
//! Everything here runs on the agent's one executor thread: no thread, no blocking call except
//! the resolution of a host name (see [`client::Client`]). Request builders ([`request`]) are
//! pure, kube-rs style, so callers and tests can see exactly what goes on the wire.
//! Error answers become one [`Error`] whose messages name the request and what to do.
//!
//! The module never decides what to do about an error beyond retrying a request: the loops
//! that use it (node registration, lease, pods) own their back-off and their state.

pub mod backoff;
pub mod client;
pub mod error;
pub mod events;
pub mod http;
pub mod kubeconfig;
pub mod request;
pub mod time;
#[cfg(feature = "tls")]
mod tls;
pub mod types;

pub use client::Client;
pub use error::{Error, Reason};
pub use request::Request;
