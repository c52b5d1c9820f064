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

/// Directories and blobs some root reaches.
#[derive(Debug, Default)]
pub struct Live {
    /// Reached directories.
    pub directories: HashSet<B3Digest>,
    /// Reached blobs (file contents).
    pub blobs: HashSet<B3Digest>,
}

impl Live {
    /// Marks `node` (a root) live, without following a directory yet.
    fn add_root(&mut self, node: &Node, todo: &mut Vec<B3Digest>) {
        match node {
            Node::Directory { digest, .. } => {
                if self.directories.insert(*digest) {
                    todo.push(*digest);
                }
            }
            Node::File { digest, .. } => {
                self.blobs.insert(*digest);
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
            &live.directories,
            &young,
            |d| d.encode().len() as u64,
            opts.dry_run,
        );
        report.directories = n;
        report.stored_bytes += bytes;
        let (n, bytes) = sweep_map(
            &self.blobs.written(),
            &live.blobs,
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
    live: &HashSet<B3Digest>,
    young: &impl Fn(Instant) -> bool,
    size: impl Fn(&V) -> u64,
    dry_run: bool,
) -> (u64, u64) {
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    let dead: Vec<B3Digest> = map
        .iter()
        .filter(|(d, (_, t))| !live.contains(d) && !young(*t))
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
