//! [`CachingPathInfoService`]: a bounded in-memory cache in front of another
//! [`PathInfoService`], so repeated lookups (narinfo requests) skip the backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cairn_castore::{Error, Node};
use futures::stream::BoxStream;

use super::{PathInfo, PathInfoService};
use crate::lru::Lru;

/// Caches what `inner.get` found, at most `capacity` entries, least recently used
/// evicted first.
///
/// Coherent only if every write to `inner` goes through this instance (the daemon:
/// one instance shared by its gRPC server and its binary cache, other processes
/// reaching the data directory through it). Absent paths are not cached, so a
/// later `put` is visible at once. A `put` drops the cached entry rather than
/// inserting what it stored: two concurrent `put`s of one path could otherwise
/// leave the older in the cache; the next `get` reads the backend again.
pub struct CachingPathInfoService {
    inner: Arc<dyn PathInfoService>,
    capacity: usize,
    state: Mutex<State>,
    /// Lookups answered from the cache, and those that went to `inner` (for
    /// monitoring: [`CachingPathInfoService::hits_and_misses`]).
    hits: AtomicU64,
    misses: AtomicU64,
}

struct State {
    lru: Lru<[u8; 20], PathInfo>,
    /// Bumped by every `put` after `inner.put` returns: a `get` that read the
    /// backend while it changed must not cache what it read, which may be stale.
    epoch: u64,
}

impl CachingPathInfoService {
    /// A cache of at most `capacity` entries in front of `inner` (0 caches nothing).
    pub fn new(inner: Arc<dyn PathInfoService>, capacity: usize) -> Self {
        Self {
            inner,
            capacity,
            state: Mutex::new(State {
                lru: Lru::new(capacity),
                epoch: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Lookups answered from the cache and lookups that were not, since it was
    /// made.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// How many entries are cached now.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent between statements, so a panic elsewhere leaves
        // it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PathInfoService for CachingPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        let epoch = {
            let mut state = self.lock();
            if let Some(info) = state.lru.get(&digest) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let info = info.clone();
                drop(state);
                self.inner.note_access(digest);
                return Ok(Some(info));
            }
            state.epoch
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let found = self.inner.get(digest).await?;
        if let Some(info) = &found
            && self.capacity > 0
        {
            let mut state = self.lock();
            if state.epoch == epoch && !state.lru.contains_key(&digest) {
                state.lru.insert(digest, info.clone(), 1);
            }
        }
        Ok(found)
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let digest = *info.store_path.digest();
        let result = self.inner.put(info).await;
        // Even on error: the backend may have stored it before failing.
        let mut state = self.lock();
        state.epoch += 1;
        state.lru.remove(&digest);
        result
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        self.inner.list()
    }

    async fn referrers(
        &self,
        digest: [u8; 20],
    ) -> Result<Vec<cairn_nix::store_path::StorePath>, Error> {
        self.inner.referrers(digest).await
    }

    async fn cached_nar(&self, node: &Node) -> Result<Option<(u64, [u8; 32])>, Error> {
        self.inner.cached_nar(node).await
    }

    async fn remember_nar(&self, node: &Node, nar: (u64, [u8; 32])) -> Result<(), Error> {
        self.inner.remember_nar(node, nar).await
    }

    fn note_access(&self, digest: [u8; 20]) {
        self.inner.note_access(digest);
    }

    async fn access_times(&self) -> Result<HashMap<[u8; 20], u64>, Error> {
        self.inner.access_times().await
    }

    async fn delete(&self, digests: &[[u8; 20]]) -> Result<(), Error> {
        let result = self.inner.delete(digests).await;
        // Even on error: some may be gone.
        let mut state = self.lock();
        state.epoch += 1;
        for d in digests {
            state.lru.remove(d);
        }
        result
    }

    async fn pins(&self) -> Result<Vec<[u8; 20]>, Error> {
        self.inner.pins().await
    }

    async fn set_pinned(&self, digests: &[[u8; 20]], pinned: bool) -> Result<(), Error> {
        self.inner.set_pinned(digests, pinned).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::pathinfo::MemoryPathInfoService;

    /// Counts the backend's `get`s, to tell cache hits from misses.
    struct Counting {
        inner: MemoryPathInfoService,
        gets: AtomicUsize,
    }

    #[async_trait]
    impl PathInfoService for Counting {
        async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(digest).await
        }
        async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
            self.inner.put(info).await
        }
        fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
            self.inner.list()
        }
    }

    fn setup(capacity: usize) -> (Arc<Counting>, CachingPathInfoService) {
        let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let counting = Arc::new(Counting {
            inner: MemoryPathInfoService::new(blobs, dirs),
            gets: AtomicUsize::new(0),
        });
        let cache = CachingPathInfoService::new(counting.clone(), capacity);
        (counting, cache)
    }

    /// A symlink-rooted entry (no castore content needed) for digest byte `n`.
    fn info(n: u8, target: &str) -> PathInfo {
        use cairn_nix::store_path::StorePath;
        PathInfo {
            store_path: StorePath::new([n; 20], &format!("p{n}")).unwrap(),
            node: Node::Symlink {
                target: cairn_castore::SymlinkTarget::try_from(target).unwrap(),
            },
            references: vec![],
            nar_size: 128,
            nar_sha256: [n; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    #[tokio::test]
    async fn second_get_is_a_hit() {
        let (backend, cache) = setup(8);
        let a = info(1, "a");
        cache.put(a.clone()).await.unwrap();
        assert_eq!(cache.get([1; 20]).await.unwrap(), Some(a.clone()));
        assert_eq!(cache.get([1; 20]).await.unwrap(), Some(a));
        assert_eq!(backend.gets.load(Ordering::SeqCst), 1);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn put_replaces_a_cached_entry() {
        let (_, cache) = setup(8);
        cache.put(info(1, "old")).await.unwrap();
        assert_eq!(cache.get([1; 20]).await.unwrap(), Some(info(1, "old")));
        cache.put(info(1, "new")).await.unwrap();
        assert_eq!(cache.get([1; 20]).await.unwrap(), Some(info(1, "new")));
    }

    #[tokio::test]
    async fn absent_is_not_cached() {
        let (backend, cache) = setup(8);
        assert_eq!(cache.get([2; 20]).await.unwrap(), None);
        assert!(cache.is_empty());
        // Written behind the cache's back: still found, so nothing negative was kept.
        backend.inner.put(info(2, "late")).await.unwrap();
        assert_eq!(cache.get([2; 20]).await.unwrap(), Some(info(2, "late")));
        assert_eq!(backend.gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bounded_evicting_least_recently_used() {
        let (backend, cache) = setup(3);
        for n in 1..=4 {
            cache.put(info(n, "t")).await.unwrap();
        }
        for n in 1..=3 {
            cache.get([n; 20]).await.unwrap();
        }
        // Use 1 again so 2 is now the least recently used.
        cache.get([1; 20]).await.unwrap();
        assert_eq!(backend.gets.load(Ordering::SeqCst), 3);
        cache.get([4; 20]).await.unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(backend.gets.load(Ordering::SeqCst), 4);
        // 1, 3 and 4 are hits; 2 was evicted.
        for n in [1, 3, 4] {
            assert_eq!(cache.get([n; 20]).await.unwrap(), Some(info(n, "t")));
        }
        assert_eq!(backend.gets.load(Ordering::SeqCst), 4);
        assert_eq!(cache.get([2; 20]).await.unwrap(), Some(info(2, "t")));
        assert_eq!(backend.gets.load(Ordering::SeqCst), 5);
        assert_eq!(cache.len(), 3);
    }

    #[tokio::test]
    async fn zero_capacity_caches_nothing() {
        let (backend, cache) = setup(0);
        cache.put(info(1, "t")).await.unwrap();
        cache.get([1; 20]).await.unwrap();
        cache.get([1; 20]).await.unwrap();
        assert_eq!(backend.gets.load(Ordering::SeqCst), 2);
        assert!(cache.is_empty());
    }
}
