//! [`MemoryDirectoryService`]: directories in a hash map, for tests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use async_trait::async_trait;

use super::{DirectoryCommit, DirectoryPutter, DirectoryService, ValidatingPutter};
use crate::{B3Digest, Directory, Error};

/// Keeps every directory in memory.
#[derive(Clone, Default)]
pub struct MemoryDirectoryService {
    dirs: Map,
}

/// Digest -> (directory, when last written), the time for
/// [`crate::gc::MemoryCollector`]'s grace period.
pub(crate) type Map = Arc<RwLock<HashMap<B3Digest, (Directory, Instant)>>>;

impl MemoryDirectoryService {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The map itself, for the collector.
    pub(crate) fn written(&self) -> Map {
        self.dirs.clone()
    }
}

fn poisoned() -> Error {
    Error::Storage("directory map lock poisoned".into())
}

#[async_trait]
impl DirectoryService for MemoryDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        Ok(self
            .dirs
            .read()
            .map_err(|_| poisoned())?
            .get(digest)
            .map(|(d, _)| d.clone()))
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(ValidatingPutter::new(self))
    }
}

#[async_trait]
impl DirectoryCommit for MemoryDirectoryService {
    async fn commit(&self, closure: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        let mut map = self.dirs.write().map_err(|_| poisoned())?;
        for (digest, dir) in closure {
            map.entry(digest)
                .and_modify(|e| e.1 = Instant::now())
                .or_insert((dir, Instant::now()));
        }
        Ok(())
    }
}
