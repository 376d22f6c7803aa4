//! The API calls that the pod source and the reporters make, as one small trait.
//!
//! The loops ([`super::run_watch`], [`crate::report::sync`]) are written against [`PodApi`] so
//! that tests can drive them with a scripted fake; the agent hands them the real client
//! ([`crate::api::Client`], which implements it in `api_client.rs`).

use serde_json::Value;

use crate::api::types::WatchEvent;

/// A failed call: the HTTP status if the server answered, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "http {code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// One page of a pod list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Value>,
    pub resource_version: String,
    pub continue_token: Option<String>,
}

/// A watch stream: events until the server ends it (`None`) or it breaks (`Some(Err)`).
#[allow(async_fn_in_trait)] // used with concrete types on one thread; no Send bound wanted
pub trait PodWatch {
    async fn next(&mut self) -> Option<Result<WatchEvent, Failure>>;
}

/// What nanolet asks the API server about pods.
#[allow(async_fn_in_trait)] // as above
pub trait PodApi {
    type Watch: PodWatch;
    /// `GET /api/v1/pods?fieldSelector=spec.nodeName=NODE&limit=..[&continue=..]`.
    async fn list_pods(&self, node: &str, continue_token: Option<&str>) -> Result<Page, Failure>;
    /// `GET /api/v1/pods?fieldSelector=..&watch=1&allowWatchBookmarks=true&resourceVersion=..`.
    async fn watch_pods(
        &self,
        node: &str,
        resource_version: &str,
        timeout_seconds: u32,
    ) -> Result<Self::Watch, Failure>;
    /// `PATCH /api/v1/namespaces/NS/pods/NAME/status` (strategic merge).
    async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), Failure>;
    /// `POST /api/v1/namespaces/NS/pods`.
    async fn create_pod(&self, namespace: &str, body: &Value) -> Result<(), Failure>;
    /// `DELETE /api/v1/namespaces/NS/pods/NAME` with `gracePeriodSeconds` and a uid precondition.
    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        grace_period_seconds: i64,
    ) -> Result<(), Failure>;
    /// `metadata.uid` of the Node (for the mirror pods' ownerReference).
    async fn node_uid(&self, node: &str) -> Result<String, Failure>;
}
