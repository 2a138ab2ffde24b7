//! TLS for the PostgreSQL wire and Flight SQL: a rustls server set-up from PEM files of
//! a certificate chain and its private key, with errors that name the setting, the file
//! and what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// A TLS acceptor for one door.
#[derive(Clone)]
pub(crate) struct Acceptor(pub(crate) tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

/// The TLS acceptor of `cert` (the setting `cert_key` names) and `key` (the setting
/// `key_key`), offering the `alpn` protocols; none when no certificate is set (the door
/// has no TLS). Read when the door opens, so a bad one fails the start.
pub(crate) fn acceptor(
    (cert_key, cert): (&str, &str),
    (key_key, key): (&str, &str),
    alpn: &[&[u8]],
) -> Result<Option<Acceptor>, String> {
    if cert.is_empty() {
        return Ok(None);
    }
    let (cert, key) = (Path::new(cert), Path::new(key));
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{cert_key}: cannot read certificates from {}: {e} (a PEM file with -----BEGIN CERTIFICATE-----)",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{cert_key}: {} holds no certificate (a PEM file with -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{key_key}: cannot read a private key from {}: {e} (a PEM file with -----BEGIN PRIVATE KEY-----)",
            key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("{cert_key}: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .map_err(|e| {
        format!(
            "{cert_key} and {key_key}: {} and {} do not make a TLS set-up: {e} (is the key the certificate's?)",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Acceptor(tokio_rustls::TlsAcceptor::from(Arc::new(
        config,
    )))))
}

/// Checks that a certificate and key setting pair is set both or neither.
pub(crate) fn both_or_neither(
    (cert_key, cert): (&str, &str),
    (key_key, key): (&str, &str),
) -> Result<(), String> {
    if cert.is_empty() != key.is_empty() {
        return Err(format!(
            "{cert_key} and {key_key}: set both (PEM files of the certificate chain and its private key) or neither"
        ));
    }
    Ok(())
}
