//! nanolet's API client against the fake API server on loopback: requests, error answers as
//! typed errors, keep-alive, gzip, watch streams (events, 410, dropped connections, big
//! objects, endless lines), time limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::apiserver::ApiServer;
use nanolet::api::kubeconfig;
use nanolet::api::request::{ListParams, PatchKind, Resource, WatchParams};
use nanolet::api::types::{List, ObjectMeta, WatchEvent};
use nanolet::api::{Client, Reason};
use serde_json::{Value, json};

fn client_for(server: &ApiServer, token: Option<&str>) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = server.write_kubeconfig(dir.path(), token);
    Client::new(&kubeconfig::load(&path).unwrap()).unwrap()
}

fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]}})
}

fn node_watch_params(rv: Option<String>) -> WatchParams {
    WatchParams {
        list: ListParams {
            field_selector: Some("spec.nodeName=edge-1".into()),
            ..Default::default()
        },
        resource_version: rv,
        bookmarks: true,
        timeout_seconds: 30,
    }
}

#[test]
fn create_get_conflict_and_not_found_as_typed_answers() {
    let server = ApiServer::start();
    server.faults(|f| f.token = Some("t0k".into()));
    let client = client_for(&server, Some("t0k"));
    async_io::block_on(async {
        let created: Value = client
            .json(&Resource::PODS.create(Some("default"), &pod("web", "edge-1")))
            .await
            .unwrap();
        assert_eq!(created["metadata"]["namespace"], "default");
        let again = client
            .send(&Resource::PODS.create(Some("default"), &pod("web", "edge-1")))
            .await
            .unwrap_err();
        assert!(again.is_already_exists(), "{again}");
        assert_eq!(
            again.to_string(),
            "POST /api/v1/namespaces/default/pods: 409 pods \"web\" already exists"
        );
        let missing = client
            .send(&Resource::PODS.get(Some("default"), "nope"))
            .await
            .unwrap_err();
        assert!(missing.is_not_found());
        let bad_uid = Resource::PODS.patch(
            Some("default"),
            "web",
            Some("status"),
            PatchKind::Strategic,
            &json!({"metadata": {"uid": "other"}, "status": {"phase": "Running"}}),
        );
        assert_eq!(
            client.send(&bad_uid).await.unwrap_err().reason(),
            Some(Reason::Invalid)
        );
        let meta: ObjectMeta = serde_json::from_value(created["metadata"].clone()).unwrap();
        let ok = Resource::PODS.patch(
            Some("default"),
            "web",
            Some("status"),
            PatchKind::Strategic,
            &json!({"metadata": {"uid": meta.uid}, "status": {"phase": "Running"}}),
        );
        let patched: Value = client.json(&ok).await.unwrap();
        assert_eq!(patched["status"]["phase"], "Running");
    });
    // Every request went over one kept-alive connection.
    assert_eq!(server.state().connections, 1);
}

#[test]
fn unauthorized_and_forbidden_say_what_to_fix() {
    let server = ApiServer::start();
    server.faults(|f| f.token = Some("right".into()));
    let client = client_for(&server, Some("wrong"));
    let e = async_io::block_on(client.send(&Resource::NODES.get(None, "edge-1"))).unwrap_err();
    assert!(e.is_auth() && !e.is_retryable());
    assert!(
        e.to_string()
            .contains("401 Unauthorized: the API server did not accept nanolet's credentials"),
        "{e}"
    );
    let server = ApiServer::start();
    server.fail_next(1, 403, None, None);
    let client = client_for(&server, None);
    let e = async_io::block_on(client.send(&Resource::NODES.get(None, "edge-1"))).unwrap_err();
    assert!(e.to_string().contains("system:node role"), "{e}");
}

#[test]
fn retry_after_of_429_and_503_reaches_the_caller() {
    let server = ApiServer::start();
    server.fail_next(1, 429, Some(7), None);
    server.fail_next(1, 503, Some(2), None);
    let client = client_for(&server, None);
    async_io::block_on(async {
        let e = client
            .send(&Resource::NODES.get(None, "x"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.reason(), e.retry_after()),
            (Some(Reason::TooManyRequests), Some(Duration::from_secs(7)))
        );
        let e = client
            .send(&Resource::NODES.get(None, "x"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.reason(), e.retry_after()),
            (Some(Reason::ServerError), Some(Duration::from_secs(2)))
        );
        assert!(e.is_retryable());
        assert!(
            client
                .send(&Resource::NODES.get(None, "x"))
                .await
                .unwrap_err()
                .is_not_found()
        );
    });
}

#[test]
fn gzip_answers_are_decoded() {
    let server = ApiServer::start();
    server.faults(|f| f.gzip = true);
    for i in 0..50 {
        server.create("pods", Some("default"), pod(&format!("p{i}"), "edge-1"));
    }
    let client = client_for(&server, None);
    let list: List = async_io::block_on(client.json(&Resource::PODS.list(
        None,
        &ListParams {
            field_selector: Some("spec.nodeName=edge-1".into()),
            ..Default::default()
        },
    )))
    .unwrap();
    assert_eq!(list.items.len(), 50);
    assert!(
        server.bytes().1 < 20_000,
        "the answer was compressed: {} bytes",
        server.bytes().1
    );
}

#[test]
fn watch_delivers_events_bookmarks_and_410() {
    let server = ApiServer::start();
    server.faults(|f| f.bookmark_every = Some(Duration::from_millis(100)));
    let client = client_for(&server, None);
    server.create("pods", Some("default"), pod("a", "edge-1"));
    server.create("pods", Some("default"), pod("elsewhere", "edge-2"));
    async_io::block_on(async {
        let list: List = client
            .json(&Resource::PODS.list(
                None,
                &ListParams {
                    field_selector: Some("spec.nodeName=edge-1".into()),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        assert_eq!(list.items.len(), 1);
        let mut w = client
            .watch(&Resource::PODS.watch(
                None,
                &node_watch_params(Some(list.metadata.resource_version.clone())),
            ))
            .await
            .unwrap();
        server.create("pods", Some("default"), pod("b", "edge-1"));
        server.create("pods", Some("default"), pod("c", "edge-2"));
        server.delete("pods", Some("default"), "a");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match w.next().await.unwrap().unwrap() {
                WatchEvent::Added(o) => {
                    seen.push(format!("ADDED {}", o["metadata"]["name"].as_str().unwrap()))
                }
                WatchEvent::Modified(o) => seen.push(format!(
                    "MODIFIED {}",
                    o["metadata"]["name"].as_str().unwrap()
                )),
                WatchEvent::Deleted(o) => seen.push(format!(
                    "DELETED {}",
                    o["metadata"]["name"].as_str().unwrap()
                )),
                WatchEvent::Bookmark { .. } => {}
                WatchEvent::Error(s) => panic!("{s:?}"),
            }
        }
        // The graceful delete of a bound pod is a MODIFIED (deletionTimestamp), not yet DELETED.
        assert_eq!(seen, ["ADDED b", "MODIFIED a"]);
        // A bookmark comes while nothing happens.
        loop {
            if let WatchEvent::Bookmark { resource_version } = w.next().await.unwrap().unwrap() {
                assert!(!resource_version.is_empty());
                break;
            }
        }
        server.expire();
        loop {
            match w.next().await {
                Some(Ok(WatchEvent::Error(s))) => {
                    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
                    break;
                }
                Some(Ok(WatchEvent::Bookmark { .. })) => continue,
                other => panic!("expected an ERROR 410 event, got {other:?}"),
            }
        }
        // A list from an expired resourceVersion is an HTTP 410.
        let e = client
            .send(&Resource::PODS.list(
                None,
                &ListParams {
                    resource_version: Some(list.metadata.resource_version.clone()),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert!(e.is_gone(), "{e}");
    });
}

#[test]
fn dropped_watch_connection_is_an_error_or_an_end_never_a_hang() {
    let server = ApiServer::start();
    let client = client_for(&server, None);
    async_io::block_on(async {
        let mut w = client
            .watch(&Resource::PODS.watch(None, &node_watch_params(None)))
            .await
            .unwrap();
        server.drop_connections();
        match w.next().await {
            None | Some(Err(_)) => {}
            Some(Ok(e)) => panic!("unexpected event {e:?}"),
        }
    });
}

#[test]
fn a_one_mib_annotation_passes_and_an_endless_line_is_refused() {
    let server = ApiServer::start();
    let client = client_for(&server, None);
    let mut big = pod("big", "edge-1");
    big["metadata"]["annotations"] = json!({"example.com/blob": "x".repeat(1024 * 1024)});
    async_io::block_on(async {
        let mut w = client
            .watch(&Resource::PODS.watch(None, &node_watch_params(None)))
            .await
            .unwrap();
        server.create("pods", Some("default"), big);
        match w.next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => assert_eq!(
                o["metadata"]["annotations"]["example.com/blob"]
                    .as_str()
                    .unwrap()
                    .len(),
                1024 * 1024
            ),
            other => panic!("{other:?}"),
        }
    });

    // A server that streams one line forever.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let endless = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = [b'x'; 65536];
        for _ in 0..(40 * 16) {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if s.write_all(&frame).is_err() {
                return;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = write_plain_kubeconfig(dir.path(), &format!("http://{addr}"));
    let client = Client::new(&kubeconfig::load(&path).unwrap()).unwrap();
    let e = async_io::block_on(async {
        let mut w = client
            .watch(&Resource::PODS.watch(None, &node_watch_params(None)))
            .await
            .unwrap();
        w.next().await.unwrap().unwrap_err()
    });
    assert!(e.to_string().contains("answer larger than"), "{e}");
    drop(client);
    endless.join().unwrap();
}

fn write_plain_kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, format!(
        "clusters:\n- name: c\n  cluster: {{server: \"{server}\"}}\ncontexts:\n- name: x\n  context: {{cluster: c}}\ncurrent-context: x\n"
    )).unwrap();
    path
}

#[test]
fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_plain_kubeconfig(dir.path(), &format!("http://{addr}"));
    let mut client = Client::new(&kubeconfig::load(&path).unwrap()).unwrap();
    client.timeouts.request = Duration::from_millis(300);
    let e = async_io::block_on(client.send(&Resource::NODES.get(None, "x"))).unwrap_err();
    assert!(e.is_retryable());
    assert!(e.to_string().contains("no answer within"), "{e}");
    drop(listener);
}

#[test]
fn server_down_is_a_retryable_transport_error() {
    let server = ApiServer::start();
    let client = client_for(&server, None);
    server.go_down();
    let e = async_io::block_on(client.send(&Resource::NODES.get(None, "x"))).unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("connect to 127.0.0.1"),
        "{e}"
    );
    server.come_back();
    let e = async_io::block_on(client.send(&Resource::NODES.get(None, "x"))).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}
