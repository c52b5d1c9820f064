//! Writes one blob of the given size (MiB) into a fresh embedded store and reads it
//! back in full, verified; run under `/usr/bin/time -v` to see that peak memory
//! does not grow with the blob's size (bench/embedded_rss.sh).
#![allow(missing_docs)]

use std::time::Instant;

use cairn_castore::embedded::EmbeddedStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

include!("common/gen.rs");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let len = mib << 20;
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let g = Gen::new();
    let t = Instant::now();
    let mut w = store.blob_writer();
    let mut buf = vec![0u8; BLOCK];
    for i in 0..len / BLOCK as u64 {
        g.block(3, i, &mut buf);
        w.write_all(&buf).await?;
    }
    let d = w.close().await?;
    let wt = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = store
        .open_blob(&d)?
        .ok_or_else(|| anyhow::anyhow!("blob missing"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    anyhow::ensure!(n == len, "read {n} of {len} bytes");
    let rt = t.elapsed().as_secs_f64();
    println!(
        "{mib} MiB: write {:.0} MB/s, read {:.0} MB/s, data dir {} bytes",
        len as f64 / wt / 1e6,
        len as f64 / rt / 1e6,
        tree_bytes(dir.path())
    );
    Ok(())
}
