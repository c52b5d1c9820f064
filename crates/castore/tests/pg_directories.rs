//! What the conformance suite does not cover of `PgDirectoryService`: damaged rows
//! are Corrupt errors (never served, and replaced by a later upload), a large
//! closure comes back in the trait's order, and two services on separate pools (two
//! daemons) can upload the same closure at once.
#![allow(clippy::unwrap_used)]

use cairn_castore::directoryservice::{MemoryDirectoryService, PgDirectoryService};
use cairn_castore::pg::Db;
use cairn_castore::{B3Digest, Directory, DirectoryService, ErrorKind, Node, PathComponent};
use futures::TryStreamExt;

fn name(n: &str) -> PathComponent {
    PathComponent::try_from(n).unwrap()
}

/// A directory of one file, distinct for each `i`.
fn file_dir(i: u64) -> Directory {
    let mut d = Directory::new();
    d.add(
        name(&format!("f{i}")),
        Node::File {
            digest: B3Digest::of(&i.to_le_bytes()),
            size: i,
            executable: false,
        },
    )
    .unwrap();
    d
}

include!("../examples/common/dir_tree.rs");

fn tree(leaves: u64, fanout: usize) -> Vec<Directory> {
    dir_tree(leaves, 1, fanout)
}

/// The error `get_recursive` of `root` ends with.
async fn recursive_err(svc: &PgDirectoryService, root: &B3Digest) -> cairn_castore::Error {
    svc.get_recursive(root)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err()
}

async fn put_all(dirs: &dyn DirectoryService, closure: &[Directory]) -> B3Digest {
    let mut p = dirs.put_multiple_start();
    for d in closure {
        p.put(d.clone()).await.unwrap();
    }
    p.close().await.unwrap()
}

/// A service without a cache on a fresh database, and a raw connection to it.
async fn fresh() -> (PgDirectoryService, deadpool_postgres::Object) {
    let url = cairn_testkit::postgres::server().database();
    let svc = PgDirectoryService::from_url(&format!("{url}?dir_cache=0")).unwrap();
    // Creates the table.
    assert!(svc.get(&B3Digest::of(b"x")).await.unwrap().is_none());
    let raw = Db::open(&url).unwrap().client().await.unwrap();
    (svc, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_rows_are_corrupt_and_replaced_by_an_upload() {
    let (svc, raw) = fresh().await;
    let closure = tree(3, 2);
    let root = put_all(&svc, &closure).await;
    let leaf = closure[0].clone();
    let leaf_digest = leaf.digest();
    let key: &[u8] = leaf_digest.as_bytes();
    let other = file_dir(99).encode();
    raw.execute(
        "UPDATE directories SET data = $2 WHERE digest = $1",
        &[&key, &other],
    )
    .await
    .unwrap();
    let err = svc.get(&leaf.digest()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let err = recursive_err(&svc, &root).await;
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");

    raw.execute(
        "UPDATE directories SET data = '\\x0a'::bytea WHERE digest = $1",
        &[&key],
    )
    .await
    .unwrap();
    let err = svc.get(&leaf.digest()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");

    // Uploading the leaf again repairs the row.
    svc.put(leaf.clone()).await.unwrap();
    assert_eq!(svc.get(&leaf.digest()).await.unwrap(), Some(leaf));
    assert_eq!(
        svc.get_recursive(&root)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .len(),
        closure.len()
    );

    // A row missing from a closure is Corrupt, not an early end.
    raw.execute("DELETE FROM directories WHERE digest = $1", &[&key])
        .await
        .unwrap();
    let err = recursive_err(&svc, &root).await;
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_closure_comes_back_in_breadth_first_order() {
    let (svc, _raw) = fresh().await;
    let closure = tree(20_000, 16);
    let root = put_all(&svc, &closure).await;
    let mem = MemoryDirectoryService::new();
    assert_eq!(put_all(&mem, &closure).await, root);
    let want: Vec<Directory> = mem.get_recursive(&root).try_collect().await.unwrap();
    let got: Vec<Directory> = svc.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(got.len(), closure.len());
    assert!(got == want, "PostgreSQL and memory disagree on the order");
    // A closure referencing the stored one is checked against the database.
    let mut top = Directory::new();
    top.add(
        name("all"),
        Node::Directory {
            digest: root,
            size: closure.last().unwrap().size(),
        },
    )
    .unwrap();
    assert_eq!(svc.put(top.clone()).await.unwrap(), top.digest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_upload_the_same_closure_at_once() {
    let url = cairn_testkit::postgres::server().database();
    let a = PgDirectoryService::new(Db::open(&url).unwrap(), 1 << 20);
    let b = PgDirectoryService::new(Db::open(&url).unwrap(), 1 << 20);
    let closure = tree(2_000, 8);
    let (ra, rb) = tokio::join!(put_all(&a, &closure), put_all(&b, &closure));
    assert_eq!(ra, rb);
    let got: Vec<Directory> = b.get_recursive(&ra).try_collect().await.unwrap();
    assert_eq!(got.len(), closure.len());
}
