//! Measures a closure of directories put and read back on PostgreSQL against the
//! embedded store, through the `DirectoryService` trait as a daemon uses it:
//! one closure upload (validated, one transaction), `get_recursive` of the root,
//! and 2,000 single `get`s, on PostgreSQL with the cache off (every read a round
//! trip) and with the default cache (32 MiB).
//!
//! `cargo run --release -p cairn-castore --example pg_dirs [DIRECTORIES]`
//! (default 50,000). PostgreSQL is the test fixture's server
//! (cairn_testkit::postgres, fsync off), on loopback.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_castore::directoryservice::PgDirectoryService;
use cairn_castore::embedded::EmbeddedStore;
use cairn_castore::{B3Digest, Directory, DirectoryService, Node, PathComponent};
use futures::TryStreamExt;

include!("common/dir_tree.rs");

struct Times {
    put: Duration,
    recursive: Duration,
    gets: Duration,
}

async fn measure(label: &str, dirs: &dyn DirectoryService, closure: &[Directory]) -> Times {
    let t = Instant::now();
    let mut p = dirs.put_multiple_start();
    for d in closure {
        p.put(d.clone()).await.unwrap();
    }
    let root = p.close().await.unwrap();
    let put = t.elapsed();

    let t = Instant::now();
    let got: Vec<Directory> = dirs.get_recursive(&root).try_collect().await.unwrap();
    let recursive = t.elapsed();
    assert_eq!(got.len(), closure.len());

    let t = Instant::now();
    for d in closure.iter().step_by(closure.len().div_ceil(2000)) {
        assert!(dirs.get(&d.digest()).await.unwrap().is_some());
    }
    let gets = t.elapsed();
    println!(
        "{label:<10} put closure {:>8.1} ms  get_recursive {:>8.1} ms  2000 gets {:>8.1} ms",
        put.as_secs_f64() * 1e3,
        recursive.as_secs_f64() * 1e3,
        gets.as_secs_f64() * 1e3
    );
    Times {
        put,
        recursive,
        gets,
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("DIRECTORIES is a number"))
        .unwrap_or(50_000);
    // About n directories: leaves of three files under parents of 16.
    let closure = dir_tree((n * 15 / 16) as u64, 3, 16);
    println!("closure of {} directories", closure.len());

    let tmp = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(tmp.path()).unwrap();
    let e = measure("embedded", &embedded, &closure).await;

    let url = cairn_testkit::postgres::server().database();
    // The cache off, so that reads go to the database.
    let pg = PgDirectoryService::from_url(&format!("{url}?dir_cache=0")).unwrap();
    let p = measure("postgres", &pg, &closure).await;

    // The default cache (32 MiB) on a fresh database: what a daemon sees.
    let url = cairn_testkit::postgres::server().database();
    let cached = PgDirectoryService::from_url(&url).unwrap();
    let c = measure("pg+cache", &cached, &closure).await;

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "postgres/embedded: put {:.2}x  get_recursive {:.2}x  gets {:.2}x",
        ratio(p.put, e.put),
        ratio(p.recursive, e.recursive),
        ratio(p.gets, e.gets)
    );
    println!(
        "pg+cache/embedded: put {:.2}x  get_recursive {:.2}x  gets {:.2}x",
        ratio(c.put, e.put),
        ratio(c.recursive, e.recursive),
        ratio(c.gets, e.gets)
    );
}
