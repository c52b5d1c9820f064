//! [`MemoryDirectoryService`]: directories in a hash map, for tests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{DirectoryCommit, DirectoryPutter, DirectoryService, ValidatingPutter};
use crate::{B3Digest, Directory, Error};

/// Keeps every directory in memory.
#[derive(Clone, Default)]
pub struct MemoryDirectoryService {
    dirs: Arc<RwLock<HashMap<B3Digest, Directory>>>,
}

impl MemoryDirectoryService {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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
            .cloned())
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
            map.entry(digest).or_insert(dir);
        }
        Ok(())
    }
}
