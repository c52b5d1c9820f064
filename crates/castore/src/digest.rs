//! [`B3Digest`]: the 32-byte BLAKE3 digest that names every blob, chunk and directory.

use std::fmt;

use bytes::Bytes;

/// Length in bytes of a BLAKE3 digest.
pub const DIGEST_LEN: usize = 32;

/// A BLAKE3 digest. Cannot hold anything but exactly 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct B3Digest([u8; DIGEST_LEN]);

/// A byte string that is not a digest because it is not 32 bytes long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a BLAKE3 digest is {DIGEST_LEN} bytes, got {0}")]
pub struct DigestLenError(pub usize);

impl B3Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Lower-case hex, as printed by `b3sum`.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The digest as a protobuf `bytes` value.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }
}

impl From<[u8; DIGEST_LEN]> for B3Digest {
    fn from(value: [u8; DIGEST_LEN]) -> Self {
        Self(value)
    }
}

impl From<blake3::Hash> for B3Digest {
    fn from(value: blake3::Hash) -> Self {
        Self(*value.as_bytes())
    }
}

impl TryFrom<&[u8]> for B3Digest {
    type Error = DigestLenError;

    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        <[u8; DIGEST_LEN]>::try_from(value)
            .map(Self)
            .map_err(|_| DigestLenError(value.len()))
    }
}

impl TryFrom<&Bytes> for B3Digest {
    type Error = DigestLenError;

    fn try_from(value: &Bytes) -> Result<Self, Self::Error> {
        Self::try_from(value.as_ref())
    }
}

impl TryFrom<Bytes> for B3Digest {
    type Error = DigestLenError;

    fn try_from(value: Bytes) -> Result<Self, Self::Error> {
        Self::try_from(value.as_ref())
    }
}

impl From<B3Digest> for Bytes {
    fn from(value: B3Digest) -> Self {
        value.to_bytes()
    }
}

impl AsRef<[u8]> for B3Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{self}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_is_blake3_of_nothing() {
        // b3sum of an empty file
        assert_eq!(
            B3Digest::of(b"").to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn wrong_lengths_are_rejected_with_their_length() {
        assert_eq!(B3Digest::try_from(&[0u8; 31][..]), Err(DigestLenError(31)));
        assert_eq!(B3Digest::try_from(&[0u8; 33][..]), Err(DigestLenError(33)));
        assert_eq!(B3Digest::try_from(Bytes::new()), Err(DigestLenError(0)));
        assert_eq!(
            B3Digest::try_from(&[7u8; 32][..]).map(|d| *d.as_bytes()),
            Ok([7u8; 32])
        );
    }
}
