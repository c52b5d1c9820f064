//! The S3 blob service against a real S3 server (s3s-fs, SigV4 checked) and a real
//! PostgreSQL for its index: what the conformance suite does not show. Multipart
//! uploads of a large blob, ranged reads, corruption in the bucket, refused
//! credentials, the server going away mid-upload and coming back, and the
//! requests that many small blobs cost (counted by `S3BlobService::stats`).
#![allow(clippy::unwrap_used)]

use std::io::SeekFrom;
use std::path::PathBuf;

use cairn_castore::blobservice::S3BlobService;
use cairn_castore::{B3Digest, BlobService, ErrorKind};
use cairn_testkit::data::pseudo_random;
use cairn_testkit::s3::S3Server;
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

fn service_on(server: &S3Server) -> (S3BlobService, String) {
    let index = cairn_testkit::postgres::server().database();
    let url = server.blob_url(&index);
    (S3BlobService::from_url(&url).unwrap(), url)
}

fn service() -> (S3BlobService, String) {
    service_on(cairn_testkit::s3::server())
}

/// The bucket directory of a URL made by the fixture.
fn bucket_dir(server: &S3Server, url: &str) -> PathBuf {
    let name = url
        .strip_prefix("s3://")
        .and_then(|r| r.split('?').next())
        .unwrap();
    server.root().join(name)
}

/// The pack objects (files) of a bucket.
fn packs(server: &S3Server, url: &str) -> Vec<PathBuf> {
    let dir = bucket_dir(server, url).join("packs");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

async fn put(s: &S3BlobService, data: &[u8]) -> B3Digest {
    let mut w = s.open_write().await;
    for piece in data.chunks(100_003) {
        w.write_all(piece).await.unwrap();
    }
    w.close().await.unwrap()
}

async fn read_all(s: &S3BlobService, d: &B3Digest) -> std::io::Result<Vec<u8>> {
    let mut r = s.open_read(d).await.unwrap().expect("stored");
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_multipart_ranged_reads_and_dedup() {
    let (s, url) = service();
    let data = pseudo_random(20 << 20, 17);
    let d = put(&s, &data).await;
    assert_eq!(d, B3Digest::of(&data));
    let st = s.stats();
    assert_eq!(st.multipart_uploads, 1, "{st:?}");
    assert!(
        st.parts >= 2,
        "20 MiB of random bytes is at least two 8 MiB parts: {st:?}"
    );
    assert_eq!(st.completes, 1, "{st:?}");
    assert_eq!(st.puts, 0, "no single PUT for a large blob: {st:?}");
    assert_eq!(
        packs(cairn_testkit::s3::server(), &url).len(),
        1,
        "one pack object"
    );

    let chunks = s.chunks(&d).await.unwrap().unwrap();
    assert!(chunks.len() > 100, "{} chunks", chunks.len());
    assert_eq!(
        chunks.iter().map(|c| c.size).sum::<u64>(),
        data.len() as u64
    );
    // Each chunk is a blob of its own.
    let c = chunks[7];
    assert!(s.has(&c.digest).await.unwrap());
    assert_eq!(s.chunks(&c.digest).await.unwrap(), Some(vec![]));
    let start: u64 = chunks[..7].iter().map(|c| c.size).sum();
    let got = read_all(&s, &c.digest).await.unwrap();
    assert_eq!(got, data[start as usize..(start + c.size) as usize]);

    // A cold sequential read coalesces chunks into few ranged GETs.
    s.clear_cache();
    let before = s.stats().gets;
    assert_eq!(read_all(&s, &d).await.unwrap(), data);
    let gets = s.stats().gets - before;
    eprintln!("cold read: {gets} GETs, {:?}", s.stats());
    assert!(
        gets * 10 < chunks.len() as u64,
        "{gets} GETs for {} chunks",
        chunks.len()
    );
    // Hot: from the cache, no GET.
    let before = s.stats().gets;
    assert_eq!(read_all(&s, &d).await.unwrap(), data);
    assert_eq!(s.stats().gets, before, "a hot blob is read from the cache");

    // Ranged reads at pseudo-random offsets, cold.
    s.clear_cache();
    let mut r = s.open_read(&d).await.unwrap().unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..40 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let off = (x >> 11) % data.len() as u64;
        let len = ((x >> 3) % 300_000).min(data.len() as u64 - off) as usize;
        assert_eq!(r.seek(SeekFrom::Start(off)).await.unwrap(), off);
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            buf,
            data[off as usize..off as usize + len],
            "at {off}+{len}"
        );
    }
    assert_eq!(
        r.seek(SeekFrom::End(-5)).await.unwrap(),
        data.len() as u64 - 5
    );
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, data[data.len() - 5..]);
    // A stream from an offset.
    let off = 12_345_678;
    let pieces: Vec<bytes::Bytes> = s
        .open_read_stream(&d, off)
        .await
        .unwrap()
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let streamed = pieces.concat();
    assert_eq!(streamed, data[off as usize..]);

    // Written again: nothing uploaded.
    let st = s.stats();
    assert_eq!(put(&s, &data).await, d);
    let again = s.stats();
    assert_eq!(
        (again.puts, again.parts, again.multipart_uploads),
        (st.puts, st.parts, st.multipart_uploads),
        "a stored blob is not uploaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_blobs_share_few_puts() {
    let (s, url) = service();
    let n = 1000;
    let blobs: Vec<Vec<u8>> = (0..n).map(|i| pseudo_random(1000 + i, i as u64)).collect();
    let writes = blobs.iter().map(|b| {
        let s = s.clone();
        let b = b.clone();
        tokio::spawn(async move { put(&s, &b).await })
    });
    let digests: Vec<B3Digest> = futures::future::try_join_all(writes).await.unwrap();
    let st = s.stats();
    eprintln!("{n} small blobs: {st:?}");
    assert!(
        st.puts * 10 <= n as u64,
        "{} PUTs for {n} small blobs",
        st.puts
    );
    assert_eq!(st.multipart_uploads, 0);
    assert_eq!(
        packs(cairn_testkit::s3::server(), &url).len() as u64,
        st.puts
    );
    for (b, d) in blobs.iter().zip(&digests) {
        assert_eq!(*d, B3Digest::of(b));
    }
    // All readable, a sample of them cold.
    s.clear_cache();
    for i in (0..n).step_by(97) {
        assert_eq!(read_all(&s, &digests[i]).await.unwrap(), blobs[i]);
    }
    // Written again: nothing uploaded.
    let puts = s.stats().puts;
    for b in blobs.iter().take(50) {
        put(&s, b).await;
    }
    assert_eq!(s.stats().puts, puts);
}

/// Small files read cold are fetched a window of their pack at a time (their
/// neighbours were written with them), not a GET each; a damaged neighbour costs
/// only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_small_files_are_read_a_pack_window_at_a_time() {
    let server = cairn_testkit::s3::server();
    let (s, url) = service_on(server);
    let n = 1000;
    let blobs: Vec<Vec<u8>> = (0..n)
        .map(|i| pseudo_random(1000 + i, 7000 + i as u64))
        .collect();
    let writes = blobs.iter().map(|b| {
        let s = s.clone();
        let b = b.clone();
        tokio::spawn(async move { put(&s, &b).await })
    });
    let digests: Vec<B3Digest> = futures::future::try_join_all(writes).await.unwrap();
    drop(s);

    let cold = S3BlobService::from_url(&url).unwrap();
    for (b, d) in blobs.iter().zip(&digests) {
        assert_eq!(read_all(&cold, d).await.unwrap(), *b);
    }
    let st = cold.stats();
    assert!(
        st.gets * 10 <= n as u64,
        "{} GETs to read {n} small files cold: {st:?}",
        st.gets
    );

    // One byte damaged in the middle of a pack: the file holding it is an
    // error, every other file of its window still reads.
    let files = packs(server, &url);
    let f = files
        .iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(f, bytes).unwrap();
    let cold = S3BlobService::from_url(&url).unwrap();
    let mut failed = 0;
    for (b, d) in blobs.iter().zip(&digests) {
        match read_all(&cold, d).await {
            Ok(got) => assert_eq!(got, *b),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1, "exactly the damaged file fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_bucket_is_an_error() {
    let server = cairn_testkit::s3::server();
    let (s, url) = service();
    let small = b"a small file, compressed: ".repeat(100);
    let d_small = put(&s, &small).await;
    let big = pseudo_random(3 << 20, 5);
    let d_big = put(&s, &big).await;
    let files = packs(server, &url);
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(f, &bytes).unwrap();
    }
    s.clear_cache();
    for (d, len) in [(d_small, small.len()), (d_big, big.len())] {
        let err = read_all(&s, &d).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("pack"), "{err}");
        // A stream too: an error, never a clean end.
        let mut st = s.open_read_stream(&d, 0).await.unwrap().unwrap();
        let mut got = 0;
        let err = loop {
            match st.try_next().await {
                Ok(Some(b)) => got += b.len(),
                Ok(None) => panic!("clean end after {got} of {len} bytes"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(got < len);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_a_clear_error() {
    let server = cairn_testkit::s3::server();
    let (good, url) = service();
    let d = put(&good, b"readable with the right secret").await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[wrong]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret\n",
            cairn_testkit::s3::ACCESS_KEY
        ),
    )
    .unwrap();
    // The same bucket and index, with a wrong secret.
    let bad_url = url
        .replace(
            &format!("credentials_file={}", server.credentials_file().display()),
            &format!("credentials_file={}", creds.display()),
        )
        .replace("profile=cairn-test", "profile=wrong");
    assert_ne!(bad_url, url);
    let bad = S3BlobService::from_url(&bad_url).unwrap();
    let mut w = bad.open_write().await;
    w.write_all(b"never stored").await.unwrap();
    let err = w.close().await.unwrap_err();
    let msg = err.to_string();
    eprintln!("wrong secret: {msg}");
    assert_eq!(err.kind(), ErrorKind::Internal, "{msg}");
    assert!(
        msg.contains("bucket-") && msg.contains(&server.endpoint()),
        "{msg}"
    );
    assert!(
        msg.contains("access denied") || msg.contains("403"),
        "{msg}"
    );
    assert!(!bad.has(&B3Digest::of(b"never stored")).await.unwrap());
    // Reads are refused too (the index is readable, the bucket is not).
    let err = read_all(&bad, &d).await.unwrap_err();
    assert!(err.to_string().contains("bucket-"), "{err}");
    assert_ne!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert_eq!(
        read_all(&good, &d).await.unwrap(),
        b"readable with the right secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_mid_upload_then_back() {
    let server = S3Server::private();
    let (s, _url) = service_on(&server);
    let before = put(&s, b"stored before the outage").await;

    // A large blob: its multipart upload has started when the server goes.
    let data = pseudo_random(24 << 20, 9);
    let mut w = s.open_write().await;
    w.write_all(&data[..16 << 20]).await.unwrap();
    w.flush().await.unwrap();
    server.stop();
    let rest = w.write_all(&data[16 << 20..]).await;
    let closed = match rest {
        Ok(()) => w.close().await,
        Err(e) => Err(e.into()),
    };
    let err = closed.unwrap_err();
    eprintln!("server down: {err}");
    assert!(err.to_string().contains(&server.endpoint()), "{err}");
    assert!(
        !s.has(&B3Digest::of(&data)).await.unwrap(),
        "nothing visible"
    );
    // A small blob meanwhile fails too, and is not visible.
    let mut w = s.open_write().await;
    w.write_all(b"written while the server is down")
        .await
        .unwrap();
    let err = w.close().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(err.to_string().contains("bucket-0"), "{err}");
    assert!(
        !s.has(&B3Digest::of(b"written while the server is down"))
            .await
            .unwrap()
    );

    // Back: the same service works, and what was stored before is intact.
    server.start();
    let d = put(&s, &data).await;
    assert_eq!(read_all(&s, &d).await.unwrap(), data);
    let small = put(&s, b"written while the server is down").await;
    s.clear_cache();
    assert_eq!(
        read_all(&s, &small).await.unwrap(),
        b"written while the server is down"
    );
    assert_eq!(
        read_all(&s, &before).await.unwrap(),
        b"stored before the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_chunks_read_back_cold() {
    let (s, _) = service();
    // A block repeated: its chunks recur in the list, stored once, read from
    // behind the run (the cache, or a GET of their own).
    let block = pseudo_random(700_000, 3);
    let mut data = Vec::new();
    for i in 0..12u8 {
        data.extend_from_slice(&block);
        data.extend_from_slice(&pseudo_random(50_000 + usize::from(i), u64::from(i)));
    }
    let d = put(&s, &data).await;
    let chunks = s.chunks(&d).await.unwrap().unwrap();
    let distinct: std::collections::HashSet<_> = chunks.iter().map(|c| c.digest).collect();
    assert!(
        distinct.len() * 2 < chunks.len(),
        "{} of {}",
        distinct.len(),
        chunks.len()
    );
    s.clear_cache();
    assert_eq!(read_all(&s, &d).await.unwrap(), data);
    s.clear_cache();
    let mut r = s.open_read(&d).await.unwrap().unwrap();
    r.seek(SeekFrom::Start(5_000_000)).await.unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, data[5_000_000..]);
}
