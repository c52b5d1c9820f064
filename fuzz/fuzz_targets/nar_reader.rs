//! Strict NAR reader on arbitrary bytes: it must never panic, and whatever it
//! accepts must write back byte-identically (the reader accepts only canonical
//! NARs). Reads through small chunks too, so every buffer boundary is hit.
#![no_main]

use std::io::Read;

use cairn_nix::nar::{self, Limits, Reader, Writer};

/// Hands out at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.chunk).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn rewrite(r: impl Read) -> Result<Vec<u8>, nar::Error> {
    // Small limits so that deep and long inputs are reachable by the fuzzer.
    let limits = Limits {
        max_depth: 8,
        max_name_len: 64,
        max_target_len: 64,
    };
    let mut w = Writer::new(Vec::new());
    nar::copy(&mut Reader::with_limits(r, limits), &mut w)?;
    w.finish()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let whole = rewrite(data);
    if let Ok(out) = &whole {
        assert_eq!(out.as_slice(), data, "accepted NAR did not round-trip");
    }
    let chunk = data.first().map_or(1, |b| (*b as usize % 17) + 1);
    let chunked = rewrite(Chunked { data, chunk });
    match (&whole, &chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "error depends on chunking"),
        _ => panic!("chunked read disagrees: {whole:?} vs {chunked:?}"),
    }
});
