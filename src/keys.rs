//! RSA keys for Agent authentication: loading the PEM files that OpenSSL 1.1 and 3.x write,
//! signing the handshake message on the Agent and verifying it on the Server.
//!
//! Accepted forms: private keys as PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`),
//! public keys as PKCS#1 (`RSA PUBLIC KEY`, what `openssl rsa -RSAPublicKey_out` writes) or
//! SPKI (`PUBLIC KEY`), with LF or CRLF line endings.

use std::fmt;
use std::path::{Path, PathBuf};

use rsa::pkcs1::der::zeroize::Zeroizing;
use rsa::pkcs1::{
    DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding,
};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

/// Smallest modulus accepted at all.
pub const MIN_KEY_BITS: usize = 1024;
/// Largest modulus accepted; the rsa crate refuses larger public keys.
pub const MAX_KEY_BITS: usize = 4096;
/// Modulus size below which a warning recommends a new key.
pub const RECOMMENDED_KEY_BITS: usize = 2048;

/// Errors while loading or using an RSA key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file has no PEM block of a supported type.
    #[error(
        "{path} is not a PEM RSA {expected} key ({detail}); create one with \
         `openssl genrsa -out private.pem 2048` and \
         `openssl rsa -in private.pem -RSAPublicKey_out -out public.pem`"
    )]
    Format {
        path: PathBuf,
        expected: &'static str,
        detail: String,
    },
    /// The private key is encrypted with a passphrase, which the Agent cannot prompt for.
    #[error(
        "{path} is encrypted with a passphrase; write an unencrypted copy with \
         `openssl rsa -in {path} -out private.pem` and keep it readable by the Agent's user only"
    )]
    Encrypted { path: PathBuf },
    /// The modulus is outside the accepted range.
    #[error("{path} holds a {bits}-bit RSA key; use a key of {min} to {max} bits (2048 or more recommended)")]
    Size {
        path: PathBuf,
        bits: usize,
        min: usize,
        max: usize,
    },
}

/// An Agent's private key, able to sign the handshake message.
pub struct PrivateKey {
    signing: SigningKey<Sha256>,
    bits: usize,
    fingerprint: Fingerprint,
}

impl PrivateKey {
    /// Loads a PKCS#1 or PKCS#8 PEM private key and checks its size against `min_bits`.
    pub fn load(path: &Path, min_bits: usize) -> Result<Self, KeyError> {
        let text = read_pem_text(path)?;
        if text.contains("ENCRYPTED") {
            return Err(KeyError::Encrypted {
                path: path.to_owned(),
            });
        }

        let key = RsaPrivateKey::from_pkcs1_pem(&text)
            .or_else(|pkcs1| {
                RsaPrivateKey::from_pkcs8_pem(&text)
                    .map_err(|pkcs8| format!("as PKCS#1: {pkcs1}; as PKCS#8: {pkcs8}"))
            })
            .map_err(|detail| KeyError::Format {
                path: path.to_owned(),
                expected: "private",
                detail,
            })?;

        let bits = key.size() * 8;
        check_bits(path, bits, min_bits)?;
        let fingerprint = Fingerprint::of(&key.to_public_key());
        Ok(Self {
            signing: SigningKey::<Sha256>::new(key),
            bits,
            fingerprint,
        })
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 over SHA-256, as `openssl dgst -sha256 -sign` does.
    ///
    /// The private-key operation is blinded with fresh randomness, so its timing does not
    /// depend on the key in a way a peer could measure across signatures.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing
            .sign_with_rng(&mut rand::rngs::OsRng, message)
            .to_vec()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Fingerprint of the matching public key.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only public facts: the key material never reaches a log line.
        f.debug_struct("PrivateKey")
            .field("bits", &self.bits)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A new key pair in PEM form with LF line endings: the private key as PKCS#1
/// (`RSA PRIVATE KEY`) and the public key as PKCS#1 (`RSA PUBLIC KEY`, the form
/// `openssl rsa -RSAPublicKey_out` writes).
pub struct PemKeyPair {
    /// Private key text, overwritten with zeros when dropped.
    pub private_pem: Zeroizing<String>,
    pub public_pem: String,
}

impl PemKeyPair {
    /// Generates an RSA key of `bits` bits, public exponent 65537, from the operating
    /// system's random number generator.
    pub fn generate(bits: usize) -> Result<Self, rsa::Error> {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)?;
        let private_pem = key.to_pkcs1_pem(LineEnding::LF)?;
        let public_pem = key.to_public_key().to_pkcs1_pem(LineEnding::LF)?;
        Ok(Self {
            private_pem,
            public_pem,
        })
    }
}

/// A registered public key of a gateway.
#[derive(Clone)]
pub struct PublicKey {
    verifying: VerifyingKey<Sha256>,
    bits: usize,
    fingerprint: Fingerprint,
    path: PathBuf,
}

impl PublicKey {
    /// Loads a PKCS#1 (`RSA PUBLIC KEY`) or SPKI (`PUBLIC KEY`) PEM public key.
    pub fn load(path: &Path, min_bits: usize) -> Result<Self, KeyError> {
        Self::parse(&read_pem_text(path)?, path, min_bits)
    }

    /// Parses PEM text, such as a key uploaded to the admin API; `path` names its source in
    /// errors and logs.
    pub fn parse(text: &str, path: &Path, min_bits: usize) -> Result<Self, KeyError> {
        let text = text.replace("\r\n", "\n");
        let text = text.trim_start_matches('\u{feff}').trim().to_owned() + "\n";
        let key = RsaPublicKey::from_pkcs1_pem(&text)
            .or_else(|pkcs1| {
                RsaPublicKey::from_public_key_pem(&text)
                    .map_err(|spki| format!("as PKCS#1: {pkcs1}; as SPKI: {spki}"))
            })
            .map_err(|detail| KeyError::Format {
                path: path.to_owned(),
                expected: "public",
                detail,
            })?;

        let bits = key.size() * 8;
        check_bits(path, bits, min_bits)?;
        Ok(Self {
            fingerprint: Fingerprint::of(&key),
            verifying: VerifyingKey::<Sha256>::new(key),
            bits,
            path: path.to_owned(),
        })
    }

    /// Checks an RSASSA-PKCS1-v1_5 SHA-256 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::try_from(signature) else {
            return false;
        };
        self.verifying.verify(message, &signature).is_ok()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// SHA-256 fingerprint of the PKCS#1 DER encoding.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// File the key was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("bits", &self.bits)
            .field("fingerprint", &self.fingerprint)
            .field("path", &self.path)
            .finish()
    }
}

/// SHA-256 over the PKCS#1 DER form of a public key, shown as `SHA256:` and hex.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    fn of(key: &RsaPublicKey) -> Self {
        // Encoding a key that was just decoded cannot fail; an empty DER would only change
        // the printed fingerprint, never the signature check.
        let der = key
            .to_pkcs1_der()
            .map(|der| der.as_bytes().to_vec())
            .unwrap_or_default();
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Reads a PEM file and normalises CRLF line endings, which Windows editors write.
fn read_pem_text(path: &Path) -> Result<String, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
    Ok(text.trim_start_matches('\u{feff}').trim().to_owned() + "\n")
}

fn check_bits(path: &Path, bits: usize, min_bits: usize) -> Result<(), KeyError> {
    let min = min_bits.max(MIN_KEY_BITS);
    if bits < min || bits > MAX_KEY_BITS {
        return Err(KeyError::Size {
            path: path.to_owned(),
            bits,
            min,
            max: MAX_KEY_BITS,
        });
    }
    Ok(())
}

/// Returns a warning when a key file can be read by group or others (Unix only).
pub fn permission_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Some(format!(
                "{} is readable by group or others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(args: &[&str], dir: &Path) {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("openssl must be installed to run the key tests");
        assert!(status.success(), "openssl {args:?} failed");
    }

    /// Creates a key pair with the commands users run and returns (private, public) paths.
    fn openssl_pair(
        dir: &Path,
        bits: &str,
        extra: &[&str],
        public_flag: &str,
    ) -> (PathBuf, PathBuf) {
        let mut genrsa = vec!["genrsa"];
        genrsa.extend_from_slice(extra);
        genrsa.extend_from_slice(&["-out", "private.pem", bits]);
        openssl(&genrsa, dir);
        openssl(
            &[
                "rsa",
                "-in",
                "private.pem",
                public_flag,
                "-out",
                "public.pem",
            ],
            dir,
        );
        (dir.join("private.pem"), dir.join("public.pem"))
    }

    fn sign_and_verify(private: &Path, public: &Path) {
        let private = PrivateKey::load(private, MIN_KEY_BITS).unwrap();
        let public = PublicKey::load(public, MIN_KEY_BITS).unwrap();
        let signature = private.sign(b"message");
        assert!(public.verify(b"message", &signature));
        assert!(!public.verify(b"other message", &signature));
        assert_eq!(private.fingerprint(), public.fingerprint());
        assert_eq!(private.bits(), public.bits());
    }

    #[test]
    fn openssl_keys_of_every_size() {
        for bits in ["1024", "2048", "3072", "4096"] {
            let dir = tempfile::tempdir().unwrap();
            let (private, public) = openssl_pair(dir.path(), bits, &[], "-RSAPublicKey_out");
            sign_and_verify(&private, &public);
            assert_eq!(
                PublicKey::load(&public, 0).unwrap().bits().to_string(),
                bits
            );
        }
    }

    #[test]
    fn pkcs1_private_and_spki_public() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = openssl_pair(dir.path(), "2048", &["-traditional"], "-pubout");
        assert!(std::fs::read_to_string(&private)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY"));
        assert!(std::fs::read_to_string(&public)
            .unwrap()
            .contains("BEGIN PUBLIC KEY"));
        sign_and_verify(&private, &public);
    }

    #[test]
    fn crlf_line_endings() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = openssl_pair(dir.path(), "2048", &[], "-RSAPublicKey_out");
        for path in [&private, &public] {
            let text = std::fs::read_to_string(path).unwrap().replace('\n', "\r\n");
            std::fs::write(path, text).unwrap();
        }
        sign_and_verify(&private, &public);
    }

    #[test]
    fn signature_verifies_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = openssl_pair(dir.path(), "2048", &[], "-pubout");
        let key = PrivateKey::load(&private, MIN_KEY_BITS).unwrap();
        std::fs::write(dir.path().join("message"), b"handshake bytes").unwrap();
        std::fs::write(dir.path().join("signature"), key.sign(b"handshake bytes")).unwrap();
        openssl(
            &[
                "dgst",
                "-sha256",
                "-verify",
                "public.pem",
                "-signature",
                "signature",
                "message",
            ],
            dir.path(),
        );
        let _ = public;
    }

    #[test]
    fn minimum_size_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = openssl_pair(dir.path(), "1024", &[], "-RSAPublicKey_out");
        let error = PublicKey::load(&public, 2048).unwrap_err();
        assert!(
            matches!(
                error,
                KeyError::Size {
                    bits: 1024,
                    min: 2048,
                    ..
                }
            ),
            "{error}"
        );
        assert!(PrivateKey::load(&private, 2048).is_err());
    }

    #[test]
    fn garbage_and_encrypted_files() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a key").unwrap();
        let error = PublicKey::load(&garbage, 0).unwrap_err();
        assert!(error.to_string().contains("garbage.pem"), "{error}");

        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-aes256",
                "-pass",
                "pass:secret",
                "-out",
                "encrypted.pem",
            ],
            dir.path(),
        );
        let error = PrivateKey::load(&dir.path().join("encrypted.pem"), 0).unwrap_err();
        assert!(matches!(error, KeyError::Encrypted { .. }), "{error}");

        let missing = PublicKey::load(&dir.path().join("missing.pem"), 0).unwrap_err();
        assert!(matches!(missing, KeyError::Read { .. }));
    }

    #[test]
    fn debug_output_hides_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = openssl_pair(dir.path(), "2048", &[], "-pubout");
        let key = PrivateKey::load(&private, MIN_KEY_BITS).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("fingerprint"));
        let pem = std::fs::read_to_string(&private).unwrap();
        let body_line = pem.lines().nth(1).unwrap();
        assert!(!debug.contains(body_line));
    }

    #[test]
    fn generated_pair_loads_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let pair = PemKeyPair::generate(2048).unwrap();
        assert!(pair
            .private_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(pair
            .public_pem
            .starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
        assert!(pair.public_pem.ends_with("-----END RSA PUBLIC KEY-----\n"));

        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        std::fs::write(&private, pair.private_pem.as_bytes()).unwrap();
        std::fs::write(&public, &pair.public_pem).unwrap();
        sign_and_verify(&private, &public);
        assert_eq!(PublicKey::load(&public, 0).unwrap().bits(), 2048);
    }
}
