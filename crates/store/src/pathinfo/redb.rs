//! [`RedbPathInfoService`]: path infos in `pathinfo.redb`, a redb file next to the
//! embedded castore's `index.redb` in the same data directory.
//!
//! Tables:
//! - `pathinfo`: store path digest (20 bytes) -> the canonical protobuf encoding of
//!   the `PathInfo` (as [`PathInfo`] converts it). Values are validated again when
//!   read, so a damaged file shows up as `Corrupt`, not as bad data.
//! - `nar_cache`: canonical protobuf encoding of a root `Node` with an empty name ->
//!   its NAR size (u64 little-endian) and SHA-256 (32 bytes), for CalculateNAR. A
//!   malformed value counts as absent (it is recomputed and overwritten).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use cairn_castore::{BlobService, DirectoryService, Error, Node};
use futures::stream::BoxStream;
use prost::Message;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::{PathInfo, PathInfoService, check_content};
use crate::proto;

const PATHINFO: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("pathinfo");
const NAR_CACHE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("nar_cache");

fn nar_cache_key(node: &Node) -> Vec<u8> {
    node.clone().into_proto(bytes::Bytes::new()).encode_to_vec()
}

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "pathinfo.redb";

/// How many entries one read transaction of `list` fetches.
const LIST_BATCH: usize = 256;

/// Path infos in a redb file; every `put` is durable when it returns.
///
/// Cheap to clone. redb allows one opener of a file per process:
/// [`RedbPathInfoService::open_shared`] hands out the handle already open.
#[derive(Clone)]
pub struct RedbPathInfoService {
    db: Arc<Database>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
}

fn storage<E: Into<redb::Error>>(e: E) -> Error {
    Error::storage(e.into())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

fn decode(digest: &[u8; 20], bytes: &[u8]) -> Result<PathInfo, Error> {
    let corrupt = |what: String| {
        Error::Corrupt(format!(
            "{FILE_NAME}: entry {}: {what}",
            cairn_nix::nixbase32::encode(digest)
        ))
    };
    let p = proto::PathInfo::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    let info = PathInfo::try_from(p).map_err(|e| corrupt(e.to_string()))?;
    if info.store_path.digest() != digest {
        return Err(corrupt(format!("holds {}", info.store_path)));
    }
    Ok(info)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::storage(std::io::Error::other(e.to_string())))?
}

impl RedbPathInfoService {
    /// Opens (creating if needed) `pathinfo.redb` in data directory `dir`; `put`
    /// checks content against `blobs` and `directories`.
    pub fn open(
        dir: impl AsRef<Path>,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        let db = Arc::new(open_db(dir.as_ref())?);
        Ok(Self {
            db,
            blobs,
            directories,
        })
    }

    /// Like [`RedbPathInfoService::open`], but shares the database this process
    /// already has open for `dir` (a second `Database` on the same file fails).
    pub fn open_shared(
        dir: impl AsRef<Path>,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        static OPEN: Mutex<Vec<(PathBuf, Weak<Database>)>> = Mutex::new(Vec::new());
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let key = dir.canonicalize().map_err(|e| io("resolve", dir, e))?;
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|(_, w)| w.strong_count() > 0);
        let db = match open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, w)| w.upgrade())
        {
            Some(db) => db,
            None => {
                let db = Arc::new(open_db(&key)?);
                open.push((key, Arc::downgrade(&db)));
                db
            }
        };
        Ok(Self {
            db,
            blobs,
            directories,
        })
    }
}

fn open_db(dir: &Path) -> Result<Database, Error> {
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let db = Database::create(dir.join(FILE_NAME)).map_err(storage)?;
    let txn = db.begin_write().map_err(storage)?;
    txn.open_table(PATHINFO).map_err(storage)?;
    txn.open_table(NAR_CACHE).map_err(storage)?;
    txn.commit().map_err(storage)?;
    Ok(db)
}

#[async_trait]
impl PathInfoService for RedbPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(PATHINFO).map_err(storage)?;
            match table.get(&digest).map_err(storage)? {
                Some(v) => Ok(Some(decode(&digest, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        check_content(&info, self.blobs.as_ref(), self.directories.as_ref()).await?;
        let db = self.db.clone();
        let bytes = proto::PathInfo::from(&info).encode_to_vec();
        let digest = *info.store_path.digest();
        blocking(move || {
            // Default durability: on disk when commit returns.
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut table = txn.open_table(PATHINFO).map_err(storage)?;
                table.insert(&digest, bytes.as_slice()).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })
        .await?;
        Ok(info)
    }

    async fn cached_nar(&self, node: &Node) -> Result<Option<(u64, [u8; 32])>, Error> {
        let db = self.db.clone();
        let key = nar_cache_key(node);
        blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(NAR_CACHE).map_err(storage)?;
            let Some(v) = table.get(key.as_slice()).map_err(storage)? else {
                return Ok(None);
            };
            let v = v.value();
            match (v.get(..8), v.get(8..)) {
                (Some(size), Some(sha)) if v.len() == 40 => {
                    let mut size_le = [0u8; 8];
                    size_le.copy_from_slice(size);
                    let mut sha256 = [0u8; 32];
                    sha256.copy_from_slice(sha);
                    Ok(Some((u64::from_le_bytes(size_le), sha256)))
                }
                _ => {
                    tracing::warn!(
                        len = v.len(),
                        "{FILE_NAME}: malformed nar_cache value, recomputing"
                    );
                    Ok(None)
                }
            }
        })
        .await
    }

    async fn remember_nar(&self, node: &Node, nar: (u64, [u8; 32])) -> Result<(), Error> {
        let db = self.db.clone();
        let key = nar_cache_key(node);
        let mut value = Vec::with_capacity(40);
        value.extend_from_slice(&nar.0.to_le_bytes());
        value.extend_from_slice(&nar.1);
        blocking(move || {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut table = txn.open_table(NAR_CACHE).map_err(storage)?;
                table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })
        .await
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        let db = self.db.clone();
        Box::pin(async_stream::try_stream! {
            let mut after: Option<[u8; 20]> = None;
            loop {
                let db = db.clone();
                let batch = blocking(move || {
                    let txn = db.begin_read().map_err(storage)?;
                    let table = txn.open_table(PATHINFO).map_err(storage)?;
                    let start = match &after {
                        Some(k) => Bound::Excluded(k),
                        None => Bound::Unbounded,
                    };
                    let mut batch = Vec::with_capacity(LIST_BATCH);
                    for entry in table
                        .range::<&[u8; 20]>((start, Bound::Unbounded))
                        .map_err(storage)?
                        .take(LIST_BATCH)
                    {
                        let (k, v) = entry.map_err(storage)?;
                        let digest = k.value();
                        batch.push((*digest, decode(digest, v.value())));
                    }
                    Ok(batch)
                })
                .await?;
                let done = batch.len() < LIST_BATCH;
                for (digest, info) in batch {
                    after = Some(digest);
                    yield info?;
                }
                if done {
                    break;
                }
            }
        })
    }
}
