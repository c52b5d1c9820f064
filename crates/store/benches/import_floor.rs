//! The least work any import of a new large file has to do, one primitive at a
//! time, single-threaded, on 256 MiB of incompressible bytes in memory
//! (`CAIRN_BENCH_FLOOR_MIB` to change): the NAR's sha256 (the store path and
//! NarHash, as Nix computes it), one BLAKE3 pass (the blob digest; the chunk
//! digests are a second pass over the same bytes, with a different tree), FastCDC
//! with the embedded store's parameters (docs/FORMATS.md: 16/64/256 KiB), and a
//! plain copy for scale. Summed per GiB they bound `cairn import` from below;
//! `nix-store --add` does only the sha256 and the copies, which is why a 2x lead
//! over it on one large file is out of reach on 2 cores (see bench/store.sh).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::Digest;

fn floor(c: &mut Criterion) {
    let mib: usize = std::env::var("CAIRN_BENCH_FLOOR_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let data = cairn_testkit::data::pseudo_random(mib << 20, 11);
    let mut g = c.benchmark_group("import_floor");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("sha256", |b| {
        b.iter(|| sha2::Sha256::digest(&data));
    });
    g.bench_function("blake3", |b| {
        b.iter(|| blake3::hash(&data));
    });
    g.bench_function("fastcdc", |b| {
        b.iter(|| fastcdc::v2020::FastCDC::new(&data, 16 * 1024, 64 * 1024, 256 * 1024).count());
    });
    let mut out = vec![0u8; data.len()];
    g.bench_function("copy", |b| {
        b.iter(|| out.copy_from_slice(&data));
    });
    g.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
