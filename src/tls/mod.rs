//! TLS material: rustls configurations for both roles (TLS 1.3 only, mutual TLS with the
//! Server's own CA, ALPN pinned to the protocol version) and the PKI bootstrap in [`pki`].

pub mod pki;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::protocol::ALPN;

/// Paths of the PEM files one side needs: the CA that signs the peer, our certificate
/// chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Errors while loading TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file is missing, unreadable or contains no usable item.
    #[error("cannot load {what} from {path}: {detail}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// rustls rejected the material (for example a key that does not match the certificate).
    #[error("invalid TLS material ({files}): {source}")]
    Rustls {
        files: String,
        source: rustls::Error,
    },
    /// The CA could not be used to verify client certificates.
    #[error("cannot use {path} to verify Agent certificates: {detail}")]
    Verifier { path: PathBuf, detail: String },
}

/// ring with the TLS 1.3 suites in the order the relay prefers: AES-128-GCM first, as it
/// is the fastest with AES-NI and as strong as the session needs; ChaCha20 for hosts
/// without AES instructions.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;

    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |detail: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::Pem {
        what: "the TLS private key",
        path: path.to_owned(),
        detail: error.to_string(),
    })
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "the CA certificate")? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            files: path.display().to_string(),
            source,
        })?;
    }
    Ok(roots)
}

fn rustls_error(files: &TlsFiles) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |source| TlsError::Rustls {
        files: format!("{}, {}", files.cert.display(), files.key.display()),
        source,
    }
}

/// Builds the Server's TLS configuration: TLS 1.3, client certificates required and
/// verified against `files.ca`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(&files.ca)?), provider())
            .build()
            .map_err(|error| TlsError::Verifier {
                path: files.ca.clone(),
                detail: error.to_string(),
            })?;

    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_error(files))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&files.cert, "the certificate")?,
            load_key(&files.key)?,
        )
        .map_err(rustls_error(files))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Builds the Agent's TLS configuration: TLS 1.3, the Server verified against `files.ca`,
/// and the Agent's client certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_error(files))?
        .with_root_certificates(root_store(&files.ca)?)
        .with_client_auth_cert(
            load_certs(&files.cert, "the certificate")?,
            load_key(&files.key)?,
        )
        .map_err(rustls_error(files))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}
