//! `ipaas-agent keygen`: creates the Agent's RSA key pair as `private.pem` and `public.pem`,
//! in the PKCS#1 PEM forms that `openssl genrsa` (OpenSSL 1.1, or 3.x with `-traditional`)
//! and `openssl rsa -RSAPublicKey_out` write. Runs once on the calling thread.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::keys::{Fingerprint, KeyError, PemKeyPair, PrivateKey, PublicKey, MIN_KEY_BITS};

/// Key sizes in bits that `keygen` creates. The Agent also loads 1024-bit keys (with a
/// warning), but keygen does not make them.
pub const KEYGEN_BITS: [usize; 3] = [2048, 3072, 4096];

/// Errors of `ipaas-agent keygen`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeygenError {
    /// The requested key size is not in [`KEYGEN_BITS`].
    #[error("{}", bits_message(*bits))]
    Bits { bits: usize },
    /// A file to be written exists and overwriting was not requested.
    #[error("{path} already exists; pass --force to replace it (the Server then rejects this Agent until the new public key is registered for its gateway)")]
    Exists { path: PathBuf },
    /// A folder or file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The rsa crate failed to generate or encode the key.
    #[error("cannot generate a {bits}-bit RSA key: {source}")]
    Generate { bits: usize, source: rsa::Error },
    /// A written file did not load back.
    #[error("the written key files do not load back: {0}")]
    ReadBack(#[from] KeyError),
    /// The written public key does not belong to the written private key.
    #[error("{public} does not match {private}; run keygen again with --force")]
    Mismatch { private: PathBuf, public: PathBuf },
}

fn bits_message(bits: usize) -> String {
    if bits < KEYGEN_BITS[0] {
        format!(
            "--bits {bits} is too small; use 2048, 3072 or 4096. If a Server really requires a smaller key, \
             openssl can still make one: `openssl genrsa -out private.pem {bits}`"
        )
    } else {
        format!("--bits {bits} is not supported; use 2048, 3072 or 4096")
    }
}

/// Output paths, key size and overwrite policy of one `keygen` run.
#[derive(Debug, Clone)]
pub struct KeygenRequest {
    /// Path of the private key, normally `configs/secret/private.pem`.
    pub private_path: PathBuf,
    /// Path of the public key to send to the Server's operator.
    pub public_path: PathBuf,
    /// Modulus size, one of [`KEYGEN_BITS`].
    pub bits: usize,
    /// Replace existing files instead of failing.
    pub force: bool,
}

/// Paths, size and fingerprint of a key pair that [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    pub bits: usize,
    /// Fingerprint of the public key as read back from `public_path`. The Agent and the
    /// Server log the same value.
    pub fingerprint: Fingerprint,
    /// Whether an existing private key was replaced.
    pub replaced: bool,
}

/// Generates a key pair and writes it to the paths in `request`.
///
/// Both files are first written under temporary names in their target folders and then
/// renamed into place, so an interrupted run leaves no half-written key behind. On Unix the
/// private key is created with mode 0600 and the public key with mode 0644.
///
/// NOTE: on Windows the private key gets the folder's default access rights; restrict them
/// by hand if the folder is shared.
pub fn generate(request: &KeygenRequest) -> Result<GeneratedKey, KeygenError> {
    if !KEYGEN_BITS.contains(&request.bits) {
        return Err(KeygenError::Bits { bits: request.bits });
    }
    let replaced = request.private_path.exists();
    if !request.force {
        for path in [&request.private_path, &request.public_path] {
            if path.exists() {
                return Err(KeygenError::Exists { path: path.clone() });
            }
        }
    }

    let pair = PemKeyPair::generate(request.bits).map_err(|source| KeygenError::Generate {
        bits: request.bits,
        source,
    })?;

    let private_temp = write_temporary(&request.private_path, pair.private_pem.as_bytes(), 0o600)?;
    let public_temp = match write_temporary(&request.public_path, pair.public_pem.as_bytes(), 0o644)
    {
        Ok(temp) => temp,
        Err(error) => {
            let _ = std::fs::remove_file(&private_temp);
            return Err(error);
        }
    };
    if let Err(error) = rename_into_place(&private_temp, &request.private_path) {
        let _ = std::fs::remove_file(&public_temp);
        return Err(error);
    }
    rename_into_place(&public_temp, &request.public_path)?;

    // Read both files back with the loaders the Agent and the Server use.
    let private = PrivateKey::load(&request.private_path, MIN_KEY_BITS)?;
    let public = PublicKey::load(&request.public_path, MIN_KEY_BITS)?;
    if private.fingerprint() != public.fingerprint() {
        return Err(KeygenError::Mismatch {
            private: request.private_path.clone(),
            public: request.public_path.clone(),
        });
    }

    Ok(GeneratedKey {
        private_path: request.private_path.clone(),
        public_path: request.public_path.clone(),
        bits: public.bits(),
        fingerprint: public.fingerprint().clone(),
        replaced,
    })
}

/// Writes `contents` to a new file beside `target` and returns its path. `mode` applies on
/// Unix only.
fn write_temporary(target: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, KeygenError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| KeygenError::Write { path, source }
    };
    let folder = match target.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&folder).map_err(write_error(&folder))?;

    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key.pem".to_owned());
    let temp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;

    let mut file = options.open(&temp).map_err(write_error(&temp))?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| set_mode(&temp, mode));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(KeygenError::Write { path: temp, source });
    }
    Ok(temp)
}

/// Sets `mode` exactly, because the umask may have cleared bits at creation (Unix only).
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Renames `temp` to `target`, replacing any existing file, and removes `temp` if that fails.
fn rename_into_place(temp: &Path, target: &Path) -> Result<(), KeygenError> {
    std::fs::rename(temp, target).map_err(|source| {
        let _ = std::fs::remove_file(temp);
        KeygenError::Write {
            path: target.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &Path, bits: usize, force: bool) -> KeygenRequest {
        KeygenRequest {
            private_path: dir.join("secret/private.pem"),
            public_path: dir.join("secret/public.pem"),
            bits,
            force,
        }
    }

    #[test]
    fn writes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate(&request(dir.path(), 2048, false)).unwrap();
        assert_eq!(key.bits, 2048);
        assert!(!key.replaced);

        let private = std::fs::read_to_string(&key.private_path).unwrap();
        let public = std::fs::read_to_string(&key.public_path).unwrap();
        assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(public.starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
        assert!(!private.contains('\r'));

        let loaded = PrivateKey::load(&key.private_path, 2048).unwrap();
        assert_eq!(loaded.fingerprint(), &key.fingerprint);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("secret"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[cfg(unix)]
    #[test]
    fn private_key_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let key = generate(&request(dir.path(), 2048, false)).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key.private_path), 0o600);
        assert_eq!(mode(&key.public_path), 0o644);
        assert_eq!(crate::keys::permission_warning(&key.private_path), None);
    }

    #[test]
    fn existing_files_need_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(&request(dir.path(), 2048, false)).unwrap();

        let error = generate(&request(dir.path(), 2048, false)).unwrap_err();
        assert!(
            matches!(&error, KeygenError::Exists { path } if path == &first.private_path),
            "{error}"
        );
        assert!(error.to_string().contains("--force"), "{error}");

        let second = generate(&request(dir.path(), 2048, true)).unwrap();
        assert!(second.replaced);
        assert_ne!(second.fingerprint, first.fingerprint);
    }

    #[test]
    fn existing_public_key_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let request = request(dir.path(), 2048, false);
        std::fs::create_dir_all(request.public_path.parent().unwrap()).unwrap();
        std::fs::write(&request.public_path, "registered elsewhere").unwrap();

        let error = generate(&request).unwrap_err();
        assert!(
            matches!(&error, KeygenError::Exists { path } if path == &request.public_path),
            "{error}"
        );
        assert!(!request.private_path.exists());
    }

    #[test]
    fn unsupported_sizes_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for bits in [512, 1024, 2047, 2500, 8192] {
            let error = generate(&request(dir.path(), bits, false)).unwrap_err();
            assert!(matches!(error, KeygenError::Bits { .. }), "{bits}: {error}");
            assert!(error.to_string().contains("2048, 3072 or 4096"), "{error}");
        }
        let small = generate(&request(dir.path(), 1024, false)).unwrap_err();
        assert!(
            small
                .to_string()
                .contains("openssl genrsa -out private.pem 1024"),
            "{small}"
        );
        assert!(!dir.path().join("secret").exists());
    }
}
