//! TLS to the API server: rustls with ring, configured from the kubeconfig (CA bundle, client
//! certificate, `insecure-skip-tls-verify`, `tls-server-name`). Without a CA in the kubeconfig
//! the webpki roots are trusted, as for a managed control plane with a public certificate.

use std::net::TcpStream;
use std::sync::Arc;

use async_io::Async;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::error::Error;
use super::http::Stream;
use super::kubeconfig::KubeConfig;

/// What a TLS connection needs: the config and the name to verify.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    /// Builds the client config from the kubeconfig.
    pub fn new(k: &KubeConfig) -> Result<Tls, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
        let mut roots = RootCertStore::empty();
        match &k.ca_pem {
            Some(pem) => {
                let mut n = 0;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| {
                        Error::Config(format!("certificate-authority: not PEM certificates: {e}"))
                    })?;
                    roots.add(cert).map_err(|e| {
                        Error::Config(format!("certificate-authority: unusable certificate: {e}"))
                    })?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Error::Config(
                        "certificate-authority: no certificate in it".into(),
                    ));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = builder.with_root_certificates(roots);
        let mut config = match &k.client_cert {
            Some((cert_pem, key_pem)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| Error::Config(format!("client-certificate: not PEM: {e}")))?;
                if chain.is_empty() {
                    return Err(Error::Config(
                        "client-certificate: no certificate in it".into(),
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
                    Error::Config(format!("client-key: not a PEM private key: {e}"))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Config(format!("client-certificate and client-key: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        if k.insecure_skip_tls_verify {
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(NoVerification(
                    provider.signature_verification_algorithms,
                )));
        }
        let host = k.tls_server_name.as_deref().unwrap_or(&k.server.host);
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| Error::Config(format!("server name {host:?}: {e}")))?;
        Ok(Tls {
            config: Arc::new(config),
            name,
        })
    }

    /// Runs the handshake over `tcp`.
    pub async fn connect(&self, tcp: Async<TcpStream>) -> std::io::Result<Stream> {
        let connector = futures_rustls::TlsConnector::from(self.config.clone());
        let stream = connector.connect(self.name.clone(), tcp).await?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// `insecure-skip-tls-verify: true`: any certificate is accepted (signatures are still checked,
/// so the session is encrypted, but not authenticated).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
