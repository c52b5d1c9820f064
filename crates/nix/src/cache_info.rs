//! `nix-cache-info`, the file at the root of a binary cache.
//!
//! ```text
//! StoreDir: /nix/store
//! WantMassQuery: 1
//! Priority: 40
//! ```
//!
//! Nix writes only `StoreDir` when it creates a cache (`nix copy --to file://...`);
//! cache.nixos.org adds the other two. [`CacheInfo`]'s [`Display`](fmt::Display)
//! writes the fields present in this order, each `Key: value\n`.
//!
//! Reading follows Nix 2.8 (`BinaryCacheStore::init`): lines split at the first `:`,
//! values trimmed of spaces, tabs and `\r`, empty lines and unknown keys ignored, the
//! last line may lack its newline. Stricter than Nix: a non-empty line without `:`, a
//! repeated field, a `WantMassQuery` other than `0`/`1` (Nix reads anything but `1`
//! as false) and a `Priority` that is not an integer are errors naming the line.

use std::fmt;
use std::str::FromStr;

/// Why a `nix-cache-info` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheInfoError {
    /// A non-empty line has no `:`.
    #[error("nix-cache-info line {line}: expected `Key: value`, found {text:?}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// The start of the line (at most 80 bytes).
        text: String,
    },
    /// A field appears twice.
    #[error("nix-cache-info line {line}: duplicate {field}")]
    Duplicate {
        /// 1-based line number of the repetition.
        line: usize,
        /// The field.
        field: &'static str,
    },
    /// A value is not valid for its field.
    #[error("nix-cache-info line {line}: invalid {field} {value:?}: {reason}")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
        /// The field.
        field: &'static str,
        /// The value (at most 80 bytes).
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
}

/// A binary cache's `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheInfo {
    /// `StoreDir`: the store the cache's paths belong to (Nix refuses a cache whose
    /// store dir differs from its own). Absolute, no control characters, no
    /// trailing whitespace.
    store_dir: Option<String>,
    /// `WantMassQuery`: whether clients may query many paths at once.
    pub want_mass_query: Option<bool>,
    /// `Priority`: lower is preferred among substituters (cache.nixos.org: 40).
    pub priority: Option<i32>,
}

fn excerpt(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn check_store_dir(s: &str) -> Result<(), &'static str> {
    if !s.starts_with('/') {
        return Err("expected an absolute path");
    }
    if s.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    // Values are read trimmed, so such a store dir could not be read back.
    if s.ends_with([' ', '\t']) {
        return Err("ends with whitespace");
    }
    Ok(())
}

impl CacheInfo {
    /// A cache info with only `StoreDir`, as `nix copy` writes it; `None` if
    /// `store_dir` is not absolute, has control characters or trailing whitespace.
    pub fn new(store_dir: &str) -> Option<Self> {
        check_store_dir(store_dir).ok()?;
        Some(Self {
            store_dir: Some(store_dir.to_owned()),
            want_mass_query: None,
            priority: None,
        })
    }

    /// `StoreDir`, if present.
    pub fn store_dir(&self) -> Option<&str> {
        self.store_dir.as_deref()
    }

    /// Parses a `nix-cache-info` file's contents.
    pub fn parse(s: &str) -> Result<Self, CacheInfoError> {
        let mut info = Self::default();
        for (i, text) in s.split('\n').enumerate() {
            let line = i + 1;
            if text.is_empty() {
                continue;
            }
            let (key, value) =
                text.split_once(':')
                    .ok_or_else(|| CacheInfoError::MalformedLine {
                        line,
                        text: excerpt(text),
                    })?;
            let value = value.trim_matches([' ', '\t', '\r']);
            let invalid = |field, reason| CacheInfoError::InvalidValue {
                line,
                field,
                value: excerpt(value),
                reason,
            };
            let duplicate = |field| CacheInfoError::Duplicate { line, field };
            match key {
                "StoreDir" => {
                    check_store_dir(value).map_err(|r| invalid("StoreDir", r))?;
                    if info.store_dir.replace(value.to_owned()).is_some() {
                        return Err(duplicate("StoreDir"));
                    }
                }
                "WantMassQuery" => {
                    let v = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(invalid("WantMassQuery", "expected 0 or 1")),
                    };
                    if info.want_mass_query.replace(v).is_some() {
                        return Err(duplicate("WantMassQuery"));
                    }
                }
                "Priority" => {
                    let v = parse_int(value)
                        .ok_or_else(|| invalid("Priority", "expected a 32-bit integer"))?;
                    if info.priority.replace(v).is_some() {
                        return Err(duplicate("Priority"));
                    }
                }
                // Ignored as Nix does: other cache implementations add their own keys.
                _ => {}
            }
        }
        Ok(info)
    }
}

/// Decimal, optional `-`, no `+`, no leading zeros: what Nix's `std::to_string` makes.
fn parse_int(s: &str) -> Option<i32> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl FromStr for CacheInfo {
    type Err = CacheInfoError;
    fn from_str(s: &str) -> Result<Self, CacheInfoError> {
        Self::parse(s)
    }
}

impl fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.store_dir {
            writeln!(f, "StoreDir: {d}")?;
        }
        if let Some(w) = self.want_mass_query {
            writeln!(f, "WantMassQuery: {}", u8::from(w))?;
        }
        if let Some(p) = self.priority {
            writeln!(f, "Priority: {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nix_written_and_cache_nixos_org() {
        // What `nix copy --to file://` writes (see the narinfo fixtures).
        let nix = "StoreDir: /nix/store\n";
        let info = CacheInfo::parse(nix).unwrap();
        assert_eq!(info.store_dir(), Some("/nix/store"));
        assert_eq!(info.to_string(), nix);
        assert_eq!(CacheInfo::new("/nix/store").unwrap(), info);
        // What https://cache.nixos.org/nix-cache-info serves.
        let hydra = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
        let info = CacheInfo::parse(hydra).unwrap();
        assert_eq!(info.want_mass_query, Some(true));
        assert_eq!(info.priority, Some(40));
        assert_eq!(info.to_string(), hydra);
        // Nix's reading: trimmed values, no final newline, unknown keys.
        let loose = CacheInfo::parse("X-Other: yes\r\n\nPriority:  -3 \nWantMassQuery:0").unwrap();
        assert_eq!(loose.priority, Some(-3));
        assert_eq!(loose.want_mass_query, Some(false));
        assert_eq!(loose.store_dir(), None);
    }

    #[test]
    fn rejections() {
        let e = |s: &str| CacheInfo::parse(s).unwrap_err();
        assert_eq!(
            e("StoreDir: /nix/store\nnonsense\n"),
            CacheInfoError::MalformedLine {
                line: 2,
                text: "nonsense".into()
            }
        );
        assert_eq!(
            e("Priority: 1\nPriority: 2\n"),
            CacheInfoError::Duplicate {
                line: 2,
                field: "Priority"
            }
        );
        assert!(matches!(
            e("WantMassQuery: true\n"),
            CacheInfoError::InvalidValue {
                line: 1,
                field: "WantMassQuery",
                ..
            }
        ));
        for bad in ["", "+4", "04", "4x", "99999999999"] {
            assert!(matches!(
                e(&format!("Priority: {bad}\n")),
                CacheInfoError::InvalidValue {
                    field: "Priority",
                    ..
                }
            ));
        }
        assert!(matches!(
            e("StoreDir: nix/store\n"),
            CacheInfoError::InvalidValue {
                field: "StoreDir",
                ..
            }
        ));
        assert!(CacheInfo::new("relative").is_none());
        assert!(CacheInfo::new("/nix/store ").is_none());
    }
}
