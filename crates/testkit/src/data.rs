//! Reproducible pseudo-random bytes.

/// `len` bytes of xorshift64 output from `seed` (spread by the golden ratio and made
/// odd, as xorshift never leaves 0): they do not repeat, so content-defined
/// chunking cuts them into many chunks, and zstd cannot shrink them.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_reproducible_and_seeded() {
        assert_eq!(pseudo_random(1000, 7), pseudo_random(1000, 7));
        assert_ne!(pseudo_random(1000, 7), pseudo_random(1000, 8));
        assert_ne!(pseudo_random(1000, 0), pseudo_random(1000, 1));
        // No short period: every byte value shows up in 64 KiB.
        let mut seen = [false; 256];
        for b in pseudo_random(64 << 10, 0) {
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
