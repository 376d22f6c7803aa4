//! A node in a cluster, for the API tests: a [`Node`] joined to a fresh fake API server, and
//! the API pods they create (one busybox container `app` running a script under `sh -c`).

use serde_json::{Value, json};

use super::Node;
use super::apiserver::ApiServer;

/// A node (`extra`: lines for its `nanolet.yaml`) joined to a fresh fake API server; not started.
pub fn joined(extra: &str) -> (Node, ApiServer) {
    let api = ApiServer::start();
    let node = Node::new(extra);
    api.write_kubeconfig(node.dir.path(), None);
    (node, api)
}

/// A pod in `default` bound to `node`, whose one container `app` (busybox, present in the
/// node's images) runs `script`, and which stops within `grace` seconds.
pub fn api_pod(name: &str, node: &str, script: &str, grace: i64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "app", "image": "busybox:latest",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", script]}]
        }
    })
}

/// Sets each field of the object `extra` in the object `into` (a shallow merge).
pub fn merge(into: &mut Value, extra: &Value) {
    if let (Some(o), Some(e)) = (into.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
}

/// [`api_pod`] with `spec` merged into the pod's spec and `container` into its container.
pub fn api_pod_with(
    name: &str,
    node: &str,
    script: &str,
    grace: i64,
    spec: &Value,
    container: &Value,
) -> Value {
    let mut pod = api_pod(name, node, script, grace);
    merge(&mut pod["spec"]["containers"][0], container);
    merge(&mut pod["spec"], spec);
    pod
}
