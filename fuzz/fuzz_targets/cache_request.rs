//! The binary cache's own HTTP/1.1 request parsing (`cairn_cache::parse_request`,
//! httparse underneath: method, path, version, headers) and the URL hash part
//! parser behind narinfo, listing and NAR URLs: no panics on any bytes, and
//! what is taken as a narinfo request really is one.
#![no_main]

use cairn_cache::{RequestHead, parse_hash_part, parse_request};
use cairn_nix::nixbase32;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte picks whether the cache is private (and which token it
    // takes), the rest is what the client sent.
    let Some((&mode, buf)) = data.split_first() else {
        return;
    };
    let may_read = |auth: Option<&[u8]>| match mode % 3 {
        0 => true,
        1 => auth == Some(&b"Bearer token"[..]),
        _ => false,
    };
    let parsed = parse_request(buf, may_read);
    match &parsed {
        RequestHead::Narinfo { hash, head, len } => {
            let len = *len;
            assert!(len <= buf.len(), "head longer than the input");
            let request = &buf[..len];
            // The last header line ends in LF or CRLF, then the blank line.
            assert!(
                request.ends_with(b"\n\n") || request.ends_with(b"\n\r\n"),
                "head does not end with a blank line"
            );
            // Empty lines before the request line are skipped (RFC 9112 2.2).
            let start = request
                .iter()
                .position(|&c| c != b'\r' && c != b'\n')
                .unwrap_or(len);
            let method: &[u8] = if *head { b"HEAD /" } else { b"GET /" };
            assert!(request[start..].starts_with(method), "wrong method");
            assert!(
                hash.iter()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()),
                "hash part outside [0-9a-z]"
            );
            assert!(mode % 3 != 2, "a private cache answered without a token");
            // The answer depends on the head alone, not on what follows it.
            assert_eq!(parse_request(request, may_read), parsed);
            let hash = std::str::from_utf8(hash).expect("ASCII");
            check_hash_part(hash);
        }
        RequestHead::Partial => {
            // A shorter prefix of an incomplete head is incomplete too.
            let half = &buf[..buf.len() / 2];
            assert_eq!(parse_request(half, may_read), RequestHead::Partial);
        }
        RequestHead::Other => {}
    }
    if let Ok(text) = std::str::from_utf8(buf) {
        check_hash_part(text);
        // As the router sees a narinfo URL's file name.
        if let Some(hash) = text.strip_suffix(".narinfo") {
            check_hash_part(hash);
        }
    }
});

/// A hash part that parses is canonical nixbase32 of its digest.
fn check_hash_part(s: &str) {
    if let Some(digest) = parse_hash_part(s) {
        assert_eq!(nixbase32::encode(&digest), s, "hash part not canonical");
    }
}
