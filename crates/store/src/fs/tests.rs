#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use cairn_castore::blobservice::MemoryBlobService;
use cairn_castore::directoryservice::MemoryDirectoryService;
use cairn_castore::{BlobService, DirectoryService, Node};

use super::*;

fn services() -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
    (
        Arc::new(MemoryBlobService::new()),
        Arc::new(MemoryDirectoryService::new()),
    )
}

/// A tree with every kind of entry, including a file large enough to be streamed.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/empty")).unwrap();
    std::fs::write(root.join("a"), b"hello").unwrap();
    std::fs::write(root.join("sub/big"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(root.join("exe"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("exe"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../a", root.join("sub/link")).unwrap();
    std::fs::write(root.join("empty-file"), b"").unwrap();
}

/// `(relative path, kind, mode & 0o100, contents or target)` of every entry.
fn listing(root: &Path) -> Vec<(String, char, bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let exec = meta.permissions().mode() & 0o100 != 0;
        if meta.is_dir() {
            out.push((rel, 'd', exec, Vec::new()));
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if meta.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            out.push((rel, 'l', false, t.into_os_string().into_encoded_bytes()));
        } else {
            out.push((rel, 'f', exec, std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// A tree of more than one flush of directories (8192 entries), with many
/// subtrees complete at each flush: each commit must be closures that their
/// roots reach (as the directory services require), and the result whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_commits_reachable_closures_across_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..220 {
        let d = src.join(format!("d{i:03}"));
        std::fs::create_dir_all(d.join("nested/deeper")).unwrap();
        for j in 0..36 {
            std::fs::write(d.join(format!("f{j}")), format!("{}", j % 5)).unwrap();
        }
        std::fs::write(d.join("nested/x"), format!("{i}")).unwrap();
        std::fs::write(d.join("nested/deeper/y"), b"y").unwrap();
    }
    let (blobs, dirs) = services();
    let imported = import_path(blobs.clone(), &*dirs, &src, Arc::new(Progress::new()))
        .await
        .unwrap();
    let Node::Directory { digest, .. } = &imported.root else {
        panic!("{:?}", imported.root)
    };
    use futures::TryStreamExt;
    let closure: Vec<_> = dirs.get_recursive(digest).try_collect().await.unwrap();
    // The root, 220 distinct d*, 220 distinct nested, one shared deeper.
    assert_eq!(closure.len(), 1 + 220 + 220 + 1);
    let dest = tmp.path().join("out");
    export(blobs, &*dirs, &imported.root, &dest).await.unwrap();
    assert_eq!(listing(&src), listing(&dest));
}

#[tokio::test]
async fn import_then_export_gives_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let (blobs, dirs) = services();
    let progress = Arc::new(Progress::new());
    let imported = import_path(blobs.clone(), &*dirs, &src, progress.clone())
        .await
        .unwrap();
    assert!(
        // tvix's rule: sub/empty 0, sub 2 x 3, the root 2 x 4 + 6.
        matches!(imported.root, Node::Directory { size: 14, .. }),
        "{:?}",
        imported.root
    );
    assert_eq!(progress.files(), 4);
    assert_eq!(progress.stored(), 4);
    assert_eq!(progress.bytes(), 5 + (3 << 20) + 10);

    let dest = tmp.path().join("out");
    export(blobs.clone(), &*dirs, &imported.root, &dest)
        .await
        .unwrap();
    assert_eq!(listing(&src), listing(&dest));

    // Same tree again: same result.
    let again = import_path(blobs.clone(), &*dirs, &src, Arc::new(Progress::new()))
        .await
        .unwrap();
    assert_eq!(again, imported);

    // An existing destination is refused and left alone.
    let err = export(blobs, &*dirs, &imported.root, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    assert_eq!(listing(&src), listing(&dest));
}

#[tokio::test]
async fn single_file_and_symlink_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let (blobs, dirs) = services();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"contents").unwrap();
    let imported = import_path(blobs.clone(), &*dirs, &file, Arc::new(Progress::new()))
        .await
        .unwrap();
    assert!(matches!(
        imported.root,
        Node::File {
            size: 8,
            executable: false,
            ..
        }
    ));
    let out = tmp.path().join("f2");
    export(blobs.clone(), &*dirs, &imported.root, &out)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"contents");

    let link = tmp.path().join("l");
    std::os::unix::fs::symlink("/nowhere", &link).unwrap();
    let imported = import_path(blobs.clone(), &*dirs, &link, Arc::new(Progress::new()))
        .await
        .unwrap();
    let out = tmp.path().join("l2");
    export(blobs, &*dirs, &imported.root, &out).await.unwrap();
    assert_eq!(std::fs::read_link(&out).unwrap(), Path::new("/nowhere"));
}

#[tokio::test]
async fn fifo_is_refused_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let fifo = src.join("sub/pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let (blobs, dirs) = services();
    let err = import_path(blobs, &*dirs, &src, Arc::new(Progress::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains(&fifo.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn export_of_missing_blob_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let (blobs, dirs) = services();
    let imported = import_path(blobs, &*dirs, &src, Arc::new(Progress::new()))
        .await
        .unwrap();
    // Same directories, but no blobs.
    let (empty, _) = services();
    let dest = tmp.path().join("out");
    let err = export(empty, &*dirs, &imported.root, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "temporary left behind"
    );
}
