//! Measures blob import into S3 + PostgreSQL (`S3BlobService`) against the
//! embedded store, through the `BlobService` trait as a daemon uses it: many small
//! blobs written concurrently (512 in flight, as `cairn import` keeps many small
//! files in flight), one large blob written and read back cold (from S3), and a
//! 32 MiB blob read hot (from the S3 service's in-memory cache of checked chunks,
//! 64 MiB by default; the embedded store's hot read is from the page cache).
//! Prints the times, their ratios, and the S3 requests made per small blob.
//!
//! `cargo run --release -p cairn-castore --example s3_blobs [SMALL_BLOBS] [LARGE_MIB]`
//! (default 100,000 and 1024). The S3 server is the test fixture's s3s-fs (on
//! loopback, storing in a temporary directory), PostgreSQL the fixture's server
//! (fsync off); the embedded store fsyncs, so on a disk with slow fsync it pays
//! for durability that the fixtures skip.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_castore::blobservice::S3BlobService;
use cairn_castore::embedded::EmbeddedStore;
use cairn_castore::{B3Digest, BlobService};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

include!("common/gen.rs");

/// Small blobs written at once.
const IN_FLIGHT: usize = 512;
/// Size of the blob read hot: fits the S3 service's default cache.
const HOT_MIB: u64 = 32;

struct Times {
    small: Duration,
    large: Duration,
    cold: Duration,
    hot: Duration,
}

/// Small blob `i`: 100 B to 8 KiB, partly compressible.
fn small(g: &Gen, i: u64) -> Vec<u8> {
    let len = 100 + (i.wrapping_mul(2_654_435_761) % 8000) as usize;
    let mut b = vec![0u8; len];
    g.block(i, 0, &mut b);
    b
}

async fn write_large(blobs: &dyn BlobService, g: &Gen, seed: u64, mib: u64) -> B3Digest {
    let mut w = blobs.open_write().await;
    let mut block = vec![0u8; BLOCK];
    for i in 0..mib * 16 {
        g.block(seed, i, &mut block);
        w.write_all(&block).await.unwrap();
    }
    w.close().await.unwrap()
}

async fn read_through(blobs: &dyn BlobService, d: &B3Digest) -> u64 {
    let r = blobs.open_read(d).await.unwrap().unwrap();
    let mut r = tokio::io::BufReader::with_capacity(256 << 10, r);
    tokio::io::copy_buf(&mut r, &mut tokio::io::sink())
        .await
        .unwrap()
}

async fn measure(
    label: &str,
    blobs: &dyn BlobService,
    g: &Gen,
    n: u64,
    mib: u64,
    clear: &dyn Fn(),
) -> Times {
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| async move {
            let mut w = blobs.open_write().await;
            w.write_all(&small(g, i)).await?;
            w.close().await
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await
        .unwrap();
    let small = t.elapsed();

    let t = Instant::now();
    let d = write_large(blobs, g, u64::MAX, mib).await;
    let large = t.elapsed();

    clear();
    let t = Instant::now();
    assert_eq!(read_through(blobs, &d).await, mib << 20);
    let cold = t.elapsed();
    let medium = write_large(blobs, g, u64::MAX - 1, HOT_MIB).await;
    read_through(blobs, &medium).await;
    let t = Instant::now();
    assert_eq!(read_through(blobs, &medium).await, HOT_MIB << 20);
    let hot = t.elapsed();

    let rate = |m: u64, d: Duration| (m as f64) / d.as_secs_f64();
    println!(
        "{label:<9} {n} small {:>7.2} s ({:>6.0}/s)  {mib} MiB write {:>6.2} s ({:>5.0} MiB/s)  read cold {:>5.0} MiB/s  {HOT_MIB} MiB hot {:>5.0} MiB/s",
        small.as_secs_f64(),
        n as f64 / small.as_secs_f64(),
        large.as_secs_f64(),
        rate(mib, large),
        rate(mib, cold),
        rate(HOT_MIB, hot),
    );
    Times {
        small,
        large,
        cold,
        hot,
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse().expect("SMALL_BLOBS is a number"))
        .unwrap_or(100_000);
    let mib: u64 = args
        .next()
        .map(|a| a.parse().expect("LARGE_MIB is a number"))
        .unwrap_or(1024);
    let g = Gen::new();

    let tmp = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(tmp.path()).unwrap();
    // The embedded store keeps no cache of its own: its hot read is the page cache.
    let e = measure("embedded", &embedded, &g, n, mib, &|| {}).await;
    drop(embedded);

    let index = cairn_testkit::postgres::server().database();
    let url = cairn_testkit::s3::server().blob_url(&index);
    let s3 = S3BlobService::from_url(&url).unwrap();
    let before = s3.stats();
    let clear = || s3.clear_cache();
    let s = measure("s3+pg", &s3, &g, n, mib, &clear).await;
    let st = s3.stats();

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "s3+pg/embedded time: small {:.2}x  large write {:.2}x  read cold {:.2}x  read hot {:.2}x",
        ratio(s.small, e.small),
        ratio(s.large, e.large),
        ratio(s.cold, e.cold),
        ratio(s.hot, e.hot),
    );
    println!(
        "S3 requests: {} in all ({} PUT, {} multipart uploads of {} parts, {} GET); \
         {:.4} PUT per small blob; {} group commits",
        st.requests() - before.requests(),
        st.puts,
        st.multipart_uploads,
        st.parts,
        st.gets,
        // The large blob goes by multipart: every PUT is the small blobs'.
        st.puts as f64 / n as f64,
        st.group_commits,
    );
}
