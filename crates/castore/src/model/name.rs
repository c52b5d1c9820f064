//! [`PathComponent`] (a directory entry's name) and [`SymlinkTarget`].

use std::fmt;

use bytes::Bytes;

/// Longest name allowed for a directory entry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target allowed, in bytes.
pub const MAX_TARGET_LEN: usize = 4095;

/// Why a byte string is not a valid [`PathComponent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Zero bytes long.
    #[error("name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("name is {0} bytes long, at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// `.` or `..`.
    #[error("name {0:?} is reserved")]
    Reserved(&'static str),
    /// Contains `/` at this byte offset.
    #[error("name contains '/' at byte {0}")]
    Slash(usize),
    /// Contains NUL at this byte offset.
    #[error("name contains NUL at byte {0}")]
    Nul(usize),
}

/// Why a byte string is not a valid [`SymlinkTarget`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Zero bytes long.
    #[error("symlink target is empty")]
    Empty,
    /// Longer than [`MAX_TARGET_LEN`].
    #[error("symlink target is {0} bytes long, at most {MAX_TARGET_LEN} are allowed")]
    TooLong(usize),
    /// Contains NUL at this byte offset.
    #[error("symlink target contains NUL at byte {0}")]
    Nul(usize),
}

/// The name of an entry in a [`crate::Directory`]: 1..=255 bytes, not `.` or `..`,
/// without `/` or NUL. Ordered bytewise, as the entries of a directory are.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathComponent(Bytes);

impl PathComponent {
    /// Checks the rules on `name` without copying it.
    pub fn validate(name: &[u8]) -> Result<(), NameError> {
        match name {
            [] => return Err(NameError::Empty),
            b"." => return Err(NameError::Reserved(".")),
            b".." => return Err(NameError::Reserved("..")),
            _ => {}
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        for (i, &b) in name.iter().enumerate() {
            match b {
                b'/' => return Err(NameError::Slash(i)),
                0 => return Err(NameError::Nul(i)),
                _ => {}
            }
        }
        Ok(())
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<Bytes> for PathComponent {
    type Error = NameError;

    fn try_from(value: Bytes) -> Result<Self, Self::Error> {
        Self::validate(&value)?;
        Ok(Self(value))
    }
}

impl TryFrom<&[u8]> for PathComponent {
    type Error = NameError;

    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        Self::validate(value)?;
        Ok(Self(Bytes::copy_from_slice(value)))
    }
}

impl TryFrom<&str> for PathComponent {
    type Error = NameError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::try_from(value.as_bytes())
    }
}

impl From<PathComponent> for Bytes {
    fn from(value: PathComponent) -> Self {
        value.0
    }
}

impl AsRef<[u8]> for PathComponent {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl fmt::Debug for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// The target of a symlink: 1..=4095 bytes without NUL. Any other byte is allowed
/// (targets are opaque; they may be absolute or contain `..`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SymlinkTarget(Bytes);

impl SymlinkTarget {
    /// Checks the rules on `target` without copying it.
    pub fn validate(target: &[u8]) -> Result<(), TargetError> {
        if target.is_empty() {
            return Err(TargetError::Empty);
        }
        if target.len() > MAX_TARGET_LEN {
            return Err(TargetError::TooLong(target.len()));
        }
        if let Some(i) = target.iter().position(|&b| b == 0) {
            return Err(TargetError::Nul(i));
        }
        Ok(())
    }

    /// The target's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<Bytes> for SymlinkTarget {
    type Error = TargetError;

    fn try_from(value: Bytes) -> Result<Self, Self::Error> {
        Self::validate(&value)?;
        Ok(Self(value))
    }
}

impl TryFrom<&[u8]> for SymlinkTarget {
    type Error = TargetError;

    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        Self::validate(value)?;
        Ok(Self(Bytes::copy_from_slice(value)))
    }
}

impl TryFrom<&str> for SymlinkTarget {
    type Error = TargetError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::try_from(value.as_bytes())
    }
}

impl From<SymlinkTarget> for Bytes {
    fn from(value: SymlinkTarget) -> Self {
        value.0
    }
}

impl AsRef<[u8]> for SymlinkTarget {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for SymlinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl fmt::Debug for SymlinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(PathComponent::try_from("a").is_ok());
        assert!(PathComponent::try_from("...").is_ok());
        assert!(PathComponent::try_from(&[b'x'; 255][..]).is_ok());
        assert!(PathComponent::try_from(&[0xff, 0xfe][..]).is_ok());
        assert_eq!(PathComponent::try_from(""), Err(NameError::Empty));
        assert_eq!(PathComponent::try_from("."), Err(NameError::Reserved(".")));
        assert_eq!(
            PathComponent::try_from(".."),
            Err(NameError::Reserved(".."))
        );
        assert_eq!(PathComponent::try_from("a/b"), Err(NameError::Slash(1)));
        assert_eq!(PathComponent::try_from("ab\0"), Err(NameError::Nul(2)));
        assert_eq!(
            PathComponent::try_from(&[b'x'; 256][..]),
            Err(NameError::TooLong(256))
        );
    }

    #[test]
    fn targets() {
        assert!(SymlinkTarget::try_from("../a/./b").is_ok());
        assert!(SymlinkTarget::try_from("/").is_ok());
        assert!(SymlinkTarget::try_from(&[b'x'; 4095][..]).is_ok());
        assert_eq!(SymlinkTarget::try_from(""), Err(TargetError::Empty));
        assert_eq!(SymlinkTarget::try_from("a\0"), Err(TargetError::Nul(1)));
        assert_eq!(
            SymlinkTarget::try_from(&[b'x'; 4096][..]),
            Err(TargetError::TooLong(4096))
        );
    }

    #[test]
    fn names_order_bytewise() {
        let mut names: Vec<PathComponent> = ["b", "B", "a", "aa", "\u{e9}"]
            .into_iter()
            .map(|n| PathComponent::try_from(n).unwrap())
            .collect();
        names.sort();
        let got: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        assert_eq!(got, vec![&b"B"[..], b"a", b"aa", b"b", "\u{e9}".as_bytes()]);
    }
}
