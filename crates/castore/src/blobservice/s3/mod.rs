//! [`S3BlobService`]: blobs in an S3 bucket, their chunk index in PostgreSQL, so
//! that several stateless daemons can share one store.
//!
//! # URL
//! `s3://BUCKET[/PREFIX]?index=postgres://…[&endpoint=http(s)://host:port][&region=R]
//! [&profile=P][&credentials_file=PATH][&cache_size=BYTES]` ([`S3Config`]):
//! - `index` (required): the PostgreSQL database holding the chunk index (tables
//!   below). It is itself a URL: percent-encode the `&` of its own parameters as
//!   `%26` (and `?` as `%3F`, `=` as `%3D` to be safe), or they are taken for
//!   parameters of the `s3://` URL.
//! - `endpoint`: an S3-compatible server (MinIO, Garage, s3s-fs…); path-style
//!   requests; plain HTTP is allowed exactly when the endpoint is `http://`.
//!   Without it, AWS S3 of the region.
//! - `region`: what requests are signed for (default `us-east-1`).
//! - credentials: with `profile` or `credentials_file` in the URL, that profile
//!   (default `default`) of that shared credentials file (default
//!   `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`); otherwise
//!   `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) when
//!   set, else profile `AWS_PROFILE` (default `default`) of the shared file. No
//!   credentials is an error when the service is built, not a hang on first use.
//! - `cache_size`: bytes of verified, decompressed chunks kept in memory (an LRU;
//!   default 32 MiB, 0 disables it).
//! - `disk_cache`: an absolute directory for a local cache of verified chunks
//!   behind the memory cache ([`crate::blobservice::DiskChunkCache`], checked again
//!   on every read), bounded by `disk_cache_size` bytes (default 4 GiB). `cairn
//!   daemon` gives it `DATA_DIR/s3-cache` unless the URL names one.
//!
//! # Objects and tables
//! Blobs are chunked and compressed exactly as in the embedded store (FastCDC
//! 16/64/256 KiB; zstd level 9 for a blob of one chunk, level 1 for chunks of
//! larger blobs, stored raw unless that shrinks them). Chunk bytes live in pack
//! objects `PREFIX/packs/<32 hex digits>`, many chunks per object, never one
//! object per small file. The index (see `index.rs`): `blob_packs` (one row per
//! pack), `blob_chunks` (chunk digest -> pack, offset, stored length, raw length,
//! compressed), `blob_lists` (multi-chunk blob digest -> its (digest, size)
//! list), `blob_store` (the bucket/prefix the database belongs to). A blob of one
//! chunk is its chunk's row under its own digest; the chunks of a multi-chunk blob
//! answer has/read/chunks themselves (WIRE.md).
//!
//! # Writes
//! A blob that fits one 4 MiB batch (most files) is chunked at close and handed
//! to the **group committer**, which takes every handoff waiting, asks the index
//! once which of their chunks it already has, concatenates the others into one
//! pack, PUTs it, indexes all of them in one transaction and answers them all;
//! while one group uploads the next forms (two groups in flight). A larger blob
//! looks up each batch's chunks in the index (one query per batch) and streams the
//! new ones into a pack of its own by **multipart upload** (8 MiB parts, two in
//! flight), completed at close, then indexed. Chunks the index has, or this
//! writer stored already, are not uploaded again.
//!
//! # Visibility and garbage
//! A blob answers has/read only once its bytes are durable in the bucket (the PUT
//! or CompleteMultipartUpload returned) and its index rows are committed. A writer
//! dropped before close, a failed upload or a failed commit leaves nothing
//! visible: a pack uploaded but never indexed, a chunk uploaded twice by
//! concurrent writers (the index keeps the first), and the parts of a multipart
//! upload whose abort failed are garbage, left for a later GC (and, for parts, a
//! bucket lifecycle rule aborting incomplete multipart uploads).
//!
//! # Reads
//! Nothing from the bucket or the database is trusted: lengths are bounded, and
//! every chunk is decompressed and checked against its BLAKE3 digest before any
//! of its bytes is handed out (corruption is `InvalidData`, never wrong bytes or a
//! clean end). Readers seek to the right chunk without fetching earlier ones; a
//! sequential read fetches adjacent chunks of one pack with one ranged GET
//! (growing from 2 chunks to 4 MiB per GET) with four GETs in flight; a chunk
//! stored elsewhere in the pack (deduplicated against an earlier one) comes from
//! the cache or a GET of its own without cutting the run. A small file (one
//! chunk up to 64 KiB) that is not cached is read with its neighbours: the
//! aligned 1 MiB window of its pack around it is fetched with one GET, checked
//! and cached whole (one fetch however many readers want the window at once),
//! since a group commit wrote the files of an import back to back. Checked
//! chunks go into the in-memory cache and the disk cache, and a blob a local
//! cache holds as a chunk opens without an index query.
//!
//! # Lookups
//! `has` calls made at the same time (an import asks about every file before
//! uploading it) are answered by one index query per batch (`has.rs`).
//!
//! # Errors
//! An unreachable server, a 5xx or refused credentials is an [`Error::Storage`]
//! naming the bucket and endpoint; requests are retried a few times (about 10 s)
//! first, and the service keeps working once the server is back.

mod config;
mod gc;
mod has;
mod index;
mod reader;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio::sync::mpsc;

pub use config::{Credentials, DEFAULT_CACHE_SIZE, S3Config};
pub use gc::{LateRoots, PgCollector};
pub use reader::S3BlobReader;
pub use writer::S3BlobWriter;

use crate::blobservice::{
    BackendCounter, BlobReader, BlobService, BlobStream, BlobWriter, ChunkMeta, DiskChunkCache,
};
use crate::lru::Lru;
use crate::pg::Db;
use crate::{B3Digest, Error, ErrorKind};
use index::Entry;
use reader::Plan;

/// Requests the service made to S3, and what its cache saved
/// ([`S3BlobService::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct S3Stats {
    /// PutObject requests (one per group commit with new chunks).
    pub puts: u64,
    /// CreateMultipartUpload requests.
    pub multipart_uploads: u64,
    /// UploadPart requests.
    pub parts: u64,
    /// CompleteMultipartUpload requests.
    pub completes: u64,
    /// AbortMultipartUpload requests.
    pub aborts: u64,
    /// Ranged GetObject requests.
    pub gets: u64,
    /// Bytes sent by PutObject and UploadPart.
    pub put_bytes: u64,
    /// Bytes received by GetObject.
    pub get_bytes: u64,
    /// Group commits made (each answers one or more writers).
    pub group_commits: u64,
    /// Chunks read from the in-memory cache.
    pub cache_hits: u64,
    /// Chunks read from the local disk cache.
    pub disk_hits: u64,
}

impl S3Stats {
    /// Every request to S3 (retries inside the S3 client not counted apart).
    pub fn requests(&self) -> u64 {
        self.puts + self.multipart_uploads + self.parts + self.completes + self.aborts + self.gets
    }
}

#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    multipart_uploads: AtomicU64,
    parts: AtomicU64,
    completes: AtomicU64,
    aborts: AtomicU64,
    gets: AtomicU64,
    put_bytes: AtomicU64,
    get_bytes: AtomicU64,
    group_commits: AtomicU64,
    cache_hits: AtomicU64,
    disk_hits: AtomicU64,
}

pub(super) struct Inner {
    s3: AmazonS3,
    cfg: S3Config,
    db: Db,
    /// Set once the schema is migrated and the database claimed.
    ready: tokio::sync::OnceCell<()>,
    cache: Mutex<Lru<[u8; 32], Bytes>>,
    /// How to read recently opened blobs ([`Inner::plan`]).
    plans: Mutex<Lru<[u8; 32], Arc<Plan>>>,
    disk: Option<DiskChunkCache>,
    /// Read-aheads of pack windows in flight, shared by the readers waiting for
    /// them (see `reader::read_ahead`).
    read_aheads: Mutex<std::collections::HashMap<(Arc<str>, u64), reader::Flight>>,
    /// `has` calls waiting to be asked together.
    has_queue: Mutex<has::Queue>,
    stats: Counters,
    committer: Mutex<Option<mpsc::UnboundedSender<writer::Handoff>>>,
}

/// Blobs of one chunk up to this size are read whole from a local cache when
/// opened.
const SMALL_BLOB: u64 = 64 << 10;

/// Bytes of blob plans (chunk lists and locations) kept in memory.
const PLAN_CACHE: usize = 16 << 20;

/// An S3 failure, naming the bucket and endpoint.
#[derive(Debug, thiserror::Error)]
#[error("S3 bucket {bucket} at {endpoint}: cannot {what} {key}: {msg}")]
struct S3Error {
    bucket: String,
    endpoint: String,
    what: &'static str,
    key: String,
    msg: String,
    #[source]
    source: object_store::Error,
}

/// An error as its kind and message (without the variant's prefix), to hand to
/// several waiters or keep in a failed writer; [`rebuild`] makes it an error again.
fn split(e: &Error) -> (ErrorKind, String) {
    let msg = match e {
        Error::Storage(inner) => inner.to_string(),
        Error::Corrupt(m) | Error::InvalidArgument(m) => m.clone(),
        Error::Io(io) => match io.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            Some(inner) => return split(inner),
            None => io.to_string(),
        },
        other => other.to_string(),
    };
    (e.kind(), msg)
}

fn rebuild(kind: ErrorKind, msg: String) -> Error {
    match kind {
        ErrorKind::Corrupt => Error::Corrupt(msg),
        ErrorKind::InvalidArgument => Error::InvalidArgument(msg),
        _ => Error::Storage(msg.into()),
    }
}

/// A fresh pack name: 128 random bits in hex.
fn new_pack_name() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Inner {
    fn key(&self, pack: &str) -> ObjectPath {
        if self.cfg.prefix.is_empty() {
            ObjectPath::from(format!("packs/{pack}"))
        } else {
            ObjectPath::from(format!("{}/packs/{pack}", self.cfg.prefix))
        }
    }

    fn s3_error(&self, what: &'static str, pack: &str, e: object_store::Error) -> Error {
        let msg = match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                format!("access denied (check the access key and secret): {e}")
            }
            _ => e.to_string(),
        };
        Error::storage(S3Error {
            bucket: self.cfg.bucket.clone(),
            endpoint: self.cfg.endpoint_name(),
            what,
            key: self.key(pack).to_string(),
            msg,
            source: e,
        })
    }

    /// A database connection, the schema migrated and the database claimed first.
    ///
    /// No connection is held while the first caller migrates: the migration
    /// takes one of its own, and with every pooled connection held by callers
    /// waiting for it (an import starts thousands of writes at once) it would
    /// wait for a free one until the pool's timeout.
    async fn client(&self) -> Result<deadpool_postgres::Client, Error> {
        self.ready
            .get_or_try_init(|| async {
                self.db.migrate("blobs", index::MIGRATIONS).await?;
                let client = self.db.client().await?;
                index::claim(&client, &self.location()).await
            })
            .await?;
        self.db.client().await
    }

    /// `s3://bucket/prefix`: what the database indexes.
    fn location(&self) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.cfg.prefix)
    }

    async fn put(&self, pack: &str, payload: PutPayload) -> Result<(), Error> {
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .put_bytes
            .fetch_add(payload.content_length() as u64, Ordering::Relaxed);
        self.s3
            .put(&self.key(pack), payload)
            .await
            .map_err(|e| self.s3_error("upload", pack, e))?;
        Ok(())
    }

    async fn create_multipart(&self, pack: &str) -> Result<Box<dyn MultipartUpload>, Error> {
        self.stats.multipart_uploads.fetch_add(1, Ordering::Relaxed);
        self.s3
            .put_multipart(&self.key(pack))
            .await
            .map_err(|e| self.s3_error("start a multipart upload of", pack, e))
    }

    async fn get_range(&self, pack: &str, range: std::ops::Range<u64>) -> Result<Bytes, Error> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let b = self
            .s3
            .get_range(&self.key(pack), range)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::Corrupt(format!(
                    "pack {} is in the index but not in bucket {}",
                    self.key(pack),
                    self.cfg.bucket
                )),
                e => self.s3_error("read", pack, e),
            })?;
        self.stats
            .get_bytes
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    fn cache_get(&self, digest: &[u8; 32]) -> Option<Bytes> {
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned();
        if hit.is_some() {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Keeps a chunk that was checked against `digest`.
    fn cache_put(&self, digest: [u8; 32], raw: Bytes) {
        let cost = raw.len() + 64;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest, raw, cost);
    }

    /// The chunk from the memory cache, else from the disk cache, checked.
    async fn cached_chunk(&self, digest: &B3Digest) -> Option<Bytes> {
        match self.cache_get(digest.as_bytes()) {
            Some(raw) => Some(raw),
            None => self.disk_get(digest.as_bytes()).await,
        }
    }

    /// Whether the local disk cache has the chunk (it is checked when read).
    fn disk_has(&self, digest: &[u8; 32]) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.contains(&B3Digest::from(*digest)))
    }

    /// The chunk from the local disk cache, checked; into the memory cache too.
    async fn disk_get(&self, digest: &[u8; 32]) -> Option<Bytes> {
        let raw = self.disk.as_ref()?.get(&B3Digest::from(*digest)).await?;
        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        self.cache_put(*digest, raw.clone());
        Some(raw)
    }

    /// Chunks from the local disk cache, checked.
    async fn disk_get_many(&self, digests: &[[u8; 32]]) -> Vec<Option<Bytes>> {
        let Some(disk) = &self.disk else {
            return vec![None; digests.len()];
        };
        if let [one] = digests {
            return vec![self.disk_get(one).await];
        }
        let got = disk
            .get_many(digests.iter().map(|d| B3Digest::from(*d)).collect())
            .await;
        // Not into the memory cache: these are slices of one buffer for the
        // whole run, which a cached slice would keep alive; and a run is part
        // of a large blob read in order, which would only flush the cache.
        let hits = got.iter().filter(|g| g.is_some()).count();
        self.stats
            .disk_hits
            .fetch_add(hits as u64, Ordering::Relaxed);
        got
    }

    /// The size of a chunk (and so of the blob of the same digest) one of the
    /// local caches holds.
    fn cached_size(&self, digest: &B3Digest) -> Option<u64> {
        let in_memory = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .peek(digest.as_bytes())
            .map(|b| b.len() as u64);
        in_memory.or_else(|| self.disk.as_ref()?.size_of(digest))
    }

    /// Offers checked chunks to the local disk cache (written in the
    /// background, bounded: see [`DiskChunkCache::offer`]).
    fn disk_put(&self, chunks: Vec<([u8; 32], Bytes)>) {
        if let Some(disk) = &self.disk {
            for (d, raw) in chunks {
                disk.offer(B3Digest::from(d), raw);
            }
        }
    }

    async fn locations(
        &self,
        digests: &[[u8; 32]],
    ) -> Result<std::collections::HashMap<[u8; 32], index::Loc>, Error> {
        let client = self.client().await?;
        index::locations(&client, digests).await
    }

    /// Forgets what the local caches hold of these digests (blobs, chunks):
    /// garbage collection removed them.
    fn forget(&self, digests: &[[u8; 32]]) {
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            for d in digests {
                cache.remove(d);
            }
        }
        {
            let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
            for d in digests {
                plans.remove(d);
            }
        }
        if let Some(disk) = &self.disk {
            for d in digests {
                disk.forget(&B3Digest::from(*d));
            }
        }
    }

    /// How to read `digest`, or `None` if it is not stored.
    ///
    /// Plans of blobs of several chunks are kept (their chunk lists are
    /// functions of the digest): a hot blob then costs no index query either,
    /// which was most of the time of serving a hot NAR of small files.
    async fn plan(&self, digest: &B3Digest) -> Result<Option<Arc<Plan>>, Error> {
        let lock = || self.plans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = lock().get(digest.as_bytes()) {
            return Ok(Some(plan.clone()));
        }
        // A chunk a local cache holds is the whole blob of its digest (a blob of
        // one chunk, or a chunk of a larger blob, which WIRE.md makes readable as
        // a blob): a hot small file costs no index query. Its location is looked
        // up only if the cache turns out to have lost it.
        if let Some(size) = self.cached_size(digest) {
            let one = ChunkMeta {
                digest: *digest,
                size,
            };
            return Ok(Some(Arc::new(Plan::new(*digest, vec![one], None))));
        }
        let client = self.client().await?;
        let plan = Arc::new(match index::entry(&client, digest).await? {
            None => return Ok(None),
            Some(Entry::List(list)) => Plan::new(*digest, list, None),
            Some(Entry::Chunk(loc)) => {
                let one = ChunkMeta {
                    digest: *digest,
                    size: u64::from(loc.raw_len),
                };
                Plan::new(*digest, vec![one], Some(loc))
            }
        });
        // Only chunk lists: a blob's list is a function of its digest even if a
        // collection removes the blob and it is stored again, but a single
        // chunk's location is not (another daemon may have collected it and a
        // writer stored it anew in another pack).
        if plan.chunks.len() > 1 {
            let cost = 128 + 48 * plan.chunks.len();
            lock().insert(*digest.as_bytes(), plan.clone(), cost);
        }
        Ok(Some(plan))
    }
}

/// Blobs in an S3 bucket with their chunk index in PostgreSQL (see the module
/// doc). Cheap to clone; clones share the S3 client, the database pool, the cache
/// and the group committer.
#[derive(Clone)]
pub struct S3BlobService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for S3BlobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobService")
            .field("bucket", &self.inner.cfg.bucket)
            .field("prefix", &self.inner.cfg.prefix)
            .field("endpoint", &self.inner.cfg.endpoint_name())
            .finish_non_exhaustive()
    }
}

impl S3BlobService {
    /// The service an `s3://` URL names. Connects to nothing yet: S3 and the
    /// database are reached on first use (and again after they were down).
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Self::new(S3Config::from_url(url)?)
    }

    /// The service of a parsed configuration.
    pub fn new(cfg: S3Config) -> Result<Self, Error> {
        let db = Db::open_shared(&cfg.index)?;
        let mut options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        if cfg
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            options = options.with_allow_http(true);
        }
        // A few quick retries: a server that is down answers with a clear error
        // in seconds instead of object_store's default three minutes.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(3),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        };
        let c = &cfg.credentials;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(&c.secret_access_key)
            .with_client_options(options)
            .with_retry(retry)
            .with_virtual_hosted_style_request(false)
            .with_unsigned_payload(!cfg.sign_payload);
        if let Some(t) = &c.session_token {
            b = b.with_token(t);
        }
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        let s3 = b
            .build()
            .map_err(|e| Error::InvalidArgument(format!("S3 bucket {}: {e}", cfg.bucket)))?;
        let cache = Mutex::new(Lru::new(cfg.cache_size));
        let disk = match &cfg.disk_cache {
            Some((dir, size)) => Some(DiskChunkCache::open(dir, *size).map_err(Error::Io)?),
            None => None,
        };
        Ok(S3BlobService {
            inner: Arc::new(Inner {
                s3,
                cfg,
                db,
                ready: tokio::sync::OnceCell::new(),
                cache,
                plans: Mutex::new(Lru::new(PLAN_CACHE)),
                disk,
                read_aheads: Mutex::new(Default::default()),
                has_queue: Mutex::new(Default::default()),
                stats: Counters::default(),
                committer: Mutex::new(None),
            }),
        })
    }

    /// The requests made to S3 so far, and the cache's hits.
    pub fn stats(&self) -> S3Stats {
        let s = &self.inner.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        S3Stats {
            puts: get(&s.puts),
            multipart_uploads: get(&s.multipart_uploads),
            parts: get(&s.parts),
            completes: get(&s.completes),
            aborts: get(&s.aborts),
            gets: get(&s.gets),
            put_bytes: get(&s.put_bytes),
            get_bytes: get(&s.get_bytes),
            group_commits: get(&s.group_commits),
            cache_hits: get(&s.cache_hits),
            disk_hits: get(&s.disk_hits),
        }
    }

    /// Empties the in-memory cache of chunks (for measurements of cold reads).
    pub fn clear_cache(&self) {
        let mut c = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *c = Lru::new(self.inner.cfg.cache_size);
    }

    /// The object key of pack `name` (for tests that damage a pack).
    pub fn pack_key(&self, name: &str) -> String {
        self.inner.key(name).to_string()
    }
}

#[async_trait]
impl BlobService for S3BlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        self.inner.has_batched(digest).await
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let Some(plan) = self.inner.plan(digest).await? else {
            return Ok(None);
        };
        // A small blob of one chunk, cached: its checked bytes at once, without
        // the machinery of a chunked reader (most files of a NAR).
        if let [one] = plan.chunks.as_slice()
            && one.size <= SMALL_BLOB
            && let Some(raw) = self.inner.cached_chunk(digest).await
        {
            return Ok(Some(Box::new(std::io::Cursor::new(raw))));
        }
        Ok(Some(Box::new(S3BlobReader::new(self.inner.clone(), plan))))
    }

    async fn open_read_stream(
        &self,
        digest: &B3Digest,
        offset: u64,
    ) -> Result<Option<BlobStream>, Error> {
        Ok(self
            .inner
            .plan(digest)
            .await?
            .map(|plan| reader::stream_from(self.inner.clone(), plan, offset)))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(S3BlobWriter::new(self.inner.clone()))
    }

    fn counters(&self) -> Vec<BackendCounter> {
        let s = self.stats();
        let request = |op, value| BackendCounter {
            name: "s3_requests",
            help: "Requests the S3 blob service made to the bucket, by operation",
            label: Some(("op", op)),
            value,
        };
        let bytes = |direction, value| BackendCounter {
            name: "s3_bytes",
            help: "Bytes the S3 blob service sent to (PutObject, UploadPart) and received from (GetObject) the bucket",
            label: Some(("direction", direction)),
            value,
        };
        let hits = |cache, value| BackendCounter {
            name: "s3_cache_hits",
            help: "Chunks the S3 blob service read from a local cache instead of the bucket",
            label: Some(("cache", cache)),
            value,
        };
        vec![
            request("PutObject", s.puts),
            request("CreateMultipartUpload", s.multipart_uploads),
            request("UploadPart", s.parts),
            request("CompleteMultipartUpload", s.completes),
            request("AbortMultipartUpload", s.aborts),
            request("GetObject", s.gets),
            bytes("sent", s.put_bytes),
            bytes("received", s.get_bytes),
            BackendCounter {
                name: "s3_group_commits",
                help: "Group commits of small blobs (one pack PUT and one index transaction each)",
                label: None,
                value: s.group_commits,
            },
            hits("memory", s.cache_hits),
            hits("disk", s.disk_hits),
        ]
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        let client = self.inner.client().await?;
        Ok(match index::entry(&client, digest).await? {
            None => None,
            Some(Entry::List(list)) => Some(list),
            Some(Entry::Chunk(_)) => Some(Vec::new()),
        })
    }
}
