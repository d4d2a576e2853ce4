//! TLS (rustls, ring provider) for the one HTTP+gRPC port: loads the PEM
//! certificate chain and key into an acceptor that offers HTTP/2 and
//! HTTP/1.1 by ALPN; [`crate::listen`] runs the handshake per connection.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

fn tls_err(reason: impl Into<String>) -> ConfigError {
    ConfigError::Tls {
        reason: reason.into(),
    }
}

/// Builds the acceptor from PEM files.
///
/// # Errors
/// [`ConfigError::Tls`] for unreadable or invalid files.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ConfigError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("bad certificate in {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("no certificate in {}", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        tls_err(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| tls_err(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
