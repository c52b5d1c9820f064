//! NAR write and read throughput, in memory: one large file (256 MiB) and many
//! small files (10k x 1 KiB). `cargo bench -p cairn-nix --bench nar`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{self, Read};

use cairn_nix::nar::{Event, Reader, Writer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LARGE: usize = 256 << 20;
const SMALL_COUNT: usize = 10_000;
const SMALL_SIZE: usize = 1024;

fn large_nar(data: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(data.len() + 256));
    w.file(false, data.len() as u64, &mut &data[..]).unwrap();
    w.finish().unwrap()
}

fn small_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = (0..SMALL_COUNT)
        .map(|i| format!("file-{i:05}").into_bytes())
        .collect();
    names.sort();
    names
}

fn write_small<W: io::Write>(w: W, names: &[Vec<u8>], data: &[u8]) -> W {
    let mut w = Writer::new(w);
    w.directory().unwrap();
    for name in names {
        w.entry(name).unwrap();
        w.file(false, data.len() as u64, &mut &data[..]).unwrap();
    }
    w.end_directory().unwrap();
    w.finish().unwrap()
}

/// Reads every event and every content byte, as an ingest would.
fn read_all(nar: &[u8], buf: &mut [u8]) -> u64 {
    let mut r = Reader::new(nar);
    let mut total = 0;
    while let Some(ev) = r.next().unwrap() {
        if let Event::File { mut contents, .. } = ev {
            loop {
                let n = contents.read(buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
    }
    total
}

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..LARGE).map(|i| (i * 7) as u8).collect();
    let nar = large_nar(&data);
    let mut buf = vec![0u8; 256 * 1024];

    let mut g = c.benchmark_group("nar_large_file_256MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(nar.len() as u64));
    g.bench_function("write", |b| {
        b.iter(|| {
            let mut w = Writer::new(io::sink());
            w.file(false, data.len() as u64, &mut &data[..]).unwrap();
            w.finish().unwrap();
        })
    });
    g.bench_function("read", |b| b.iter(|| read_all(&nar, &mut buf)));
    g.finish();
    drop(nar);
    drop(data);

    let names = small_names();
    let small: Vec<u8> = (0..SMALL_SIZE).map(|i| i as u8).collect();
    let nar = write_small(Vec::new(), &names, &small);
    let mut g = c.benchmark_group("nar_10k_files_1KiB");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(nar.len() as u64));
    g.bench_function("write", |b| {
        b.iter(|| write_small(io::sink(), &names, &small))
    });
    g.bench_function("read", |b| b.iter(|| read_all(&nar, &mut buf)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
