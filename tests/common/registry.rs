//! A real OCI registry on loopback: Debian's `docker-registry`, images pushed with `skopeo`.
//! The process is killed when the guard drops, even when the test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Whether `docker-registry`, `skopeo` and `htpasswd` are here; panics when they must be but
/// are not (`NANOLET_REQUIRE_ROOT_TESTS`).
pub fn tools_or_skip() -> bool {
    let have = |tool: &str, arg: &str| {
        Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if have("docker-registry", "--version") && have("skopeo", "--version") && have("htpasswd", "-h")
    {
        return true;
    }
    if std::env::var_os("NANOLET_REQUIRE_ROOT_TESTS").is_some() {
        panic!("registry tests are required here: need docker-registry, skopeo and htpasswd");
    }
    eprintln!("skipped: needs docker-registry, skopeo and htpasswd (apache2-utils)");
    false
}

pub struct RealRegistry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RealRegistry {
    /// `htpasswd`: a user and password for basic auth, or anonymous.
    pub fn start(htpasswd: Option<(&str, &str)>) -> RealRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auth = match htpasswd {
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                let path = dir.path().join("htpasswd");
                fs::write(&path, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut registry = RealRegistry {
            child,
            port,
            _dir: dir,
        };
        // Ready once it says it listens; the rest of its log is drained in a thread.
        let stderr = registry.child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(line)) => seen.push(line),
                _ => panic!("docker-registry did not start:\n{}", seen.join("\n")),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of `oci:<layout>:<name>` to `<host>/<repo>:<tag>`, every platform.
    pub fn push(&self, layout: &Path, name: &str, repo: &str, tag: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-tls-verify=false",
        ]);
        if let Some(c) = creds {
            cmd.arg(format!("--dest-creds={c}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{name}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
