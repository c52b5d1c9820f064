//! [`PgPathInfoService`]: path infos in PostgreSQL, shared by every daemon that
//! names the database (a put through one daemon is at once visible through the
//! others: nothing is cached here).
//!
//! # Tables (component `pathinfo`, see [`cairn_castore::pg`])
//!
//! - `path_info(digest bytea PRIMARY KEY, info bytea NOT NULL, updated_at
//!   timestamptz NOT NULL)`: the store path's 20-byte digest (its hash part) -> the
//!   canonical protobuf encoding of the validated `PathInfo`. Read back, it is
//!   parsed and validated again: a row that does not parse or holds another path is
//!   `Corrupt`. `list` walks the primary key in pages (keyset pagination).
//!   Garbage collection's columns: `pinned` (`cairn pin`), `accessed` (unix
//!   seconds of the last read or upload: noted in memory on `get` and `put`,
//!   written every minute in one statement, only where older by an hour, as
//!   `pathinfo.redb` does). A put holds garbage collection's sweep lock
//!   shared and checks its root again under it (see
//!   `cairn_castore::blobservice::PgCollector`). `refs` (`bytea[]`, GIN-indexed):
//!   the digests of the entry's references, written with it, so that
//!   `referrers` is an index lookup instead of a walk over every row. Rows
//!   written before the column existed hold NULL there until the first
//!   `referrers` fills them in (from their `info`, once).
//! - `nar_cache(node bytea PRIMARY KEY, nar_size bigint NOT NULL, nar_sha256 bytea
//!   NOT NULL)`: canonical protobuf encoding of a root `Node` with an empty name ->
//!   its NAR size and SHA-256, for CalculateNAR. A malformed row counts as absent
//!   (it is recomputed and overwritten).
//!
//! # URL
//!
//! `postgres://user@host/db` or `postgresql://...`, with [`cairn_castore::pg`]'s
//! parameters; it shares the process's pool for that database with the other
//! components naming it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cairn_castore::blobservice::LateRoots;
use cairn_castore::pg::{Db, SWEEP_LOCK, db_error, deadpool_postgres};
use cairn_castore::{BlobService, DirectoryService, Error, Node};
use cairn_nix::store_path::StorePath;
use futures::stream::BoxStream;
use prost::Message;

use super::{PathInfo, PathInfoService, check_content, decode_stored, nar_cache_key};
use crate::proto;

static MIGRATIONS: &[&str] = &[
    "CREATE TABLE path_info (
        digest bytea PRIMARY KEY CHECK (length(digest) = 20),
        info bytea NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE nar_cache (
        node bytea PRIMARY KEY,
        nar_size bigint NOT NULL,
        nar_sha256 bytea NOT NULL
    );",
    // Garbage collection: pins, and the last access or upload (unix seconds).
    "ALTER TABLE path_info ADD COLUMN pinned boolean NOT NULL DEFAULT false;
    ALTER TABLE path_info ADD COLUMN accessed bigint;
    UPDATE path_info SET accessed = extract(epoch FROM updated_at)::bigint;
    CREATE INDEX path_info_by_update ON path_info (updated_at);",
    // `referrers`: the digests of each entry's references, indexed. Rows from
    // before this have none (NULL) until the first `referrers` fills them in.
    "ALTER TABLE path_info ADD COLUMN refs bytea[];
    CREATE INDEX path_info_by_reference ON path_info USING gin (refs);
    CREATE INDEX path_info_refs_unset ON path_info (digest) WHERE refs IS NULL;",
];

/// Access times are written at this precision (seconds), as in `pathinfo.redb`.
const ACCESS_GRAIN: i64 = super::redb::ACCESS_GRAIN as i64;

/// What `Corrupt` errors name as the source of a bad row.
const SOURCE: &str = "PostgreSQL table path_info";

/// Rows per page of `list`.
const LIST_BATCH: i64 = 1000;

/// Accesses noted, not written yet: digest -> unix seconds.
type Pending = Arc<Mutex<HashMap<[u8; 20], u64>>>;

/// Path infos in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgPathInfoService {
    db: Db,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    /// Accesses noted in memory, written every [`super::redb::ACCESS_FLUSH`]
    /// by a task started with the first.
    access: Pending,
    flusher: Arc<std::sync::Once>,
}

impl PgPathInfoService {
    /// The service of a `postgres://` or `postgresql://` URL, on the process's shared
    /// pool for that database; `put` checks content against `blobs` and
    /// `directories`. Does not connect: the tables are created on first use.
    pub fn from_url(
        url: &str,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        Ok(Self::new(Db::open_shared(url)?, blobs, directories))
    }

    /// The service on `db`.
    pub fn new(
        db: Db,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Self {
        Self {
            db,
            blobs,
            directories,
            access: Arc::default(),
            flusher: Arc::new(std::sync::Once::new()),
        }
    }

    /// What garbage collection's sweep reads from the path info table of its
    /// database: the paths registered since a time (see
    /// [`cairn_castore::blobservice::LateRoots`]).
    pub fn late_roots() -> Arc<dyn LateRoots> {
        Arc::new(Late)
    }

    /// A connection, the tables created first if this process has not yet.
    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        client(&self.db).await
    }
}

async fn client(db: &Db) -> Result<deadpool_postgres::Object, Error> {
    db.migrate("pathinfo", MIGRATIONS).await?;
    db.client().await
}

/// Writes the noted accesses whose recorded time is older by a grain.
async fn flush_access(db: &Db, access: &Pending) -> Result<(), Error> {
    let pending = std::mem::take(&mut *access.lock().unwrap_or_else(PoisonError::into_inner));
    if pending.is_empty() {
        return Ok(());
    }
    let keys: Vec<&[u8]> = pending.keys().map(|d| d.as_slice()).collect();
    let at: Vec<i64> = pending
        .values()
        .map(|t| i64::try_from(*t).unwrap_or(i64::MAX))
        .collect();
    let client = client(db).await?;
    client
        .execute(
            "UPDATE path_info p SET accessed = t.at
             FROM unnest($1::bytea[], $2::int8[]) AS t (d, at)
             WHERE p.digest = t.d AND (p.accessed IS NULL OR p.accessed <= t.at - $3)",
            &[&keys, &at, &ACCESS_GRAIN],
        )
        .await
        .map_err(|e| db_error("writing access times", e))?;
    Ok(())
}

/// Reads the paths registered since a time, for the sweep.
struct Late;

#[async_trait]
impl LateRoots for Late {
    async fn roots_since(
        &self,
        txn: &cairn_castore::pg::tokio_postgres::Transaction<'_>,
        since: std::time::SystemTime,
    ) -> Result<Vec<Node>, Error> {
        let rows = txn
            .query(
                "SELECT digest, info FROM path_info WHERE updated_at >= $1",
                &[&since],
            )
            .await
            .map_err(|e| db_error("gc: reading paths registered meanwhile", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let key: &[u8] = row.get(0);
            let digest = row_digest(key)?;
            out.push(decode_stored(SOURCE, &digest, row.get(1))?.node);
        }
        Ok(out)
    }
}

/// The `refs` column of `info`: its references' digests.
fn refs_of(info: &PathInfo) -> Vec<&[u8]> {
    info.references
        .iter()
        .map(|r| r.digest().as_slice())
        .collect()
}

/// Rows whose `refs` are filled in per statement by [`fill_refs`].
const FILL_BATCH: i64 = 1000;

/// Fills in `refs` of the rows written before that column existed, from their
/// `info`. Once done (the partial index of such rows is empty), one query.
async fn fill_refs(client: &deadpool_postgres::Object) -> Result<(), Error> {
    let update = client
        .prepare_cached(
            // Only where the entry is still the one read: a put meanwhile
            // wrote its own.
            "UPDATE path_info SET refs = $3 WHERE digest = $1 AND info = $2 AND refs IS NULL",
        )
        .await
        .map_err(|e| db_error("preparing the indexing of references", e))?;
    let mut filled = 0u64;
    loop {
        let rows = client
            .query(
                "SELECT digest, info FROM path_info WHERE refs IS NULL ORDER BY digest LIMIT $1",
                &[&FILL_BATCH],
            )
            .await
            .map_err(|e| db_error("reading path infos without their references indexed", e))?;
        if rows.is_empty() {
            break;
        }
        let mut updates = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: &[u8] = row.get(0);
            let bytes: &[u8] = row.get(1);
            let info = decode_stored(SOURCE, &row_digest(key)?, bytes)?;
            updates.push((key, bytes, info));
        }
        // Sent together: the connection pipelines them.
        futures::future::try_join_all(updates.iter().map(|(key, bytes, info)| {
            let refs = refs_of(info);
            let update = &update;
            async move { client.execute(update, &[key, bytes, &refs]).await }
        }))
        .await
        .map_err(|e| db_error("indexing the references of path infos", e))?;
        filled += rows.len() as u64;
    }
    if filled > 0 {
        tracing::info!(
            rows = filled,
            "{SOURCE}: indexed the references of rows from before the index"
        );
    }
    Ok(())
}

/// A row's `digest`, which the table's CHECK keeps at 20 bytes.
fn row_digest(key: &[u8]) -> Result<[u8; 20], Error> {
    <[u8; 20]>::try_from(key)
        .map_err(|_| Error::Corrupt(format!("{SOURCE}: a digest of {} bytes", key.len())))
}

fn hash_part(digest: &[u8; 20]) -> String {
    cairn_nix::nixbase32::encode(digest)
}

/// Checks, in `txn` (holding the sweep lock), that the root of `info` is
/// still stored, when the castore's tables are in this database (a
/// collection may have removed it since `check_content` looked).
async fn root_still_stored(
    txn: &cairn_castore::pg::deadpool_postgres::Transaction<'_>,
    info: &PathInfo,
) -> Result<(), Error> {
    let (sql, digest, table) = match &info.node {
        Node::Directory { digest, .. } => (
            "SELECT to_regclass('directories') IS NULL \
             OR EXISTS (SELECT 1 FROM directories WHERE digest = $1)",
            digest,
            "directory",
        ),
        Node::File { digest, .. } => {
            let known: bool = txn
                .query_one(
                    "SELECT to_regclass('blob_chunks') IS NOT NULL AND to_regclass('blob_lists') IS NOT NULL",
                    &[],
                )
                .await
                .map_err(|e| db_error("checking the root blob", e))?
                .get(0);
            if !known {
                return Ok(());
            }
            (
                "SELECT EXISTS (SELECT 1 FROM blob_chunks WHERE digest = $1) \
                 OR EXISTS (SELECT 1 FROM blob_lists WHERE digest = $1)",
                digest,
                "blob",
            )
        }
        Node::Symlink { .. } => return Ok(()),
    };
    let key: &[u8] = digest.as_bytes();
    let ok: bool = txn
        .query_one(sql, &[&key])
        .await
        .map_err(|e| db_error("checking the root", e))?
        .get(0);
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "node: {table} {digest} of {} is not stored (removed by a garbage collection meanwhile?): upload it again",
            info.store_path
        )));
    }
    Ok(())
}

#[async_trait]
impl PathInfoService for PgPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT info FROM path_info WHERE digest = $1")
            .await
            .map_err(|e| db_error("preparing the path info lookup", e))?;
        let key: &[u8] = &digest;
        let what = || format!("reading the path info of {}", hash_part(&digest));
        let Some(row) = client
            .query_opt(&stmt, &[&key])
            .await
            .map_err(|e| db_error(&what(), e))?
        else {
            return Ok(None);
        };
        let bytes: &[u8] = row.try_get(0).map_err(|e| db_error(&what(), e))?;
        let info = decode_stored(SOURCE, &digest, bytes)?;
        self.note_access(digest);
        Ok(Some(info))
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        check_content(&info, self.blobs.as_ref(), self.directories.as_ref()).await?;
        let bytes = proto::PathInfo::from(&info).encode_to_vec();
        let digest = *info.store_path.digest();
        let key: &[u8] = &digest;
        let mut client = self.client().await?;
        let what = || format!("storing the path info of {}", info.store_path);
        let txn = client
            .transaction()
            .await
            .map_err(|e| db_error(&what(), e))?;
        // Garbage collection's sweep runs wholly before or after this: if
        // before, the root is checked again here; if after, it finds this
        // path registered and keeps its content.
        txn.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&SWEEP_LOCK])
            .await
            .map_err(|e| db_error("waiting for a garbage collection's sweep", e))?;
        root_still_stored(&txn, &info).await?;
        // The same entry again changes nothing (not even updated_at), except
        // filling in `refs` of a row from before that column.
        let stmt = txn
            .prepare_cached(
                "INSERT INTO path_info (digest, info, accessed, refs) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO UPDATE SET info = EXCLUDED.info, refs = EXCLUDED.refs,
                     updated_at = CASE WHEN path_info.info <> EXCLUDED.info
                                       THEN now() ELSE path_info.updated_at END
                 WHERE path_info.info <> EXCLUDED.info OR path_info.refs IS NULL",
            )
            .await
            .map_err(|e| db_error("preparing the path info upload", e))?;
        let now = i64::try_from(super::now_secs()).unwrap_or(i64::MAX);
        let refs = refs_of(&info);
        txn.execute(&stmt, &[&key, &bytes, &now, &refs])
            .await
            .map_err(|e| db_error(&what(), e))?;
        txn.commit().await.map_err(|e| db_error(&what(), e))?;
        self.note_access(digest);
        Ok(info)
    }

    fn note_access(&self, digest: [u8; 20]) {
        self.access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest, super::now_secs());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.flusher.call_once(|| {
            let db = self.db.clone();
            let access = Arc::downgrade(&self.access);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(super::redb::ACCESS_FLUSH).await;
                    let Some(access) = access.upgrade() else {
                        return;
                    };
                    if let Err(e) = flush_access(&db, &access).await {
                        tracing::warn!(error = %e, "cannot write access times");
                    }
                }
            });
        });
    }

    async fn access_times(&self) -> Result<HashMap<[u8; 20], u64>, Error> {
        flush_access(&self.db, &self.access).await?;
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT digest, accessed FROM path_info WHERE accessed IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| db_error("reading access times", e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let key: &[u8] = row.get(0);
            let at: i64 = row.get(1);
            if let Ok(d) = <[u8; 20]>::try_from(key) {
                out.insert(d, u64::try_from(at).unwrap_or(0));
            }
        }
        // Noted since the flush: newer.
        for (d, at) in self
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            out.insert(*d, *at);
        }
        Ok(out)
    }

    async fn delete(&self, digests: &[[u8; 20]]) -> Result<(), Error> {
        let keys: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
        let client = self.client().await?;
        client
            .execute("DELETE FROM path_info WHERE digest = ANY($1)", &[&keys])
            .await
            .map_err(|e| db_error("deleting path infos", e))?;
        Ok(())
    }

    async fn pins(&self) -> Result<Vec<[u8; 20]>, Error> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT digest FROM path_info WHERE pinned", &[])
            .await
            .map_err(|e| db_error("reading pins", e))?;
        rows.iter()
            .map(|r| {
                let key: &[u8] = r.get(0);
                row_digest(key)
            })
            .collect()
    }

    async fn set_pinned(&self, digests: &[[u8; 20]], pinned: bool) -> Result<(), Error> {
        let keys: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
        let client = self.client().await?;
        client
            .execute(
                "UPDATE path_info SET pinned = $2 WHERE digest = ANY($1)",
                &[&keys, &pinned],
            )
            .await
            .map_err(|e| db_error("setting pins", e))?;
        Ok(())
    }

    async fn cached_nar(&self, node: &Node) -> Result<Option<(u64, [u8; 32])>, Error> {
        let key = nar_cache_key(node);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT nar_size, nar_sha256 FROM nar_cache WHERE node = $1")
            .await
            .map_err(|e| db_error("preparing the NAR cache lookup", e))?;
        let Some(row) = client
            .query_opt(&stmt, &[&key])
            .await
            .map_err(|e| db_error("reading the NAR cache", e))?
        else {
            return Ok(None);
        };
        let size: i64 = row
            .try_get(0)
            .map_err(|e| db_error("reading the NAR cache", e))?;
        let sha: &[u8] = row
            .try_get(1)
            .map_err(|e| db_error("reading the NAR cache", e))?;
        match (u64::try_from(size), <[u8; 32]>::try_from(sha)) {
            (Ok(size), Ok(sha)) => Ok(Some((size, sha))),
            _ => {
                tracing::warn!(
                    size,
                    sha_len = sha.len(),
                    "malformed nar_cache row, recomputing"
                );
                Ok(None)
            }
        }
    }

    async fn remember_nar(&self, node: &Node, nar: (u64, [u8; 32])) -> Result<(), Error> {
        let key = nar_cache_key(node);
        let size = i64::try_from(nar.0)
            .map_err(|_| Error::InvalidArgument(format!("NAR size {} too large", nar.0)))?;
        let sha: &[u8] = &nar.1;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO nar_cache (node, nar_size, nar_sha256) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE
                 SET nar_size = EXCLUDED.nar_size, nar_sha256 = EXCLUDED.nar_sha256
                 WHERE (nar_cache.nar_size, nar_cache.nar_sha256)
                       IS DISTINCT FROM (EXCLUDED.nar_size, EXCLUDED.nar_sha256)",
            )
            .await
            .map_err(|e| db_error("preparing the NAR cache upload", e))?;
        client
            .execute(&stmt, &[&key, &size, &sha])
            .await
            .map_err(|e| db_error("storing into the NAR cache", e))?;
        Ok(())
    }

    /// From the `refs` index, the rows from before it indexed first.
    async fn referrers(&self, digest: [u8; 20]) -> Result<Vec<StorePath>, Error> {
        let client = self.client().await?;
        fill_refs(&client).await?;
        let stmt = client
            .prepare_cached("SELECT digest, info FROM path_info WHERE refs @> ARRAY[$1::bytea]")
            .await
            .map_err(|e| db_error("preparing the referrers lookup", e))?;
        let key: &[u8] = &digest;
        let what = || format!("reading the referrers of {}", hash_part(&digest));
        let rows = client
            .query(&stmt, &[&key])
            .await
            .map_err(|e| db_error(&what(), e))?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let key: &[u8] = row.try_get(0).map_err(|e| db_error(&what(), e))?;
            let bytes: &[u8] = row.try_get(1).map_err(|e| db_error(&what(), e))?;
            found.push(decode_stored(SOURCE, &row_digest(key)?, bytes)?.store_path);
        }
        Ok(found)
    }

    /// Pages of [`LIST_BATCH`] rows by digest, each page its own query on a
    /// connection held only for that query.
    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        let db = self.db.clone();
        Box::pin(async_stream::try_stream! {
            let mut after: Vec<u8> = Vec::new();
            loop {
                let page = {
                    let client = client(&db).await?;
                    let stmt = client
                        .prepare_cached(
                            "SELECT digest, info FROM path_info WHERE digest > $1
                             ORDER BY digest LIMIT $2",
                        )
                        .await
                        .map_err(|e| db_error("preparing the path info listing", e))?;
                    client
                        .query(&stmt, &[&after, &LIST_BATCH])
                        .await
                        .map_err(|e| db_error("listing path infos", e))?
                };
                let done = page.len() < LIST_BATCH as usize;
                for row in page {
                    let key: Vec<u8> = row
                        .try_get(0)
                        .map_err(|e| db_error("listing path infos", e))?;
                    let bytes: &[u8] = row
                        .try_get(1)
                        .map_err(|e| db_error("listing path infos", e))?;
                    let digest = row_digest(key.as_slice())?;
                    let info = decode_stored(SOURCE, &digest, bytes)?;
                    after = key;
                    yield info;
                }
                if done {
                    break;
                }
            }
        })
    }
}
