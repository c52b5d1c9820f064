//! Imports directory trees into one embedded data directory, the way the store layer
//! will: every file as a blob, every directory as its canonical `tvix.castore.v1`
//! Directory encoding, the closure of a tree put in one all-or-nothing transaction.
//! Prints each tree's root digest. Usage: `import_tree DATADIR TREE...`
//! (bench/storage.sh).
//!
//! The Directory encoding is written out here (fields in number order, defaults
//! omitted) because the crate's model types had not landed when this measurement
//! was written; the bytes are the same, so the sizes measured are too.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cairn_castore::embedded::EmbeddedStore;
use tokio::io::AsyncWriteExt;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    if !b.is_empty() {
        varint(out, field << 3 | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

fn uint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        varint(out, field << 3);
        varint(out, v);
    }
}

enum Entry {
    Dir {
        digest: [u8; 32],
        size: u64,
    },
    File {
        digest: [u8; 32],
        size: u64,
        executable: bool,
    },
    Link {
        target: Vec<u8>,
    },
}

/// Canonical encoding: directories (1), files (2), symlinks (3), each sorted by name.
fn encode(entries: &[(Vec<u8>, Entry)]) -> Vec<u8> {
    let mut out = Vec::new();
    for list in 1..=3u64 {
        for (name, e) in entries {
            let mut m = Vec::new();
            let f = match e {
                Entry::Dir { digest, size } => {
                    bytes_field(&mut m, 1, name);
                    bytes_field(&mut m, 2, digest);
                    uint_field(&mut m, 3, *size);
                    1
                }
                Entry::File {
                    digest,
                    size,
                    executable,
                } => {
                    bytes_field(&mut m, 1, name);
                    bytes_field(&mut m, 2, digest);
                    uint_field(&mut m, 3, *size);
                    uint_field(&mut m, 4, u64::from(*executable));
                    2
                }
                Entry::Link { target } => {
                    bytes_field(&mut m, 1, name);
                    bytes_field(&mut m, 2, target);
                    3
                }
            };
            if f == list {
                varint(&mut out, list << 3 | 2);
                varint(&mut out, m.len() as u64);
                out.extend_from_slice(&m);
            }
        }
    }
    out
}

/// Imports `path`, pushing its directories to `out` leaves first.
async fn import(
    store: &EmbeddedStore,
    path: &Path,
    out: &mut Vec<([u8; 32], Vec<u8>)>,
) -> anyhow::Result<Entry> {
    let meta = tokio::fs::symlink_metadata(path).await?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        return Ok(Entry::Link {
            target: target.as_os_str().as_encoded_bytes().to_vec(),
        });
    }
    if meta.is_file() {
        let mut f = tokio::fs::File::open(path).await?;
        let mut w = store.blob_writer();
        let size = tokio::io::copy(&mut f, &mut w).await?;
        w.flush().await?;
        let digest = w.close().await?;
        return Ok(Entry::File {
            digest,
            size,
            executable: meta.permissions().mode() & 0o111 != 0,
        });
    }
    let mut names: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
    names.sort_by(|a, b| {
        a.file_name()
            .as_encoded_bytes()
            .cmp(b.file_name().as_encoded_bytes())
    });
    let mut entries = Vec::new();
    let mut size = 0u64;
    for e in names {
        let entry = Box::pin(import(store, &e.path(), out)).await?;
        size += 1 + if let Entry::Dir { size, .. } = entry {
            size
        } else {
            0
        };
        entries.push((e.file_name().as_encoded_bytes().to_vec(), entry));
    }
    let enc = encode(&entries);
    let digest = *blake3::hash(&enc).as_bytes();
    out.push((digest, enc));
    Ok(Entry::Dir { digest, size })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: import_tree DATADIR TREE..."))?;
    let store = EmbeddedStore::open(&data)?;
    for tree in args {
        let mut closure = Vec::new();
        let Entry::Dir { digest, .. } = import(&store, Path::new(&tree), &mut closure).await?
        else {
            anyhow::bail!("{tree} is not a directory");
        };
        store.put_directories(closure).await?;
        println!(
            "{tree}: {}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    if std::env::var_os("CAIRN_COMPACT").is_some() {
        store.close_and_compact()?;
    }
    Ok(())
}
