//! PKI bootstrap: a CA owned by the Server, the Server's certificate and one client
//! certificate per gateway, so that trying the product needs no OpenSSL commands.
//!
//! Layout of a PKI folder: `ca.pem`, `ca.key`, `server.pem`, `server.key`. Agent material is
//! written to a separate folder (normally an Agent package's `configs/client/`) as `ca.pem`,
//! `client.pem` and `client.key`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// File names inside a PKI folder.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client.key";

/// Errors of the PKI bootstrap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Generating or signing a certificate failed.
    #[error("cannot create {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `init` would overwrite an existing CA.
    #[error("{path} already exists; remove the folder or pass --force to create a new CA (every Agent package must then be issued again)")]
    Exists { path: PathBuf },
}

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "ipaas-gateway");
    name.push(DnType::CommonName, common_name);
    name
}

/// Creates a CA and a Server certificate valid for `server_names` (DNS names or IP
/// addresses) in `dir`.
pub fn init(dir: &Path, server_names: &[String], force: bool) -> Result<(), PkiError> {
    let ca_path = dir.join(CA_CERT);
    if ca_path.exists() && !force {
        return Err(PkiError::Exists { path: ca_path });
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;

    let ca_key = KeyPair::generate().map_err(generate("the CA key"))?;
    let mut ca_params = CertificateParams::new(Vec::new()).map_err(generate("the CA"))?;
    ca_params.distinguished_name = name("ipaas-gateway CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(generate("the CA"))?;

    let server_key = KeyPair::generate().map_err(generate("the Server key"))?;
    let mut server_params = CertificateParams::new(server_names.to_vec())
        .map_err(generate("the Server certificate"))?;
    server_params.distinguished_name = name("ipaas-server");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(generate("the Server certificate"))?;

    write(&dir.join(CA_KEY), &ca_key.serialize_pem(), true)?;
    write(&ca_path, &ca.pem(), false)?;
    write(&dir.join(SERVER_KEY), &server_key.serialize_pem(), true)?;
    write(&dir.join(SERVER_CERT), &server.pem(), false)?;
    Ok(())
}

/// Issues a client certificate for `gateway_id` with the CA in `pki_dir` and writes it,
/// with the CA certificate, to `out_dir`.
pub fn issue_agent(pki_dir: &Path, gateway_id: &str, out_dir: &Path) -> Result<(), PkiError> {
    let ca_pem = read(&pki_dir.join(CA_CERT))?;
    let ca_key =
        KeyPair::from_pem(&read(&pki_dir.join(CA_KEY))?).map_err(generate("the CA key"))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(generate("the CA"))?;
    let ca = ca_params.self_signed(&ca_key).map_err(generate("the CA"))?;

    let key = KeyPair::generate().map_err(generate("the Agent key"))?;
    let mut params =
        CertificateParams::new(Vec::new()).map_err(generate("the Agent certificate"))?;
    params.distinguished_name = name(gateway_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(generate("the Agent certificate"))?;

    std::fs::create_dir_all(out_dir).map_err(|source| PkiError::Io {
        action: "create",
        path: out_dir.to_owned(),
        source,
    })?;
    write(&out_dir.join(CA_CERT), &ca_pem, false)?;
    write(&out_dir.join(CLIENT_KEY), &key.serialize_pem(), true)?;
    write(&out_dir.join(CLIENT_CERT), &cert.pem(), false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{client_config, server_config, TlsFiles};

    #[test]
    fn init_then_issue_builds_both_configs() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let client = dir.path().join("client");
        init(&pki, &["localhost".into(), "127.0.0.1".into()], false).unwrap();
        issue_agent(&pki, "gw-test", &client).unwrap();

        server_config(&TlsFiles {
            ca: pki.join(CA_CERT),
            cert: pki.join(SERVER_CERT),
            key: pki.join(SERVER_KEY),
        })
        .unwrap();
        client_config(&TlsFiles {
            ca: client.join(CA_CERT),
            cert: client.join(CLIENT_CERT),
            key: client.join(CLIENT_KEY),
        })
        .unwrap();
    }

    #[test]
    fn init_keeps_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost".into()], false).unwrap();
        let first = std::fs::read(dir.path().join(CA_CERT)).unwrap();
        assert!(matches!(
            init(dir.path(), &["localhost".into()], false),
            Err(PkiError::Exists { .. })
        ));
        assert_eq!(std::fs::read(dir.path().join(CA_CERT)).unwrap(), first);
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost".into()], false).unwrap();
        for file in [CA_KEY, SERVER_KEY] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
