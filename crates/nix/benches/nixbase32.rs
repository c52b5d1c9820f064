//! Throughput of nixbase32, hash parsing and store path parsing: these run for every
//! narinfo line and store path a cache serves.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use cairn_nix::hash::NixHash;
use cairn_nix::nixbase32;
use cairn_nix::store_path::StorePath;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let encoded = nixbase32::encode(&data);

    let mut g = c.benchmark_group("nixbase32");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("encode 64KiB", |b| {
        b.iter(|| nixbase32::encode(black_box(&data)))
    });
    g.bench_function("decode 64KiB", |b| {
        b.iter(|| nixbase32::decode(black_box(&encoded)).unwrap())
    });
    g.finish();

    let digest: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
    let mut g = c.benchmark_group("small");
    g.bench_function("encode sha256 digest", |b| {
        b.iter(|| nixbase32::encode(black_box(&digest)))
    });
    let h = NixHash::Sha256(digest).to_nix32_prefixed();
    g.bench_function("parse sha256:nix32", |b| {
        b.iter(|| NixHash::parse_any_prefixed(black_box(&h)).unwrap())
    });
    let p = "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432";
    g.bench_function("parse absolute store path", |b| {
        b.iter(|| StorePath::parse_absolute(black_box(p)).unwrap())
    });
    let sp = StorePath::parse_absolute(p).unwrap();
    g.bench_function("print absolute store path", |b| {
        b.iter(|| black_box(&sp).to_absolute())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
