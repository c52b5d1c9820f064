//! [`PgCollector`]: garbage collection of a store on S3 and PostgreSQL (blob
//! index, directories and path info in one database), while several daemons
//! serve it and accept uploads.
//!
//! # What goes
//! A directory or blob is live while a root node reaches it (the registered
//! paths, as [`crate::gc`] says), or while it is *young*: its row's `touched`
//! (set when written, and again when a writer builds on it) is within the grace
//! period before the collection began, or after. A young row keeps everything
//! it reaches (a young directory its closure, a young chunk list its chunks).
//! What is neither goes: rows of `blob_lists`, `blob_chunks` and `directories`
//! are deleted in one transaction, then the pack objects none of whose chunks
//! remain (and pack objects no row names, older than the grace period: a
//! killed collection's or writer's leftovers) are deleted from the bucket.
//!
//! # Packs
//! A pack holds many chunks (a group commit's small files, or one large
//! blob's chunks). Its object is deleted once no chunk row points into it: an
//! import deleted whole frees its packs whole. A pack that keeps one live chunk
//! keeps its dead bytes in the bucket (they are counted in the log line of the
//! collection): rewriting packs would move live chunks under readers of other
//! daemons that hold their locations, and is left undone.
//!
//! # Several daemons
//! - One collects at a time: a collection holds the session advisory lock
//!   [`COLLECT_LOCK`] on a connection of its own from [`PgCollector::begin`]
//!   to the end (a killed collector's connection closes and the server
//!   releases it); a daemon that cannot take it skips that round.
//! - Everything else keeps running: the mark (reading the roots, walking the
//!   directories, reading the tables) takes no lock. Only the sweep, one
//!   transaction, holds [`SWEEP_LOCK`] exclusively; writers hold it shared in
//!   their short transactions, so they wait for a sweep (and a sweep for them)
//!   for the time of the deletes.
//!
//! # Why a racing upload is never lost
//! Lookups happen in other processes, so "what a writer found" is recorded in
//! PostgreSQL: every lookup a writer builds on (blob `has`, the dedup lookup
//! of chunks, a directory closure's references to stored directories) and
//! every write of a row that exists already sets `touched` to the database's
//! clock when it is older than [`crate::pg::TOUCH_GRAIN_SECS`] or than the
//! start of the latest collection (`cairn_gc_epoch`, written by
//! [`PgCollector::begin`] before the roots are read), in a transaction holding
//! the sweep lock shared. So, for any writer transaction W and the sweep S:
//! - W committed before S took its lock: S reads the rows touched since its
//!   mark read them and keeps them with what they reach; and it reads the
//!   paths registered since the collection began ([`LateRoots`]) and keeps
//!   their closures. A lookup after `begin` always touches (its row is older
//!   than the epoch or touched since), so it is kept whatever the grace.
//! - W starts after S committed: it sees the rows as S left them; what S
//!   removed is absent, so the writer stores it again. The commits that build
//!   on earlier lookups check again under the lock: a blob commit the chunks
//!   it did not upload (and that its pack row, entered before the upload, is
//!   still there), a directory commit the directories it references, a path
//!   info put its root. A removal there fails that upload cleanly ("upload
//!   again"); nothing is registered that points at removed content.
//!
//! A lookup before `begin` whose upload registers its path after the sweep is
//! protected by the grace period alone (less the touch grain: keep the grace
//! well above it), as on the embedded store.
//!
//! # Crashes
//! Rows go in one transaction; objects are deleted after it commits. A kill
//! before the commit changes nothing; after it, leaves objects no row names,
//! which the next collection lists and deletes. Caches: this process forgets
//! the removed chunks and directories; other daemons may still hold them in
//! their memory and disk caches, which serve only bytes that hash to the
//! digest asked for (a reader of removed content may still get it), while
//! writers' lookups never consult a cache. Blob plans with a single chunk's
//! location are not cached (see `plan`), so a blob removed and stored again in
//! another pack is read from its new place.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tokio_postgres::GenericClient;

use super::{Inner, S3BlobService};
use crate::directoryservice::PgDirectoryService;
use crate::gc::{Collector, GcOptions, GcReport};
use crate::pg::{COLLECT_LOCK, SWEEP_LOCK, db_error};
use crate::{B3Digest, Directory, Error, Node};

/// Paths registered since a collection began are re-read by the sweep from
/// this long before its start (a put's row carries its transaction's start).
const LATE_SLACK: Duration = Duration::from_secs(300);
/// Rows touched since the mark read the tables are re-read by the sweep from
/// this long before (a writer's transaction may commit after its touch).
const TOUCH_SLACK: Duration = Duration::from_secs(300);
/// Rows per page when reading a table, and digests per delete statement.
const PAGE: i64 = 10_000;

/// The paths registered since a time: the store layer's path info table,
/// read by the sweep in its own transaction (so that a path registered
/// before the sweep's lock keeps its content).
#[async_trait]
pub trait LateRoots: Send + Sync {
    /// Root nodes of the paths registered (or changed) at or after `since`
    /// (the database's clock).
    async fn roots_since(
        &self,
        txn: &tokio_postgres::Transaction<'_>,
        since: SystemTime,
    ) -> Result<Vec<Node>, Error>;
}

/// A collection in progress: the connection holding [`COLLECT_LOCK`].
struct Begun {
    /// Holds the lock (closed, e.g. by a kill, it releases it).
    session: deadpool_postgres::ClientWrapper,
    started: SystemTime,
}

/// The collector of an S3 + PostgreSQL store (see the [module docs](self)).
pub struct PgCollector {
    blobs: Arc<Inner>,
    dirs: PgDirectoryService,
    late: Option<Arc<dyn LateRoots>>,
    begun: tokio::sync::Mutex<Option<Begun>>,
    disk: AtomicU64,
}

impl std::fmt::Debug for PgCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCollector")
            .field("bucket", &self.blobs.cfg.bucket)
            .field("database", &self.blobs.db.target())
            .finish_non_exhaustive()
    }
}

fn digest32(b: &[u8]) -> Result<[u8; 32], Error> {
    b.try_into()
        .map_err(|_| Error::Corrupt(format!("a digest of {} bytes in the index", b.len())))
}

/// The live and young content found so far, and the rows that may go.
#[derive(Default)]
struct Marks {
    dirs: HashSet<B3Digest>,
    blobs: HashSet<[u8; 32]>,
}

impl Marks {
    /// Walks `roots` and the directories `extra`, skipping what is marked,
    /// reading directories through `c`. A missing directory is an error:
    /// what is below it cannot be known.
    async fn walk<C: GenericClient + Sync>(
        &mut self,
        c: &C,
        roots: &[Node],
        extra: impl IntoIterator<Item = B3Digest>,
    ) -> Result<(), Error> {
        let mut level = Vec::new();
        let add = |m: &mut Marks, n: &Node, level: &mut Vec<B3Digest>| match n {
            Node::Directory { digest, .. } => {
                if m.dirs.insert(*digest) {
                    level.push(*digest);
                }
            }
            Node::File { digest, .. } => {
                m.blobs.insert(*digest.as_bytes());
            }
            Node::Symlink { .. } => {}
        };
        for r in roots {
            add(self, r, &mut level);
        }
        for d in extra {
            if self.dirs.insert(d) {
                level.push(d);
            }
        }
        while !level.is_empty() {
            let mut next = Vec::new();
            for batch in level.chunks(PAGE as usize) {
                let found = load_dirs(c, batch).await?;
                for d in batch {
                    let Some(dir) = found.get(d) else {
                        return Err(Error::Corrupt(format!(
                            "directory {d} is reachable from live content but missing: nothing collected"
                        )));
                    };
                    for (_, node) in dir.nodes() {
                        add(self, node, &mut next);
                    }
                }
            }
            level = next;
        }
        Ok(())
    }
}

/// The directories among `digests`, each checked against its digest.
async fn load_dirs<C: GenericClient + Sync>(
    c: &C,
    digests: &[B3Digest],
) -> Result<HashMap<B3Digest, Directory>, Error> {
    let keys: Vec<&[u8]> = digests.iter().map(|d| d.as_bytes().as_slice()).collect();
    let rows = c
        .query(
            "SELECT digest, data FROM directories WHERE digest = ANY($1)",
            &[&keys],
        )
        .await
        .map_err(|e| db_error("gc: reading directories", e))?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let d = B3Digest::from(digest32(r.get(0))?);
        let data: &[u8] = r.get(1);
        if B3Digest::of(data) != d {
            return Err(Error::Corrupt(format!(
                "stored directory {d} has another digest: nothing collected"
            )));
        }
        let dir = Directory::decode(data)
            .map_err(|e| Error::Corrupt(format!("stored directory {d} does not decode: {e}")))?;
        out.insert(d, dir);
    }
    Ok(out)
}

/// The digests of a `blob_lists.chunks` value (40 bytes per chunk).
fn list_chunks(b: &[u8]) -> Result<Vec<[u8; 32]>, Error> {
    if !b.len().is_multiple_of(40) {
        return Err(Error::Corrupt(format!(
            "a chunk list of {} bytes in the index",
            b.len()
        )));
    }
    b.chunks_exact(40).map(|e| digest32(&e[..32])).collect()
}

/// Every row of the three tables: whether it is young, and what it costs.
#[derive(Default)]
struct Tables {
    /// Directory -> (young, stored bytes).
    dirs: HashMap<[u8; 32], (bool, u64)>,
    /// Chunk list -> (young, its chunks).
    lists: HashMap<[u8; 32], (bool, Vec<[u8; 32]>)>,
    /// Chunk -> (young, stored bytes).
    chunks: HashMap<[u8; 32], (bool, u64)>,
}

/// Reads `table` by pages of its primary key: `cols` after the digest.
async fn read_pages(
    c: &deadpool_postgres::Object,
    sql: &str,
    cutoff: SystemTime,
    mut each: impl FnMut(&tokio_postgres::Row) -> Result<(), Error>,
) -> Result<(), Error> {
    let stmt = c
        .prepare(sql)
        .await
        .map_err(|e| db_error("gc: preparing a table read", e))?;
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows = c
            .query(&stmt, &[&after, &cutoff, &PAGE])
            .await
            .map_err(|e| db_error("gc: reading the index", e))?;
        for r in &rows {
            each(r)?;
        }
        match rows.last() {
            Some(r) if rows.len() as i64 == PAGE => after = r.get(0),
            _ => return Ok(()),
        }
    }
}

/// Removes from `dead` what `m` marks, and, for marked blobs that are chunk
/// lists, their chunks.
fn spare(dead: &mut Dead, m: &Marks, lists: &HashMap<[u8; 32], (bool, Vec<[u8; 32]>)>) {
    for d in &m.dirs {
        dead.dirs.remove(d.as_bytes());
    }
    for b in &m.blobs {
        dead.lists.remove(b);
        dead.chunks.remove(b);
        if let Some((_, cs)) = lists.get(b) {
            for c in cs {
                dead.chunks.remove(c);
            }
        }
    }
}

/// The rows a collection removes.
#[derive(Default)]
struct Dead {
    dirs: HashSet<[u8; 32]>,
    lists: HashSet<[u8; 32]>,
    chunks: HashSet<[u8; 32]>,
}

impl PgCollector {
    /// The collector of the store whose blobs are `blobs` and directories
    /// `dirs`, with `late` reading the paths registered during a collection
    /// (the path info table). The blob index, the directories and the path
    /// info must be in one database: the sweep's transaction and lock span
    /// them.
    pub fn new(
        blobs: &S3BlobService,
        dirs: PgDirectoryService,
        late: Option<Arc<dyn LateRoots>>,
    ) -> Result<Self, Error> {
        if blobs.inner.db.target() != dirs.db().target() {
            return Err(Error::InvalidArgument(format!(
                "garbage collection needs the blob index and the directories in one database (they are in {} and {})",
                blobs.inner.db.target(),
                dirs.db().target()
            )));
        }
        Ok(PgCollector {
            blobs: blobs.inner.clone(),
            dirs,
            late,
            begun: tokio::sync::Mutex::new(None),
            disk: AtomicU64::new(0),
        })
    }

    /// Starts a collection: takes [`COLLECT_LOCK`] (false, and nothing
    /// started, if another process holds it), records the start in
    /// `cairn_gc_epoch` (from here on every writer's lookup touches what it
    /// finds) and measures the store. Call before reading the roots; the
    /// collection ends with [`PgCollector::end`] (or when this is dropped).
    pub async fn begin(&self) -> Result<bool, Error> {
        let mut begun = self.begun.lock().await;
        if begun.is_some() {
            return Ok(true);
        }
        // Both components' tables must exist before they are read or locked.
        drop(self.blobs.client().await?);
        self.dirs.migrate().await?;
        let session = deadpool_postgres::Object::take(self.blobs.db.client().await?);
        let got: bool = session
            .query_one("SELECT pg_try_advisory_lock($1)", &[&COLLECT_LOCK])
            .await
            .map_err(|e| db_error("gc: taking the collection lock", e))?
            .get(0);
        if !got {
            return Ok(false);
        }
        let started: SystemTime = session
            .query_one(
                "INSERT INTO cairn_gc_epoch (id, started) VALUES (1, clock_timestamp())
                 ON CONFLICT (id) DO UPDATE SET started = EXCLUDED.started
                 RETURNING started",
                &[],
            )
            .await
            .map_err(|e| db_error("gc: recording the start", e))?
            .get(0);
        *begun = Some(Begun { session, started });
        drop(begun);
        self.measure().await?;
        Ok(true)
    }

    /// Ends the collection [`PgCollector::begin`] started: closes its
    /// connection, which releases the lock.
    pub async fn end(&self) {
        if let Some(b) = self.begun.lock().await.take() {
            // At once: the server notices the closed connection only later,
            // and the next collection (here or elsewhere) would find it held.
            if let Err(e) = b
                .session
                .execute("SELECT pg_advisory_unlock($1)", &[&COLLECT_LOCK])
                .await
            {
                tracing::debug!(error = %e, "gc: releasing the collection lock");
            }
        }
    }

    async fn measure(&self) -> Result<u64, Error> {
        let c = self.blobs.db.client().await?;
        let row = c
            .query_one(
                "SELECT (SELECT coalesce(sum(size), 0)::bigint FROM blob_packs),
                        (SELECT coalesce(sum(length(data)), 0)::bigint FROM directories)",
                &[],
            )
            .await
            .map_err(|e| db_error("gc: measuring the store", e))?;
        let (a, b): (i64, i64) = (row.get(0), row.get(1));
        let n = u64::try_from(a.saturating_add(b)).unwrap_or(0);
        self.disk.store(n, Ordering::Relaxed);
        Ok(n)
    }

    async fn collect_begun(
        &self,
        roots: Vec<Node>,
        opts: GcOptions,
        started: SystemTime,
    ) -> Result<GcReport, Error> {
        let cutoff = started
            .checked_sub(opts.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let c = self.blobs.db.client().await?;
        // Mark: what the roots reach.
        let mut marks = Marks::default();
        marks.walk(&**c, &roots, []).await?;
        // Every row, and which are young.
        let read_at: SystemTime = c
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .map_err(|e| db_error("gc: reading the clock", e))?
            .get(0);
        let mut t = Tables::default();
        read_pages(
            &c,
            "SELECT digest, touched >= $2, length(data)::bigint FROM directories \
             WHERE digest > $1 ORDER BY digest LIMIT $3",
            cutoff,
            |r| {
                let n: i64 = r.get(2);
                t.dirs.insert(digest32(r.get(0))?, (r.get(1), n as u64));
                Ok(())
            },
        )
        .await?;
        read_pages(
            &c,
            "SELECT digest, touched >= $2, chunks FROM blob_lists \
             WHERE digest > $1 ORDER BY digest LIMIT $3",
            cutoff,
            |r| {
                t.lists
                    .insert(digest32(r.get(0))?, (r.get(1), list_chunks(r.get(2))?));
                Ok(())
            },
        )
        .await?;
        read_pages(
            &c,
            "SELECT digest, touched >= $2, stored_len::bigint FROM blob_chunks \
             WHERE digest > $1 ORDER BY digest LIMIT $3",
            cutoff,
            |r| {
                let n: i64 = r.get(2);
                t.chunks.insert(digest32(r.get(0))?, (r.get(1), n as u64));
                Ok(())
            },
        )
        .await?;
        // Young rows keep what they reach.
        let young_dirs: Vec<B3Digest> = t
            .dirs
            .iter()
            .filter(|(_, (y, _))| *y)
            .map(|(d, _)| B3Digest::from(*d))
            .collect();
        marks.walk(&**c, &[], young_dirs).await?;
        for (d, (y, _)) in &t.lists {
            if *y {
                marks.blobs.insert(*d);
            }
        }
        let mut dead = Dead {
            dirs: t
                .dirs
                .iter()
                .filter(|(_, (y, _))| !y)
                .map(|(d, _)| *d)
                .collect(),
            lists: t
                .lists
                .iter()
                .filter(|(_, (y, _))| !y)
                .map(|(d, _)| *d)
                .collect(),
            chunks: t
                .chunks
                .iter()
                .filter(|(_, (y, _))| !y)
                .map(|(d, _)| *d)
                .collect(),
        };
        spare(&mut dead, &marks, &t.lists);
        drop(c);

        if opts.dry_run {
            return Ok(self.report(&t, &dead.dirs, &dead.lists, &dead.chunks, 0));
        }

        // Sweep: one transaction, writers held off.
        let mut c = self.blobs.db.client().await?;
        let txn = c
            .transaction()
            .await
            .map_err(|e| db_error("gc: starting the sweep", e))?;
        txn.batch_execute("SET LOCAL statement_timeout = '600s'")
            .await
            .map_err(|e| db_error("gc: starting the sweep", e))?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SWEEP_LOCK])
            .await
            .map_err(|e| db_error("gc: waiting for writers", e))?;
        // What writers touched, and the paths registered, since the mark.
        let since = read_at
            .checked_sub(TOUCH_SLACK)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .max(cutoff);
        let mut late = Marks::default();
        let touched_dirs: Vec<B3Digest> = txn
            .query(
                "SELECT digest FROM directories WHERE touched >= $1",
                &[&since],
            )
            .await
            .map_err(|e| db_error("gc: reading touched directories", e))?
            .iter()
            .map(|r| digest32(r.get(0)).map(B3Digest::from))
            .collect::<Result<_, _>>()?;
        for r in txn
            .query(
                "SELECT digest FROM blob_chunks WHERE touched >= $1",
                &[&since],
            )
            .await
            .map_err(|e| db_error("gc: reading touched chunks", e))?
        {
            late.blobs.insert(digest32(r.get(0))?);
        }
        // Lists written or touched since: their chunks stay too (a list
        // written after the mark is not in `t.lists`).
        for r in txn
            .query(
                "SELECT digest, chunks FROM blob_lists WHERE touched >= $1",
                &[&since],
            )
            .await
            .map_err(|e| db_error("gc: reading touched chunk lists", e))?
        {
            let d = digest32(r.get(0))?;
            late.blobs.insert(d);
            for c in list_chunks(r.get(1))? {
                late.blobs.insert(c);
            }
        }
        let late_roots = match &self.late {
            Some(l) => {
                l.roots_since(
                    &txn,
                    started
                        .checked_sub(LATE_SLACK)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                )
                .await?
            }
            None => Vec::new(),
        };
        // Directories marked already were walked: start from the others.
        late.dirs = marks.dirs.clone();
        late.walk(&*txn, &late_roots, touched_dirs).await?;
        spare(&mut dead, &late, &t.lists);

        let del = |table: &'static str, ret: &'static str| {
            format!(
                "DELETE FROM {table} WHERE digest = ANY($1) AND touched < $2 RETURNING digest{ret}"
            )
        };
        let mut gone_lists = HashSet::new();
        let mut gone_chunks = HashSet::new();
        let mut gone_dirs = HashSet::new();
        for (set, table, out) in [
            (&dead.lists, "blob_lists", &mut gone_lists),
            (&dead.chunks, "blob_chunks", &mut gone_chunks),
            (&dead.dirs, "directories", &mut gone_dirs),
        ] {
            let all: Vec<&[u8]> = set.iter().map(|d| d.as_slice()).collect();
            for batch in all.chunks(PAGE as usize) {
                for r in txn
                    .query(&del(table, ""), &[&batch, &cutoff])
                    .await
                    .map_err(|e| db_error(&format!("gc: deleting from {table}"), e))?
                {
                    out.insert(digest32(r.get(0))?);
                }
            }
        }
        let packs: Vec<(String, i64)> = txn
            .query(
                "DELETE FROM blob_packs p WHERE \
                 (p.sealed AND NOT EXISTS (SELECT 1 FROM blob_chunks c WHERE c.pack = p.id)) \
                 OR (NOT p.sealed AND p.created < $1) RETURNING name, size",
                &[&cutoff],
            )
            .await
            .map_err(|e| db_error("gc: deleting packs", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        txn.commit()
            .await
            .map_err(|e| db_error("gc: committing the sweep", e))?;
        drop(c);

        // This process's caches forget what went.
        let forget: Vec<[u8; 32]> = gone_lists.iter().chain(&gone_chunks).copied().collect();
        self.blobs.forget(&forget);
        let gone_dir_digests: Vec<B3Digest> =
            gone_dirs.iter().map(|d| B3Digest::from(*d)).collect();
        self.dirs.forget(&gone_dir_digests);

        // Objects: the packs whose rows went, then any no row names.
        let names: HashSet<String> = packs.iter().map(|(n, _)| n.clone()).collect();
        self.delete_objects(names.iter().cloned().collect()).await?;
        let mut freed: u64 = packs
            .iter()
            .map(|(_, s)| u64::try_from(*s).unwrap_or(0))
            .sum();
        freed += self.delete_orphans(&names, cutoff).await?;

        let report = self.report(&t, &gone_dirs, &gone_lists, &gone_chunks, freed);
        let kept_dead: u64 = gone_chunks
            .iter()
            .filter_map(|d| t.chunks.get(d))
            .map(|(_, n)| *n)
            .sum::<u64>()
            .saturating_sub(freed);
        if kept_dead > 0 {
            tracing::info!(
                bytes = kept_dead,
                "gc: removed chunks that share packs with live ones keep their bytes in the bucket"
            );
        }
        self.measure().await?;
        Ok(report)
    }

    fn report(
        &self,
        t: &Tables,
        dirs: &HashSet<[u8; 32]>,
        lists: &HashSet<[u8; 32]>,
        chunks: &HashSet<[u8; 32]>,
        freed: u64,
    ) -> GcReport {
        let in_lists: HashSet<&[u8; 32]> = t.lists.values().flat_map(|(_, cs)| cs).collect();
        let parts = chunks.iter().filter(|c| in_lists.contains(c)).count() as u64;
        GcReport {
            directories: dirs.len() as u64,
            blobs: lists.len() as u64 + (chunks.len() as u64 - parts),
            chunks: parts,
            stored_bytes: dirs
                .iter()
                .filter_map(|d| t.dirs.get(d))
                .map(|x| x.1)
                .sum::<u64>()
                + chunks
                    .iter()
                    .filter_map(|d| t.chunks.get(d))
                    .map(|x| x.1)
                    .sum::<u64>(),
            disk_freed: freed,
            ..GcReport::default()
        }
    }

    /// Deletes pack objects (a batched DeleteObjects per 1000 on S3); one
    /// already gone is fine.
    async fn delete_objects(&self, names: Vec<String>) -> Result<(), Error> {
        if names.is_empty() {
            return Ok(());
        }
        let keys: Vec<object_store::Result<ObjectPath>> =
            names.iter().map(|n| Ok(self.blobs.key(n))).collect();
        let mut results = self
            .blobs
            .s3
            .delete_stream(futures::stream::iter(keys).boxed());
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.blobs.s3_error("delete", "(packs)", e)),
            }
        }
        Ok(())
    }

    /// Deletes the pack objects no row names that are older than `cutoff`
    /// (a writer enters its pack before uploading it, so none of these is
    /// being written); returns their bytes. `skip`: deleted just now.
    async fn delete_orphans(
        &self,
        skip: &HashSet<String>,
        cutoff: SystemTime,
    ) -> Result<u64, Error> {
        let prefix = self.blobs.key("");
        let prefix = ObjectPath::from(prefix.as_ref().trim_end_matches('/'));
        let listed: Vec<object_store::ObjectMeta> = self
            .blobs
            .s3
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.blobs.s3_error("list", "packs/", e))?;
        let cut = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let candidates: Vec<(String, u64)> = listed
            .into_iter()
            .filter(|m| m.last_modified.timestamp() < cut)
            .filter_map(|m| {
                let name = m.location.filename()?.to_owned();
                (!skip.contains(&name)).then_some((name, m.size))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        // After the listing: a pack entered before its upload is seen here.
        let c = self.blobs.db.client().await?;
        let names: Vec<&str> = candidates.iter().map(|(n, _)| n.as_str()).collect();
        let known: HashSet<String> = c
            .query(
                "SELECT name FROM blob_packs WHERE name = ANY($1)",
                &[&names],
            )
            .await
            .map_err(|e| db_error("gc: looking up packs", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let orphans: Vec<(String, u64)> = candidates
            .into_iter()
            .filter(|(n, _)| !known.contains(n))
            .collect();
        let bytes = orphans.iter().map(|(_, s)| s).sum();
        self.delete_objects(orphans.into_iter().map(|(n, _)| n).collect())
            .await?;
        Ok(bytes)
    }
}

#[async_trait]
impl Collector for PgCollector {
    /// Begins (see [`PgCollector::begin`]) unless begun, collects, and ends
    /// what it began. Another process collecting is an error.
    async fn collect(&self, roots: Vec<Node>, opts: GcOptions) -> Result<GcReport, Error> {
        let mine = self.begun.lock().await.is_none();
        if mine && !self.begin().await? {
            return Err(Error::Storage(
                "another process is collecting garbage on this store: try again later".into(),
            ));
        }
        let started = match self.begun.lock().await.as_ref() {
            Some(b) => b.started,
            None => return Err(Error::Storage("the collection ended early".into())),
        };
        let r = self.collect_begun(roots, opts, started).await;
        if mine {
            self.end().await;
        }
        r
    }

    /// Bytes in the bucket's packs (as indexed) plus the directories' bytes,
    /// as measured at the start and end of the latest collection.
    fn disk_bytes(&self) -> Result<u64, Error> {
        Ok(self.disk.load(Ordering::Relaxed))
    }
}
