//! A render over a store missing a blob or a directory, or holding a blob of the
//! wrong length, fails with an error naming it: never a short clean end of file.
#![allow(clippy::unwrap_used)]

mod nar_util;

use std::sync::Arc;

use async_trait::async_trait;
use cairn_castore::{
    B3Digest, BlobReader, BlobService, BlobWriter, ChunkMeta, Directory, DirectoryPutter,
    DirectoryService, Error, ErrorKind, Node,
};
use cairn_store::nar::{self, NarError};
use nar_util::*;
use tokio::io::AsyncReadExt;

/// Serves `inner`, except that `hide` is absent, or answered with `substitute`'s
/// bytes.
struct LyingBlobs {
    inner: Arc<dyn BlobService>,
    hide: B3Digest,
    substitute: Option<B3Digest>,
}

#[async_trait]
impl BlobService for LyingBlobs {
    async fn has(&self, d: &B3Digest) -> Result<bool, Error> {
        if *d == self.hide {
            return Ok(self.substitute.is_some());
        }
        self.inner.has(d).await
    }
    async fn open_read(&self, d: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        match (*d == self.hide, self.substitute) {
            (false, _) => self.inner.open_read(d).await,
            (true, None) => Ok(None),
            (true, Some(s)) => self.inner.open_read(&s).await,
        }
    }
    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.inner.open_write().await
    }
    async fn chunks(&self, d: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.inner.chunks(d).await
    }
}

/// Serves `inner`, except that `hide` is absent.
struct HidingDirs {
    inner: Arc<dyn DirectoryService>,
    hide: B3Digest,
}

#[async_trait]
impl DirectoryService for HidingDirs {
    async fn get(&self, d: &B3Digest) -> Result<Option<Directory>, Error> {
        if *d == self.hide {
            return Ok(None);
        }
        self.inner.get(d).await
    }
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        self.inner.put_multiple_start()
    }
}

struct Fixture {
    nar: Vec<u8>,
    b: Backend,
    root: Node,
    /// (name, digest, size) of the root's files.
    files: Vec<(String, B3Digest, u64)>,
    sub: B3Digest,
}

async fn fixture() -> Fixture {
    let base = tempfile::tempdir().unwrap();
    let p = base.path().join("t");
    std::fs::create_dir_all(p.join("m-sub")).unwrap();
    for i in 0..40 {
        file(
            &p.join(format!("f{i:02}")),
            &bytes(i, 1000 + i as usize),
            false,
        );
    }
    file(&p.join("m-big"), &bytes(77, 300_000), false);
    file(&p.join("m-sub/inner"), b"inner", false);
    let nar = nix_dump(&p);
    let b = memory();
    let root = nar::ingest(&*b.blobs, &*b.dirs, &nar[..])
        .await
        .unwrap()
        .root;
    let Node::Directory { digest, .. } = &root else {
        panic!("root is a directory")
    };
    let dir = b.dirs.get(digest).await.unwrap().unwrap();
    let mut files = Vec::new();
    let mut sub = None;
    for (name, node) in dir.nodes() {
        match node {
            Node::File { digest, size, .. } => files.push((name.to_string(), *digest, *size)),
            Node::Directory { digest, .. } => sub = Some(*digest),
            _ => {}
        }
    }
    Fixture {
        nar,
        b,
        root,
        files,
        sub: sub.unwrap(),
    }
}

/// Reads the render until it fails; checks what came before is shorter than the
/// NAR (and a prefix of it when `prefix`: a substituted blob's bytes differ), and
/// returns the error.
async fn render_error(
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    f: &Fixture,
    ctx: &str,
    prefix: bool,
) -> NarError {
    let mut r = nar::render(blobs.clone(), dirs.clone(), f.root.clone());
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let err = loop {
        match r.read(&mut buf).await {
            Ok(0) => panic!("{ctx}: render ended cleanly after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break NarError::from_io(e),
        }
    };
    assert!(
        got.len() < f.nar.len(),
        "{ctx}: the whole NAR came before the error"
    );
    if prefix {
        assert!(
            f.nar.starts_with(&got),
            "{ctx}: output before the error is not a prefix"
        );
    }
    // calculate fails the same way.
    let calc = nar::calculate(&*blobs, &*dirs, &f.root).await;
    assert!(calc.is_err(), "{ctx}: calculate succeeded");
    err
}

#[tokio::test]
async fn missing_blob_mid_stream_is_an_error() {
    let f = fixture().await;
    for (name, digest, size) in f
        .files
        .iter()
        .filter(|(n, ..)| ["f20", "m-big", "f00", "f39"].contains(&n.as_str()))
    {
        let blobs = Arc::new(LyingBlobs {
            inner: f.b.blobs.clone(),
            hide: *digest,
            substitute: None,
        });
        let err = render_error(blobs, f.b.dirs.clone(), &f, name, true).await;
        assert!(
            matches!(err, NarError::BlobNotFound { digest: d, size: s } if d == *digest && s == *size),
            "{name}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains(&digest.to_string()), "{err}");
        let c: Error = err.into();
        assert!(matches!(c, Error::NotFound { what: "blob", .. }));
    }
}

#[tokio::test]
async fn blob_of_the_wrong_length_is_an_error() {
    let f = fixture().await;
    let find = |n: &str| f.files.iter().find(|(name, ..)| name == n).unwrap().clone();
    let (_, f10, s10) = find("f10");
    let (_, f11, _) = find("f11");
    let (_, f12, _) = find("f12");
    let (_, big, big_size) = find("m-big");
    // f11 is one byte longer than f10, f12 two bytes longer than f10.
    for (hide, substitute, longer, expected) in [
        (f11, f10, false, s10 + 1),
        (f10, f12, true, s10),
        (big, f10, false, big_size),
        (f10, big, true, s10),
    ] {
        let blobs = Arc::new(LyingBlobs {
            inner: f.b.blobs.clone(),
            hide,
            substitute: Some(substitute),
        });
        let ctx = format!("{hide} served as {substitute}");
        let err = render_error(blobs, f.b.dirs.clone(), &f, &ctx, false).await;
        assert!(
            matches!(err, NarError::BlobSize { digest, expected: e, longer: l, .. } if digest == hide && e == expected && l == longer),
            "{ctx}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(matches!(Error::from(err), Error::Corrupt(_)));
    }
}

#[tokio::test]
async fn missing_directory_is_an_error() {
    let f = fixture().await;
    let dirs = Arc::new(HidingDirs {
        inner: f.b.dirs.clone(),
        hide: f.sub,
    });
    let err = render_error(f.b.blobs.clone(), dirs.clone(), &f, "missing m-sub", true).await;
    assert!(
        matches!(err, NarError::DirectoryNotFound { digest } if digest == f.sub),
        "{err}"
    );
    assert!(matches!(
        Error::from(err),
        Error::NotFound {
            what: "directory",
            ..
        }
    ));
    // render_from past the missing directory needs its length: an error up front.
    let err = nar::render_from(
        f.b.blobs.clone(),
        dirs.clone(),
        f.root.clone(),
        f.nar.len() as u64 - 1,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, NarError::DirectoryNotFound { .. }), "{err}");
    assert!(nar::nar_size(&*dirs, &f.root).await.is_err());
}
