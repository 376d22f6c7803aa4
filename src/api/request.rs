//! Pure request builders, kube-rs style: a [`Resource`] knows its path, each verb returns a
//! [`Request`] (method, path, query, body). No I/O, so tests compare them with the recorded
//! transcripts byte for byte, and callers can log exactly what they send.
//!
//! ```text
//! Resource::PODS.list(None, &ListParams { field_selector: Some("spec.nodeName=edge-1"), .. })
//!   → GET /api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500
//! ```

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// An HTTP method the API client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET (get, list, watch).
    Get,
    /// POST (create).
    Post,
    /// PUT (replace, with optimistic concurrency on resourceVersion).
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// The patch formats the API server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/strategic-merge-patch+json`: lists merge by their key (conditions by type).
    Strategic,
    /// `application/merge-patch+json` (RFC 7386): lists are replaced.
    Merge,
}

impl PatchKind {
    fn content_type(self) -> &'static str {
        match self {
            PatchKind::Strategic => "application/strategic-merge-patch+json",
            PatchKind::Merge => "application/merge-patch+json",
        }
    }
}

/// One API request, ready for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, starting with `/` (not percent-encoded: names are DNS labels).
    pub path: String,
    /// Query parameters, in order (values are percent-encoded on the wire).
    pub query: Vec<(&'static str, String)>,
    /// The JSON body, if any.
    pub body: Option<Vec<u8>>,
    /// The body's content type.
    pub content_type: Option<&'static str>,
    /// Whether the answer is a stream of watch events (read line by line, never buffered whole).
    pub is_watch: bool,
}

impl Request {
    fn new(method: Method, path: String) -> Request {
        Request {
            method,
            path,
            query: Vec::new(),
            body: None,
            content_type: None,
            is_watch: false,
        }
    }

    fn json(mut self, body: &impl Serialize) -> Request {
        // Serializing our own types (or a Value) to a Vec cannot fail: no map has non-string keys.
        self.body = Some(serde_json::to_vec(body).unwrap_or_default());
        self.content_type = Some("application/json");
        self
    }

    /// `path?query` as it goes on the request line.
    pub fn path_and_query(&self) -> String {
        let mut s = self.path.clone();
        for (i, (k, v)) in self.query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            s.push('=');
            s.push_str(&percent_encode(v));
        }
        s
    }
}

impl fmt::Display for Request {
    /// `GET /api/v1/nodes/edge-1`, for messages (the query is left out: it can be long).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method.as_str(), self.path)
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A kind of object on the API server: where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// `/api/v1` or `/apis/<group>/<version>`.
    pub prefix: &'static str,
    /// The plural (`pods`).
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl Resource {
    /// `v1` Node.
    pub const NODES: Resource = Resource::new("/api/v1", "nodes", false);
    /// `v1` Pod.
    pub const PODS: Resource = Resource::new("/api/v1", "pods", true);
    /// `v1` Event.
    pub const EVENTS: Resource = Resource::new("/api/v1", "events", true);
    /// `v1` ConfigMap.
    pub const CONFIG_MAPS: Resource = Resource::new("/api/v1", "configmaps", true);
    /// `v1` Secret.
    pub const SECRETS: Resource = Resource::new("/api/v1", "secrets", true);
    /// `v1` ServiceAccount (for the `token` subresource).
    pub const SERVICE_ACCOUNTS: Resource = Resource::new("/api/v1", "serviceaccounts", true);
    /// `v1` Service.
    pub const SERVICES: Resource = Resource::new("/api/v1", "services", true);
    /// `coordination.k8s.io/v1` Lease.
    pub const LEASES: Resource = Resource::new("/apis/coordination.k8s.io/v1", "leases", true);

    /// A resource at `prefix` (`/api/v1`, `/apis/group/version`).
    pub const fn new(prefix: &'static str, plural: &'static str, namespaced: bool) -> Resource {
        Resource {
            prefix,
            plural,
            namespaced,
        }
    }

    /// The collection's path; `namespace` None means all namespaces (or cluster-scoped).
    pub fn collection(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => {
                format!("{}/namespaces/{ns}/{}", self.prefix, self.plural)
            }
            _ => format!("{}/{}", self.prefix, self.plural),
        }
    }

    /// One object's path.
    pub fn object(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection(namespace))
    }

    /// GET one object.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Request {
        Request::new(Method::Get, self.object(namespace, name))
    }

    /// GET a collection (one page).
    pub fn list(&self, namespace: Option<&str>, params: &ListParams) -> Request {
        let mut r = Request::new(Method::Get, self.collection(namespace));
        params.push_selectors(&mut r.query);
        if let Some(limit) = params.limit {
            r.query.push(("limit", limit.to_string()));
        }
        if let Some(c) = &params.continue_token {
            r.query.push(("continue", c.clone()));
        }
        if let Some(rv) = &params.resource_version {
            r.query.push(("resourceVersion", rv.clone()));
        }
        r
    }

    /// GET a collection as a watch stream, from `resource_version` (None: the server sends
    /// the current objects as ADDED first).
    pub fn watch(&self, namespace: Option<&str>, params: &WatchParams) -> Request {
        let mut r = Request::new(Method::Get, self.collection(namespace));
        params.list.push_selectors(&mut r.query);
        r.query.push(("watch", "1".to_string()));
        if params.bookmarks {
            r.query.push(("allowWatchBookmarks", "true".to_string()));
        }
        if let Some(rv) = &params.resource_version {
            r.query.push(("resourceVersion", rv.clone()));
        }
        r.query
            .push(("timeoutSeconds", params.timeout_seconds.to_string()));
        r.is_watch = true;
        r
    }

    /// POST a new object.
    pub fn create(&self, namespace: Option<&str>, object: &impl Serialize) -> Request {
        Request::new(Method::Post, self.collection(namespace)).json(object)
    }

    /// PUT an object (fails with 409 Conflict if its resourceVersion is stale).
    pub fn replace(&self, namespace: Option<&str>, name: &str, object: &impl Serialize) -> Request {
        Request::new(Method::Put, self.object(namespace, name)).json(object)
    }

    /// PATCH an object, or with `subresource` (`status`) a part of it.
    pub fn patch(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        kind: PatchKind,
        patch: &Value,
    ) -> Request {
        let mut path = self.object(namespace, name);
        if let Some(sub) = subresource {
            path.push('/');
            path.push_str(sub);
        }
        let mut r = Request::new(Method::Patch, path).json(patch);
        r.content_type = Some(kind.content_type());
        r
    }

    /// DELETE an object, with `DeleteOptions` when given.
    pub fn delete(&self, namespace: Option<&str>, name: &str, options: &DeleteParams) -> Request {
        let r = Request::new(Method::Delete, self.object(namespace, name));
        if options.grace_period_seconds.is_none() && options.uid_precondition.is_none() {
            return r;
        }
        let mut body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(g) = options.grace_period_seconds {
            body["gracePeriodSeconds"] = g.into();
        }
        if let Some(uid) = &options.uid_precondition {
            body["preconditions"] = serde_json::json!({ "uid": uid });
        }
        r.json(&body)
    }

    /// POST to a subresource of an object (`serviceaccounts/<name>/token`).
    pub fn create_subresource(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: &impl Serialize,
    ) -> Request {
        Request::new(
            Method::Post,
            format!("{}/{subresource}", self.object(namespace, name)),
        )
        .json(body)
    }
}

/// Options of a list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListParams {
    /// `fieldSelector` (`spec.nodeName=edge-1`).
    pub field_selector: Option<String>,
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// The `continue` token of the previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` (`"0"`: any version, from the server's cache).
    pub resource_version: Option<String>,
}

impl ListParams {
    fn push_selectors(&self, query: &mut Vec<(&'static str, String)>) {
        if let Some(f) = &self.field_selector {
            query.push(("fieldSelector", f.clone()));
        }
        if let Some(l) = &self.label_selector {
            query.push(("labelSelector", l.clone()));
        }
    }
}

/// Options of a watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchParams {
    /// The selectors (limit and continue are ignored).
    pub list: ListParams,
    /// Where to start: the list's or the last event's resourceVersion.
    pub resource_version: Option<String>,
    /// Ask for BOOKMARK events.
    pub bookmarks: bool,
    /// The server ends the watch after this long (the client reconnects); kubelet uses 5-10 min.
    pub timeout_seconds: u32,
}

/// Options of a delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteParams {
    /// `gracePeriodSeconds` (0: remove now).
    pub grace_period_seconds: Option<i64>,
    /// Only delete the object with this uid (not a new one of the same name).
    pub uid_precondition: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_match_the_transcripts() {
        let list = Resource::PODS.list(
            None,
            &ListParams {
                field_selector: Some("spec.nodeName=edge-1".into()),
                limit: Some(500),
                ..Default::default()
            },
        );
        assert_eq!(
            list.path_and_query(),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&limit=500"
        );
        let watch = Resource::PODS.watch(
            None,
            &WatchParams {
                list: ListParams {
                    field_selector: Some("spec.nodeName=edge-1".into()),
                    ..Default::default()
                },
                resource_version: Some("604".into()),
                bookmarks: true,
                timeout_seconds: 12,
            },
        );
        assert_eq!(
            watch.path_and_query(),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1&watch=1&allowWatchBookmarks=true&resourceVersion=604&timeoutSeconds=12"
        );
        assert!(watch.is_watch);
        assert_eq!(
            Resource::LEASES.get(Some("kube-node-lease"), "edge-1").path,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1"
        );
        assert_eq!(
            Resource::NODES.get(Some("ignored"), "edge-1").path,
            "/api/v1/nodes/edge-1"
        );
    }

    #[test]
    fn patches_and_deletes_carry_their_bodies() {
        let p = Resource::NODES.patch(
            None,
            "edge-1",
            Some("status"),
            PatchKind::Strategic,
            &serde_json::json!({"status": {}}),
        );
        assert_eq!(p.to_string(), "PATCH /api/v1/nodes/edge-1/status");
        assert_eq!(
            p.content_type,
            Some("application/strategic-merge-patch+json")
        );
        let d = Resource::PODS.delete(
            Some("default"),
            "web",
            &DeleteParams {
                grace_period_seconds: Some(0),
                uid_precondition: Some("f2d20477-d000-47cc-8811-2599893e2222".into()),
            },
        );
        assert_eq!(
            String::from_utf8(d.body.unwrap()).unwrap(),
            r#"{"apiVersion":"v1","gracePeriodSeconds":0,"kind":"DeleteOptions","preconditions":{"uid":"f2d20477-d000-47cc-8811-2599893e2222"}}"#
        );
        assert_eq!(
            Resource::PODS
                .delete(Some("default"), "web", &DeleteParams::default())
                .body,
            None
        );
    }
}
