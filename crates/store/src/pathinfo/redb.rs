//! [`RedbPathInfoService`]: path infos in `pathinfo.redb`, a redb file next to the
//! embedded castore's `index.redb` in the same data directory.
//!
//! One table, `pathinfo`: store path digest (20 bytes) -> the canonical protobuf
//! encoding of the `PathInfo` (as [`PathInfo`] converts it). Values are validated
//! again when read, so a damaged file shows up as `Corrupt`, not as bad data.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use cairn_castore::{BlobService, DirectoryService, Error};
use futures::stream::BoxStream;
use prost::Message;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::{PathInfo, PathInfoService, check_content};
use crate::proto;

const PATHINFO: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("pathinfo");

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
