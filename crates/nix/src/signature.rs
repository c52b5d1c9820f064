//! Ed25519 keys and signatures in Nix's text form, and the fingerprint they sign.
//!
//! Nix writes every key and signature as `<name>:<base64>` (standard alphabet, with
//! padding):
//!
//! | type | bytes | made by |
//! |---|---|---|
//! | [`SigningKey`] | 64: the 32-byte seed, then the 32-byte public key | `nix key generate-secret`, `nix-store --generate-binary-cache-key` |
//! | [`VerifyingKey`] | 32 | `nix key convert-secret-to-public`, `trusted-public-keys` |
//! | [`Signature`] | 64 | narinfo `Sig:` lines, `nix store sign` |
//!
//! A signature is only checked against the key of the same name, as Nix does. What is
//! signed is a store path's [`fingerprint`]:
//! `1;<store path>;<sha256:nix32 NAR hash>;<NAR size>;<references, comma-separated>`.
//!
//! ```
//! use cairn_nix::signature::{SigningKey, VerifyingKey};
//!
//! let sk = SigningKey::generate("cache.example.org-1")?;
//! let pk: VerifyingKey = sk.to_verifying_key().to_string().parse()?;
//! let sig = sk.sign(b"1;/nix/store/...");
//! assert!(pk.verify(b"1;/nix/store/...", &sig));
//! assert!(!pk.verify(b"something else", &sig));
//! # Ok::<(), cairn_nix::signature::KeyError>(())
//! ```
//!
//! Parsing is stricter than Nix's in one respect each: the base64 must be canonical
//! (Nix's decoder stops at the first `=` and ignores what follows), key names may not
//! contain `:`, whitespace or control characters (Nix would write such a key but
//! could not use it: `trusted-public-keys` is space-separated and the name ends at
//! the first `:`), and a secret key whose public half does not belong to its seed is
//! rejected (libsodium would silently sign with the wrong public key).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer as _;

use crate::hash::NixHash;
use crate::store_path::StorePath;

/// Why a key or signature could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text has no `:` separating the name from the base64 data.
    #[error("invalid {what}: expected `<name>:<base64>`, found no `:`")]
    MissingColon {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
    },
    /// The key name is empty or contains a character Nix cannot use in a key name.
    #[error("invalid key name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The part after the `:` is not canonical standard base64.
    #[error("invalid {what} {name:?}: bad base64: {reason}")]
    Base64 {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
        /// The key name before the `:`.
        name: String,
        /// The decoder's explanation.
        reason: String,
    },
    /// The base64 decodes to the wrong number of bytes.
    #[error("invalid {what} {name:?}: {len} bytes, expected {expected}")]
    WrongLength {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
        /// The key name before the `:`.
        name: String,
        /// Decoded length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// A secret key's last 32 bytes are not the public key of its first 32.
    #[error("invalid secret key {name:?}: its public half does not belong to its seed")]
    KeyPairMismatch {
        /// The key name.
        name: String,
    },
    /// A public key's bytes are not a valid Ed25519 point.
    #[error("invalid public key {name:?}: not an Ed25519 public key")]
    InvalidPublicKey {
        /// The key name.
        name: String,
    },
    /// The operating system could not provide randomness for a new key.
    #[error("cannot get randomness from the operating system: {0}")]
    Random(String),
}

/// A secret key, as `nix key generate-secret` writes it: `<name>:<base64(seed ‖ public)>`.
///
/// Its [`Debug`](fmt::Debug) output hides the secret; [`Display`](fmt::Display)
/// prints the full key in Nix's format (without a trailing newline, like Nix).
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

/// A public key, as `nix key convert-secret-to-public` writes it: `<name>:<base64>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

/// A signature as in a narinfo `Sig:` line: `<key name>:<base64(64 bytes)>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    name: String,
    bytes: [u8; 64],
}

const SECRET: &str = "secret key";
const PUBLIC: &str = "public key";
const SIGNATURE: &str = "signature";

/// Checks that `name` can name a key that Nix can use.
fn check_name(name: &str) -> Result<(), KeyError> {
    let bad = |reason| {
        Err(KeyError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.contains(':') {
        return bad("contains `:`, which ends a key name");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains whitespace or a control character");
    }
    Ok(())
}

/// Splits `name:base64` and decodes the base64 into exactly `N` bytes.
fn split_decode<const N: usize>(
    what: &'static str,
    s: &str,
) -> Result<(String, [u8; N]), KeyError> {
    let (name, b64) = s.split_once(':').ok_or(KeyError::MissingColon { what })?;
    check_name(name)?;
    // Longest base64 for N bytes is 4*ceil(N/3); refuse more before decoding so a huge
    // input never turns into a huge allocation.
    let max = N.div_ceil(3) * 4;
    let decoded = if b64.len() > max {
        None
    } else {
        Some(BASE64.decode(b64).map_err(|e| KeyError::Base64 {
            what,
            name: name.to_owned(),
            reason: e.to_string(),
        })?)
    };
    let decoded_len = decoded.as_ref().map_or(b64.len() / 4 * 3, Vec::len);
    let bytes: [u8; N] =
        decoded
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| KeyError::WrongLength {
                what,
                name: name.to_owned(),
                len: decoded_len,
                expected: N,
            })?;
    Ok((name.to_owned(), bytes))
}

/// Key files end with a newline when written by an editor or `echo`; Nix itself writes
/// none. Only trailing whitespace is dropped: leading whitespace would be part of the
/// name for Nix.
fn trim_end(s: &str) -> &str {
    s.trim_end_matches([' ', '\t', '\r', '\n'])
}

impl SigningKey {
    /// Generates a new key named `name` from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        use rand::TryRng as _;
        let mut seed = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Self::from_seed(name, &seed)
    }

    /// The key named `name` with the given 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, with the same name.
    pub fn to_verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `message` (for a narinfo: its [`fingerprint`]).
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            name: self.name.clone(),
            bytes: self.key.sign(message).to_bytes(),
        }
    }
}

impl FromStr for SigningKey {
    type Err = KeyError;

    /// Reads a secret key file's contents; trailing whitespace (a newline) is ignored.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<64>(SECRET, trim_end(s))?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| KeyError::KeyPairMismatch { name: name.clone() })?;
        Ok(Self { name, key })
    }
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field(
                "public",
                &BASE64.encode(self.key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is a valid signature of `message` by this key. A signature
    /// made by a key of another name never verifies, as in Nix.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        signature.name == self.name
            && self
                .key
                .verify_strict(
                    message,
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

impl FromStr for VerifyingKey {
    type Err = KeyError;

    /// Reads a public key; trailing whitespace (a newline) is ignored.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<32>(PUBLIC, trim_end(s))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError::InvalidPublicKey { name: name.clone() })?;
        Ok(Self { name, key })
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl Signature {
    /// The signature named `name` with the given raw Ed25519 signature bytes.
    pub fn new(name: &str, bytes: [u8; 64]) -> Result<Self, KeyError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            bytes,
        })
    }

    /// The name of the key that made it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw 64 signature bytes.
    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl FromStr for Signature {
    type Err = KeyError;

    /// Reads `name:base64` exactly (no surrounding whitespace).
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<64>(SIGNATURE, s)?;
        Ok(Self { name, bytes })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.bytes))
    }
}

/// The text Nix signs for a store path: its fingerprint,
/// `1;<store path>;<NAR hash>;<NAR size>;<references>`.
///
/// The NAR hash is printed as `<algo>:<nix32>` (always `sha256` for narinfo files),
/// the references as absolute store paths, sorted and without duplicates (Nix keeps
/// them in a `std::set`), separated by `,`. Nix refuses to compute it when the NAR
/// size is 0 (unknown); callers must not sign such a path either.
pub fn fingerprint<'a>(
    store_path: &StorePath,
    nar_hash: &NixHash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    let mut refs: Vec<String> = references.into_iter().map(StorePath::to_absolute).collect();
    refs.sort_unstable();
    refs.dedup();
    format!(
        "1;{};{};{};{}",
        store_path.to_absolute(),
        nar_hash,
        nar_size,
        refs.join(",")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // A key pair made by `nix key generate-secret --key-name test-1` and
    // `nix key convert-secret-to-public` (Nix 2.8).
    const NIX_SK: &str = "test-1:CxciDfPihdCuG8I3FvvB3TVZqSuMKh6rYBs8AEcp2S84cYMdX1px/H93Va/lZT/9eHlgbOyHtbs3vA7VrVhqNA==";
    const NIX_PK: &str = "test-1:OHGDHV9acfx/d1Wv5WU//Xh5YGzsh7W7N7wO1a1YajQ=";

    #[test]
    fn nix_secret_key_round_trips_and_derives_nix_public_key() {
        let sk: SigningKey = NIX_SK.parse().unwrap();
        assert_eq!(sk.to_string(), NIX_SK);
        assert_eq!(sk.to_verifying_key().to_string(), NIX_PK);
        let with_newline: SigningKey = format!("{NIX_SK}\n").parse().unwrap();
        assert_eq!(with_newline.to_string(), NIX_SK);
    }

    #[test]
    fn rejections() {
        let e = |s: &str| s.parse::<SigningKey>().unwrap_err();
        assert!(matches!(e("nocolon"), KeyError::MissingColon { .. }));
        assert!(matches!(e(":AAAA"), KeyError::InvalidName { .. }));
        assert!(matches!(e("a b:AAAA"), KeyError::InvalidName { .. }));
        assert!(matches!(e("a:!!!!"), KeyError::Base64 { .. }));
        assert!(matches!(
            e("a:AAAA"),
            KeyError::WrongLength {
                len: 3,
                expected: 64,
                ..
            }
        ));
        // Nix tolerates a missing padding; canonical base64 is required here.
        assert!(matches!(
            e(NIX_SK.trim_end_matches('=')),
            KeyError::Base64 { .. }
        ));
        // The public half of another key.
        let other = SigningKey::from_seed("test-1", &[7; 32]).unwrap();
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&BASE64.decode(&NIX_SK[7..]).unwrap()[..32]);
        bytes[32..].copy_from_slice(other.to_verifying_key().key.as_bytes());
        assert!(matches!(
            e(&format!("test-1:{}", BASE64.encode(bytes))),
            KeyError::KeyPairMismatch { .. }
        ));
        assert!(matches!(
            format!("{NIX_PK}AAAA").parse::<VerifyingKey>().unwrap_err(),
            KeyError::WrongLength { .. }
        ));
        assert!(matches!(
            "x:".parse::<Signature>().unwrap_err(),
            KeyError::WrongLength { len: 0, .. }
        ));
        assert!(matches!(
            SigningKey::generate("a:b").unwrap_err(),
            KeyError::InvalidName { .. }
        ));
    }

    #[test]
    fn signature_needs_matching_name() {
        let sk = SigningKey::from_seed("one", &[1; 32]).unwrap();
        let sig = sk.sign(b"msg");
        let renamed = Signature::new("two", *sig.bytes()).unwrap();
        assert!(sk.to_verifying_key().verify(b"msg", &sig));
        assert!(!sk.to_verifying_key().verify(b"msg", &renamed));
        assert!(!format!("{}", SigningKey::from_seed("a", &[1; 32]).unwrap()).is_empty());
        assert!(!format!("{sk:?}").contains(&sk.to_string()[4..]));
    }
}
