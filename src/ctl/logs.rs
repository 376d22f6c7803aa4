//! `nanolet logs`: a container's CRI log files, as `kubectl logs` shows them.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::NodeConfig;
use crate::pod::status::{PodStatus, Snapshot};
use crate::runtime::logs::{self, container_log_files, write_contents};

/// What `nanolet logs` was asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub pod: String,
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub tail: Option<usize>,
}

fn not_found(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, message)
}

/// Finds the pod: by its full name, or by the name in its manifest (static pods get
/// `-<nodeName>` appended).
pub fn find_pod<'a>(snapshot: &'a Snapshot, options: &Options) -> io::Result<&'a PodStatus> {
    let suffixed = format!("{}-{}", options.pod, snapshot.node_name);
    let matches: Vec<&PodStatus> = snapshot
        .pods
        .iter()
        .filter(|p| {
            options
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == p.namespace)
        })
        .filter(|p| p.name == options.pod || p.name == suffixed)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found(format!("pod {:?} not found", options.pod))),
        many => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "pod {:?} is ambiguous: {}; use -n NAMESPACE",
                options.pod,
                many.iter()
                    .map(|p| p.full_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The log files of the chosen attempt of a container, oldest first.
fn attempt_files(dir: &Path, attempt: u32) -> io::Result<Vec<PathBuf>> {
    let prefix = format!("{attempt}.log");
    Ok(container_log_files(dir)?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect())
}

/// Prints the logs; with `follow`, keeps printing until the container's attempt ends.
pub fn run(cfg: &NodeConfig, options: &Options, out: &mut dyn Write) -> io::Result<()> {
    let snapshot = super::ps::read_snapshot(&cfg.run_dir)?;
    let pod = find_pod(&snapshot, options)?;
    let all: Vec<_> = pod
        .init_container_statuses
        .iter()
        .chain(&pod.container_statuses)
        .collect();
    let status = match &options.container {
        Some(name) => all.iter().find(|c| c.name == *name).ok_or_else(|| {
            not_found(format!(
                "container {name:?} is not in pod {} (containers: {})",
                pod.full_name(),
                all.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        None => {
            let first = pod
                .container_statuses
                .first()
                .ok_or_else(|| not_found(format!("pod {} has no containers", pod.full_name())))?;
            if pod.container_statuses.len() > 1 {
                eprintln!(
                    "Defaulted container {:?} out of: {}",
                    first.name,
                    pod.container_statuses
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            first
        }
    };
    let attempt = if options.previous {
        status.restart_count.checked_sub(1).ok_or_else(|| {
            not_found(format!(
                "previous terminated container {:?} in pod {} not found",
                status.name,
                pod.full_name()
            ))
        })?
    } else {
        status.restart_count
    };
    let dir = cfg
        .pod_logs_dir
        .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
        .join(&status.name);
    let files = attempt_files(&dir, attempt)?;
    write_contents(&files, options.tail, out)?;
    out.flush()?;
    if options.follow && !options.previous {
        follow(
            cfg,
            &dir.join(format!("{attempt}.log")),
            &pod.uid,
            &status.name,
            attempt,
            out,
        )?;
    }
    Ok(())
}

/// Prints what is appended to `path` until the container's attempt is no longer running.
fn follow(
    cfg: &NodeConfig,
    path: &Path,
    uid: &str,
    name: &str,
    attempt: u32,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut offset = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut pending = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok(mut file) = File::open(path) {
            let len = file.metadata()?.len();
            if len < offset {
                // Rotated: the new file starts from zero.
                offset = 0;
            }
            file.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            offset += buf.len() as u64;
            pending.extend_from_slice(&buf);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(record) = logs::parse_line(&line[..line.len() - 1]) {
                    out.write_all(record.content)?;
                    if !record.partial {
                        out.write_all(b"\n")?;
                    }
                }
            }
            out.flush()?;
        }
        let still_running = super::ps::read_snapshot(&cfg.run_dir)
            .ok()
            .is_some_and(|s| {
                s.pods
                    .iter()
                    .filter(|p| p.uid == uid)
                    .flat_map(|p| {
                        p.init_container_statuses
                            .iter()
                            .chain(&p.container_statuses)
                    })
                    .any(|c| c.name == name && c.restart_count == attempt && c.is_running())
            });
        if !still_running {
            return Ok(());
        }
    }
}
