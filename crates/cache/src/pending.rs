//! Uploaded NARs waiting for their narinfo, durably.
//!
//! `nix copy --to http://` sends a path's NAR first and its narinfo after. The NAR's
//! content goes into the blob and directory services as it streams in (durable
//! there); what the narinfo will be checked against (root node, NAR hash and size,
//! file size, compression) is recorded here under the file's SHA-256 (the hash in
//! the NAR's URL), in a redb file `cache-uploads.redb` in the data directory, so
//! that a daemon restart between the NAR and its narinfo loses nothing.
//!
//! Table `pending`: file SHA-256 (32 bytes) -> `2` (format version), compression
//! (1 byte: its index in [`Compression::ALL`]), NAR SHA-256 (32 bytes), NAR size
//! (u64 LE), file size (u64 LE), upload time (u64 LE, seconds since the Unix
//! epoch), uploads not yet claimed by a narinfo (u32 LE), then the root node's
//! protobuf `Node` encoding (with an empty name). Version 1 records (written
//! before uploads were counted) lack the time and the count.
//!
//! A record is durable before its upload is answered: the NAR was acknowledged,
//! so a crash between it and its narinfo must not make the narinfo fail. Claims
//! (removals) are not synced one by one (redb's `Durability::None`, with every
//! [`DURABLE_EVERY`]th commit durable so freed pages are reused, and the next
//! durable put syncing them too): a `nix copy --to` sends one path at a time, and
//! each fsync is a wait per path. A claim lost in a crash leaves a record that no
//! narinfo needs, which expires like any unclaimed one.
//!
//! A record goes when its narinfo is registered ([`PendingUploads::claim`]): the
//! count covers two paths with the same NAR uploaded at once (each upload adds
//! one, each narinfo takes one). Records no narinfo ever claims (an interrupted
//! `nix copy`, a retried upload) go after a maximum age ([`PendingUploads::expire`],
//! which the cache runs at start and then periodically). A record is never served:
//! `GET` and `HEAD` of an uploaded file's URL both answer 404.
//!
//! With several daemons in front of one store, a NAR uploaded through one may get
//! its narinfo through another: [`PendingUploads::postgres`] keeps the records in
//! PostgreSQL instead (table `cache_uploads`, see [`postgres`]), with the same
//! semantics.

mod postgres;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cairn_castore::Node;
use prost::Message as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};

use crate::compression::Compression;
use crate::error::CacheError;

const PENDING: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("pending");

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "cache-uploads.redb";

const VERSION: u8 = 2;
/// Version 1 records: no upload time, no count.
const HEADER_LEN_V1: usize = 1 + 1 + 32 + 8 + 8;
const HEADER_LEN: usize = HEADER_LEN_V1 + 8 + 4;

/// What an uploaded NAR file turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNar {
    /// The NAR's content, stored in the castore.
    pub root: Node,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// SHA-256 of the uncompressed NAR.
    pub nar_sha256: [u8; 32],
    /// Size of the file as uploaded (compressed).
    pub file_size: u64,
    /// Its compression.
    pub compression: Compression,
}

/// A record: the upload, when it was last uploaded and how many uploads no
/// narinfo has claimed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    nar: PendingNar,
    /// Seconds since the Unix epoch; `None` for a version 1 record.
    uploaded: Option<u64>,
    unclaimed: u32,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let nar = &self.nar;
        let node = nar.root.clone().into_proto(Bytes::new()).encode_to_vec();
        let mut out = Vec::with_capacity(HEADER_LEN + node.len());
        out.push(VERSION);
        let ci = Compression::ALL
            .iter()
            .position(|c| *c == nar.compression)
            .unwrap_or(0);
        out.push(ci as u8);
        out.extend_from_slice(&nar.nar_sha256);
        out.extend_from_slice(&nar.nar_size.to_le_bytes());
        out.extend_from_slice(&nar.file_size.to_le_bytes());
        out.extend_from_slice(&self.uploaded.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.unclaimed.to_le_bytes());
        out.extend_from_slice(&node);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let header_len = match bytes.first() {
            Some(1) => HEADER_LEN_V1,
            Some(&VERSION) => HEADER_LEN,
            Some(v) => return Err(format!("unknown record version {v}")),
            None => return Err("empty record".into()),
        };
        if bytes.len() < header_len {
            return Err(format!("{} bytes, shorter than a record", bytes.len()));
        }
        let compression = *Compression::ALL
            .get(usize::from(bytes[1]))
            .ok_or_else(|| format!("unknown compression {}", bytes[1]))?;
        let mut nar_sha256 = [0u8; 32];
        nar_sha256.copy_from_slice(&bytes[2..34]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let nar_size = u64_at(34);
        let file_size = u64_at(42);
        let (uploaded, unclaimed) = if header_len == HEADER_LEN {
            let mut n = [0u8; 4];
            n.copy_from_slice(&bytes[58..62]);
            (Some(u64_at(50)), u32::from_le_bytes(n))
        } else {
            (None, 1)
        };
        let proto = cairn_castore::proto::Node::decode(&bytes[header_len..])
            .map_err(|e| format!("root node: {e}"))?;
        let (_, root) =
            Node::try_from_proto_unnamed(proto).map_err(|e| format!("root node: {e}"))?;
        Ok(Self {
            nar: PendingNar {
                root,
                nar_size,
                nar_sha256,
                file_size,
                compression,
            },
            uploaded,
            unclaimed,
        })
    }
}

fn bad_record(file_sha256: &[u8; 32], e: String) -> CacheError {
    CacheError::Internal(format!(
        "{FILE_NAME}: record {}: {e}",
        cairn_nix::nixbase32::encode(file_sha256)
    ))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One commit in this many is durable (fsynced); see the module documentation.
const DURABLE_EVERY: u32 = 64;

/// The table of pending uploads: in a redb file (or memory), or in PostgreSQL.
/// Cheap to clone.
#[derive(Clone)]
pub struct PendingUploads {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redb {
        db: Arc<Database>,
        commits: Arc<AtomicU32>,
    },
    Postgres(postgres::PgPending),
}

fn internal<E: std::fmt::Display>(e: E) -> CacheError {
    CacheError::Internal(format!("{FILE_NAME}: {e}"))
}

impl PendingUploads {
    /// Opens (creating if needed) `cache-uploads.redb` in data directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let path = dir.join(FILE_NAME);
        let db = cairn_castore::redb_file::open_or_create(&path, Database::builder())
            .map_err(|e| CacheError::Internal(format!("cannot open {}: {e}", path.display())))?;
        Self::init(db)
    }

    /// A table that lives in memory only (for a cache over in-memory services,
    /// and tests).
    pub fn in_memory() -> Result<Self, CacheError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(internal)?;
        Self::init(db)
    }

    /// The records in table `cache_uploads` of a PostgreSQL database, shared by
    /// every daemon using it (created on first use).
    pub fn postgres(db: cairn_castore::pg::Db) -> Self {
        Self {
            backend: Backend::Postgres(postgres::PgPending::new(db)),
        }
    }

    fn init(db: Database) -> Result<Self, CacheError> {
        let txn = db.begin_write().map_err(internal)?;
        txn.open_table(PENDING).map_err(internal)?;
        txn.commit().map_err(internal)?;
        Ok(Self {
            backend: Backend::Redb {
                db: Arc::new(db),
                commits: Arc::new(AtomicU32::new(0)),
            },
        })
    }

    /// Records an upload; durable when this returns. The same file uploaded
    /// again counts once more (its narinfo, or a second path's, claims each).
    pub async fn put(&self, file_sha256: [u8; 32], nar: &PendingNar) -> Result<(), CacheError> {
        self.put_at(file_sha256, nar, unix_now()).await
    }

    async fn put_at(
        &self,
        file_sha256: [u8; 32],
        nar: &PendingNar,
        now: u64,
    ) -> Result<(), CacheError> {
        let db = match &self.backend {
            Backend::Redb { db, .. } => db.clone(),
            Backend::Postgres(pg) => return pg.put_at(file_sha256, nar, now).await,
        };
        let nar = nar.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut t = txn.open_table(PENDING).map_err(internal)?;
                let old = match t.get(&file_sha256).map_err(internal)? {
                    // A record that does not decode is replaced by this upload.
                    Some(v) => Record::decode(v.value()).ok(),
                    None => None,
                };
                let unclaimed = match old {
                    Some(old) if old.nar == nar => old.unclaimed.saturating_add(1),
                    _ => 1,
                };
                let record = Record {
                    nar,
                    uploaded: Some(now),
                    unclaimed,
                };
                t.insert(&file_sha256, record.encode().as_slice())
                    .map_err(internal)?;
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    /// The upload whose file has this SHA-256.
    pub async fn get(&self, file_sha256: [u8; 32]) -> Result<Option<PendingNar>, CacheError> {
        let db = match &self.backend {
            Backend::Redb { db, .. } => db.clone(),
            Backend::Postgres(pg) => return pg.get(file_sha256).await,
        };
        blocking(move || {
            let txn = db.begin_read().map_err(internal)?;
            let t = txn.open_table(PENDING).map_err(internal)?;
            let Some(v) = t.get(&file_sha256).map_err(internal)? else {
                return Ok(None);
            };
            Record::decode(v.value())
                .map(|r| Some(r.nar))
                .map_err(|e| bad_record(&file_sha256, e))
        })
        .await
    }

    /// A narinfo using the upload was registered: one upload fewer waits, and
    /// the record goes with the last.
    pub async fn claim(&self, file_sha256: [u8; 32]) -> Result<(), CacheError> {
        let (db, commits) = match &self.backend {
            Backend::Redb { db, commits } => (db.clone(), commits),
            Backend::Postgres(pg) => return pg.claim(file_sha256).await,
        };
        // One claim in DURABLE_EVERY is synced (see the module documentation).
        let durability =
            if commits.fetch_add(1, Ordering::Relaxed) % DURABLE_EVERY == DURABLE_EVERY - 1 {
                Durability::Immediate
            } else {
                Durability::None
            };
        blocking(move || {
            let mut txn = db.begin_write().map_err(internal)?;
            txn.set_durability(durability).map_err(internal)?;
            {
                let mut t = txn.open_table(PENDING).map_err(internal)?;
                let record = match t.get(&file_sha256).map_err(internal)? {
                    None => return Ok(()),
                    Some(v) => Record::decode(v.value()).ok(),
                };
                match record {
                    Some(mut r) if r.unclaimed > 1 => {
                        r.unclaimed -= 1;
                        t.insert(&file_sha256, r.encode().as_slice())
                            .map_err(internal)?;
                    }
                    _ => {
                        t.remove(&file_sha256).map_err(internal)?;
                    }
                }
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    /// Removes the records last uploaded more than `max_age` ago (and those that
    /// do not decode); returns how many went. A version 1 record, whose age is
    /// unknown, is given the current time, so it goes `max_age` from now.
    pub async fn expire(&self, max_age: Duration) -> Result<usize, CacheError> {
        self.expire_at(max_age, unix_now()).await
    }

    /// [`Self::expire`], blocking the thread (for a cache starting up). On
    /// PostgreSQL, which is reached asynchronously, the expiry runs as a task of the
    /// current Tokio runtime (logging what it did) and this returns `Ok(0)` at once;
    /// without a runtime it does nothing (the periodic expiry catches up).
    pub fn expire_blocking(&self, max_age: Duration) -> Result<usize, CacheError> {
        match &self.backend {
            Backend::Redb { db, .. } => expire(db, max_age, unix_now()),
            Backend::Postgres(pg) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let pg = pg.clone();
                    rt.spawn(async move {
                        match pg.expire_at(max_age, unix_now()).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(n, "expired pending uploads"),
                            Err(e) => tracing::warn!(error = %e, "cannot expire pending uploads"),
                        }
                    });
                }
                Ok(0)
            }
        }
    }

    async fn expire_at(&self, max_age: Duration, now: u64) -> Result<usize, CacheError> {
        let db = match &self.backend {
            Backend::Redb { db, .. } => db.clone(),
            Backend::Postgres(pg) => return pg.expire_at(max_age, now).await,
        };
        blocking(move || expire(&db, max_age, now)).await
    }

    /// How many uploads are recorded.
    pub async fn len(&self) -> Result<u64, CacheError> {
        let db = match &self.backend {
            Backend::Redb { db, .. } => db.clone(),
            Backend::Postgres(pg) => return pg.len().await,
        };
        blocking(move || {
            let txn = db.begin_read().map_err(internal)?;
            let t = txn.open_table(PENDING).map_err(internal)?;
            t.len().map_err(internal)
        })
        .await
    }

    /// Whether no upload is recorded.
    pub async fn is_empty(&self) -> Result<bool, CacheError> {
        Ok(self.len().await? == 0)
    }
}

fn expire(db: &Database, max_age: Duration, now: u64) -> Result<usize, CacheError> {
    // One write transaction, so that an upload refreshing a record while
    // this runs is not lost; aborted (no commit, no sync) if it changes
    // nothing.
    let txn = db.begin_write().map_err(internal)?;
    let mut expired = Vec::new();
    {
        let mut t = txn.open_table(PENDING).map_err(internal)?;
        let mut dated = Vec::new();
        for item in t.iter().map_err(internal)? {
            let (k, v) = item.map_err(internal)?;
            match Record::decode(v.value()) {
                Ok(Record {
                    uploaded: Some(at), ..
                }) if now.saturating_sub(at) <= max_age.as_secs() => {}
                Ok(mut r @ Record { uploaded: None, .. }) => {
                    r.uploaded = Some(now);
                    dated.push((*k.value(), r.encode()));
                }
                _ => expired.push(*k.value()),
            }
        }
        if expired.is_empty() && dated.is_empty() {
            drop(t);
            txn.abort().map_err(internal)?;
            return Ok(0);
        }
        for k in &expired {
            t.remove(k).map_err(internal)?;
        }
        for (k, v) in &dated {
            t.insert(k, v.as_slice()).map_err(internal)?;
        }
    }
    txn.commit().map_err(internal)?;
    Ok(expired.len())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CacheError::Internal(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cairn_castore::B3Digest;

    use super::*;

    fn nar(n: u8) -> PendingNar {
        PendingNar {
            root: Node::File {
                digest: B3Digest::of(&[n]),
                size: 1,
                executable: true,
            },
            nar_size: 128,
            nar_sha256: [n; 32],
            file_size: 99,
            compression: Compression::Zstd,
        }
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let p = PendingUploads::open(dir.path()).unwrap();
            assert_eq!(p.get([1; 32]).await.unwrap(), None);
            p.put([1; 32], &nar(7)).await.unwrap();
        }
        let p = PendingUploads::open(dir.path()).unwrap();
        assert_eq!(p.get([1; 32]).await.unwrap(), Some(nar(7)));
        assert_eq!(p.get([2; 32]).await.unwrap(), None);
    }

    /// A fresh database of the test process's PostgreSQL server.
    fn pg_url() -> String {
        cairn_testkit::postgres::server().database()
    }

    fn pg(url: &str) -> PendingUploads {
        PendingUploads::postgres(cairn_castore::pg::Db::open(url).unwrap())
    }

    /// Both backends, each test on each: redb in memory and PostgreSQL.
    macro_rules! on_both {
        ($scenario:ident, $redb:ident, $pg:ident) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $redb() {
                $scenario(PendingUploads::in_memory().unwrap()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $pg() {
                $scenario(pg(&pg_url())).await;
            }
        };
    }

    on_both!(
        each_upload_is_claimed_once,
        each_upload_is_claimed_once_redb,
        each_upload_is_claimed_once_postgres
    );
    on_both!(
        old_uploads_expire,
        old_uploads_expire_redb,
        old_uploads_expire_postgres
    );
    on_both!(
        another_nar_under_the_same_hash_restarts_the_count,
        another_nar_restarts_the_count_redb,
        another_nar_restarts_the_count_postgres
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_a_new_pool_postgres() {
        let url = pg_url();
        pg(&url).put([1; 32], &nar(7)).await.unwrap();
        let p = pg(&url);
        assert_eq!(p.get([1; 32]).await.unwrap(), Some(nar(7)));
        assert_eq!(p.get([2; 32]).await.unwrap(), None);
    }

    /// Two daemons on one database: an upload through one is claimed through
    /// the other, and concurrent claims of concurrent uploads all count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_between_daemons_postgres() {
        let url = pg_url();
        let (a, b) = (pg(&url), pg(&url));
        a.put([1; 32], &nar(1)).await.unwrap();
        assert_eq!(b.get([1; 32]).await.unwrap(), Some(nar(1)));
        b.claim([1; 32]).await.unwrap();
        assert_eq!(a.get([1; 32]).await.unwrap(), None);

        let puts = (0..10).map(|i| {
            let p = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move { p.put([2; 32], &nar(2)).await }
        });
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
        let claims = (0..9).map(|i| {
            let p = if i % 2 == 0 { b.clone() } else { a.clone() };
            async move { p.claim([2; 32]).await }
        });
        for r in futures::future::join_all(claims).await {
            r.unwrap();
        }
        assert_eq!(a.get([2; 32]).await.unwrap(), Some(nar(2)));
        b.claim([2; 32]).await.unwrap();
        assert_eq!(a.get([2; 32]).await.unwrap(), None);
        assert!(a.is_empty().await.unwrap());
    }

    /// An upload counted while a claim of the same file waits for the row (one
    /// daemon registers a path as another receives its NAR again) survives the
    /// claim: the second narinfo finds its NAR.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_counted_during_a_claim_is_kept_postgres() {
        let url = pg_url();
        let (a, b) = (pg(&url), pg(&url));
        a.put([4; 32], &nar(4)).await.unwrap();
        // A third session locks the row, so that the upload and then the claim
        // queue behind it, in that order.
        let db = cairn_castore::pg::Db::open(&url).unwrap();
        let mut holder = db.client().await.unwrap();
        let txn = holder.transaction().await.unwrap();
        let key: &[u8] = &[4; 32];
        txn.execute(
            "SELECT 1 FROM cache_uploads WHERE file_sha256 = $1 FOR UPDATE",
            &[&key],
        )
        .await
        .unwrap();
        let waiting_for_locks = |n: i64| {
            let db = db.clone();
            async move {
                let watcher = db.client().await.unwrap();
                for _ in 0..1000 {
                    let waiting: i64 = watcher
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity
                             WHERE datname = current_database() AND wait_event_type = 'Lock'",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    if waiting >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{n} sessions never waited for the row's lock");
            }
        };
        let put = tokio::spawn(async move { b.put([4; 32], &nar(4)).await });
        waiting_for_locks(1).await;
        let claim = tokio::spawn({
            let a = a.clone();
            async move { a.claim([4; 32]).await }
        });
        waiting_for_locks(2).await;
        txn.commit().await.unwrap();
        put.await.unwrap().unwrap();
        claim.await.unwrap().unwrap();
        assert_eq!(a.get([4; 32]).await.unwrap(), Some(nar(4)));
        a.claim([4; 32]).await.unwrap();
        assert!(a.is_empty().await.unwrap());
    }

    /// A damaged row is an error naming the record, not a panic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_rows_are_errors_postgres() {
        let url = pg_url();
        let p = pg(&url);
        p.put([3; 32], &nar(3)).await.unwrap();
        let db = cairn_castore::pg::Db::open(&url).unwrap();
        db.client()
            .await
            .unwrap()
            .execute("UPDATE cache_uploads SET nar = '\\x09'::bytea", &[])
            .await
            .unwrap();
        let err = p.get([3; 32]).await.unwrap_err();
        assert!(
            err.to_string().contains("unknown record version 9"),
            "{err}"
        );
    }

    async fn another_nar_under_the_same_hash_restarts_the_count(p: PendingUploads) {
        p.put([1; 32], &nar(1)).await.unwrap();
        p.put([1; 32], &nar(1)).await.unwrap();
        p.put([1; 32], &nar(2)).await.unwrap();
        assert_eq!(p.get([1; 32]).await.unwrap(), Some(nar(2)));
        p.claim([1; 32]).await.unwrap();
        assert_eq!(p.get([1; 32]).await.unwrap(), None);
    }

    async fn each_upload_is_claimed_once(p: PendingUploads) {
        p.put([1; 32], &nar(1)).await.unwrap();
        p.put([1; 32], &nar(1)).await.unwrap();
        p.put([2; 32], &nar(2)).await.unwrap();
        assert_eq!(p.len().await.unwrap(), 2);
        p.claim([1; 32]).await.unwrap();
        assert_eq!(p.get([1; 32]).await.unwrap(), Some(nar(1)));
        p.claim([1; 32]).await.unwrap();
        assert_eq!(p.get([1; 32]).await.unwrap(), None);
        // Claiming what is not there is no error.
        p.claim([1; 32]).await.unwrap();
        p.claim([2; 32]).await.unwrap();
        assert!(p.is_empty().await.unwrap());
    }

    async fn old_uploads_expire(p: PendingUploads) {
        let day = Duration::from_secs(86_400);
        p.put_at([1; 32], &nar(1), 1_000).await.unwrap();
        p.put_at([2; 32], &nar(2), 1_000 + 86_400).await.unwrap();
        // Uploading again makes it young again.
        p.put_at([3; 32], &nar(3), 1_000).await.unwrap();
        p.put_at([3; 32], &nar(3), 1_000 + 86_400).await.unwrap();
        assert_eq!(p.expire_at(day, 1_000 + 86_400).await.unwrap(), 0);
        assert_eq!(p.expire_at(day, 1_001 + 86_400).await.unwrap(), 1);
        assert_eq!(p.get([1; 32]).await.unwrap(), None);
        assert_eq!(p.len().await.unwrap(), 2);
        assert_eq!(p.expire_at(day, 1_001 + 2 * 86_400).await.unwrap(), 2);
        assert!(p.is_empty().await.unwrap());
    }

    #[tokio::test]
    async fn version_1_records_are_read_and_dated_when_first_seen() {
        let p = PendingUploads::in_memory().unwrap();
        let v2 = Record {
            nar: nar(5),
            uploaded: Some(0),
            unclaimed: 1,
        }
        .encode();
        // Version 1: the same without the time and the count.
        let mut v1 = v2[..HEADER_LEN_V1].to_vec();
        v1[0] = 1;
        v1.extend_from_slice(&v2[HEADER_LEN..]);
        let Backend::Redb { db, .. } = &p.backend else {
            unreachable!("in_memory is redb")
        };
        let txn = db.begin_write().unwrap();
        txn.open_table(PENDING)
            .unwrap()
            .insert(&[5; 32], v1.as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(p.get([5; 32]).await.unwrap(), Some(nar(5)));
        let day = Duration::from_secs(86_400);
        assert_eq!(p.expire_at(day, 50_000).await.unwrap(), 0);
        assert_eq!(p.expire_at(day, 50_000 + 86_400).await.unwrap(), 0);
        assert_eq!(p.expire_at(day, 50_001 + 86_400).await.unwrap(), 1);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[1, 0]).is_err());
        assert!(Record::decode(&[2; HEADER_LEN_V1]).is_err());
        let mut bad = vec![9u8; HEADER_LEN];
        assert!(Record::decode(&bad).unwrap_err().contains("version"));
        bad[0] = VERSION;
        assert!(Record::decode(&bad).unwrap_err().contains("compression"));
        bad[1] = 0;
        // An empty protobuf Node has no node set.
        assert!(Record::decode(&bad).unwrap_err().contains("root node"));
    }
}
