//! How long the operations that scan every path info take on a big store:
//! QueryReferrers, QueryAllValidPaths and VerifyStore (without contents) over
//! the protocol, on N paths (default 100,000) in a `redb://` path info service,
//! in `memory://` and in PostgreSQL (a server started for the run, as the tests
//! do: `./test.sh` installs it). Each path refers to the one before it.
//!
//! `cargo run --release -p cairn-nix-daemon --example referrers_scale [N]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use cairn_castore::Node;
use cairn_nix::store_path::StorePath;
use cairn_nix_daemon::{Config, NixDaemon};
use cairn_store::pathinfo::{PathInfo, PathInfoService};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn u(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn s(data: &[u8]) -> Vec<u8> {
    let mut out = u(data.len() as u64);
    out.extend(data);
    out.resize(out.len() + (8 - data.len() % 8) % 8, 0);
    out
}

fn path(i: u64) -> StorePath {
    let mut digest = [0u8; 20];
    digest[..8].copy_from_slice(&i.to_le_bytes());
    StorePath::new(digest, "p").unwrap()
}

/// Sends one request and reads the answer up to its end (`STDERR_LAST`, then a
/// list of strings or a u64), returning the time and the answer's length.
async fn timed(io: &mut tokio::io::DuplexStream, req: &[u8], list: bool) -> (f64, u64) {
    let t = Instant::now();
    io.write_all(req).await.unwrap();
    let mut b = [0u8; 8];
    io.read_exact(&mut b).await.unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x616c_7473, "STDERR_LAST");
    io.read_exact(&mut b).await.unwrap();
    let n = u64::from_le_bytes(b);
    if list {
        for _ in 0..n {
            io.read_exact(&mut b).await.unwrap();
            let len = u64::from_le_bytes(b);
            let mut v = vec![0u8; (len + (8 - len % 8) % 8) as usize];
            io.read_exact(&mut v).await.unwrap();
        }
    }
    (t.elapsed().as_secs_f64(), n)
}

async fn measure(
    what: &str,
    path_info: Arc<dyn PathInfoService>,
    blobs: Arc<dyn cairn_castore::BlobService>,
    dirs: Arc<dyn cairn_castore::DirectoryService>,
    n: u64,
) {
    let mut w = blobs.open_write().await;
    w.write_all(b"x").await.unwrap();
    let digest = w.close().await.unwrap();
    let node = Node::File {
        digest,
        size: 1,
        executable: false,
    };
    let (nar_size, nar_sha256) = cairn_store::nar::calculate(&*blobs, &*dirs, &node)
        .await
        .unwrap();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let path_info = path_info.clone();
            let node = node.clone();
            async move {
                let info = PathInfo {
                    store_path: path(i),
                    node,
                    references: if i > 0 { vec![path(i - 1)] } else { vec![] },
                    nar_size,
                    nar_sha256,
                    signatures: vec![],
                    deriver: None,
                    ca: None,
                };
                path_info.put(info).await.unwrap();
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "{what}: {n} path infos put in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let daemon = Arc::new(NixDaemon::new(blobs, dirs, path_info, Config::default()));
    let (mut io, server_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let (r, w) = tokio::io::split(server_io);
        daemon
            .serve_connection(r, w, true, std::future::pending())
            .await
    });
    // Greeting as Nix 2.8 (1.34).
    io.write_all(&[u(0x6e69_7863), u(0x122), u(0), u(0)].concat())
        .await
        .unwrap();
    let mut greeting = vec![0u8; 16];
    io.read_exact(&mut greeting).await.unwrap();
    let mut b = [0u8; 8];
    io.read_exact(&mut b).await.unwrap(); // version string length
    let len = u64::from_le_bytes(b);
    let mut v = vec![0u8; (len + (8 - len % 8) % 8) as usize];
    io.read_exact(&mut v).await.unwrap();
    io.read_exact(&mut b).await.unwrap(); // STDERR_LAST
    for round in 0..3 {
        let (secs, found) = timed(
            &mut io,
            &[u(6), s(path(n / 2).to_absolute().as_bytes())].concat(),
            true,
        )
        .await;
        eprintln!("{what}: QueryReferrers, round {round}: {secs:.3} s ({found} referrer)");
    }
    let (secs, found) = timed(&mut io, &u(23), true).await;
    eprintln!("{what}: QueryAllValidPaths: {secs:.3} s ({found} paths)");
    let (secs, _) = timed(&mut io, &[u(35), u(0), u(0)].concat(), false).await;
    eprintln!("{what}: VerifyStore (references only): {secs:.3} s");
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N is a number"))
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    for addr in [
        format!("redb://{}", tmp.path().display()),
        "memory://".to_owned(),
        cairn_testkit::postgres::server().database(),
    ] {
        let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let path_info =
            cairn_store::pathinfo::path_info_service_from_addr(&addr, blobs.clone(), dirs.clone())
                .unwrap();
        measure(addr.split(':').next().unwrap(), path_info, blobs, dirs, n).await;
    }
}
