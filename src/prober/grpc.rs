//! `grpc` probes: `grpc.health.v1.Health/Check` over HTTP/2 cleartext.

use std::net::SocketAddr;
use std::time::Duration;

/// Calls `Check(service)` on `addr`; success when the answer is `SERVING`.
pub async fn check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    let _ = (addr, service, timeout);
    Err("grpc probes are not supported yet".to_string())
}
