//! [`redacted`]: backend URLs as they may be logged.
//!
//! Backend URLs can carry a password (`postgres://cairn:SECRET@db/cairn`), also
//! inside another URL's parameter, percent-encoded (an `s3://` URL's `index=`).
//! The daemon prints its URLs at start and errors name the URL that failed, and
//! both end up in logs that more people read than should know the password.

/// `url` with the password of every `scheme://user:password@host` in it, plain
/// or percent-encoded, replaced by `***`.
pub fn redacted(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    let mut cuts = Vec::new();
    let mut from = 0;
    while let Some((at, len)) = next_scheme_sep(&lower[from..]) {
        let start = from + at + len;
        let end = start + authority_len(&lower[start..]);
        if let Some(range) = password(&lower[start..end]) {
            cuts.push((start + range.0, start + range.1));
        }
        from = end.max(start);
    }
    let mut out = String::with_capacity(url.len());
    let mut last = 0;
    for (a, b) in cuts {
        out.push_str(&url[last..a]);
        out.push_str("***");
        last = b;
    }
    out.push_str(&url[last..]);
    out
}

/// Where the next `://` (or its encoding) is, and its length.
fn next_scheme_sep(s: &str) -> Option<(usize, usize)> {
    let plain = s.find("://").map(|i| (i, 3));
    let encoded = s.find("%3a%2f%2f").map(|i| (i, 9));
    match (plain, encoded) {
        (Some(p), Some(e)) => Some(if p.0 < e.0 { p } else { e }),
        (p, e) => p.or(e),
    }
}

/// Length of the authority at the start of `s`: up to a path, query, fragment
/// or the next parameter of an enclosing URL, plain or encoded.
fn authority_len(s: &str) -> usize {
    let ends = ['/', '?', '#', '&'];
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        if ends.contains(&char::from(b[i])) {
            return i;
        }
        if b[i] == b'%' {
            let code = s.get(i..i + 3).unwrap_or("");
            if matches!(code, "%2f" | "%3f" | "%23" | "%26") {
                return i;
            }
        }
        i += 1;
    }
    b.len()
}

/// The password's byte range within an authority `user:password@host`.
fn password(authority: &str) -> Option<(usize, usize)> {
    let at = match (authority.rfind('@'), authority.rfind("%40")) {
        (Some(a), Some(e)) => a.max(e),
        (a, e) => a.or(e)?,
    };
    let userinfo = &authority[..at];
    let (colon, len) = match (userinfo.find(':'), userinfo.find("%3a")) {
        (Some(c), Some(e)) if e < c => (e, 3),
        (Some(c), _) => (c, 1),
        (None, Some(e)) => (e, 3),
        (None, None) => return None,
    };
    Some((colon + len, at))
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        for (url, want) in [
            (
                "postgres://cairn:s3cret@db:5432/cairn",
                "postgres://cairn:***@db:5432/cairn",
            ),
            ("postgres://cairn@db/cairn", "postgres://cairn@db/cairn"),
            ("postgres://db/cairn?user=x", "postgres://db/cairn?user=x"),
            ("redb:///var/lib/cairn", "redb:///var/lib/cairn"),
            ("memory://", "memory://"),
            ("postgres://u:p@ss@h/d", "postgres://u:***@h/d"),
            (
                "s3://b/p?endpoint=http://127.0.0.1:9000&index=postgres://u:pw@h/d&region=x",
                "s3://b/p?endpoint=http://127.0.0.1:9000&index=postgres://u:***@h/d&region=x",
            ),
            (
                "s3://b/p?index=postgres%3A%2F%2Fu%3Apw%40h%2Fd&region=x",
                "s3://b/p?index=postgres%3A%2F%2Fu%3A***%40h%2Fd&region=x",
            ),
            (
                "s3://b/p?index=POSTGRES%3a%2f%2fU%3aPW%40H%2fD",
                "s3://b/p?index=POSTGRES%3a%2f%2fU%3a***%40H%2fD",
            ),
            ("grpc+http://[::1]:8000", "grpc+http://[::1]:8000"),
            ("", ""),
            ("://", "://"),
            ("x://:@", "x://:***@"),
        ] {
            assert_eq!(redacted(url), want, "{url}");
        }
    }
}
