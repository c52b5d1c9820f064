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

use std::sync::Arc;

use async_trait::async_trait;
use cairn_castore::pg::{Db, db_error, deadpool_postgres};
use cairn_castore::{BlobService, DirectoryService, Error, Node};
use futures::stream::BoxStream;
use prost::Message;

use super::{PathInfo, PathInfoService, check_content, decode_stored, nar_cache_key};
use crate::proto;

static MIGRATIONS: &[&str] = &["CREATE TABLE path_info (
        digest bytea PRIMARY KEY CHECK (length(digest) = 20),
        info bytea NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE nar_cache (
        node bytea PRIMARY KEY,
        nar_size bigint NOT NULL,
        nar_sha256 bytea NOT NULL
    );"];

/// What `Corrupt` errors name as the source of a bad row.
const SOURCE: &str = "PostgreSQL table path_info";

/// Rows per page of `list`.
const LIST_BATCH: i64 = 1000;

/// Path infos in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgPathInfoService {
    db: Db,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
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
        }
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

fn hash_part(digest: &[u8; 20]) -> String {
    cairn_nix::nixbase32::encode(digest)
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
        decode_stored(SOURCE, &digest, bytes).map(Some)
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        check_content(&info, self.blobs.as_ref(), self.directories.as_ref()).await?;
        let bytes = proto::PathInfo::from(&info).encode_to_vec();
        let digest = *info.store_path.digest();
        let key: &[u8] = &digest;
        let client = self.client().await?;
        // The same entry again changes nothing (not even updated_at).
        let stmt = client
            .prepare_cached(
                "INSERT INTO path_info (digest, info) VALUES ($1, $2)
                 ON CONFLICT (digest) DO UPDATE SET info = EXCLUDED.info, updated_at = now()
                 WHERE path_info.info <> EXCLUDED.info",
            )
            .await
            .map_err(|e| db_error("preparing the path info upload", e))?;
        client
            .execute(&stmt, &[&key, &bytes])
            .await
            .map_err(|e| db_error(&format!("storing the path info of {}", info.store_path), e))?;
        Ok(info)
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
                    let digest = <[u8; 20]>::try_from(key.as_slice()).map_err(|_| {
                        Error::Corrupt(format!("{SOURCE}: a digest of {} bytes", key.len()))
                    })?;
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
