//! The API loops against a scripted in-memory [`PodApi`]: list, watch, 410, bursts, status.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_executor::LocalExecutor;
use serde_json::{Value, json};

use super::client::{Failure, Page, PodApi, PodWatch};
use super::watcher::WatchEvent;
use super::*;
use crate::pod::board::Board;
use crate::pod::status::{ContainerState, ContainerStatus, Phase, PodStatus};
use crate::report::status::NodeFacts;

/// Answers from scripts; an empty script never answers (the loop waits forever).
#[derive(Default)]
struct Fake {
    lists: RefCell<VecDeque<Result<Page, Failure>>>,
    watches: RefCell<VecDeque<Result<VecDeque<WatchEvent>, Failure>>>,
    /// Answers to status patches, in order; when empty, success.
    patch_answers: RefCell<VecDeque<Failure>>,
    log: RefCell<Vec<String>>,
    patches: RefCell<Vec<Value>>,
}

struct FakeWatch(VecDeque<WatchEvent>);

impl PodWatch for FakeWatch {
    async fn next(&mut self) -> Option<Result<WatchEvent, Failure>> {
        self.0.pop_front().map(Ok)
    }
}

impl PodApi for Fake {
    type Watch = FakeWatch;

    async fn list_pods(&self, node: &str, continue_token: Option<&str>) -> Result<Page, Failure> {
        self.log
            .borrow_mut()
            .push(format!("list {node} {continue_token:?}"));
        let next = self.lists.borrow_mut().pop_front();
        match next {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    async fn watch_pods(&self, _: &str, rv: &str, _: u32) -> Result<FakeWatch, Failure> {
        self.log.borrow_mut().push(format!("watch {rv}"));
        let next = self.watches.borrow_mut().pop_front();
        match next {
            Some(answer) => answer.map(FakeWatch),
            None => std::future::pending().await,
        }
    }

    async fn patch_pod_status(&self, ns: &str, name: &str, body: &Value) -> Result<(), Failure> {
        self.log.borrow_mut().push(format!("patch {ns}/{name}"));
        if let Some(f) = self.patch_answers.borrow_mut().pop_front() {
            return Err(f);
        }
        self.patches.borrow_mut().push(body.clone());
        Ok(())
    }

    async fn create_pod(&self, ns: &str, body: &Value) -> Result<(), Failure> {
        self.log
            .borrow_mut()
            .push(format!("create {ns}/{}", body["metadata"]["name"]));
        Ok(())
    }

    async fn delete_pod(&self, ns: &str, name: &str, uid: &str, grace: i64) -> Result<(), Failure> {
        self.log
            .borrow_mut()
            .push(format!("delete {ns}/{name} uid={uid} grace={grace}"));
        Ok(())
    }

    async fn node_uid(&self, _: &str) -> Result<String, Failure> {
        Ok("node-uid".into())
    }
}

fn pod(name: &str, rv: u64) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "resourceVersion": rv.to_string()},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}
    })
}

fn page(items: Vec<Value>, rv: &str) -> Result<Page, Failure> {
    Ok(Page {
        items,
        resource_version: rv.into(),
        continue_token: None,
    })
}

/// Runs the executor until `done` holds (or a generous deadline: then the test fails).
fn run_until(ex: &LocalExecutor<'static>, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    async_io::block_on(ex.run(async {
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            async_io::Timer::after(Duration::from_millis(5)).await;
        }
    }));
}

fn names(pods: &ApiPods) -> Vec<String> {
    pods.desired()
        .iter()
        .map(|p| p.metadata.name.clone())
        .collect()
}

fn setup() -> (tempfile::TempDir, Rc<ApiPods>, async_channel::Receiver<()>) {
    let tmp = tempfile::tempdir().unwrap();
    let store = PodStore::open(&tmp.path().join("api-pods")).unwrap();
    let (wake, woken) = async_channel::bounded(1);
    let pods = Rc::new(ApiPods::new("n1".into(), store, wake));
    (tmp, pods, woken)
}

#[test]
fn list_watch_gone_relist_and_the_store_follows() {
    let (tmp, pods, woken) = setup();
    let fake = Rc::new(Fake::default());
    fake.lists.borrow_mut().extend([
        page(vec![pod("a", 1), pod("b", 2)], "10"),
        page(vec![pod("c", 12)], "20"),
    ]);
    fake.watches.borrow_mut().push_back(Ok(VecDeque::from([
        WatchEvent::Added(pod("c", 11)),
        WatchEvent::Bookmark {
            resource_version: "15".into(),
        },
        WatchEvent::Error(crate::api::types::Status {
            code: 410,
            message: "too old resource version".into(),
            ..Default::default()
        }),
    ])));
    let ex = LocalExecutor::new();
    ex.spawn(run_watch(fake.clone(), pods.clone())).detach();
    run_until(&ex, "the relist", || names(&pods) == ["c"]);
    assert_eq!(
        *fake.log.borrow(),
        ["list n1 None", "watch 10", "list n1 None", "watch 20"]
    );
    assert!(woken.try_recv().is_ok(), "the agent is told to reconcile");
    pods.flush();
    let stored: Vec<String> = PodStore::open(&tmp.path().join("api-pods"))
        .unwrap()
        .load()
        .0
        .iter()
        .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stored,
        ["c"],
        "a and b were deleted while the watch was down"
    );
}

#[test]
fn stored_pods_run_before_the_api_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PodStore::open(&tmp.path().join("api-pods")).unwrap();
    store.save("uid-a", &pod("a", 1)).unwrap();
    let (wake, _woken) = async_channel::bounded(1);
    let pods = ApiPods::new("n1".into(), store, wake);
    assert_eq!(names(&pods), ["a"]);
    assert!(!pods.is_synced());
}

#[test]
fn a_burst_of_ten_thousand_events_keeps_one_entry_per_pod() {
    let (_tmp, pods, _woken) = setup();
    let fake = Rc::new(Fake::default());
    fake.lists.borrow_mut().push_back(page(vec![], "1"));
    let events: VecDeque<WatchEvent> = (0..10_000u64)
        .map(|i| WatchEvent::Modified(pod(&format!("p{}", i % 10), 2 + i)))
        .collect();
    fake.watches.borrow_mut().push_back(Ok(events));
    let ex = LocalExecutor::new();
    ex.spawn(run_watch(fake.clone(), pods.clone())).detach();
    run_until(&ex, "the burst", || {
        fake.log.borrow().last().map(String::as_str) == Some("watch 10001")
    });
    assert_eq!(names(&pods).len(), 10);
    assert_eq!(
        pods.dirty.borrow().len(),
        10,
        "only the latest object of each pod waits for the store"
    );
}

#[test]
fn terminating_pods_are_confirmed_with_a_uid_precondition() {
    let (_tmp, pods, _woken) = setup();
    let fake = Rc::new(Fake::default());
    let mut deleting = pod("web", 3);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-28T01:49:57Z");
    deleting["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    fake.lists.borrow_mut().push_back(page(vec![deleting], "3"));
    let ex = LocalExecutor::new();
    ex.spawn(run_watch(fake.clone(), pods.clone())).detach();
    run_until(&ex, "the list", || pods.is_synced());
    assert!(names(&pods).is_empty());
    assert_eq!(pods.deletion_grace("uid-web"), Some(30));
    assert!(pods.idle_terminating(&|_| true).is_empty(), "still running");
    let idle = pods.idle_terminating(&|_| false);
    assert_eq!(idle.len(), 1);
    async_io::block_on(confirm_deletion(&*fake, &pods, idle[0].clone()));
    assert!(
        fake.log
            .borrow()
            .contains(&"delete default/web uid=uid-web grace=0".to_string())
    );
    assert!(
        pods.idle_terminating(&|_| false).is_empty(),
        "confirmed once"
    );
}

fn status(uid: &str, name: &str, running: bool) -> PodStatus {
    let mut c = ContainerStatus::new("c", "busybox");
    if running {
        c.state = ContainerState::Running { started_at: 1 };
    }
    PodStatus {
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
        source: "api".into(),
        phase: if running {
            Phase::Running
        } else {
            Phase::Pending
        },
        reason: String::new(),
        message: String::new(),
        start_time: Some(1),
        conditions: vec![],
        init_container_statuses: vec![],
        container_statuses: vec![c],
        host_network: false,
        terminating: false,
        qos_class: String::new(),
        pod_ip: String::new(),
        pod_ips: Vec::new(),
        host_ip: String::new(),
    }
}

#[test]
fn status_changes_are_patched_once_and_retried_after_failures() {
    let (_tmp, pods, _woken) = setup();
    let fake = Rc::new(Fake::default());
    fake.lists
        .borrow_mut()
        .push_back(page(vec![pod("web", 1)], "1"));
    fake.patch_answers.borrow_mut().push_back(Failure {
        code: Some(503),
        message: "unavailable".into(),
    });
    let board = Board::default();
    let ex = LocalExecutor::new();
    ex.spawn(run_watch(fake.clone(), pods.clone())).detach();
    let facts: Rc<dyn Fn() -> NodeFacts> = Rc::new(NodeFacts::default);
    ex.spawn(crate::report::sync::run_status(
        fake.clone(),
        board.clone(),
        pods.clone(),
        facts,
    ))
    .detach();
    run_until(&ex, "the list", || pods.is_synced());
    board.publish(status("uid-web", "web", false));
    // A pod the API server does not have (a static pod without mirror): never patched.
    board.publish(status("uid-static", "static", true));
    run_until(&ex, "the pending patch", || {
        fake.patches.borrow().len() == 1
    });
    assert_eq!(fake.patches.borrow()[0]["status"]["phase"], "Pending");
    assert_eq!(
        fake.log
            .borrow()
            .iter()
            .filter(|l| l.starts_with("patch"))
            .count(),
        2,
        "one failure (503), then the retry: {:?}",
        fake.log.borrow()
    );
    board.publish(status("uid-web", "web", true));
    run_until(&ex, "the running patch", || {
        fake.patches.borrow().len() == 2
    });
    assert_eq!(fake.patches.borrow()[1]["status"]["phase"], "Running");
    assert_eq!(fake.patches.borrow()[1]["metadata"]["uid"], "uid-web");
    assert!(fake.log.borrow().iter().all(|l| !l.contains("static")));
}

#[test]
fn the_echo_of_our_own_status_patch_wakes_nobody_and_writes_nothing() {
    let (tmp, pods, woken) = setup();
    let reporters = pods.subscribe();
    pods.apply(vec![Output::Snapshot(vec![pod("a", 1)])]);
    assert!(woken.try_recv().is_ok() && reporters.try_recv().is_ok());
    pods.flush();
    let file = tmp.path().join("api-pods/uid-a.json");
    let written = std::fs::read(&file).unwrap();

    // What the API server sends back after the node patched the pod's status.
    let mut echo = pod("a", 2);
    echo["status"] = json!({"phase": "Running", "podIP": "10.0.0.2"});
    echo["metadata"]["managedFields"] = json!([{"manager": "nanolet", "subresource": "status"}]);
    pods.apply(vec![Output::Applied(echo.clone())]);
    assert!(woken.try_recv().is_err(), "the agent is not woken");
    assert!(reporters.try_recv().is_err(), "the reporters are not woken");
    pods.flush();
    assert_eq!(
        std::fs::read(&file).unwrap(),
        written,
        "the store is not rewritten"
    );

    // A real change still gets through.
    echo["metadata"]["resourceVersion"] = json!("3");
    echo["metadata"]["deletionTimestamp"] = json!("2026-11-28T01:49:57Z");
    pods.apply(vec![Output::Applied(echo)]);
    assert!(woken.try_recv().is_ok());
    pods.flush();
    assert_ne!(std::fs::read(&file).unwrap(), written);
}

#[test]
fn forgotten_pods_are_reported_by_flush_and_their_objects_are_no_longer_referenced() {
    let with_objects = |name: &str, rv: u64, config_map: Option<&str>| {
        let mut p = pod(name, rv);
        let mut from = vec![json!({"secretRef": {"name": "shared"}})];
        if let Some(cm) = config_map {
            from.push(json!({"configMapRef": {"name": cm}}));
        }
        p["spec"]["containers"][0]["envFrom"] = json!(from);
        p
    };
    let referenced_names = |pods: &ApiPods| {
        let (objects, _) = pods.referenced();
        let names: Vec<String> = objects.into_iter().map(|k| k.name).collect();
        names
    };
    // a and b were stored before a restart; a was deleted while nanolet was away.
    let tmp = tempfile::tempdir().unwrap();
    let store = PodStore::open(&tmp.path().join("api-pods")).unwrap();
    store
        .save("uid-a", &with_objects("a", 1, Some("only-a")))
        .unwrap();
    store.save("uid-b", &with_objects("b", 2, None)).unwrap();
    let (wake, _woken) = async_channel::bounded(1);
    let pods = Rc::new(ApiPods::new("n1".into(), store, wake));
    assert!(!pods.flush(), "nothing forgotten yet");
    assert_eq!(referenced_names(&pods), ["only-a", "shared"]);
    let fake = Rc::new(Fake::default());
    fake.lists
        .borrow_mut()
        .push_back(page(vec![with_objects("b", 3, None)], "10"));
    let ex = LocalExecutor::new();
    ex.spawn(run_watch(fake.clone(), pods.clone())).detach();
    run_until(&ex, "the first list", || names(&pods) == ["b"]);
    assert!(pods.flush(), "a was forgotten");
    assert_eq!(referenced_names(&pods), ["shared"]);
    assert!(!pods.flush(), "once");
}
