//! `tcpSocket` probes: success when a TCP connection opens within the timeout. The socket is
//! closed at once (dropped), as kubelet does.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::FutureExt;

/// Opens a connection to `addr` within `timeout`, with kubelet-style error text.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Async<TcpStream>, String> {
    let connect = async { Some(Async::<TcpStream>::connect(addr).await) };
    let deadline = async {
        Timer::after(timeout).await;
        None
    };
    match connect.or(deadline).await {
        Some(Ok(stream)) => Ok(stream),
        Some(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", lower(&e))),
        None => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// The probe itself.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    connect(addr, timeout).await.map(drop)
}

/// An OS error as Go prints it: `connection refused`, not `Connection refused (os error 111)`.
pub(super) fn lower(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}
