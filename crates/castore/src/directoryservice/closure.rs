//! Validation of an uploaded closure, shared by every storing backend.
//!
//! # Sizes
//!
//! Two rules for a child directory's `size` exist (WIRE.md): tvix's (2 x direct
//! entries + the recorded child sizes), which tvix-store and its continuation
//! compute and which cairn emits, and the proto comment's (direct entries + the
//! recorded child sizes). Each edge may use either; both are functions of the
//! child's own entries ([`Directory::size`], [`Directory::proto_size`]), so no
//! edge needs more than the child it points at. Nothing is rewritten: a
//! directory is stored exactly as sent, under the digest of its encoding, which
//! is the digest the client computed itself.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use super::{DirectoryPutter, DirectoryService};
use crate::{B3Digest, Directory, DirectoryError, Error};

/// Checks a closure arriving leaves first and root last: each directory may only
/// reference directories sent earlier in the same closure or already stored (the
/// server's choice in WIRE.md), with a `size` by either rule (see the
/// [module docs](self)). Sending the same directory twice is allowed; a directory
/// the root does not reach is refused when the closure is finished, as tvix does.
#[derive(Default)]
pub struct ClosureValidator {
    /// Digest -> position in `closure`.
    index: HashMap<B3Digest, usize>,
    /// The accepted closure, leaves first, each digest once.
    closure: Vec<(B3Digest, Directory)>,
    /// Position in the stream of each entry of `closure` (its first sending).
    sent_at: Vec<usize>,
    /// Stored directories referenced so far: digest -> (size, proto size).
    stored: HashMap<B3Digest, (u64, u64)>,
    /// Digest of the last directory added.
    last: Option<B3Digest>,
    /// Directories added so far (for error messages).
    count: usize,
}

impl ClosureValidator {
    /// An empty closure.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next directory against those added before and those `stored`
    /// holds.
    pub async fn add<S: DirectoryService + ?Sized>(
        &mut self,
        dir: Directory,
        stored: &S,
    ) -> Result<(), Error> {
        let index = self.count;
        self.count += 1;
        let invalid = |source| Error::InvalidDirectory { index, source };

        for (name, digest, claimed) in dir.directories() {
            let (size, proto) = match self.index.get(digest) {
                Some(&i) => {
                    let child = &self.closure[i].1;
                    (child.size(), child.proto_size())
                }
                None => match self.stored.get(digest) {
                    Some(known) => *known,
                    None => match stored.get(digest).await? {
                        Some(child) => {
                            let known = (child.size(), child.proto_size());
                            self.stored.insert(*digest, known);
                            known
                        }
                        None => {
                            return Err(invalid(DirectoryError::UnknownReference {
                                name: name.clone(),
                                digest: *digest,
                            }));
                        }
                    },
                },
            };
            if claimed != size && claimed != proto {
                return Err(invalid(DirectoryError::WrongSize {
                    name: name.clone(),
                    digest: *digest,
                    got: claimed,
                    expected: size,
                    proto,
                }));
            }
        }

        let digest = dir.digest();
        self.last = Some(digest);
        if !self.index.contains_key(&digest) {
            self.index.insert(digest, self.closure.len());
            self.closure.push((digest, dir));
            self.sent_at.push(index);
        }
        Ok(())
    }

    /// The digest of the root (the last directory added) and the closure, leaves
    /// first, each digest once. Fails if nothing was added, or if the root does
    /// not reach every directory sent (naming one that it does not).
    pub fn finish(self) -> Result<(B3Digest, Vec<(B3Digest, Directory)>), Error> {
        let Some(root) = self.last else {
            return Err(Error::InvalidArgument("no directories were sent".into()));
        };
        // Leaves first means a directory comes before everything referencing it,
        // so one pass from the root backwards marks everything reachable.
        let mut reached = HashSet::from([root]);
        for (digest, dir) in self.closure.iter().rev() {
            if reached.contains(digest) {
                reached.extend(
                    dir.directories()
                        .map(|(_, child, _)| *child)
                        .filter(|c| self.index.contains_key(c)),
                );
            }
        }
        if let Some((i, (digest, _))) = self
            .closure
            .iter()
            .enumerate()
            .find(|(_, (d, _))| !reached.contains(d))
        {
            return Err(Error::InvalidDirectory {
                index: self.sent_at[i],
                source: DirectoryError::Unreachable(*digest),
            });
        }
        Ok((root, self.closure))
    }
}

/// A backend's atomic write of a validated closure.
#[async_trait]
pub trait DirectoryCommit: Send + Sync {
    /// Stores the closure, leaves first, all or nothing. Its directories are
    /// keyed by their digests; some may already be stored.
    async fn commit(&self, closure: Vec<(B3Digest, Directory)>) -> Result<(), Error>;
}

/// The [`DirectoryPutter`] of storing backends: a [`ClosureValidator`] in front of
/// the backend's [`DirectoryCommit`].
pub struct ValidatingPutter<'a, S: ?Sized> {
    service: &'a S,
    /// `None` after an error or after close.
    validator: Option<ClosureValidator>,
}

impl<'a, S: ?Sized> ValidatingPutter<'a, S> {
    /// A putter storing into `service`.
    pub fn new(service: &'a S) -> Self {
        Self {
            service,
            validator: Some(ClosureValidator::new()),
        }
    }
}

fn spent() -> Error {
    Error::InvalidArgument("directory putter already closed or failed".into())
}

#[async_trait]
impl<S: DirectoryService + DirectoryCommit + ?Sized> DirectoryPutter for ValidatingPutter<'_, S> {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        let mut validator = self.validator.take().ok_or_else(spent)?;
        validator.add(directory, self.service).await?;
        self.validator = Some(validator);
        Ok(())
    }

    async fn close(&mut self) -> Result<B3Digest, Error> {
        let (root, closure) = self.validator.take().ok_or_else(spent)?.finish()?;
        self.service.commit(closure).await?;
        Ok(root)
    }
}
