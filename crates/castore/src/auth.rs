//! Credentials for writes and, where reads are private, for reads, over gRPC and
//! HTTP alike: a token sent as `authorization: Bearer <token>`, or as the
//! password of `Authorization: Basic` (what curl, and so Nix, sends from a netrc
//! `machine HOST login ANY password <token>` line).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tonic::codegen::http::HeaderMap;
use tonic::codegen::http::header::AUTHORIZATION;

/// A secret a request must present. Never printed: its `Debug` hides it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from the contents of a token file: surrounding whitespace (the
    /// final newline of an editor) is not part of it. `None` if nothing is left.
    pub fn new(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty()).then(|| Self(t.to_owned()))
    }

    /// `Bearer TOKEN`, as a header value marked sensitive; `None` if the token
    /// has bytes a header cannot hold.
    pub(crate) fn bearer(&self) -> Option<tonic::codegen::http::HeaderValue> {
        let mut value =
            tonic::codegen::http::HeaderValue::try_from(format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Whether `headers` carry this token.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        headers
            .get(AUTHORIZATION)
            .is_some_and(|v| self.check_authorization(v.as_bytes()))
    }

    /// Whether an `Authorization` header's value carries this token.
    pub fn check_authorization(&self, value: &[u8]) -> bool {
        let Ok(value) = std::str::from_utf8(value) else {
            return false;
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return ct_eq(rest.as_bytes(), self.0.as_bytes());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = BASE64.decode(rest) else {
                return false;
            };
            // The user name is not checked: netrc needs one, but only the password
            // is a secret.
            let Some(colon) = decoded.iter().position(|&b| b == b':') else {
                return false;
            };
            return ct_eq(&decoded[colon + 1..], self.0.as_bytes());
        }
        false
    }
}

/// Compares without an early exit, so that response times do not tell how much
/// of a guessed token was right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_basic() {
        let t = Token::new("s3cret\n").unwrap();
        assert!(t.check(&headers("Bearer s3cret")));
        assert!(t.check(&headers("bearer s3cret")));
        // `curl -u nix:s3cret`
        assert!(t.check(&headers("Basic bml4OnMzY3JldA==")));
        assert!(!t.check(&headers("Bearer s3cre")));
        assert!(!t.check(&headers("Bearer s3cret2")));
        // `nix:wrong`
        assert!(!t.check(&headers("Basic bml4Ondyb25n")));
        assert!(!t.check(&headers("Basic !!!")));
        assert!(!t.check(&headers("Token s3cret")));
        assert!(!t.check(&HeaderMap::new()));
        assert!(Token::new(" \n").is_none());
    }
}
