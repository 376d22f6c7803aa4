//! Probe and hook I/O: runs one resolved [`Action`] against one container and says whether it
//! succeeded (`Err` carries kubelet-style detail; `Ok(Some(warning))` is kubelet's
//! `probe.Warning`, a success with something to say: an httpGet redirected to another host). One file per external system: [`http`],
//! [`tcp`], [`grpc`]; exec goes through [`Runc::exec`].
//!
//! Everything runs on the agent's one thread; every action ends by its timeout, and every
//! socket, pipe and process it opens is closed or reaped when it ends or is cancelled. The
//! decisions about results (thresholds, kills, readiness) are [`crate::pod::probe`]'s.

pub mod grpc;
pub mod http;
pub mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use async_io::Timer;

use crate::k8s::probe::{Action, Scheme};
use crate::runtime::runc::{ExecResult, Runc};
use crate::sys::reaper::Exit;

/// The container an action runs against.
pub struct Target<'a> {
    pub runc: &'a Runc,
    pub container_id: &'a str,
    /// Where `runc exec` writes the exec'd process's pid (to kill it on timeout).
    pub pid_file: &'a Path,
    /// The pod's address: its IP, or 127.0.0.1 for a hostNetwork pod; `None` while unknown.
    pub pod_ip: Option<IpAddr>,
}

/// Runs `action` within `timeout` (a `sleep` runs for its own length).
pub async fn run(
    action: &Action,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let done = match action {
        Action::Exec { command } => exec(command, target, timeout).await,
        Action::HttpGet {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            if *scheme == Scheme::Https {
                return Err("HTTPS is not supported by nanolet".to_string());
            }
            let addr = address(host, *port, target.pod_ip)?;
            return http::get(addr, path, headers, timeout).await;
        }
        Action::TcpSocket { host, port } => {
            let addr = address(host, *port, target.pod_ip)?;
            tcp::probe(addr, timeout).await
        }
        Action::Grpc { port, service } => {
            let addr = address("", *port, target.pod_ip)?;
            grpc::check(addr, service, timeout).await
        }
        Action::Sleep { seconds } => {
            Timer::after(Duration::from_secs(*seconds)).await;
            Ok(())
        }
    };
    done.map(|()| None)
}

async fn exec(command: &[String], target: &Target<'_>, timeout: Duration) -> Result<(), String> {
    let result = target
        .runc
        .exec(target.container_id, command, target.pid_file, timeout)
        .await
        .map_err(|e| e.to_string())?;
    match result {
        ExecResult::Exited {
            exit: Exit::Code(0),
            ..
        } => Ok(()),
        ExecResult::Exited { exit, output } => {
            let output = output.trim_end();
            if output.is_empty() {
                Err(format!("command {command:?} exited with {}", exit.code()))
            } else {
                Err(format!(
                    "command {command:?} exited with {}: {output}",
                    exit.code()
                ))
            }
        }
        ExecResult::TimedOut => Err(format!(
            "command {command:?} timed out after {}s",
            timeout.as_secs()
        )),
    }
}

/// The socket address of `host` (an IP literal; empty: the pod's address) and `port`.
fn address(host: &str, port: u16, pod_ip: Option<IpAddr>) -> Result<SocketAddr, String> {
    let ip = if host.is_empty() {
        pod_ip.ok_or_else(|| "the pod has no IP address yet".to_string())?
    } else {
        host.parse::<IpAddr>()
            .map_err(|_| format!("host {host:?}: not an IP address"))?
    };
    Ok(SocketAddr::new(ip, port))
}
