//! Validation of an uploaded closure, shared by every storing backend.
//!
//! # Legacy sizes
//!
//! tvix-store's last release computes a child directory's `size` as 2 x direct
//! entries + the sum of the child sizes (WIRE.md). We accept that value from
//! clients but always store and emit the correct one. Because a directory's digest
//! covers its children's `size` fields, a directory holding a legacy size gets a
//! different digest once corrected, and so does every ancestor. The validator
//! therefore canonicalises the closure as it arrives: it remembers, for each digest
//! *as the client computed it* (of the directory as sent), the canonical digest, and
//! rewrites references in later directories to the canonical digests. The closure
//! is stored under canonical digests only, and `close` returns the canonical digest
//! of the root, which such a client must use from then on (its own digest of a
//! directory with legacy sizes is not retrievable). References to already stored
//! directories must use their (canonical) stored digest.
//!
//! Clients that send correct sizes see no rewriting: every digest stays theirs.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{DirectoryPutter, DirectoryService};
use crate::{B3Digest, Directory, DirectoryError, Error};

/// Checks a closure arriving leaves first and root last: each directory may only
/// reference directories sent earlier in the same closure or already stored (the
/// server's choice in WIRE.md), with the right `size` (or the legacy one, see the
/// [module docs](self)). Sending the same directory twice is allowed; directories
/// not reachable from the root are kept too.
#[derive(Default)]
pub struct ClosureValidator {
    /// Digest as sent -> (canonical digest, size).
    received: HashMap<B3Digest, (B3Digest, u64)>,
    /// Canonical digest -> position in `closure`.
    index: HashMap<B3Digest, usize>,
    /// The accepted closure, canonical, leaves first, each digest once.
    closure: Vec<(B3Digest, Directory)>,
    /// Canonical digest -> legacy size, computed only when a client sends one.
    legacy: HashMap<B3Digest, u64>,
    /// Canonical digest of the last directory added.
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
        mut dir: Directory,
        stored: &S,
    ) -> Result<(), Error> {
        let index = self.count;
        self.count += 1;
        let invalid = |source| Error::InvalidDirectory { index, source };

        let sent_digest = dir.digest();
        let children: Vec<_> = dir
            .directories()
            .map(|(name, digest, size)| (name.clone(), *digest, size))
            .collect();
        let mut changed = false;
        for (name, digest, claimed) in children {
            let (canonical, size) = match self.received.get(&digest) {
                Some(known) => *known,
                None => match stored.get(&digest).await? {
                    Some(child) => {
                        let known = (digest, child.size());
                        self.received.insert(digest, known);
                        known
                    }
                    None => return Err(invalid(DirectoryError::UnknownReference { name, digest })),
                },
            };
            if claimed != size {
                let legacy = self.legacy_size(canonical, stored).await?;
                if claimed != legacy {
                    return Err(invalid(DirectoryError::WrongSize {
                        name,
                        digest,
                        got: claimed,
                        expected: size,
                        legacy,
                    }));
                }
            }
            if claimed != size || canonical != digest {
                dir.set_child_directory(&name, canonical, size)
                    .map_err(invalid)?;
                changed = true;
            }
        }

        let digest = if changed { dir.digest() } else { sent_digest };
        self.received.insert(sent_digest, (digest, dir.size()));
        self.last = Some(digest);
        if !self.index.contains_key(&digest) {
            self.index.insert(digest, self.closure.len());
            self.closure.push((digest, dir));
        }
        Ok(())
    }

    /// The canonical digest of the root (the last directory added) and the closure,
    /// leaves first, each digest once. Fails if nothing was added.
    pub fn finish(self) -> Result<(B3Digest, Vec<(B3Digest, Directory)>), Error> {
        match self.last {
            Some(root) => Ok((root, self.closure)),
            None => Err(Error::InvalidArgument("no directories were sent".into())),
        }
    }

    /// The legacy size of a canonical directory in the closure or in `stored`,
    /// computed bottom-up without recursion.
    async fn legacy_size<S: DirectoryService + ?Sized>(
        &mut self,
        root: B3Digest,
        stored: &S,
    ) -> Result<u64, Error> {
        let mut stack = vec![(root, None::<Directory>)];
        while let Some((digest, expanded)) = stack.pop() {
            if self.legacy.contains_key(&digest) {
                continue;
            }
            match expanded {
                None => {
                    let dir = match self.index.get(&digest) {
                        Some(&i) => self.closure[i].1.clone(),
                        None => stored.get(&digest).await?.ok_or_else(|| {
                            Error::Corrupt(format!("stored directory {digest} is missing"))
                        })?,
                    };
                    let pending: Vec<B3Digest> = dir
                        .directories()
                        .map(|(_, d, _)| *d)
                        .filter(|d| !self.legacy.contains_key(d))
                        .collect();
                    if stack.len() > 1_000_000 {
                        return Err(Error::Corrupt("directory graph too deep or cyclic".into()));
                    }
                    stack.push((digest, Some(dir)));
                    stack.extend(pending.into_iter().map(|d| (d, None)));
                }
                Some(dir) => {
                    let mut missing = false;
                    let size = dir.legacy_size(|c| {
                        self.legacy.get(c).copied().unwrap_or_else(|| {
                            missing = true;
                            0
                        })
                    });
                    if missing {
                        return Err(Error::Corrupt(format!(
                            "directory graph below {digest} is cyclic"
                        )));
                    }
                    // An overflowing legacy size cannot equal any u64 a client sent.
                    self.legacy.insert(digest, size.unwrap_or(u64::MAX));
                }
            }
        }
        self.legacy
            .get(&root)
            .copied()
            .ok_or_else(|| Error::Corrupt(format!("legacy size of {root} not computed")))
    }
}

/// A backend's atomic write of a validated closure.
#[async_trait]
pub trait DirectoryCommit: Send + Sync {
    /// Stores the closure, leaves first, all or nothing. Its directories are
    /// canonical and keyed by their digests; some may already be stored.
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
