//! [`MemoryPathInfoService`]: path infos in a map, for tests and `memory://`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use cairn_castore::{BlobService, DirectoryService, Error};
use futures::stream::BoxStream;

use super::{PathInfo, PathInfoService, check_content};

/// Path infos in memory, lost when dropped.
#[derive(Clone)]
pub struct MemoryPathInfoService {
    entries: Arc<RwLock<BTreeMap<[u8; 20], PathInfo>>>,
    pins: Arc<RwLock<BTreeSet<[u8; 20]>>>,
    access: Arc<RwLock<HashMap<[u8; 20], u64>>>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
}

impl MemoryPathInfoService {
    /// An empty service whose `put` checks content against `blobs` and `directories`.
    pub fn new(blobs: Arc<dyn BlobService>, directories: Arc<dyn DirectoryService>) -> Self {
        Self {
            entries: Arc::default(),
            pins: Arc::default(),
            access: Arc::default(),
            blobs,
            directories,
        }
    }
}

#[async_trait]
impl PathInfoService for MemoryPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        let found = {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            entries.get(&digest).cloned()
        };
        if found.is_some() {
            self.note_access(digest);
        }
        Ok(found)
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        check_content(&info, self.blobs.as_ref(), self.directories.as_ref()).await?;
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.insert(*info.store_path.digest(), info.clone());
        drop(entries);
        self.note_access(*info.store_path.digest());
        Ok(info)
    }

    fn note_access(&self, digest: [u8; 20]) {
        let mut access = self.access.write().unwrap_or_else(PoisonError::into_inner);
        access.insert(digest, super::now_secs());
    }

    async fn access_times(&self) -> Result<HashMap<[u8; 20], u64>, Error> {
        Ok(self
            .access
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }

    async fn delete(&self, digests: &[[u8; 20]]) -> Result<(), Error> {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let mut access = self.access.write().unwrap_or_else(PoisonError::into_inner);
        for d in digests {
            entries.remove(d);
            access.remove(d);
        }
        Ok(())
    }

    async fn pins(&self) -> Result<Vec<[u8; 20]>, Error> {
        let pins = self.pins.read().unwrap_or_else(PoisonError::into_inner);
        Ok(pins.iter().copied().collect())
    }

    async fn set_pinned(&self, digests: &[[u8; 20]], pinned: bool) -> Result<(), Error> {
        let mut pins = self.pins.write().unwrap_or_else(PoisonError::into_inner);
        for d in digests {
            if pinned {
                pins.insert(*d);
            } else {
                pins.remove(d);
            }
        }
        Ok(())
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        let all: Vec<_> = {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            entries.values().cloned().map(Ok).collect()
        };
        Box::pin(futures::stream::iter(all))
    }
}
