//! [`DirectoryService`]: storage of [`Directory`] listings by digest, and upload of
//! whole closures through a [`DirectoryPutter`].

mod closure;
mod grpc;
mod memory;
mod postgres;

use std::collections::{HashSet, VecDeque};

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use closure::{ClosureValidator, DirectoryCommit, ValidatingPutter};
pub use grpc::GrpcDirectoryService;
pub use memory::MemoryDirectoryService;
pub use postgres::{DEFAULT_DIR_CACHE, PgDirectoryService};

use crate::{B3Digest, Directory, Error};

/// Directory storage by digest.
///
/// Contract for every backend (checked by `tests/conformance.rs`):
/// - An absent directory is `Ok(None)` from [`DirectoryService::get`]; a recursive get
///   of an absent root yields one `NotFound` error.
/// - What comes out is valid and consistent: each directory is exactly what was
///   put, hashes to the digest it is stored under, every child it references is
///   stored, and every `size` matches its child by one of the two rules (see
///   [`ClosureValidator`]). The gRPC server turns the `NotFound` of a recursive
///   get into an empty stream, as tvix answers.
/// - [`DirectoryService::get_recursive`] yields the root first, then its descendants
///   breadth-first, each digest once, each after a directory referencing it.
/// - Uploads go through a [`DirectoryPutter`], leaves first and root last, and are
///   all-or-nothing; see [`ClosureValidator`] for the rules, which every backend
///   applies in full (the gRPC client by letting the server apply them).
#[async_trait]
pub trait DirectoryService: Send + Sync {
    /// The directory with this digest, or `None`.
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error>;

    /// The closure of `root`: root first, then breadth-first, each digest once.
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        traverse_breadth_first(self, *root)
    }

    /// Stores one directory whose child directories are already stored; returns its
    /// digest. A closure of one, with the same rules as [`Self::put_multiple_start`].
    async fn put(&self, directory: Directory) -> Result<B3Digest, Error> {
        let mut putter = self.put_multiple_start();
        putter.put(directory).await?;
        putter.close().await
    }

    /// Starts the upload of a closure, leaves first and root last.
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_>;
}

/// An upload of a closure in progress. Nothing is visible until
/// [`DirectoryPutter::close`] succeeds; dropping the putter, or any error, discards
/// everything sent through it. After an error every later call fails too.
#[async_trait]
pub trait DirectoryPutter: Send {
    /// Sends the next directory; it may only reference directories sent earlier
    /// through this putter or already stored.
    async fn put(&mut self, directory: Directory) -> Result<(), Error>;

    /// Validates and stores the whole closure atomically and returns the digest of the
    /// last directory sent (the root) as stored.
    async fn close(&mut self) -> Result<B3Digest, Error>;
}

/// [`DirectoryService::get_recursive`] in terms of [`DirectoryService::get`].
pub fn traverse_breadth_first<S: DirectoryService + ?Sized>(
    service: &S,
    root: B3Digest,
) -> BoxStream<'_, Result<Directory, Error>> {
    Box::pin(async_stream::try_stream! {
        let mut queue = VecDeque::from([root]);
        let mut seen = HashSet::from([root]);
        while let Some(digest) = queue.pop_front() {
            let dir = match service.get(&digest).await? {
                Some(dir) => dir,
                None if digest == root => Err(Error::NotFound { what: "directory", digest })?,
                None => Err(Error::Corrupt(format!(
                    "directory {digest} is referenced in the closure of {root} but missing"
                )))?,
            };
            for (_, child, _) in dir.directories() {
                if seen.insert(*child) {
                    queue.push_back(*child);
                }
            }
            yield dir;
        }
    })
}

#[async_trait]
impl<T: DirectoryService + ?Sized> DirectoryService for std::sync::Arc<T> {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        (**self).get(digest).await
    }
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        (**self).get_recursive(root)
    }
    async fn put(&self, directory: Directory) -> Result<B3Digest, Error> {
        (**self).put(directory).await
    }
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        (**self).put_multiple_start()
    }
}

/// [`DirectoryService::get_recursive`] of a shared service, as a `'static` stream
/// (for servers that hand the stream to a transport).
pub fn get_recursive_owned(
    service: std::sync::Arc<dyn DirectoryService>,
    root: B3Digest,
) -> BoxStream<'static, Result<Directory, Error>> {
    Box::pin(async_stream::stream! {
        let mut stream = service.get_recursive(&root);
        while let Some(item) = futures::StreamExt::next(&mut stream).await {
            yield item;
        }
    })
}
