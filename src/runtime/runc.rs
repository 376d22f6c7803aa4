//! The `runc` driver: the only file that runs runc.
//!
//! Each container is started with one `runc run --detach` (create and start in one exec, the
//! cheapest start runc offers). runc passes its own stdio to the container in detached mode, so
//! runc's own messages go to a per-container `--log` file in JSON, never into the container's
//! log stream; a failure is reported with runc's last `error` message from that file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::sys::process;
use crate::sys::reaper::{Exit, Reaper};

/// What can go wrong talking to runc.
#[derive(Debug)]
pub enum Error {
    /// runc could not be executed at all.
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
    /// runc ran and failed; `message` is runc's own last error.
    Failed {
        verb: &'static str,
        id: String,
        message: String,
    },
    /// runc's output did not parse.
    Output { verb: &'static str, detail: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Exec { path, source } => write!(f, "running {}: {source}", path.display()),
            Error::Failed { verb, id, message } => write!(f, "runc {verb} {id}: {message}"),
            Error::Output { verb, detail } => write!(f, "runc {verb}: unexpected output: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

/// One container as `runc list` and `runc state` describe it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl State {
    pub fn is_running(&self) -> bool {
        self.status == "running" || self.status == "paused"
    }
}

/// The container's stdio: the files runc hands to the container process.
pub struct Stdio3 {
    pub stdout: File,
    pub stderr: File,
}

/// runc, with its `--root`.
#[derive(Clone)]
pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
    reaper: Reaper,
}

impl Runc {
    pub fn new(binary: PathBuf, root: PathBuf, reaper: Reaper) -> Runc {
        Runc {
            binary,
            root,
            reaper,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    async fn run(&self, verb: &'static str, id: &str, cmd: Command) -> Result<Vec<u8>, Error> {
        let out = process::output(&self.reaper, cmd)
            .await
            .map_err(|source| Error::Exec {
                path: self.binary.clone(),
                source,
            })?;
        if out.is_success() {
            Ok(out.stdout)
        } else {
            Err(Error::Failed {
                verb,
                id: id.to_string(),
                message: runc_message(&out.stderr),
            })
        }
    }

    /// `runc run --detach`: creates and starts the container; returns the container's pid.
    /// The container process is re-parented to nanolet (a subreaper) once runc exits.
    pub async fn run_detached(&self, id: &str, bundle: &Path, stdio: Stdio3) -> Result<i32, Error> {
        let pid_file = bundle.join("container.pid");
        let log_file = bundle.join("runc.log");
        let _ = std::fs::remove_file(&pid_file);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log_file)
            .arg("--log-format")
            .arg("json")
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr));
        let exit = process::status(&self.reaper, cmd)
            .await
            .map_err(|source| Error::Exec {
                path: self.binary.clone(),
                source,
            })?;
        if exit != Exit::Code(0) {
            let log = std::fs::read(&log_file).unwrap_or_default();
            return Err(Error::Failed {
                verb: "run",
                id: id.to_string(),
                message: runc_message(&log),
            });
        }
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        pid.trim().parse().map_err(|_| Error::Output {
            verb: "run",
            detail: format!("pid file {}: {pid:?}", pid_file.display()),
        })
    }

    /// `runc list`: every container under this root.
    pub async fn list(&self) -> Result<Vec<State>, Error> {
        let mut cmd = self.command();
        cmd.args(["list", "--format", "json"]);
        let out = self.run("list", "", cmd).await?;
        if out.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        // runc prints `null` when there are no containers.
        let list: Option<Vec<State>> = serde_json::from_slice(&out).map_err(|e| Error::Output {
            verb: "list",
            detail: e.to_string(),
        })?;
        Ok(list.unwrap_or_default())
    }

    /// `runc kill ID SIGNAL`. A container that already stopped is not an error.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), Error> {
        let mut cmd = self.command();
        cmd.args(["kill", id, signal]);
        match self.run("kill", id, cmd).await {
            Err(Error::Failed { message, .. })
                if message.contains("not running")
                    || message.contains("process already finished") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// `runc delete --force`: removes the container (and kills it if still running).
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let mut cmd = self.command();
        cmd.args(["delete", "--force", id]);
        match self.run("delete", id, cmd).await {
            Err(Error::Failed { message, .. }) if message.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }

    /// `runc --version`'s first line's version, e.g. `1.1.5+ds1` (the Node's
    /// `containerRuntimeVersion` is `runc://<this>`).
    pub async fn version(&self) -> Result<String, Error> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--version");
        let out = self.run("--version", "", cmd).await?;
        let text = String::from_utf8_lossy(&out);
        Ok(text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("unknown")
            .to_string())
    }
}

/// runc's last error message from its JSON log (or plain stderr).
pub fn runc_message(log: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Line {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    let text = String::from_utf8_lossy(log);
    let mut last_plain = "";
    for line in text.lines().rev() {
        match serde_json::from_str::<Line>(line) {
            Ok(l) if l.level == "error" || l.level == "fatal" => return l.msg,
            Ok(_) => {}
            Err(_) if last_plain.is_empty() && !line.trim().is_empty() => last_plain = line.trim(),
            Err(_) => {}
        }
    }
    if last_plain.is_empty() {
        "failed with no message".to_string()
    } else {
        last_plain.trim_start_matches("ERRO[0000] ").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_message_takes_the_last_error_line() {
        let log = br#"{"level":"warning","msg":"hmm","time":"x"}
{"level":"error","msg":"runc run failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"x"}
"#;
        assert_eq!(
            runc_message(log),
            "runc run failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(
            runc_message(b"container \"x\" does not exist\n"),
            "container \"x\" does not exist"
        );
        assert_eq!(runc_message(b""), "failed with no message");
    }

    #[test]
    fn list_entries_parse_with_annotations() {
        let json = br#"[{"ociVersion":"1.0.2-dev","id":"a","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"2026-01-01T00:00:00Z","annotations":{"k":"v"},"owner":"root"}]"#;
        let list: Vec<State> = serde_json::from_slice(json).unwrap();
        assert_eq!(list[0].pid, 42);
        assert!(list[0].is_running());
        assert_eq!(list[0].annotations.as_ref().unwrap()["k"], "v");
    }
}
