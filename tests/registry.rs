//! End to end: `nanolet internal-pull`, `pull`, `images` and `rmi` against a real registry
//! (Debian's `docker-registry`, images pushed with `skopeo`), with htpasswd basic auth and
//! credentials from `<config-dir>/config.json`, a multi-arch index, and a tiny scripted fake
//! registry on loopback for the faults a real one does not commit (wrong digest, endless
//! body, wrong content type).
//!
//! Root is not needed, except by the busybox test (its image script downloads a .deb).
//! Without `docker-registry`/`skopeo`/`htpasswd` the real-registry tests print "skipped";
//! with `NANOLET_REQUIRE_ROOT_TESTS=1` a skip is a failure. Each registry process is killed
//! when its guard drops, even when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::busybox::host_arch;
use common::registry::{RealRegistry, tools_or_skip};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(data: &[u8]) -> String {
    let sum = Sha256::digest(data);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

// ---- a tiny image, built by hand -------------------------------------------------------

/// A manifest and its blobs: config, then the one layer.
struct TinyImage {
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

/// An image of one gzip layer holding `/hello` with `text`, for `arch`.
fn tiny_image(arch: &str, text: &str) -> TinyImage {
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    layer
        .append_data(&mut header, "hello", text.as_bytes())
        .unwrap();
    let tar = layer.into_inner().unwrap();
    // Gzip, as registries hold layers (skopeo would compress a plain one, changing digests).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    })
    .to_string()
    .into_bytes();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(&layer), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    TinyImage {
        manifest,
        blobs: vec![config, layer],
    }
}

fn write_blob(layout: &Path, data: &[u8]) {
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&sha256(data)[7..]), data).unwrap();
}

/// An OCI layout whose index.json lists `top` (a descriptor) under the name `tag`.
fn write_layout(layout: &Path, images: &[&TinyImage], top: Value, tag: &str) {
    for image in images {
        write_blob(layout, &image.manifest);
        for b in &image.blobs {
            write_blob(layout, b);
        }
    }
    let mut top = top;
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "manifests": [top]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

fn descriptor(media_type: &str, data: &[u8], platform: Option<&str>) -> Value {
    let mut d = json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()});
    if let Some(arch) = platform {
        d["platform"] = json!({"os": "linux", "architecture": arch});
    }
    d
}

// ---- the real registry -----------------------------------------------------------------

// ---- nanolet as a user runs it ---------------------------------------------------------

/// A config dir and data dir for nanolet.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "dataDir: {}\nrunDir: {}\n{extra}",
            dir.path().join("data").display(),
            dir.path().join("run").display()
        );
        fs::write(dir.path().join("nanolet.yaml"), yaml).unwrap();
        Node { dir }
    }

    fn docker_config(&self, host: &str, user: &str, password: &str) {
        let auths = json!({"auths": {host: {"username": user, "password": password}}});
        fs::write(self.dir.path().join("config.json"), auths.to_string()).unwrap();
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_nanolet"))
            .args(args)
            .arg("--config-dir")
            .arg(self.dir.path())
            .output()
            .unwrap()
    }

    /// `internal-pull REF`: the JSON lines, and whether it exited 0.
    fn internal_pull(&self, reference: &str) -> (Vec<Value>, bool) {
        let out = self.run(&["internal-pull", reference]);
        let lines = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        (lines, out.status.success())
    }

    /// The error of a failed `internal-pull`.
    fn pull_error(&self, reference: &str) -> String {
        let (lines, ok) = self.internal_pull(reference);
        assert!(!ok, "{lines:?}");
        let last = lines.last().unwrap();
        last["error"].as_str().unwrap().to_string()
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("data/images")
    }

    /// What the store holds: image records and blob files.
    fn store_contents(&self) -> (Vec<Value>, Vec<String>) {
        let records = fs::read(self.store().join("index.json"))
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap()["images"].clone())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        let blobs = fs::read_dir(self.store().join("blobs/sha256"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        (records, blobs)
    }
}

/// The final `{"image":…}` of a successful pull.
fn image_of(lines: &[Value]) -> &Value {
    let last = lines.last().unwrap();
    assert!(last.get("image").is_some(), "{lines:?}");
    &last["image"]
}

// ---- tests against the real registry ---------------------------------------------------

#[test]
fn anonymous_pull_of_a_multi_arch_index_picks_the_node_platform() {
    if !tools_or_skip() {
        return;
    }
    let registry = RealRegistry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let amd64 = tiny_image("amd64", "hello from amd64\n");
    let arm64 = tiny_image("arm64", "hello from arm64\n");
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, &amd64.manifest, Some("amd64")),
        descriptor(OCI_MANIFEST, &arm64.manifest, Some("arm64")),
    ]})
    .to_string()
    .into_bytes();
    let layout = tmp.path().join("layout");
    write_blob(&layout, &index);
    write_layout(
        &layout,
        &[&amd64, &arm64],
        descriptor(OCI_INDEX, &index, None),
        "v1",
    );
    registry.push(&layout, "v1", "multi", "v1", None);

    let node = Node::new("");
    let reference = format!("{}/multi:v1", registry.host());
    let (lines, ok) = node.internal_pull(&reference);
    assert!(ok, "{lines:?}");
    let ours = if host_arch() == "arm64" {
        &arm64
    } else {
        &amd64
    };
    let image = image_of(&lines);
    assert_eq!(image["names"], json!([reference]));
    assert_eq!(image["manifest_digest"], json!(sha256(&ours.manifest)));
    // Progress names the one layer and ends with it complete.
    let layer = sha256(&ours.blobs[1]);
    let size = ours.blobs[1].len() as u64;
    assert_eq!(
        lines[lines.len() - 2],
        json!({"layer": layer, "done": size, "total": size})
    );
    // The rootfs is unpacked and is the node platform's.
    let config_hex = &sha256(&ours.blobs[0])[7..];
    let hello = fs::read_to_string(node.store().join("rootfs").join(config_hex).join("hello"));
    assert_eq!(hello.unwrap(), format!("hello from {}\n", host_arch()));

    // `images` lists it; pulling again downloads nothing; `rmi` empties the store.
    let out = node.run(&["images"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&reference));
    let (again, ok) = node.internal_pull(&reference);
    assert!(ok);
    assert_eq!(
        again[0],
        json!({"layer": layer, "done": size, "total": size})
    );
    let out = node.run(&["rmi", &reference]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.store_contents(), (vec![], vec![]));
    let out = node.run(&["rmi", &reference]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

/// zstd with Debian's `zstd` (a real-world encoder: content checksum, level 19), else
/// ruzstd's encoder.
fn zstd(data: &[u8]) -> Vec<u8> {
    let child = Command::new("zstd")
        .args(["-q", "-19", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("zstd CLI not found: compressing with ruzstd");
        return ruzstd::encoding::compress_to_vec(
            data,
            ruzstd::encoding::CompressionLevel::Fastest,
        );
    };
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn a_zstd_layer_is_pulled_verified_and_unpacked() {
    if !tools_or_skip() {
        return;
    }
    let registry = RealRegistry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let mut image = tiny_image(host_arch(), "hello from zstd\n");
    // The same tar as the gzip layer, recompressed with zstd: the diff_id stays.
    let tar = {
        let mut d = flate2::read::GzDecoder::new(image.blobs[1].as_slice());
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut tar).unwrap();
        tar
    };
    let layer = zstd(&tar);
    let mut manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["layers"][0] = descriptor("application/vnd.oci.image.layer.v1.tar+zstd", &layer, None);
    image.manifest = manifest.to_string().into_bytes();
    image.blobs[1] = layer.clone();
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[&image],
        descriptor(OCI_MANIFEST, &image.manifest, None),
        "v1",
    );
    registry.push(&layout, "v1", "zstd", "v1", None);

    let node = Node::new("");
    let reference = format!("{}/zstd:v1", registry.host());
    let (lines, ok) = node.internal_pull(&reference);
    assert!(ok, "{lines:?}");
    assert_eq!(
        image_of(&lines)["manifest_digest"],
        json!(sha256(&image.manifest))
    );
    let stored = fs::read(node.store().join("blobs/sha256").join(&sha256(&layer)[7..]));
    assert_eq!(stored.unwrap(), layer, "the zstd blob is stored as pulled");
    let config_hex = &sha256(&image.blobs[0])[7..];
    let hello = fs::read_to_string(node.store().join("rootfs").join(config_hex).join("hello"));
    assert_eq!(hello.unwrap(), "hello from zstd\n");
}

#[test]
fn basic_auth_uses_config_json_and_names_refused_credentials() {
    if !tools_or_skip() {
        return;
    }
    let registry = RealRegistry::start(Some(("alice", "s3cret")));
    let tmp = tempfile::tempdir().unwrap();
    let image = tiny_image(host_arch(), "private\n");
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[&image],
        descriptor(OCI_MANIFEST, &image.manifest, None),
        "latest",
    );
    registry.push(
        &layout,
        "latest",
        "private/app",
        "latest",
        Some("alice:s3cret"),
    );
    let reference = format!("{}/private/app", registry.host());
    let node = Node::new("");

    let e = node.pull_error(&reference);
    assert!(
        e.contains(&format!("image {reference}:latest"))
            && e.contains("401 unauthorized")
            && e.contains("no credentials"),
        "{e}"
    );
    node.docker_config(&registry.host(), "alice", "wrong");
    let e = node.pull_error(&reference);
    assert!(
        e.contains("401 unauthorized") && e.contains("credentials from config.json refused"),
        "{e}"
    );
    assert!(!e.contains("wrong"), "a password leaked into {e}");
    assert_eq!(node.store_contents(), (vec![], vec![]));

    node.docker_config(&registry.host(), "alice", "s3cret");
    let (lines, ok) = node.internal_pull(&reference);
    assert!(ok, "{lines:?}");
    assert_eq!(
        image_of(&lines)["manifest_digest"],
        json!(sha256(&image.manifest))
    );
}

/// The busybox image of `images/build-busybox-image`: needs root and apt.
#[test]
fn busybox_pulls_with_progress_on_a_terminal_or_plain_lines() {
    if !tools_or_skip() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: building the busybox image needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let digest = common::busybox::build_layout(&layout).unwrap();
    let registry = RealRegistry::start(None);
    registry.push(&layout, "busybox:latest", "busybox", "latest", None);
    let node = Node::new("");
    let reference = format!("{}/busybox:latest", registry.host());
    // Not a terminal: one plain line per layer, then the summary.
    let out = node.run(&["pull", &reference]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains('\r'), "{stdout:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("sha256:") && lines[0].contains(": done "),
        "{stdout}"
    );
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with(&format!("{reference}: pulled {digest} (")),
        "{stdout}"
    );
    let records = node.store_contents().0;
    assert_eq!(records[0]["config"]["cmd"], json!(["sh"]));
}

// ---- faults, from a scripted fake registry ---------------------------------------------

#[derive(Clone)]
enum Reply {
    /// Status, Content-Type, body.
    Fixed(u16, &'static str, Vec<u8>),
    /// 200 with this Content-Type and a body that never ends.
    Endless(&'static str),
    /// The body with its full Content-Length, broken off after this many bytes; a request
    /// with `Range: bytes=N-` gets the rest (206).
    BreaksOff(Vec<u8>, usize),
    /// 307 to this URL.
    Redirect(String),
    /// 401 with the challenge (`WWW-Authenticate`) unless the request carries this
    /// `Authorization`.
    Private(String, String, Box<Reply>),
}

/// A registry that answers `GET <path>` from a table; anything else is a 404. Runs until
/// the test process exits; each connection is served once and closed.
fn fake_registry(routes: HashMap<String, Reply>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let routes = routes.clone();
            let log = log.clone();
            std::thread::spawn(move || serve(stream, &routes, &log));
        }
    });
    (host, seen)
}

fn serve(mut stream: TcpStream, routes: &HashMap<String, Reply>, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_string());
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let auth_seen = authorization.as_deref().unwrap_or("-");
    let range_seen = range
        .as_deref()
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("{path} {auth_seen}{range_seen}"));
    let mut reply = routes.get(&path).cloned().unwrap_or(Reply::Fixed(
        404,
        "application/json",
        br#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#.to_vec(),
    ));
    if let Reply::Private(want, challenge, inner) = reply {
        if authorization.as_deref() != Some(want.as_str()) {
            let head = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            return;
        }
        reply = *inner;
    }
    match reply {
        Reply::Private(..) => {}
        Reply::BreaksOff(body, cut) => {
            let from: Option<usize> = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok());
            let head = match from {
                None => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ),
                Some(n) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len() - 1,
                    body.len(),
                    body.len() - n
                ),
            };
            let _ = stream.write_all(head.as_bytes());
            let part = match from {
                None => &body[..cut],
                Some(n) => &body[n..],
            };
            let _ = stream.write_all(part);
        }
        Reply::Redirect(location) => {
            let head = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
        }
        Reply::Fixed(status, content_type, body) => {
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
        Reply::Endless(content_type) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            let chunk = vec![b'{'; 64 * 1024];
            // Until the client hangs up.
            while stream.write_all(&chunk).is_ok() {}
        }
    }
}

fn private(authorization: &str, challenge: &str, reply: Reply) -> Reply {
    Reply::Private(
        authorization.to_string(),
        challenge.to_string(),
        Box::new(reply),
    )
}

/// Routes serving `image` as `/v2/app/manifests/latest` and its blobs.
fn routes_for(image: &TinyImage) -> HashMap<String, Reply> {
    let mut routes = HashMap::new();
    routes.insert(
        "/v2/app/manifests/latest".to_string(),
        Reply::Fixed(200, OCI_MANIFEST, image.manifest.clone()),
    );
    for b in &image.blobs {
        routes.insert(
            format!("/v2/app/blobs/{}", sha256(b)),
            Reply::Fixed(200, "application/octet-stream", b.clone()),
        );
    }
    routes
}

#[test]
fn faults_of_a_registry_are_errors_naming_image_and_descriptor_and_store_nothing() {
    let image = tiny_image(host_arch(), "fine\n");
    let layer = sha256(&image.blobs[1]);
    let layer_path = format!("/v2/app/blobs/{layer}");
    let mut corrupt = image.blobs[1].clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    let schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    type Fault = (
        &'static str,
        Box<dyn Fn(&mut HashMap<String, Reply>)>,
        String,
    );
    let manifest_path = "/v2/app/manifests/latest".to_string();
    let mp = manifest_path.clone();
    let mp2 = manifest_path.clone();
    let mp3 = manifest_path.clone();
    let lp = layer_path.clone();
    let lp2 = layer_path.clone();
    let faults: Vec<Fault> = vec![
        (
            "a layer with other bytes",
            Box::new(move |r| {
                r.insert(
                    lp.clone(),
                    Reply::Fixed(200, "application/octet-stream", corrupt.clone()),
                );
            }),
            format!("layer {layer}: digest mismatch: want {layer}, got sha256:"),
        ),
        (
            "a layer that never ends",
            Box::new(move |r| {
                r.insert(lp2.clone(), Reply::Endless("application/octet-stream"));
            }),
            format!("layer {layer}: digest mismatch"),
        ),
        (
            "a manifest that never ends",
            Box::new(move |r| {
                r.insert(mp.clone(), Reply::Endless(OCI_MANIFEST));
            }),
            "body larger than 4194304 bytes".to_string(),
        ),
        (
            "a manifest served as text",
            Box::new({
                let m = image.manifest.clone();
                move |r| {
                    r.insert(mp2.clone(), Reply::Fixed(200, "text/plain", m.clone()));
                }
            }),
            "manifest latest: served as \"text/plain\": want an OCI or Docker v2".to_string(),
        ),
        (
            "a schema 1 manifest",
            Box::new(move |r| {
                r.insert(
                    mp3.clone(),
                    Reply::Fixed(200, schema1, br#"{"schemaVersion":1}"#.to_vec()),
                );
            }),
            "manifest latest: Docker schema 1 manifest".to_string(),
        ),
    ];
    for (what, break_it, want) in faults {
        let mut routes = routes_for(&image);
        break_it(&mut routes);
        let (host, _) = fake_registry(routes);
        let node = Node::new("");
        let reference = format!("{host}/app:latest");
        let e = node.pull_error(&reference);
        assert!(
            e.starts_with(&format!("image {reference}: ")) && e.contains(&want),
            "{what}: got {e:?}, want {want:?}"
        );
        let (records, blobs) = node.store_contents();
        assert!(
            records.is_empty() && blobs.is_empty(),
            "{what}: {records:?} {blobs:?}"
        );
        assert_eq!(leftovers(&node), Vec::<String>::new(), "{what}");
    }

    // The same registry without faults: the image pulls (the faults were the only problem).
    let (host, seen) = fake_registry(routes_for(&image));
    let node = Node::new("");
    let (lines, ok) = node.internal_pull(&format!("{host}/app"));
    assert!(ok, "{lines:?}");
    assert!(seen.lock().unwrap().contains(&format!("{layer_path} -")));
}

#[test]
fn a_layer_download_that_breaks_off_is_resumed_where_it_stopped() {
    let image = tiny_image(host_arch(), "resumed\n");
    let layer = sha256(&image.blobs[1]);
    let layer_path = format!("/v2/app/blobs/{layer}");
    let cut = image.blobs[1].len() / 2;
    let mut routes = routes_for(&image);
    routes.insert(
        layer_path.clone(),
        Reply::BreaksOff(image.blobs[1].clone(), cut),
    );
    let (host, seen) = fake_registry(routes);
    let node = Node::new("");
    let (lines, ok) = node.internal_pull(&format!("{host}/app"));
    assert!(ok, "{lines:?}");
    let requests: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with(&layer_path))
        .cloned()
        .collect();
    assert_eq!(
        requests,
        [
            format!("{layer_path} -"),
            format!("{layer_path} - bytes={cut}-")
        ]
    );
    let config_hex = &sha256(&image.blobs[0])[7..];
    let hello = fs::read_to_string(node.store().join("rootfs").join(config_hex).join("hello"));
    assert_eq!(hello.unwrap(), "resumed\n");
}

#[test]
fn credentials_stay_with_the_registry_when_a_blob_is_redirected_to_storage() {
    let image = tiny_image(host_arch(), "redirected\n");
    let layer = sha256(&image.blobs[1]);
    let layer_path = format!("/v2/app/blobs/{layer}");
    // The storage: another origin (same address, other port), serving the layer to anyone.
    let mut storage_routes = HashMap::new();
    storage_routes.insert(
        "/store/layer?sig=1".to_string(),
        Reply::Fixed(200, "application/octet-stream", image.blobs[1].clone()),
    );
    let (storage, storage_seen) = fake_registry(storage_routes);
    // The registry: everything private; the layer is a redirect to the storage.
    let basic = "Basic YWxpY2U6czNjcmV0".to_string(); // alice:s3cret
    let mut routes: HashMap<String, Reply> = routes_for(&image)
        .into_iter()
        .map(|(path, reply)| (path, private(&basic, "Basic realm=\"fake\"", reply)))
        .collect();
    routes.insert(
        layer_path.clone(),
        Reply::Private(
            basic.clone(),
            "Basic realm=\"fake\"".to_string(),
            Box::new(Reply::Redirect(format!(
                "http://{storage}/store/layer?sig=1"
            ))),
        ),
    );
    let (host, seen) = fake_registry(routes);
    let node = Node::new("");
    node.docker_config(&host, "alice", "s3cret");
    let (lines, ok) = node.internal_pull(&format!("{host}/app"));
    assert!(ok, "{lines:?}");
    assert!(
        seen.lock()
            .unwrap()
            .contains(&format!("{layer_path} {basic}"))
    );
    assert_eq!(
        *storage_seen.lock().unwrap(),
        ["/store/layer?sig=1 -".to_string()],
        "the storage must not see the registry's credentials"
    );
}

#[test]
fn a_registry_outside_loopback_is_reached_over_tls_unless_listed_insecure() {
    // 127.0.0.1 is loopback whatever its name; `localhost` too. A listed host is plain HTTP:
    // seen through the error of a registry that is not there.
    let node = Node::new("insecureRegistries: [\"registry.invalid:5000\"]\n");
    let e = node.pull_error("registry.invalid:5000/app");
    assert!(
        e.contains("GET http://registry.invalid:5000/v2/app/manifests/latest"),
        "{e}"
    );
    let node = Node::new("");
    let e = node.pull_error("registry.invalid:5000/app");
    assert!(
        e.contains("GET https://registry.invalid:5000/v2/app/manifests/latest"),
        "{e}"
    );
}

#[test]
fn bearer_tokens_are_fetched_with_config_json_credentials_and_used_for_the_registry() {
    let image = tiny_image(host_arch(), "token\n");
    let basic = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret
    let mut token_routes = HashMap::new();
    token_routes.insert(
        "/token?service=fake&scope=repository%3Aapp%3Apull".to_string(),
        private(
            basic,
            "Basic realm=\"auth\"",
            Reply::Fixed(200, "application/json", br#"{"token":"t0k"}"#.to_vec()),
        ),
    );
    let (auth_host, auth_seen) = fake_registry(token_routes);
    let challenge = format!("Bearer realm=\"http://{auth_host}/token\",service=\"fake\"");
    let routes: HashMap<String, Reply> = routes_for(&image)
        .into_iter()
        .map(|(path, reply)| (path, private("Bearer t0k", &challenge, reply)))
        .collect();
    let (host, seen) = fake_registry(routes);
    let node = Node::new("");
    node.docker_config(&host, "alice", "s3cret");
    let (lines, ok) = node.internal_pull(&format!("{host}/app"));
    assert!(ok, "{lines:?}");
    // One token, asked for with the credentials; the registry only ever sees the token.
    assert_eq!(
        *auth_seen.lock().unwrap(),
        [format!(
            "/token?service=fake&scope=repository%3Aapp%3Apull {basic}"
        )]
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|r| r.ends_with(" -") || r.ends_with(" Bearer t0k")),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|r| r.ends_with(" Bearer t0k")).count(),
        3,
        "{seen:?}"
    );
}

// ---- several layers: downloaded at once, unpacked in order in one pass -----------------

/// A tar of regular files `(path, contents)`.
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`: write the name bytes as an attacker would.
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// An image of these layers (tar, blob as served, media type), whose config lists
/// `diff_ids` (the tars' digests unless given).
fn layered_image(layers: &[(Vec<u8>, Vec<u8>, &str)], diff_ids: Option<Vec<String>>) -> TinyImage {
    let diff_ids =
        diff_ids.unwrap_or_else(|| layers.iter().map(|(tar, _, _)| sha256(tar)).collect());
    let config = json!({"architecture": host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    .to_string()
    .into_bytes();
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|(_, blob, media_type)| descriptor(media_type, blob, None))
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config, None),
        "layers": descriptors})
    .to_string()
    .into_bytes();
    let mut blobs = vec![config];
    blobs.extend(layers.iter().map(|(_, blob, _)| blob.clone()));
    TinyImage { manifest, blobs }
}

#[test]
fn layers_download_together_unpack_in_order_and_any_bad_one_leaves_nothing_behind() {
    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";
    let big = "data ".repeat(200_000);
    let l0 = tar_of(&[("a", "gone"), ("dir/x", "x\n"), ("big", &big)]);
    let l1 = tar_of(&[(".wh.a", ""), ("dir/y", "y\n")]);
    let l2 = tar_of(&[("b", "b\n"), ("dir/x", "x2\n")]);
    let good = || {
        vec![
            (l0.clone(), gzip(&l0), GZIP),
            (l1.clone(), zstd(&l1), ZSTD),
            (l2.clone(), l2.clone(), PLAIN),
        ]
    };

    // All good: the layers stack as the OCI spec says.
    let image = layered_image(&good(), None);
    let (host, _) = fake_registry(routes_for(&image));
    let node = Node::new("");
    let (lines, ok) = node.internal_pull(&format!("{host}/app"));
    assert!(ok, "{lines:?}");
    let rootfs = node
        .store()
        .join("rootfs")
        .join(&sha256(&image.blobs[0])[7..]);
    let read = |p: &str| fs::read_to_string(rootfs.join(p)).ok();
    assert_eq!(
        [read("a"), read("dir/x"), read("dir/y"), read("b")],
        [
            None,
            Some("x2\n".into()),
            Some("y\n".into()),
            Some("b\n".into())
        ]
    );
    assert_eq!(read("big").unwrap().len(), big.len());
    assert_eq!(
        node.store_contents().1.len(),
        5,
        "3 layers, config, manifest"
    );
    assert_eq!(leftovers(&node), Vec::<String>::new());

    // One bad layer, first, middle or last: an error naming it, and nothing kept.
    let mut corrupt = gzip(&l0);
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    let escape = tar_of(&[("../../escaped", "out\n")]);
    let wrong_diff_id = sha256(b"not this layer");
    // (what, image, bad layer, its bytes as served if not its own, error after its name)
    type Case = (&'static str, TinyImage, usize, Option<Vec<u8>>, String);
    let cases: Vec<Case> = vec![
        (
            "a first layer with other bytes than its digest",
            layered_image(&good(), None),
            0,
            Some(corrupt),
            "digest mismatch: want".to_string(),
        ),
        (
            "a last layer whose tar climbs out",
            layered_image(
                &[
                    (l0.clone(), gzip(&l0), GZIP),
                    (l1.clone(), zstd(&l1), ZSTD),
                    (escape.clone(), gzip(&escape), GZIP),
                ],
                None,
            ),
            2,
            None,
            "unpack: entry \"../../escaped\": path contains \"..\"".to_string(),
        ),
        (
            "a middle layer that is not the config's diff_id",
            layered_image(
                &good(),
                Some(vec![sha256(&l0), wrong_diff_id.clone(), sha256(&l2)]),
            ),
            1,
            None,
            format!("digest mismatch: want {wrong_diff_id}"),
        ),
    ];
    for (what, image, bad, served, want) in cases {
        let layer = sha256(&image.blobs[bad + 1]);
        let mut routes = routes_for(&image);
        if let Some(bytes) = served {
            let reply = Reply::Fixed(200, "application/octet-stream", bytes);
            routes.insert(format!("/v2/app/blobs/{layer}"), reply);
        }
        let (host, _) = fake_registry(routes);
        let node = Node::new("");
        let reference = format!("{host}/app:latest");
        let e = node.pull_error(&reference);
        let want = format!("image {reference}: layer {layer}: {want}");
        assert!(e.starts_with(&want), "{what}: got {e:?}, want {want:?}");
        let (records, blobs) = node.store_contents();
        assert!(
            records.is_empty() && blobs.is_empty(),
            "{what}: {records:?} {blobs:?}"
        );
        assert_eq!(leftovers(&node), Vec::<String>::new(), "{what}");
        assert!(!node.dir.path().join("escaped").exists(), "{what}");
    }

    // The limits of nanolet.yaml apply: 3 entries allowed, the second layer brings the 4th.
    let image = layered_image(&good(), None);
    let (host, _) = fake_registry(routes_for(&image));
    let node = Node::new("imageUnpackLimits:\n  maxFiles: 3\n");
    let e = node.pull_error(&format!("{host}/app"));
    let layer = sha256(&image.blobs[2]);
    assert!(
        e.ends_with(&format!(
            "layer {layer}: unpack: more than 3 entries: refusing to unpack"
        )),
        "{e}"
    );
    assert_eq!(node.store_contents(), (vec![], vec![]));
    assert_eq!(leftovers(&node), Vec::<String>::new());
}

/// What the store's `tmp/` and `rootfs/` hold (a failed pull must leave both empty).
fn leftovers(node: &Node) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["tmp", "rootfs"] {
        for e in fs::read_dir(node.store().join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if dir == "tmp" || name.starts_with('.') {
                found.push(format!("{dir}/{name}"));
            }
        }
    }
    found
}

#[test]
fn a_pulled_image_whose_config_names_another_platform_is_refused_and_not_kept() {
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let image = tiny_image(other, "not for this node\n");
    let (host, _) = fake_registry(routes_for(&image));
    let node = Node::new("");
    let reference = format!("{host}/app:latest");
    let e = node.pull_error(&reference);
    assert_eq!(
        e,
        format!(
            "image {reference}: no manifest for platform linux/{}",
            host_arch()
        )
    );
    assert_eq!(node.store_contents(), (vec![], vec![]));
    assert_eq!(leftovers(&node), Vec::<String>::new());
}
