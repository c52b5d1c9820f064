//! [`MemoryPathInfoService`]: path infos in a map, for tests and `memory://`.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use cairn_castore::{BlobService, DirectoryService, Error};
use futures::stream::BoxStream;

use super::{PathInfo, PathInfoService, check_content};

/// Path infos in memory, lost when dropped.
#[derive(Clone)]
pub struct MemoryPathInfoService {
    entries: Arc<RwLock<BTreeMap<[u8; 20], PathInfo>>>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
}

impl MemoryPathInfoService {
    /// An empty service whose `put` checks content against `blobs` and `directories`.
    pub fn new(blobs: Arc<dyn BlobService>, directories: Arc<dyn DirectoryService>) -> Self {
        Self {
            entries: Arc::default(),
            blobs,
            directories,
        }
    }
}

#[async_trait]
impl PathInfoService for MemoryPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        Ok(entries.get(&digest).cloned())
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        check_content(&info, self.blobs.as_ref(), self.directories.as_ref()).await?;
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.insert(*info.store_path.digest(), info.clone());
        Ok(info)
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        let all: Vec<_> = {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            entries.values().cloned().map(Ok).collect()
        };
        Box::pin(futures::stream::iter(all))
    }
}
