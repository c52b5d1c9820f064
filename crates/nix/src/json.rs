//! JSON strings as Nix 2.8's JSON writer prints them (`nix nar ls --json`, `.ls`
//! listings, `nix path-info --json`, `nix store ls --json`).

/// Appends `s` quoted: `"` and `\` backslashed, `\n`, `\r`, `\t`, other bytes below
/// 0x20 as `\u00XX`, and every other byte as is. Nix does not re-encode, so a
/// non-UTF-8 file name gives non-UTF-8 output, and so does this.
pub fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::push_string;

    #[test]
    fn escapes_as_nix() {
        let mut out = Vec::new();
        push_string(&mut out, b"a\"b\\c\nd\re\tf\x01\x1f\x7f\xff");
        assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\re\\tf\\u0001\\u001f\x7f\xff\"");
    }
}
