//! The API client over TLS, configured from a kubeconfig: the CA (file and `-data`), a client
//! certificate (file and `-data`), bearer tokens (inline and `tokenFile`), an unknown CA
//! refused, `insecure-skip-tls-verify`. Certificates come from the `openssl` CLI; the server is
//! rustls on loopback.

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use nanolet::api::request::Resource;
use nanolet::api::{Client, kubeconfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (apt install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, a client certificate signed by it,
/// and a second, unrelated CA.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (key, crt, subj) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN={ca}"),
        );
        args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
        openssl(dir, &args);
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (who, subj) in [
        ("server", "/CN=127.0.0.1"),
        ("client", "/O=system:nodes/CN=system:node:edge-1"),
    ] {
        let mut args = vec!["req"];
        args.extend(ec);
        let (key, csr) = (format!("{who}.key"), format!("{who}.csr"));
        args.extend(["-keyout", &key, "-out", &csr, "-subj", subj]);
        openssl(dir, &args);
        let (crt, ext) = (format!("{who}.crt"), format!("{who}.ext"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// A TLS server answering every request with what it saw: whether the client presented a
/// certificate, and the Authorization header.
fn serve(dir: &Path, connections: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for _ in 0..connections {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if !head.ends_with(b"\r\n\r\n") {
                continue; // The handshake failed: the client refused this server.
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let auth = head
                .lines()
                .find_map(|l| l.strip_prefix("authorization: "))
                .unwrap_or("")
                .to_string();
            let client_cn = tls.conn.peer_certificates().is_some_and(|c| !c.is_empty());
            let body =
                serde_json::json!({"clientCert": client_cn, "authorization": auth}).to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes());
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (addr, handle)
}

fn kubeconfig(dir: &Path, cluster: &str, user: &str) -> Client {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, format!(
        "clusters:\n- name: c\n  cluster:\n{cluster}users:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    )).unwrap();
    Client::new(&kubeconfig::load(&path).unwrap()).unwrap()
}

fn get(client: &Client) -> Result<Value, nanolet::api::Error> {
    async_io::block_on(client.json(&Resource::NODES.get(None, "edge-1")))
}

#[test]
fn mutual_tls_from_files_and_from_data_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let (addr, server) = serve(d, 2);
    // Files, relative to the kubeconfig, and an inline token.
    let client = kubeconfig(
        d,
        &format!("    server: https://{addr}\n    certificate-authority: ca.crt\n"),
        "    client-certificate: client.crt\n    client-key: client.key\n    token: abc\n",
    );
    let seen = get(&client).unwrap();
    assert_eq!(seen["clientCert"], true);
    assert_eq!(seen["authorization"], "bearer abc");
    // The -data forms, and a tokenFile.
    let b64 = |f: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(d.join(f)).unwrap())
    };
    std::fs::write(d.join("token"), "from-file\n").unwrap();
    let client = kubeconfig(
        d,
        &format!(
            "    server: https://{addr}\n    certificate-authority-data: {}\n",
            b64("ca.crt")
        ),
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n    tokenFile: token\n",
            b64("client.crt"),
            b64("client.key")
        ),
    );
    let seen = get(&client).unwrap();
    assert_eq!(seen["clientCert"], true);
    assert_eq!(seen["authorization"], "bearer from-file");
    server.join().unwrap();
}

#[test]
fn an_unknown_ca_is_refused_unless_verification_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let (addr, server) = serve(d, 2);
    let client = kubeconfig(
        d,
        &format!("    server: https://{addr}\n    certificate-authority: other-ca.crt\n"),
        "    {}\n",
    );
    let e = get(&client).unwrap_err();
    assert!(e.to_string().contains("tls handshake with"), "{e}");
    let client = kubeconfig(
        d,
        &format!("    server: https://{addr}\n    insecure-skip-tls-verify: true\n"),
        "    {}\n",
    );
    let seen = get(&client).unwrap();
    assert_eq!(seen["clientCert"], false);
    server.join().unwrap();
}

#[test]
fn a_bad_client_key_is_a_clear_kubeconfig_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let path = d.join("kubeconfig");
    std::fs::write(&path, "clusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\", certificate-authority: ca.crt}\nusers:\n- name: u\n  user: {client-certificate: client.crt, client-key: ca.crt}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n").unwrap();
    let e = Client::new(&kubeconfig::load(&path).unwrap())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .starts_with("kubeconfig: client-key: not a PEM private key"),
        "{e}"
    );
}
