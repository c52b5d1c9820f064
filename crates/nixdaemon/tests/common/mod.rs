//! Byte builders shared by the protocol tests.
#![allow(dead_code)]

/// A `u64` as the protocol sends it.
pub fn u(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A padded string.
pub fn s(data: impl AsRef<[u8]>) -> Vec<u8> {
    let data = data.as_ref();
    let mut out = u(data.len() as u64);
    out.extend(data);
    out.resize(out.len() + (8 - data.len() % 8) % 8, 0);
    out
}

/// The NAR of a single regular file, as Nix writes it.
pub fn file_nar(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in ["nix-archive-1", "(", "type", "regular", "contents"] {
        out.extend(s(part));
    }
    out.extend(s(contents));
    out.extend(s(")"));
    out
}

/// A framed stream of `data` in frames of at most `frame` bytes.
pub fn framed(data: &[u8], frame: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(frame) {
        out.extend(u(chunk.len() as u64));
        out.extend(chunk);
    }
    out.extend(u(0));
    out
}
