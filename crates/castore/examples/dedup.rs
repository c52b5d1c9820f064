//! Dedup measurement: stores a file (default 256 MiB), changes 1 KiB in its middle,
//! stores it again, and prints how many bytes the second version added to the data
//! directory. Usage: `dedup [DATADIR] [MiB]` (DATADIR must not exist or be empty).
#![allow(missing_docs)]

use cairn_castore::embedded::EmbeddedStore;
use tokio::io::AsyncWriteExt;

include!("common/gen.rs");

async fn store_file(
    store: &EmbeddedStore,
    g: &Gen,
    len: u64,
    edit_at: Option<u64>,
) -> anyhow::Result<[u8; 32]> {
    let mut w = store.blob_writer();
    let mut buf = vec![0u8; BLOCK];
    for i in 0..len / BLOCK as u64 {
        g.block(7, i, &mut buf);
        if let Some(at) = edit_at {
            let start = i * BLOCK as u64;
            if (start..start + BLOCK as u64).contains(&at) {
                let o = (at - start) as usize;
                for b in &mut buf[o..o + 1024] {
                    *b = !*b;
                }
            }
        }
        w.write_all(&buf).await?;
    }
    Ok(w.close().await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    let mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let len = mib << 20;
    let g = Gen::new();
    let store = EmbeddedStore::open(&dir)?;
    let d1 = store_file(&store, &g, len, None).await?;
    let (all1, packs1) = (tree_bytes(&dir), tree_bytes(&dir.join("packs")));
    // 1 KiB at an odd offset near the middle, so it straddles no block boundary by luck.
    let d2 = store_file(&store, &g, len, Some(len / 2 + 12_345)).await?;
    let (all2, packs2) = (tree_bytes(&dir), tree_bytes(&dir.join("packs")));
    let chunks = store.blob_chunks(&d2)?.unwrap_or_default().len();
    println!(
        "file: {mib} MiB, {chunks} chunks; v1 {} v2 {}",
        hex(&d1),
        hex(&d2)
    );
    println!("after v1: data dir {all1} bytes (packs {packs1})");
    println!("after v2: data dir {all2} bytes (packs {packs2})");
    println!(
        "extra bytes for v2: data dir {} (packs {}, index {})",
        all2 - all1,
        packs2 - packs1,
        (all2 - packs2) as i64 - (all1 - packs1) as i64
    );
    Ok(())
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
