//! Garbage collection of castore content: what is live, and the collectors of
//! the backends that can delete (the embedded store in `embedded::gc`, the memory
//! services here).
//!
//! Liveness: a directory or blob is live while a root node handed to
//! [`Collector::collect`] reaches it (the root nodes of the registered store
//! paths: the store layer decides which paths live). Besides, every object
//! written or found by a writer's lookup within the grace period is kept, with
//! everything it reaches: a client puts blobs, then directories, then its path
//! info, so content not yet registered is never swept while its upload may be
//! going on. A collector never deletes what it cannot prove dead: a missing
//! directory under a root aborts the collection.
//!
//! Roots are read before the sweep, so a path registered in between is not
//! among them. A collection therefore begins ([`Collector::begin`]) before
//! its roots are read, and keeps, besides the grace period, everything
//! written or found by a writer since it began ([`GcOptions::began`]): a path
//! registered late had its content written or looked up (a path info check
//! looks up its root) after that, so it is kept with all it reaches. Without
//! this, a grace period shorter than a collection would let a sweep remove
//! the content of a path registered while it ran.

use std::collections::HashSet;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::blobservice::MemoryBlobService;
use crate::directoryservice::MemoryDirectoryService;
use crate::{B3Digest, Directory, Error, Node};

/// The default grace period: content written within it is never swept.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// How a collection runs.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Content written (or found by a writer) within this long ago is kept.
    pub grace: Duration,
    /// Count what would go; delete nothing.
    pub dry_run: bool,
    /// When the collection began (before its roots were read): content
    /// written or found by a writer at or after it is kept, whatever the
    /// grace period.
    pub began: Option<Instant>,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            dry_run: false,
            began: None,
        }
    }
}

/// A collection in progress, from [`Collector::begin`]: while it lives, the
/// backend keeps the record of what writers touch (see the module doc).
pub struct Epoch {
    began: Instant,
    _hold: Option<Box<dyn Send + Sync>>,
}

impl Epoch {
    /// An epoch beginning now, holding `hold` (dropped when the epoch ends).
    pub fn new(hold: Option<Box<dyn Send + Sync>>) -> Self {
        Self {
            began: Instant::now(),
            _hold: hold,
        }
    }

    /// When it began.
    pub fn began(&self) -> Instant {
        self.began
    }
}

/// What a collection removed (or, dry, would remove).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Directories removed.
    pub directories: u64,
    /// Blobs removed (a blob of one chunk counts here, not in `chunks`).
    pub blobs: u64,
    /// Chunks of blobs of several chunks removed.
    pub chunks: u64,
    /// Stored (compressed) bytes of the removed objects.
    pub stored_bytes: u64,
    /// Disk given back (allocated blocks before minus after; 0 when dry).
    pub disk_freed: u64,
    /// Stored bytes of live objects copied out of mostly dead packs.
    pub bytes_moved: u64,
    /// Pack files deleted after their live objects moved.
    pub packs_deleted: u64,
}

impl std::ops::AddAssign for GcReport {
    fn add_assign(&mut self, o: Self) {
        self.directories += o.directories;
        self.blobs += o.blobs;
        self.chunks += o.chunks;
        self.stored_bytes += o.stored_bytes;
        self.disk_freed += o.disk_freed;
        self.bytes_moved += o.bytes_moved;
        self.packs_deleted += o.packs_deleted;
    }
}

/// A castore backend that can delete what no root reaches.
#[async_trait]
pub trait Collector: Send + Sync {
    /// Removes every directory and blob that none of `roots` reaches and that
    /// was not written within `opts.grace`; gives the disk back where the
    /// backend can.
    async fn collect(&self, roots: Vec<Node>, opts: GcOptions) -> Result<GcReport, Error>;

    /// Begins a collection: called before its roots are read, held until it
    /// ends; its instant goes into [`GcOptions::began`].
    fn begin(&self) -> Epoch {
        Epoch::new(None)
    }

    /// Disk taken by the store, in bytes (allocated blocks).
    fn disk_bytes(&self) -> Result<u64, Error>;
}

/// A set of digests kept compact for collections over millions of objects:
/// one sorted vector (32 bytes a digest; a `HashSet` takes about twice that
/// at a million, and more while it grows), and a small hash set of recent
/// inserts merged into it once it reaches an eighth of its size.
#[derive(Debug, Default)]
pub struct DigestSet {
    sorted: Vec<[u8; 32]>,
    pending: HashSet<[u8; 32]>,
}

impl DigestSet {
    /// Adds `d`; whether it was new.
    pub fn insert(&mut self, d: [u8; 32]) -> bool {
        if self.sorted.binary_search(&d).is_ok() || !self.pending.insert(d) {
            return false;
        }
        if self.pending.len() >= (self.sorted.len() / 8).max(1 << 14) {
            self.settle();
        }
        true
    }

    /// Whether `d` is in.
    pub fn contains(&self, d: &[u8; 32]) -> bool {
        self.sorted.binary_search(d).is_ok() || self.pending.contains(d)
    }

    /// How many digests are in.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.pending.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Merges the recent inserts into the sorted vector (backwards, in
    /// place: no second copy of it).
    fn settle(&mut self) {
        let mut p: Vec<[u8; 32]> = self.pending.drain().collect();
        self.pending = HashSet::new();
        p.sort_unstable();
        let (n, m) = (self.sorted.len(), p.len());
        self.sorted.reserve_exact(m);
        self.sorted.resize(n + m, [0; 32]);
        let (mut i, mut j) = (n, m);
        for k in (0..n + m).rev() {
            if j == 0 {
                break;
            }
            if i > 0 && self.sorted[i - 1] > p[j - 1] {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[k] = p[j - 1];
                j -= 1;
            }
        }
    }
}

impl Extend<[u8; 32]> for DigestSet {
    fn extend<I: IntoIterator<Item = [u8; 32]>>(&mut self, iter: I) {
        for d in iter {
            self.insert(d);
        }
    }
}

/// Directories and blobs some root reaches.
#[derive(Debug, Default)]
pub struct Live {
    /// Reached directories.
    pub directories: DigestSet,
    /// Reached blobs (file contents).
    pub blobs: DigestSet,
}

impl Live {
    /// Marks `node` (a root) live, without following a directory yet.
    fn add_root(&mut self, node: &Node, todo: &mut Vec<B3Digest>) {
        match node {
            Node::Directory { digest, .. } => {
                if self.directories.insert(*digest.as_bytes()) {
                    todo.push(*digest);
                }
            }
            Node::File { digest, .. } => {
                self.blobs.insert(*digest.as_bytes());
            }
            Node::Symlink { .. } => {}
        }
    }
}

/// Adds to `live` everything `roots` and the directories `extra_dirs` reach,
/// reading directories with `get` one at a time (no recursion; each directory
/// read once, and none `live` holds already). A directory that is missing is an
/// error: what is below it cannot be known.
pub fn mark_with(
    live: &mut Live,
    roots: &[Node],
    extra_dirs: impl IntoIterator<Item = B3Digest>,
    mut get: impl FnMut(&B3Digest) -> Result<Option<Directory>, Error>,
) -> Result<(), Error> {
    let mut todo = Vec::new();
    for r in roots {
        live.add_root(r, &mut todo);
    }
    for d in extra_dirs {
        live.add_root(&Node::Directory { digest: d, size: 0 }, &mut todo);
    }
    while let Some(d) = todo.pop() {
        let Some(dir) = get(&d)? else {
            return Err(Error::Corrupt(format!(
                "directory {d} is reachable from live content but missing: nothing collected"
            )));
        };
        for (_, node) in dir.nodes() {
            live.add_root(node, &mut todo);
        }
    }
    Ok(())
}

/// The memory services as one collectable store (tests, `memory://`).
#[derive(Clone)]
pub struct MemoryCollector {
    /// The blobs.
    pub blobs: MemoryBlobService,
    /// The directories.
    pub directories: MemoryDirectoryService,
}

#[async_trait]
impl Collector for MemoryCollector {
    async fn collect(&self, roots: Vec<Node>, opts: GcOptions) -> Result<GcReport, Error> {
        let now = Instant::now();
        let young = |t: Instant| {
            now.saturating_duration_since(t) < opts.grace || opts.began.is_some_and(|b| t >= b)
        };
        let young_dirs: Vec<B3Digest> = {
            let map = self.directories.written();
            let map = map.read().unwrap_or_else(PoisonError::into_inner);
            map.iter()
                .filter(|(_, (_, t))| young(*t))
                .map(|(d, _)| *d)
                .collect()
        };
        let mut live = Live::default();
        mark_with(&mut live, &roots, young_dirs, |d| {
            let map = self.directories.written();
            let map = map.read().unwrap_or_else(PoisonError::into_inner);
            Ok(map.get(d).map(|(dir, _)| dir.clone()))
        })?;
        let mut report = GcReport::default();
        let (n, bytes) = sweep_map(
            &self.directories.written(),
            |d| live.directories.contains(d.as_bytes()),
            &young,
            |d| d.encode().len() as u64,
            opts.dry_run,
        );
        report.directories = n;
        report.stored_bytes += bytes;
        let (n, bytes) = sweep_map(
            &self.blobs.written(),
            |d| live.blobs.contains(d.as_bytes()),
            &young,
            |b| b.len() as u64,
            opts.dry_run,
        );
        report.blobs = n;
        report.stored_bytes += bytes;
        if !opts.dry_run {
            report.disk_freed = report.stored_bytes;
        }
        Ok(report)
    }

    fn disk_bytes(&self) -> Result<u64, Error> {
        let blobs = self.blobs.written();
        let blobs = blobs.read().unwrap_or_else(PoisonError::into_inner);
        let dirs = self.directories.written();
        let dirs = dirs.read().unwrap_or_else(PoisonError::into_inner);
        Ok(blobs.values().map(|(b, _)| b.len() as u64).sum::<u64>()
            + dirs
                .values()
                .map(|(d, _)| d.encode().len() as u64)
                .sum::<u64>())
    }
}

/// Removes (unless `dry_run`) the entries of `map` neither `live` nor young;
/// returns how many and their `size`.
fn sweep_map<V>(
    map: &std::sync::RwLock<std::collections::HashMap<B3Digest, (V, Instant)>>,
    live: impl Fn(&B3Digest) -> bool,
    young: &impl Fn(Instant) -> bool,
    size: impl Fn(&V) -> u64,
    dry_run: bool,
) -> (u64, u64) {
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    let dead: Vec<B3Digest> = map
        .iter()
        .filter(|(d, (_, t))| !live(d) && !young(*t))
        .map(|(d, _)| *d)
        .collect();
    let bytes = dead
        .iter()
        .filter_map(|d| map.get(d))
        .map(|(v, _)| size(v))
        .sum();
    if !dry_run {
        for d in &dead {
            map.remove(d);
        }
    }
    (dead.len() as u64, bytes)
}

#[cfg(test)]
mod tests {
    use super::DigestSet;

    fn digest(i: u64) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn digest_set_answers_as_a_hash_set_across_merges() {
        let mut set = DigestSet::default();
        let mut reference = std::collections::HashSet::new();
        // Enough inserts for several merges of the recent ones into the
        // sorted vector, with every digest inserted twice (the second time
        // often after a merge).
        for round in 0..2 {
            for i in 0..100_000u64 {
                let d = digest(i * 3);
                assert_eq!(set.insert(d), reference.insert(d), "round {round}, {i}");
            }
        }
        assert_eq!(set.len(), reference.len());
        for i in 0..300_000u64 {
            let d = digest(i);
            assert_eq!(set.contains(&d), i % 3 == 0, "{i}");
        }
        assert!(set.sorted.windows(2).all(|w| w[0] < w[1]));
    }
}
