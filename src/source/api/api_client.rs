//! [`PodApi`] for the real API client ([`crate::api::Client`]): G1's pure request builders, sent
//! over its HTTP/1.1 connection; errors keep their HTTP status for the loops' decisions.

use serde_json::Value;

use super::client::{Failure, Page, PodApi, PodWatch};
use super::watcher::PAGE_LIMIT;
use crate::api::request::{DeleteParams, ListParams, PatchKind, Resource, WatchParams};
use crate::api::types::{List, WatchEvent};
use crate::api::{Client, Error};

fn failure(e: Error) -> Failure {
    let code = match &e {
        Error::Status { code, .. } => Some(*code),
        _ => None,
    };
    Failure {
        code,
        message: e.to_string(),
    }
}

fn selector(node: &str) -> ListParams {
    ListParams {
        field_selector: Some(format!("spec.nodeName={node}")),
        ..ListParams::default()
    }
}

/// The events of a pod watch, in the watcher's terms.
pub struct ClientWatch(crate::api::client::WatchStream);

impl PodWatch for ClientWatch {
    async fn next(&mut self) -> Option<Result<WatchEvent, Failure>> {
        Some(match self.0.next().await? {
            Ok(event) => Ok(event),
            Err(e) => Err(failure(e)),
        })
    }
}

impl PodApi for Client {
    type Watch = ClientWatch;

    async fn list_pods(&self, node: &str, continue_token: Option<&str>) -> Result<Page, Failure> {
        let params = ListParams {
            limit: Some(PAGE_LIMIT),
            continue_token: continue_token.map(str::to_string),
            ..selector(node)
        };
        let list: List = self
            .json(&Resource::PODS.list(None, &params))
            .await
            .map_err(failure)?;
        Ok(Page {
            items: list.items,
            resource_version: list.metadata.resource_version,
            continue_token: Some(list.metadata.continue_token).filter(|t| !t.is_empty()),
        })
    }

    async fn watch_pods(
        &self,
        node: &str,
        resource_version: &str,
        timeout_seconds: u32,
    ) -> Result<ClientWatch, Failure> {
        let params = WatchParams {
            list: selector(node),
            resource_version: Some(resource_version.to_string()),
            bookmarks: true,
            timeout_seconds,
        };
        self.watch(&Resource::PODS.watch(None, &params))
            .await
            .map(ClientWatch)
            .map_err(failure)
    }

    async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), Failure> {
        let req = Resource::PODS.patch(
            Some(namespace),
            name,
            Some("status"),
            PatchKind::Strategic,
            body,
        );
        self.send(&req).await.map(drop).map_err(failure)
    }

    async fn create_pod(&self, namespace: &str, body: &Value) -> Result<(), Failure> {
        self.send(&Resource::PODS.create(Some(namespace), body))
            .await
            .map(drop)
            .map_err(failure)
    }

    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        grace_period_seconds: i64,
    ) -> Result<(), Failure> {
        let options = DeleteParams {
            grace_period_seconds: Some(grace_period_seconds),
            uid_precondition: Some(uid.to_string()),
        };
        self.send(&Resource::PODS.delete(Some(namespace), name, &options))
            .await
            .map(drop)
            .map_err(failure)
    }

    async fn node_uid(&self, node: &str) -> Result<String, Failure> {
        let node: Value = self
            .json(&Resource::NODES.get(None, node))
            .await
            .map_err(failure)?;
        node.pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Failure {
                code: None,
                message: "node without metadata.uid".into(),
            })
    }
}
