//! [`PgDirectoryService`]: directories in PostgreSQL, shared by every daemon that
//! names the database, with a bounded in-process cache in front.
//!
//! # Table (component `directories`, see [`crate::pg`])
//!
//! `directories(digest bytea PRIMARY KEY, data bytea NOT NULL, touched
//! timestamptz)`: the canonical protobuf encoding of each directory under its
//! BLAKE3 digest, and when a writer last built on it. A directory is immutable
//! by digest, so several daemons can write the same closure at once: `ON
//! CONFLICT` keeps one row. Rows are removed only by garbage collection
//! (`blobservice::s3`'s `gc.rs`), which is why an upload's commit checks, under
//! the sweep lock, the directories it references without sending them.
//!
//! # Round trips
//!
//! - An upload is buffered by the putter and handled at close: the references of
//!   the closure to directories it did not send before are fetched in one query,
//!   the [`ClosureValidator`] checks the whole closure against them, and the
//!   closure goes in in ONE transaction of batched `INSERT ... SELECT FROM
//!   UNNEST(...)` statements (thousands of rows each).
//! - [`DirectoryService::get_recursive`] fetches a breadth-first level per query
//!   (`WHERE digest = ANY($1)`), not one directory per query.
//! - Every directory read is decoded and hashed again: a row whose bytes do not
//!   hash to its digest is a `Corrupt` error. Only verified directories enter the
//!   cache (those read, and the root of each upload), so the cache never serves
//!   what was not checked.
//!
//! # URL
//!
//! `postgres://user@host/db?dir_cache=BYTES&...`: `dir_cache` bounds the cache by
//! the encoded size of the directories in it (default 32 MiB, `0` disables it);
//! the other parameters are those of [`crate::pg`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{
    ClosureValidator, DirectoryCommit, DirectoryPutter, DirectoryService, MemoryDirectoryService,
};
use crate::lru::Lru;
use crate::pg::{Db, SWEEP_LOCK, TOUCH_BEFORE, db_error, take_param};
use crate::{B3Digest, Directory, Error};

/// The default bound of the directory cache: 32 MiB of encoded directories.
pub const DEFAULT_DIR_CACHE: usize = 32 << 20;

/// Rows per statement when inserting or fetching many directories: big enough that
/// 100k directories are a few dozen round trips, small enough that one statement's
/// parameters stay a few MiB.
const BATCH: usize = 5000;

static MIGRATIONS: &[&str] = &[
    "CREATE TABLE directories (
        digest bytea PRIMARY KEY CHECK (length(digest) = 32),
        data bytea NOT NULL
    )",
    // Garbage collection (crate::blobservice::s3's `gc.rs`): when a writer
    // last built on a directory, and the latest collection's start.
    "ALTER TABLE directories ADD COLUMN touched timestamptz NOT NULL DEFAULT clock_timestamp();
    CREATE TABLE IF NOT EXISTS cairn_gc_epoch (
        id integer PRIMARY KEY CHECK (id = 1),
        started timestamptz NOT NULL
    );",
];

/// Directories in a PostgreSQL table, with a cache of verified directories in
/// front. Cheap to clone; clones share the pool and the cache.
#[derive(Clone)]
pub struct PgDirectoryService {
    db: Db,
    cache: Arc<Mutex<Lru<B3Digest, Directory>>>,
    cache_bytes: usize,
}

impl PgDirectoryService {
    /// The service of a `postgres://` or `postgresql://` URL, on the process's shared
    /// pool for that database (see the [module docs](self) for `dir_cache`). Does not
    /// connect: the table is created on first use.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        // Db ignores dir_cache (crate::pg::COMPONENT_PARAMS).
        let (_, cache) = take_param(url, "dir_cache");
        let cache_bytes = match cache {
            None => DEFAULT_DIR_CACHE,
            Some(v) => v.parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "dir_cache={v:?} is not a number of bytes (in a PostgreSQL directory service URL)"
                ))
            })?,
        };
        Ok(Self::new(Db::open_shared(url)?, cache_bytes))
    }

    /// The service on `db`, caching at most `cache_bytes` of encoded directories.
    pub fn new(db: Db, cache_bytes: usize) -> Self {
        Self {
            db,
            cache: Arc::new(Mutex::new(Lru::new(cache_bytes))),
            cache_bytes,
        }
    }

    /// A connection, the table created first if this process has not yet.
    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.db.migrate("directories", MIGRATIONS).await?;
        self.db.client().await
    }

    fn cached(&self, digest: &B3Digest) -> Option<Directory> {
        if self.cache_bytes == 0 {
            return None;
        }
        // A poisoned cache is only a cache: go to the database.
        self.cache.lock().ok()?.get(digest).cloned()
    }

    fn remember(&self, digest: B3Digest, dir: &Directory, encoded_len: usize) {
        if self.cache_bytes == 0 {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            // The digest and bookkeeping cost about as much as a small entry.
            cache.insert(digest, dir.clone(), encoded_len + 64);
        }
    }

    /// The stored directories among `digests` (verified), by digest: the cached ones
    /// and the rest in one query per [`BATCH`].
    async fn get_many(&self, digests: &[B3Digest]) -> Result<HashMap<B3Digest, Directory>, Error> {
        let mut found = HashMap::with_capacity(digests.len());
        let mut missing = Vec::new();
        for d in digests {
            match self.cached(d) {
                Some(dir) => {
                    found.insert(*d, dir);
                }
                None => missing.push(*d),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT digest, data FROM directories WHERE digest = ANY($1)")
            .await
            .map_err(|e| db_error("preparing the directory lookup", e))?;
        for batch in missing.chunks(BATCH) {
            let keys: Vec<&[u8]> = batch.iter().map(|d| d.as_bytes().as_slice()).collect();
            let rows = client
                .query(&stmt, &[&keys])
                .await
                .map_err(|e| db_error("reading directories", e))?;
            for row in rows {
                let key: &[u8] = row
                    .try_get(0)
                    .map_err(|e| db_error("reading a directory's digest", e))?;
                let data: &[u8] = row
                    .try_get(1)
                    .map_err(|e| db_error("reading a directory", e))?;
                let digest = B3Digest::try_from(key).map_err(|e| {
                    Error::Corrupt(format!("a row of table directories has a bad digest: {e}"))
                })?;
                let dir = verify(&digest, data)?;
                self.remember(digest, &dir, data.len());
                found.insert(digest, dir);
            }
        }
        Ok(found)
    }
}

/// The directory `data` encodes, if it hashes to `digest`. Bytes that hash to the
/// digest are the canonical encoding that was stored, so the directory decoded
/// from them needs no second encoding to check.
fn verify(digest: &B3Digest, data: &[u8]) -> Result<Directory, Error> {
    if B3Digest::of(data) != *digest {
        return Err(Error::Corrupt(format!(
            "stored directory {digest} has another digest"
        )));
    }
    Directory::decode(data)
        .map_err(|e| Error::Corrupt(format!("stored directory {digest} does not decode: {e}")))
}

#[async_trait]
impl DirectoryService for PgDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, Error> {
        if let Some(dir) = self.cached(digest) {
            return Ok(Some(dir));
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT data FROM directories WHERE digest = $1")
            .await
            .map_err(|e| db_error("preparing the directory lookup", e))?;
        let key: &[u8] = digest.as_bytes();
        let Some(row) = client
            .query_opt(&stmt, &[&key])
            .await
            .map_err(|e| db_error(&format!("reading directory {digest}"), e))?
        else {
            return Ok(None);
        };
        let data: &[u8] = row
            .try_get(0)
            .map_err(|e| db_error(&format!("reading directory {digest}"), e))?;
        let dir = verify(digest, data)?;
        self.remember(*digest, &dir, data.len());
        Ok(Some(dir))
    }

    /// Breadth-first, one query per level (per [`BATCH`] of a level).
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, Error>> {
        let root = *root;
        Box::pin(async_stream::try_stream! {
            let mut level = vec![root];
            let mut seen = HashSet::from([root]);
            while !level.is_empty() {
                let mut found = self.get_many(&level).await?;
                let mut next = Vec::new();
                for digest in level {
                    let dir = match found.remove(&digest) {
                        Some(dir) => dir,
                        None if digest == root => {
                            Err(Error::NotFound { what: "directory", digest })?
                        }
                        None => Err(Error::Corrupt(format!(
                            "directory {digest} is referenced in the closure of {root} but missing"
                        )))?,
                    };
                    for (_, child, _) in dir.directories() {
                        if seen.insert(*child) {
                            next.push(*child);
                        }
                    }
                    yield dir;
                }
                level = next;
            }
        })
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(PgPutter {
            service: self,
            state: Some(Buffered::default()),
        })
    }
}

impl PgDirectoryService {
    /// The database the directories are in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Forgets cached directories (garbage collection removed them).
    pub fn forget(&self, digests: &[B3Digest]) {
        if let Ok(mut cache) = self.cache.lock() {
            for d in digests {
                cache.remove(d);
            }
        }
    }

    /// Migrates the table (for the garbage collector, which reads it itself).
    pub async fn migrate(&self) -> Result<(), Error> {
        self.db.migrate("directories", MIGRATIONS).await
    }

    /// Stores `closure` in one transaction of batched inserts, holding
    /// [`crate::pg::SWEEP_LOCK`] shared, after checking (and touching, for
    /// garbage collection) the directories it references without containing
    /// them, `external`: a collection's sweep runs wholly before (then a
    /// removed one fails the upload) or wholly after (then it sees them
    /// touched and keeps them and what they reach). A row already there with
    /// other bytes (damage: its bytes cannot hash to the digest, since ours
    /// do) is replaced; one with the same bytes is touched.
    async fn commit_with(
        &self,
        closure: Vec<(B3Digest, Directory)>,
        external: &[B3Digest],
    ) -> Result<(), Error> {
        let encoded: Vec<(B3Digest, Directory, Vec<u8>)> = closure
            .into_iter()
            .map(|(d, dir)| {
                let bytes = dir.encode();
                (d, dir, bytes)
            })
            .collect();
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("starting a directory upload", e))?;
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&SWEEP_LOCK])
            .await
            .map_err(|e| db_error("waiting for a garbage collection's sweep", e))?;
        if !external.is_empty() {
            let keys: Vec<&[u8]> = external.iter().map(|d| d.as_bytes().as_slice()).collect();
            tx.execute(
                &format!(
                    "UPDATE directories SET touched = clock_timestamp()
                     WHERE digest = ANY($1) AND touched < {TOUCH_BEFORE}"
                ),
                &[&keys],
            )
            .await
            .map_err(|e| db_error("touching referenced directories", e))?;
            let found: HashSet<Vec<u8>> = tx
                .query(
                    "SELECT digest FROM directories WHERE digest = ANY($1)",
                    &[&keys],
                )
                .await
                .map_err(|e| db_error("checking referenced directories", e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if let Some(d) = external
                .iter()
                .find(|d| !found.contains(d.as_bytes().as_slice()))
            {
                return Err(Error::InvalidArgument(format!(
                    "directory {d} is referenced but not stored (removed by a garbage collection meanwhile?)"
                )));
            }
        }
        let stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO directories (digest, data)
                 SELECT * FROM UNNEST($1::bytea[], $2::bytea[])
                 ON CONFLICT (digest) DO UPDATE
                 SET data = EXCLUDED.data, touched = clock_timestamp()
                 WHERE directories.data <> EXCLUDED.data OR directories.touched < {TOUCH_BEFORE}"
            ))
            .await
            .map_err(|e| db_error("preparing the directory upload", e))?;
        for batch in encoded.chunks(BATCH) {
            let digests: Vec<&[u8]> = batch
                .iter()
                .map(|(d, _, _)| d.as_bytes().as_slice())
                .collect();
            let data: Vec<&[u8]> = batch.iter().map(|(_, _, b)| b.as_slice()).collect();
            tx.execute(&stmt, &[&digests, &data])
                .await
                .map_err(|e| db_error("storing directories", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing directories", e))?;
        // Only the root: a path info put right after checks it, while caching a
        // whole large closure costs more at upload than its reads would save.
        if let Some((digest, dir, bytes)) = encoded.last() {
            self.remember(*digest, dir, bytes.len());
        }
        Ok(())
    }
}

#[async_trait]
impl DirectoryCommit for PgDirectoryService {
    /// [`PgDirectoryService::commit_with`] of a closure referencing nothing
    /// outside it.
    async fn commit(&self, closure: Vec<(B3Digest, Directory)>) -> Result<(), Error> {
        self.commit_with(closure, &[]).await
    }
}

/// A closure received so far.
#[derive(Default)]
struct Buffered {
    dirs: Vec<Directory>,
    /// Digests of the directories in `dirs`.
    sent: HashSet<B3Digest>,
    /// Children referenced before being sent: they must be stored already.
    external: Vec<B3Digest>,
    external_seen: HashSet<B3Digest>,
}

/// Buffers the closure, then validates and stores it at close (see the
/// [module docs](self)).
struct PgPutter<'a> {
    service: &'a PgDirectoryService,
    /// `None` after an error or after close.
    state: Option<Buffered>,
}

fn spent() -> Error {
    Error::InvalidArgument("directory putter already closed or failed".into())
}

#[async_trait]
impl DirectoryPutter for PgPutter<'_> {
    async fn put(&mut self, directory: Directory) -> Result<(), Error> {
        let state = self.state.as_mut().ok_or_else(spent)?;
        for (_, child, _) in directory.directories() {
            if !state.sent.contains(child) && state.external_seen.insert(*child) {
                state.external.push(*child);
            }
        }
        state.sent.insert(directory.digest());
        state.dirs.push(directory);
        Ok(())
    }

    async fn close(&mut self) -> Result<B3Digest, Error> {
        let state = self.state.take().ok_or_else(spent)?;
        // What the closure references without sending it first, in one query: the
        // validator then looks it up in memory.
        let stored = MemoryDirectoryService::new();
        let external: Vec<B3Digest> = state
            .external
            .iter()
            .filter(|d| !state.sent.contains(d))
            .copied()
            .collect();
        let found = self.service.get_many(&external).await?;
        stored.commit(found.into_iter().collect()).await?;
        let mut validator = ClosureValidator::new();
        for dir in state.dirs {
            validator.add(dir, &stored).await?;
        }
        let (root, closure) = validator.finish()?;
        self.service.commit_with(closure, &external).await?;
        Ok(root)
    }
}
