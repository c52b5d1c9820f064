// Shared by the embedded store examples (included with `include!`): streams
// pseudo-random, partly compressible bytes (zstd saves ~10%) in 64 KiB blocks cut from an 8 MiB
// pool and stamped with (seed, block), so no block repeats and no blob is held whole.

const BLOCK: usize = 64 * 1024;

struct Gen {
    pool: Vec<u8>,
}

impl Gen {
    fn new() -> Self {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut pool = Vec::with_capacity(8 << 20);
        while pool.len() < 8 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(4) {
                pool.extend_from_slice(&x.to_le_bytes());
            } else {
                pool.push(b'a' + (x % 8) as u8);
            }
        }
        Gen { pool }
    }

    fn block(&self, seed: u64, i: u64, out: &mut [u8]) {
        let h = (seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let off = (h as usize) % (self.pool.len() - BLOCK);
        let n = out.len();
        out.copy_from_slice(&self.pool[off..off + n]);
        let stamp = [seed.to_le_bytes(), i.to_le_bytes()].concat();
        let k = stamp.len().min(n);
        out[..k].copy_from_slice(&stamp[..k]);
    }
}

/// Total size of the regular files under `p` (what `du -sb` counts, minus directories).
#[allow(dead_code)] // the criterion bench includes this file but measures no disk use
fn tree_bytes(p: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        n += if m.is_dir() { tree_bytes(&e.path()) } else { m.len() };
    }
    n
}
