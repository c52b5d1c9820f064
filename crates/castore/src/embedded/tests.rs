//! Engine-level tests of the embedded store (the service traits are covered by the
//! crate's conformance suite).

use std::io::SeekFrom;

use redb::{ReadableDatabase, ReadableTableMetadata};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::*;

/// Deterministic bytes that compress somewhat (random words over a small alphabet
/// mixed with random bytes), so both the compressed and the raw path are taken.
pub(crate) fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.push(b'a' + (x % 8) as u8);
        }
    }
    out.truncate(len);
    out
}

pub(crate) async fn put(store: &EmbeddedStore, bytes: &[u8]) -> [u8; 32] {
    let mut w = store.blob_writer();
    // Odd-sized writes exercise the batch boundaries.
    for piece in bytes.chunks(100_003) {
        w.write_all(piece).await.unwrap();
    }
    w.close().await.unwrap()
}

async fn get(store: &EmbeddedStore, d: &[u8; 32]) -> std::io::Result<Vec<u8>> {
    let mut r = store.open_blob(d).unwrap().expect("blob present");
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

fn pack_bytes(store: &EmbeddedStore) -> u64 {
    std::fs::read_dir(store.dir().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Entries that make something readable: visible chunks and chunk lists.
fn blob_count(store: &EmbeddedStore) -> u64 {
    let r = store.inner.db.begin_read().unwrap();
    r.open_table(BLOBS).unwrap().len().unwrap() + r.open_table(CHUNKS).unwrap().len().unwrap()
}

/// Bytes written while a batch is processed join the next batch in order: the
/// blob, its chunks and their boundaries are the same whatever the writes'
/// sizes (FastCDC cuts only on full windows, so batch boundaries never show).
#[tokio::test]
async fn batches_written_while_one_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = data(77, (13 << 20) + 12_345);
    let mut whole = store.blob_writer();
    whole.write_all(&bytes).await.unwrap();
    let d = whole.close().await.unwrap();
    assert_eq!(&d, blake3::hash(&bytes).as_bytes());
    let reference = store.blob_chunks(&d).unwrap().unwrap();
    for piece in [1000usize, 8192, 65_537, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut w = store.blob_writer();
        for p in bytes.chunks(piece) {
            w.write_all(p).await.unwrap();
        }
        assert_eq!(w.close().await.unwrap(), d, "writes of {piece} bytes");
        assert_eq!(store.blob_chunks(&d).unwrap().unwrap(), reference);
        assert_eq!(get(&store, &d).await.unwrap(), bytes);
    }
}

#[tokio::test]
async fn roundtrip_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for (i, len) in [
        0usize,
        1,
        1000,
        16 * 1024 - 1,
        100_000,
        300_000,
        3 << 20,
        9 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = data(i as u64, len);
        let d = put(&store, &bytes).await;
        assert_eq!(&d, blake3::hash(&bytes).as_bytes(), "digest of {len} bytes");
        assert!(store.has_blob(&d).unwrap());
        assert_eq!(store.blob_size(&d).unwrap(), Some(len as u64));
        assert_eq!(
            get(&store, &d).await.unwrap(),
            bytes,
            "content of {len} bytes"
        );
        let chunks = store.blob_chunks(&d).unwrap().unwrap();
        if len > 256 * 1024 {
            assert!(chunks.len() >= 2, "{len} bytes in {} chunks", chunks.len());
        }
        if !chunks.is_empty() {
            assert_eq!(chunks.iter().map(|c| c.1).sum::<u64>(), len as u64);
            // Every chunk answers as a blob of its own, with the right bytes.
            let mut off = 0usize;
            for (c, s) in &chunks {
                assert!(store.has_blob(c).unwrap());
                assert_eq!(
                    get(&store, c).await.unwrap(),
                    &bytes[off..off + *s as usize]
                );
                off += *s as usize;
            }
        } else {
            assert!(
                len > 16 * 1024 || chunks.is_empty(),
                "{len} bytes is a single chunk"
            );
        }
    }
    assert!(!store.has_blob(&[7; 32]).unwrap());
    assert!(store.open_blob(&[7; 32]).unwrap().is_none());
    // Durable across reopen.
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = data(6, 3 << 20);
    assert_eq!(
        get(&store, blake3::hash(&bytes).as_bytes()).await.unwrap(),
        bytes
    );
}

/// Small objects go through the pack buffer, larger chunks are written directly:
/// many of both, written concurrently, read back exactly, before and after reopen.
#[tokio::test]
async fn buffered_small_and_direct_large_appends_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            // Mostly small blobs (buffered), every 30th a multi-chunk one.
            let bytes = match i % 30 {
                0 => data(i, 700_000),
                _ => random(i, 200 + (i as usize * 37) % 9000),
            };
            (put(&s, &bytes).await, bytes)
        }));
    }
    let mut blobs = Vec::new();
    for t in tasks {
        blobs.push(t.await.unwrap());
    }
    for (d, bytes) in &blobs {
        assert_eq!(&get(&store, d).await.unwrap(), bytes);
    }
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for (d, bytes) in &blobs {
        assert_eq!(&get(&store, d).await.unwrap(), bytes);
    }
}

#[tokio::test]
async fn same_content_stored_once_even_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = data(1, 5 << 20);
    put(&store, &bytes).await;
    let after_one = pack_bytes(&store);
    assert!(after_one > 0);
    put(&store, &bytes).await;
    assert_eq!(
        pack_bytes(&store),
        after_one,
        "second write of the same bytes stored nothing"
    );
    // Concurrent writers of new identical content: all succeed with the same digest.
    let bytes = std::sync::Arc::new(data(2, 3 << 20));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, b) = (store.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move { put(&s, &b).await }));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap(), blake3::hash(&bytes).as_bytes());
    }
    assert_eq!(
        get(&store, blake3::hash(&bytes).as_bytes()).await.unwrap(),
        *bytes
    );
}

#[tokio::test]
async fn dropped_writer_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = data(3, 20 << 20);
    {
        let mut w = store.blob_writer();
        w.write_all(&bytes).await.unwrap();
        w.flush().await.unwrap();
    }
    // Give any in-flight batch time to finish; it must still not publish anything.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(blob_count(&store), 0);
    assert!(!store.has_blob(blake3::hash(&bytes).as_bytes()).unwrap());
    assert!(
        pack_bytes(&store) > 0,
        "the writer's first batches were appended"
    );
    drop(store);
    // Reopening cuts the packs back to what commits refer to: nothing.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(blob_count(&store), 0);
    assert_eq!(pack_bytes(&store), 0);
    let d = put(&store, &bytes).await;
    assert_eq!(get(&store, &d).await.unwrap(), bytes);
    let chunks = store.blob_chunks(&d).unwrap().unwrap();
    assert!(chunks.len() > 2);
    for (c, _) in &chunks {
        assert!(store.has_blob(c).unwrap());
    }
}

/// Disk the packs take (allocated blocks, so holes do not count).
fn pack_disk(store: &EmbeddedStore) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(store.dir().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

/// Aborted uploads followed by a commit: their bytes lie below a committed
/// length, so truncation cannot drop them; the next start gives their space
/// back (holes), and every stored blob still reads back whole.
#[tokio::test]
async fn aborted_uploads_are_reclaimed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let before = put(&store, &data(20, 3 << 20)).await;
    for seed in 0..5 {
        let mut w = store.blob_writer();
        // Incompressible, so an aborted upload takes its size on disk.
        w.write_all(&cairn_testkit::data::pseudo_random(8 << 20, seed))
            .await
            .unwrap();
        w.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(w);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = put(&store, &data(21, 3 << 20)).await;
    let with_garbage = pack_disk(&store);
    assert!(with_garbage > 20 << 20, "{with_garbage}");
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let reclaimed = pack_disk(&store);
    assert!(
        reclaimed < 10 << 20,
        "{with_garbage} -> {reclaimed} bytes of packs"
    );
    assert_eq!(get(&store, &before).await.unwrap(), data(20, 3 << 20));
    assert_eq!(get(&store, &after).await.unwrap(), data(21, 3 << 20));
    drop(store);
    // Again: nothing more to give back, nothing lost.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(pack_disk(&store), reclaimed);
    assert_eq!(get(&store, &after).await.unwrap(), data(21, 3 << 20));
}

/// A chunk repeated within a blob is stored once (within two segments of each
/// other; the test's segments are short).
#[tokio::test]
async fn repeated_chunk_within_a_blob_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // Repeats at most 3 chunks apart: within the current or the previous segment.
    let block = random(3, 96 << 10);
    let mut bytes = Vec::new();
    for _ in 0..16 {
        bytes.extend_from_slice(&block);
    }
    let d = put(&store, &bytes).await;
    assert_eq!(get(&store, &d).await.unwrap(), bytes);
    let chunks = store.blob_chunks(&d).unwrap().unwrap();
    let distinct: std::collections::HashSet<_> = chunks.iter().map(|c| c.0).collect();
    assert!(distinct.len() < chunks.len(), "the chunks repeat");
    let stored: u64 = distinct
        .iter()
        .map(|c| chunks.iter().find(|x| x.0 == *c).unwrap().1)
        .sum();
    let Some(Layout::Segmented(segs)) = store.blob_layout(&d).unwrap() else {
        panic!("segmented");
    };
    let seg_bytes: u64 = segs.iter().map(|s| u64::from(s.loc.stored_len)).sum();
    // Random bytes are stored raw: exactly the distinct chunks and the segments.
    assert_eq!(pack_bytes(&store), stored + seg_bytes);
}

#[tokio::test]
async fn seek_reads_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = data(4, 3 << 20);
    let d = put(&store, &bytes).await;
    let mut r = store.open_blob(&d).unwrap().unwrap();
    assert_eq!(r.len(), bytes.len() as u64);
    for (start, len) in [
        (2_000_000usize, 10_000usize),
        (5, 5),
        (0, 300_000),
        (3_145_000, 1000),
        (1_000_000, 700_000),
    ] {
        let p = r.seek(SeekFrom::Start(start as u64)).await.unwrap();
        assert_eq!(p, start as u64);
        let end = (start + len).min(bytes.len());
        let mut out = vec![0u8; end - start];
        r.read_exact(&mut out).await.unwrap();
        assert_eq!(out, &bytes[start..end], "range {start}+{len}");
    }
    assert_eq!(
        r.seek(SeekFrom::End(-10)).await.unwrap(),
        bytes.len() as u64 - 10
    );
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, &bytes[bytes.len() - 10..]);
    assert!(
        r.seek(SeekFrom::Current(-(bytes.len() as i64) - 1))
            .await
            .is_err()
    );
}

/// Flips one byte in every pack at `offset_frac` of its length.
fn corrupt_packs(store: &EmbeddedStore, at: u64) {
    use std::os::unix::fs::FileExt;
    for e in std::fs::read_dir(store.dir().join("packs")).unwrap() {
        let path = e.unwrap().path();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = f.metadata().unwrap().len();
        if len == 0 {
            continue;
        }
        let at = at.min(len - 1);
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x55;
        f.write_all_at(&b, at).unwrap();
    }
}

#[tokio::test]
async fn corruption_is_an_error_not_wrong_data() {
    for (len, at) in [(1000usize, 10u64), (2 << 20, 700_000)] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let bytes = data(5, len);
        let d = put(&store, &bytes).await;
        corrupt_packs(&store, at);
        let err = get(&store, &d)
            .await
            .expect_err("corrupt pack must not read back");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("corrupt store"), "{err}");
    }
}

/// Damage no read has found yet: a write of content that matches a damaged
/// object (a chunk of a small or large blob, or a large blob's segment, which
/// lies at the end of its pack) stores it anew instead of deduplicating
/// against it, and so does a different blob that shares the damaged chunks.
#[tokio::test]
async fn a_write_replaces_unnoticed_damage_it_would_reuse() {
    for (len, at) in [(1000usize, 10u64), (2 << 20, 700_000), (2 << 20, u64::MAX)] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let bytes = data(5, len);
        let d = put(&store, &bytes).await;
        corrupt_packs(&store, at);
        // A longer blob with the same start: its first chunks are the damaged
        // blob's (a one-chunk blob's chunk is cut differently, so only the
        // large ones share).
        let mut longer = bytes.clone();
        longer.extend_from_slice(&data(6, 300_000));
        let l = put(&store, &longer).await;
        assert_eq!(get(&store, &l).await.unwrap(), longer, "{len} at {at}");
        assert_eq!(put(&store, &bytes).await, d);
        assert_eq!(get(&store, &d).await.unwrap(), bytes, "{len} at {at}");
        // And after a reopen, from the index.
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(get(&store, &d).await.unwrap(), bytes, "{len} at {at}");
        assert_eq!(get(&store, &l).await.unwrap(), longer, "{len} at {at}");
    }
}

#[tokio::test]
async fn a_put_replaces_a_damaged_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let a = (*blake3::hash(b"a").as_bytes(), b"a".to_vec());
    store.put_directories(vec![a.clone()]).await.unwrap();
    corrupt_packs(&store, 0);
    store.put_directories(vec![a.clone()]).await.unwrap();
    assert_eq!(store.get_directory(&a.0).unwrap(), Some(a.1.clone()));
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get_directory(&a.0).unwrap(), Some(a.1));
}

#[tokio::test]
async fn edited_file_shares_most_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut bytes = data(8, 16 << 20);
    put(&store, &bytes).await;
    let before = pack_bytes(&store);
    for b in &mut bytes[8 << 20..(8 << 20) + 1024] {
        *b = b.wrapping_add(1);
    }
    let d = put(&store, &bytes).await;
    let extra = pack_bytes(&store) - before;
    assert!(
        extra < 3 * 256 * 1024,
        "1 KiB edit stored {extra} extra bytes"
    );
    assert_eq!(get(&store, &d).await.unwrap(), bytes);
}

#[tokio::test]
async fn directories_put_get() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let a = (*blake3::hash(b"a").as_bytes(), b"a".to_vec());
    let b = (*blake3::hash(b"bb").as_bytes(), b"bb".to_vec());
    store
        .put_directories(vec![a.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(store.get_directory(&a.0).unwrap(), Some(a.1));
    assert!(store.has_directory(&b.0).unwrap());
    assert_eq!(store.get_directory(&[0; 32]).unwrap(), None);
    // Survives reopen, and a corrupt directory is an error, not other bytes.
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get_directory(&b.0).unwrap(), Some(b.1));
    corrupt_packs(&store, 0);
    assert!(store.get_directory(&a.0).is_err());
}

/// Uniformly random bytes (xorshift output, every byte of every word).
pub(crate) fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn raw_or_compressed() {
    // Random bytes are stored raw without trying zstd, whatever their size.
    for len in [4096, 16 * 1024, 64 * 1024, 256 * 1024] {
        assert!(looks_incompressible(&random(1, len)), "{len} random bytes");
        assert!(
            encode(&random(2, len), Level::Chunk).unwrap().is_none(),
            "{len} random bytes"
        );
    }
    // Text, the partly compressible test data and a short random tail are tried.
    let text = "fn main() { println!(\"hello\"); }\n".repeat(2000);
    assert!(!looks_incompressible(text.as_bytes()));
    let z = encode(text.as_bytes(), Level::Whole).unwrap().unwrap();
    assert!(z.len() < text.len() / 10, "text compressed to {}", z.len());
    assert!(!looks_incompressible(&data(3, 64 * 1024)));
    // Random bytes repeated within a chunk are the known miss: stored raw.
    assert!(looks_incompressible(&random(6, 32 * 1024).repeat(2)));
    let mut back = vec![0u8; text.len()];
    assert_eq!(decode_into(&z, &mut back).unwrap(), text.len());
    assert_eq!(back, text.as_bytes());
}

/// Sources of this crate, as stand-ins for the small files users import.
const SOURCES: [&str; 4] = [
    include_str!("mod.rs"),
    include_str!("writer.rs"),
    include_str!("format.rs"),
    include_str!("../../Cargo.toml"),
];

#[test]
fn small_random_objects_are_raw_small_text_is_tried() {
    // Every random object of 256 B to 4 KiB is judged random (the threshold is
    // five standard deviations below their mean entropy).
    for len in (256..4096).step_by(7) {
        for seed in 0..20 {
            let bytes = random(seed * 4099 + len as u64, len);
            assert!(
                looks_incompressible(&bytes),
                "{len} random bytes, seed {seed}"
            );
            assert!(encode(&bytes, Level::Whole).unwrap().is_none());
        }
    }
    // Shorter ones are not judged (zstd is tried, and finds nothing).
    assert!(!looks_incompressible(&random(7, 255)));
    assert!(encode(&random(7, 255), Level::Whole).unwrap().is_none());
    // No slice of source code or text is, whatever its length and offset; nor
    // hex or base64 (6 bits per byte at most), nor random bytes repeated.
    for src in SOURCES {
        let src = src.as_bytes();
        for len in (256..4096.min(src.len())).step_by(61) {
            for start in (0..src.len() - len).step_by(997) {
                let piece = &src[start..start + len];
                assert!(
                    !looks_incompressible(piece),
                    "{len} bytes of source at {start}"
                );
            }
        }
    }
    let hex: String = random(8, 1000).iter().map(|b| format!("{b:02x}")).collect();
    assert!(!looks_incompressible(hex.as_bytes()));
    let b64: Vec<u8> = random(9, 3000)
        .iter()
        .map(|b| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[usize::from(b % 64)]
        })
        .collect();
    assert!(!looks_incompressible(&b64));
    let z = encode(&b64, Level::Whole)
        .unwrap()
        .expect("base64 compresses");
    assert!(z.len() < b64.len() * 7 / 8);
    assert!(!looks_incompressible(&random(10, 1024).repeat(2)));
    assert!(
        encode(&random(10, 1024).repeat(2), Level::Whole)
            .unwrap()
            .is_some()
    );
}

/// Through the store: a small random file is stored raw (its exact size in the
/// pack), a small source file compressed; both read back exactly.
#[tokio::test]
async fn small_random_blob_raw_small_source_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = random(11, 1000);
    let d = put(&store, &bytes).await;
    let Some(Layout::Single(loc)) = store.blob_layout(&d).unwrap() else {
        panic!("a 1000-byte blob is one chunk");
    };
    assert!(!loc.compressed);
    assert_eq!((loc.stored_len, loc.raw_len), (1000, 1000));
    assert_eq!(pack_bytes(&store), 1000);
    assert_eq!(get(&store, &d).await.unwrap(), bytes);
    let src = &SOURCES[1].as_bytes()[..1500];
    let d = put(&store, src).await;
    let Some(Layout::Single(loc)) = store.blob_layout(&d).unwrap() else {
        panic!("a 1500-byte blob is one chunk");
    };
    assert!(loc.compressed);
    assert!(
        loc.stored_len < 1000,
        "1500 bytes of source stored in {}",
        loc.stored_len
    );
    assert_eq!(pack_bytes(&store), 1000 + u64::from(loc.stored_len));
    assert_eq!(get(&store, &d).await.unwrap(), src);
}

#[tokio::test]
async fn random_blob_is_stored_raw_and_text_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = random(5, 3 << 20);
    let d = put(&store, &bytes).await;
    let Some(Layout::Segmented(segs)) = store.blob_layout(&d).unwrap() else {
        panic!("a 3 MiB blob has several chunks");
    };
    let seg_bytes: u64 = segs.iter().map(|s| u64::from(s.loc.stored_len)).sum();
    assert_eq!(
        pack_bytes(&store),
        bytes.len() as u64 + seg_bytes,
        "raw: exactly its size, and its chunk list"
    );
    assert_eq!(get(&store, &d).await.unwrap(), bytes);
    let text = "a line of source code, repeated\n".repeat(100_000);
    let d = put(&store, text.as_bytes()).await;
    assert!(pack_bytes(&store) < bytes.len() as u64 + text.len() as u64 / 10);
    assert_eq!(get(&store, &d).await.unwrap(), text.as_bytes());
}

/// A blob whose `blobs` entry is a whole chunk list (the format before segments)
/// is still read, with seeks.
#[tokio::test]
async fn chunk_list_of_the_old_format_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = data(9, 3 << 20);
    let d = put(&store, &bytes).await;
    let list = store.blob_chunks(&d).unwrap().unwrap();
    assert!(list.len() > 2 * format::SEG_CHUNKS, "several segments");
    let txn = store.inner.db.begin_write().unwrap();
    txn.open_table(BLOBS)
        .unwrap()
        .insert(&d, &BlobEntry::Chunked(list.clone()).encode()[..])
        .unwrap();
    txn.commit().unwrap();
    assert!(matches!(
        store.blob_layout(&d).unwrap(),
        Some(Layout::Chunked(_))
    ));
    assert_eq!(store.blob_chunks(&d).unwrap().unwrap(), list);
    assert_eq!(store.blob_size(&d).unwrap(), Some(bytes.len() as u64));
    assert_eq!(get(&store, &d).await.unwrap(), bytes);
    let mut r = store.open_blob(&d).unwrap().unwrap();
    r.seek(SeekFrom::Start(2_000_000)).await.unwrap();
    let mut part = vec![0u8; 100_000];
    r.read_exact(&mut part).await.unwrap();
    assert_eq!(part, bytes[2_000_000..2_100_000]);
}

/// A blob of many segments reads back whole and from offsets on both sides of
/// segment boundaries; its chunk list is the segments' lists in order.
#[tokio::test]
async fn segments_read_and_seek_across_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let bytes = data(11, 4 << 20);
    let d = put(&store, &bytes).await;
    let Some(Layout::Segmented(segs)) = store.blob_layout(&d).unwrap() else {
        panic!("segmented");
    };
    assert!(segs.len() > 3);
    let list = store.blob_chunks(&d).unwrap().unwrap();
    assert_eq!(
        list.len() as u64,
        segs.iter().map(|s| u64::from(s.chunks)).sum::<u64>()
    );
    assert_eq!(list.iter().map(|c| c.1).sum::<u64>(), bytes.len() as u64);
    let mut at = 0u64;
    for (c, size) in &list {
        let chunk = &bytes[at as usize..(at + size) as usize];
        assert_eq!(blake3::hash(chunk).as_bytes(), c, "chunk at {at}");
        at += size;
    }
    assert_eq!(get(&store, &d).await.unwrap(), bytes);
    let mut r = store.open_blob(&d).unwrap().unwrap();
    let mut boundary = 0u64;
    for s in &segs[..3] {
        boundary += s.bytes;
        for start in [boundary - 1, boundary, boundary - 70_000] {
            r.seek(SeekFrom::Start(start)).await.unwrap();
            let mut part = vec![0u8; 150_000];
            r.read_exact(&mut part).await.unwrap();
            assert_eq!(part, bytes[start as usize..start as usize + 150_000]);
        }
    }
    // Backwards, to the start.
    r.seek(SeekFrom::Start(10)).await.unwrap();
    let mut part = vec![0u8; 10];
    r.read_exact(&mut part).await.unwrap();
    assert_eq!(part, bytes[10..20]);
}

/// Two writers storing the same new chunks at once: the index keeps the first
/// copy, the second writer's segment names its own. The reclaim at the next
/// start must leave that copy alone, and both blobs read back whole.
#[tokio::test]
async fn chunks_stored_twice_at_once_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let shared = data(30, 8 << 20);
    let (a, b) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (mut wa, mut wb) = (store.blob_writer(), store.blob_writer());
        let mut blobs = (Vec::new(), Vec::new());
        for piece in shared.chunks(1 << 20) {
            wa.write_all(piece).await.unwrap();
            wb.write_all(piece).await.unwrap();
            blobs.0.extend_from_slice(piece);
            blobs.1.extend_from_slice(piece);
        }
        let (ta, tb) = (data(31, 1 << 20), data(32, 1 << 20));
        wa.write_all(&ta).await.unwrap();
        wb.write_all(&tb).await.unwrap();
        blobs.0.extend_from_slice(&ta);
        blobs.1.extend_from_slice(&tb);
        let (da, db) = (wa.close().await.unwrap(), wb.close().await.unwrap());
        assert_eq!(get(&store, &da).await.unwrap(), blobs.0);
        assert_eq!(get(&store, &db).await.unwrap(), blobs.1);
        ((da, blobs.0), (db, blobs.1))
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(get(&store, &a.0).await.unwrap(), a.1, "first blob");
    assert_eq!(get(&store, &b.0).await.unwrap(), b.1, "second blob");
}
