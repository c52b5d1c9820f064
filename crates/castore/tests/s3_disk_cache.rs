//! The S3 blob service's local disk cache (`disk_cache=DIR`), against the real
//! S3 server and PostgreSQL of the test kit: a chunk read once is read from
//! disk afterwards (no GET), also by a new service on the same directory (a
//! restarted daemon), and a damaged cache file is a miss that goes back to S3,
//! never wrong bytes.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use cairn_castore::blobservice::S3BlobService;
use cairn_castore::{B3Digest, BlobService};
use cairn_testkit::data::pseudo_random;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn put(s: &S3BlobService, data: &[u8]) -> B3Digest {
    let mut w = s.open_write().await;
    w.write_all(data).await.unwrap();
    w.close().await.unwrap()
}

async fn read_all(s: &S3BlobService, d: &B3Digest) -> Vec<u8> {
    let mut r = s.open_read(d).await.unwrap().expect("stored");
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Bytes of the files under `dir`.
fn bytes(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

/// The background writes of the cache are done once its files hold `want`
/// bytes of chunks.
async fn settled(dir: &Path, want: u64) {
    for _ in 0..100 {
        if bytes(dir) >= want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "the disk cache holds {} bytes, expected {want} at least",
        bytes(dir)
    );
}

#[tokio::test]
async fn chunks_read_once_come_from_disk_then_and_damage_goes_back_to_s3() {
    let index = cairn_testkit::postgres::server().database();
    let cache = tempfile::tempdir().unwrap();
    // No memory cache: every hit below is the disk's.
    let url = format!(
        "{}&cache_size=0&disk_cache={}",
        cairn_testkit::s3::server().blob_url(&index),
        cache.path().display()
    );
    let big = pseudo_random(3 << 20, 41);
    let small = pseudo_random(3000, 42);
    let s = S3BlobService::from_url(&url).unwrap();
    let (big_d, small_d) = (put(&s, &big).await, put(&s, &small).await);
    let chunks = s.chunks(&big_d).await.unwrap().unwrap().len();
    assert!(chunks > 10, "{chunks} chunks");

    // Cold: from S3, and into the disk cache.
    assert!(read_all(&s, &big_d).await == big);
    assert!(read_all(&s, &small_d).await == small);
    let cold = s.stats();
    assert!(cold.gets > 0, "{cold:?}");
    assert_eq!(cold.disk_hits, 0, "{cold:?}");
    settled(cache.path(), (big.len() + small.len()) as u64).await;

    // Hot: no GET.
    assert!(read_all(&s, &big_d).await == big);
    assert!(read_all(&s, &small_d).await == small);
    let hot = s.stats();
    assert_eq!(hot.gets, cold.gets, "{hot:?}");
    assert_eq!(hot.disk_hits, chunks as u64 + 1, "{hot:?}");

    // A new service on the same directory (a restarted daemon) finds it warm.
    drop(s);
    let s = S3BlobService::from_url(&url).unwrap();
    assert!(read_all(&s, &big_d).await == big);
    let warm = s.stats();
    assert_eq!(warm.gets, 0, "{warm:?}");
    assert_eq!(warm.disk_hits, chunks as u64, "{warm:?}");

    // Every cached chunk damaged (a byte in every 1000; the smallest chunk
    // has 3000): the right bytes still, from S3.
    for f in files(cache.path()) {
        let mut bytes = std::fs::read(&f).unwrap();
        for b in bytes.iter_mut().step_by(1000) {
            *b ^= 1;
        }
        std::fs::write(&f, bytes).unwrap();
    }
    assert!(read_all(&s, &big_d).await == big);
    assert!(read_all(&s, &small_d).await == small);
    let after = s.stats();
    assert!(after.gets > warm.gets, "{after:?}");
}

/// The first writes of a fresh store run while it migrates its tables: with
/// every pooled connection held by writers waiting for the migration, the
/// migration could not get one (the import of a tree starts thousands of writes
/// at once), and all of them failed after the pool's timeout.
#[tokio::test]
async fn a_fresh_store_takes_many_concurrent_writes_with_a_small_pool() {
    let index = format!(
        "{}?pool_size=2",
        cairn_testkit::postgres::server().database()
    );
    let s = S3BlobService::from_url(&cairn_testkit::s3::server().blob_url(&index)).unwrap();
    let start = std::time::Instant::now();
    let blobs: Vec<Vec<u8>> = (0..64u64).map(|i| pseudo_random(1000, i)).collect();
    // As `cairn import` does: is it stored already? Then the writes.
    let asked = blobs.iter().map(|b| {
        let s = &s;
        async move { s.has(&B3Digest::from(*blake3::hash(b).as_bytes())).await }
    });
    for stored in futures::future::join_all(asked).await {
        assert!(!stored.unwrap());
    }
    let digests = futures::future::join_all(blobs.iter().map(|b| put(&s, b))).await;
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    for (d, b) in digests.iter().zip(&blobs) {
        assert!(read_all(&s, d).await == *b);
    }
}
