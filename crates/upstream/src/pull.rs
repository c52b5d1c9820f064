//! [`Puller`]: paths missing from a store, fetched from its upstreams, checked
//! and stored; [`PullThroughPathInfoService`]: a path info service pulling its
//! misses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cairn_cache::{CacheError, PullThrough, PulledNar};
use cairn_castore::lru::Lru;
use cairn_castore::{BlobService, DirectoryService, Error, Node};
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::NarInfo;
use cairn_nix::nixbase32;
use cairn_nix::store_path::DIGEST_LEN;
use cairn_store::pathinfo::{PathInfo, PathInfoService};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::io::StreamReader;
use tokio_util::task::TaskTracker;

use crate::spool;
use crate::upstream::{FileMismatch, Upstream, UpstreamError, lock};

/// How a [`Puller`] behaves beyond its upstreams.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// How long a path no upstream has is answered as absent without asking
    /// them again (0: always ask).
    pub negative_ttl: Duration,
    /// After pulling a path, pull its references too (in the background).
    pub prefetch_references: bool,
    /// Where a NAR streamed to a client while it is stored is kept until it
    /// is (unnamed files, as big as the NAR) [default: the system's temporary
    /// directory].
    pub spool_dir: Option<PathBuf>,
}

impl Default for PullOptions {
    /// Absent paths remembered for 60 s; references pulled when asked for.
    fn default() -> Self {
        Self {
            negative_ttl: Duration::from_secs(60),
            prefetch_references: false,
            spool_dir: None,
        }
    }
}

/// Paths absent everywhere remembered at most (each ~40 bytes); beyond, the
/// expired ones are dropped, then all.
const MAX_NEGATIVE: usize = 1 << 16;
/// Memory for accepted upstream narinfos (a narinfo GET is followed by its
/// NAR GET, which needs it again).
const MAX_KNOWN_BYTES: usize = 8 << 20;
/// Bytes of a streamed NAR queued for its client, in chunks of up to
/// [`READ_BUF`].
const CLIENT_QUEUE: usize = 8;
/// Reads from the upstream's (decompressed) NAR, at most.
const READ_BUF: usize = 256 * 1024;
/// Bytes between the download and the ingestion task.
const PIPE: usize = 1 << 20;
/// Prefetches of references running at once.
const PREFETCHES: usize = 8;

type Outcome = Option<Result<PathInfo, UpstreamError>>;

/// The upstreams of a store, and the downloads from them; see the crate doc.
pub struct Puller {
    me: Weak<Puller>,
    upstreams: Vec<Upstream>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    path_info: Arc<dyn PathInfoService>,
    options: PullOptions,
    /// Path digest → when it was found absent everywhere.
    negative: Mutex<HashMap<[u8; DIGEST_LEN], Instant>>,
    /// Accepted narinfos, with the index of the upstream that sent them.
    known: Mutex<Lru<[u8; DIGEST_LEN], (usize, NarInfo)>>,
    /// Downloads running, by path: each request for the path waits for it.
    flights: Mutex<HashMap<[u8; DIGEST_LEN], watch::Receiver<Outcome>>>,
    prefetches: Semaphore,
    counters: Counters,
    /// The downloads' tasks, for [`Puller::drain`].
    tasks: TaskTracker,
    /// Set by [`Puller::drain`]: no download starts after it.
    closing: AtomicBool,
}

#[derive(Default)]
struct Counters {
    pulls: AtomicU64,
    nar_bytes: AtomicU64,
    failures: AtomicU64,
    negative_hits: AtomicU64,
}

/// What a [`Puller`] did since it was made (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Paths pulled and stored.
    pub pulls: u64,
    /// Bytes of their NARs (uncompressed).
    pub nar_bytes: u64,
    /// Narinfo lookups that failed on every upstream, and downloads that
    /// failed or were refused.
    pub failures: u64,
    /// Lookups answered "absent" by the negative cache, asking no upstream.
    pub negative_hits: u64,
}

impl Puller {
    /// Pulls from `upstreams` (asked in order of their priority, then as given)
    /// into these services (the store's own: not a [`PullThroughPathInfoService`]).
    pub fn new(
        mut upstreams: Vec<Upstream>,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        path_info: Arc<dyn PathInfoService>,
        options: PullOptions,
    ) -> Arc<Self> {
        upstreams.sort_by_key(Upstream::priority);
        Arc::new_cyclic(|me| Puller {
            me: me.clone(),
            upstreams,
            blobs,
            directories,
            path_info,
            options,
            negative: Mutex::default(),
            known: Mutex::new(Lru::new(MAX_KNOWN_BYTES)),
            flights: Mutex::default(),
            prefetches: Semaphore::new(PREFETCHES),
            counters: Counters::default(),
            tasks: TaskTracker::new(),
            closing: AtomicBool::new(false),
        })
    }

    /// Lets the downloads running finish (each registers its path, or
    /// nothing) and starts no more: for a daemon's shutdown, which would
    /// otherwise drop a download a client started and left, and its work.
    /// Requests that would start one after this get an error.
    pub async fn drain(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.tasks.close();
        let running = self.tasks.len();
        if running > 0 {
            tracing::info!(running, "waiting for the downloads from upstream to finish");
        }
        self.tasks.wait().await;
    }

    /// Its counters so far.
    pub fn stats(&self) -> PullStats {
        let c = &self.counters;
        PullStats {
            pulls: c.pulls.load(Ordering::Relaxed),
            nar_bytes: c.nar_bytes.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            negative_hits: c.negative_hits.load(Ordering::Relaxed),
        }
    }

    /// The upstreams, in the order they are asked.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The accepted narinfo of a path from the first upstream that has one;
    /// `None` if none has it (remembered for the negative TTL); an error if
    /// none has an acceptable one and one failed or sent one that was refused.
    pub async fn upstream_narinfo(
        &self,
        digest: [u8; DIGEST_LEN],
    ) -> Result<Option<(usize, NarInfo)>, UpstreamError> {
        if let Some(found) = lock(&self.known).get(&digest) {
            return Ok(Some(found.clone()));
        }
        if let Some(at) = lock(&self.negative).get(&digest)
            && at.elapsed() < self.options.negative_ttl
        {
            self.counters.negative_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        self.ask_upstreams(digest).await
    }

    /// [`Puller::upstream_narinfo`] without the caches: every upstream asked
    /// (in order, until one has it), the answer remembered.
    async fn ask_upstreams(
        &self,
        digest: [u8; DIGEST_LEN],
    ) -> Result<Option<(usize, NarInfo)>, UpstreamError> {
        let mut failed = None;
        for (i, up) in self.upstreams.iter().enumerate() {
            match up.narinfo(&digest).await {
                Ok(Some(ni)) => {
                    let cost = 512 + 64 * (ni.references.len() + ni.signatures.len());
                    lock(&self.known).insert(digest, (i, ni.clone()), cost);
                    lock(&self.negative).remove(&digest);
                    return Ok(Some((i, ni)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "upstream narinfo");
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        if !self.options.negative_ttl.is_zero() {
            let mut negative = lock(&self.negative);
            if negative.len() >= MAX_NEGATIVE {
                let ttl = self.options.negative_ttl;
                negative.retain(|_, at| at.elapsed() < ttl);
                if negative.len() >= MAX_NEGATIVE {
                    negative.clear();
                }
            }
            negative.insert(digest, Instant::now());
        }
        Ok(None)
    }

    /// Whether a trusted upstream has `info`'s path with the same NAR (hash
    /// and size) and references, so that an upload of it need not be stored.
    /// Asked afresh, not from the negative cache: the upload may be the first
    /// the upstream got since it was last asked. An upstream failing is a
    /// `false` (the upload is stored).
    pub async fn upstream_has(&self, info: &PathInfo) -> bool {
        let digest = *info.store_path.digest();
        let found = match lock(&self.known).get(&digest) {
            Some(found) => Ok(Some(found.clone())),
            None => Err(()),
        };
        let found = match found {
            Ok(found) => found,
            Err(()) => match self.ask_upstreams(digest).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(path = %info.store_path, error = %e, "upload stored: the upstreams failed");
                    return false;
                }
            },
        };
        let Some((idx, ni)) = found else {
            return false;
        };
        let same = ni.nar_hash == NixHash::Sha256(info.nar_sha256)
            && ni.nar_size == info.nar_size
            && ni.references == info.references;
        if !same {
            tracing::info!(path = %info.store_path, upstream = self.upstreams[idx].url(), "upload stored: the upstream's narinfo differs");
        }
        same
    }

    /// The path with this digest: from the store, else pulled from the
    /// upstreams (joining a download of it already running); `None` if no
    /// upstream has it.
    pub async fn pull(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, UpstreamError> {
        if let Some(info) = self.local(digest).await? {
            return Ok(Some(info));
        }
        let Some((idx, ni)) = self.upstream_narinfo(digest).await? else {
            return Ok(None);
        };
        let (rx, _) = self.flight(digest, idx, ni, false)?;
        wait(rx).await.map(Some)
    }

    async fn local(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, UpstreamError> {
        self.path_info
            .get(digest)
            .await
            .map_err(|e| UpstreamError::Store(e.to_string()))
    }

    /// Joins the download of `digest`, or starts it (from upstream `idx`, as
    /// `ni` says) in a task of its own, so that it completes even if every
    /// requester goes away. Whoever starts it with `stream` gets the NAR's bytes
    /// as they arrive.
    #[allow(clippy::type_complexity)]
    fn flight(
        &self,
        digest: [u8; DIGEST_LEN],
        idx: usize,
        ni: NarInfo,
        stream: bool,
    ) -> Result<
        (
            watch::Receiver<Outcome>,
            Option<mpsc::Receiver<std::io::Result<Bytes>>>,
        ),
        UpstreamError,
    > {
        let mut flights = lock(&self.flights);
        if let Some(rx) = flights.get(&digest) {
            return Ok((rx.clone(), None));
        }
        if self.closing.load(Ordering::SeqCst) {
            return Err(UpstreamError::Store(
                "shutting down: no download from upstream starts".into(),
            ));
        }
        let this = self
            .me
            .upgrade()
            .ok_or_else(|| UpstreamError::Store("shutting down".into()))?;
        let (done, rx) = watch::channel(None);
        let (client, body) = if stream {
            let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        flights.insert(digest, rx.clone());
        drop(flights);
        self.tasks.spawn(async move {
            let started = Instant::now();
            // A download of this path that ended between the requester's
            // lookup and this flight's start has registered it: serve that
            // rather than download it a second time.
            if let Ok(Some(info)) = this.local(digest).await {
                if let Some(client) = client {
                    this.render_to(&info, client).await;
                }
                lock(&this.flights).remove(&digest);
                let _ = done.send(Some(Ok(info)));
                return;
            }
            let r = this.download(idx, &ni, client).await;
            let c = &this.counters;
            match &r {
                Ok(info) => {
                    c.pulls.fetch_add(1, Ordering::Relaxed);
                    c.nar_bytes.fetch_add(info.nar_size, Ordering::Relaxed);
                }
                Err(_) => {
                    c.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            match &r {
                Ok(info) => tracing::info!(
                    path = %info.store_path,
                    upstream = this.upstreams[idx].url(),
                    nar_size = info.nar_size,
                    ms = started.elapsed().as_millis() as u64,
                    "pulled"
                ),
                Err(e) => {
                    tracing::warn!(path = %ni.store_path, error = %e, "pull failed");
                    // Asked again next time: the upstream may be healthy then.
                    lock(&this.known).remove(&digest);
                }
            }
            lock(&this.flights).remove(&digest);
            if let Ok(info) = &r
                && this.options.prefetch_references
            {
                this.prefetch(info);
            }
            let _ = done.send(Some(r));
        });
        Ok((rx, body))
    }

    /// Sends the NAR of the stored path `info` to `client`, from the store,
    /// until it ends, fails (the client gets the error) or the client leaves.
    async fn render_to(&self, info: &PathInfo, client: mpsc::Sender<std::io::Result<Bytes>>) {
        let mut nar = cairn_store::nar::render(
            self.blobs.clone(),
            self.directories.clone(),
            info.node.clone(),
        )
        .into_stream();
        while let Some(item) = nar.next().await {
            let failed = item.is_err();
            if client.send(item).await.is_err() || failed {
                return;
            }
        }
    }

    /// Pulls the references of `info` in the background.
    fn prefetch(&self, info: &PathInfo) {
        let Some(this) = self.me.upgrade() else {
            return;
        };
        for r in &info.references {
            if r == &info.store_path {
                continue;
            }
            let (this, digest, name) = (this.clone(), *r.digest(), r.to_string());
            tokio::spawn(async move {
                let Ok(_permit) = this.prefetches.acquire().await else {
                    return;
                };
                if this.closing.load(Ordering::SeqCst) {
                    return;
                }
                match this.pull(digest).await {
                    Ok(Some(_)) => {}
                    Ok(None) => tracing::warn!(path = name, "prefetch: no upstream has it"),
                    Err(e) => tracing::warn!(path = name, error = %e, "prefetch failed"),
                }
            });
        }
    }

    /// Fetches the NAR of `ni` from upstream `idx`, ingesting it as it comes
    /// and handing its bytes to `client` (if any, and while it listens), all
    /// but the last chunk: that one only once the NAR's hash and size matched
    /// `ni` (the path is registered after, without the client waiting for
    /// it); on a failure before that the client gets the error instead.
    async fn download(
        &self,
        idx: usize,
        ni: &NarInfo,
        mut client: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    ) -> Result<PathInfo, UpstreamError> {
        let mut held = None;
        let r = self.ingest(idx, ni, &mut client, &mut held).await;
        if let Some(client) = client {
            let last = match &r {
                Ok(_) => held.map(Ok),
                Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
            };
            if let Some(last) = last {
                let _ = client.send(last).await;
            }
        }
        r
    }

    /// The download's feed of the ingestion, and the ingestion's end of it:
    /// a spool when a client waits for the bytes (so that it need not wait for
    /// the store), else a pipe.
    fn feed(&self, client: bool) -> (Feed, Box<dyn AsyncRead + Send + Unpin>) {
        if client {
            let dir = self
                .options
                .spool_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            match spool::spool(&dir) {
                Ok((w, r)) => return (Feed::spool(w), Box::new(StreamReader::new(Box::pin(r)))),
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "no spool file: the client's stream waits for the ingestion"
                ),
            }
        }
        let (w, r) = tokio::io::duplex(PIPE);
        (Feed::pipe(w), Box::new(r))
    }

    async fn ingest(
        &self,
        idx: usize,
        ni: &NarInfo,
        client: &mut Option<mpsc::Sender<std::io::Result<Bytes>>>,
        held: &mut Option<Bytes>,
    ) -> Result<PathInfo, UpstreamError> {
        let up = &self.upstreams[idx];
        let refused = |message: String| UpstreamError::Refused {
            upstream: up.url().to_owned(),
            message: format!("{}: {message}", ni.store_path),
        };
        // Checked before any byte reaches the client, which gets all of them
        // before the path is registered. The CA check looks at the narinfo's
        // fields alone: the node here only fills the place of the real one.
        let placeholder = cairn_castore::SymlinkTarget::try_from("placeholder")
            .map_err(|e| UpstreamError::Store(e.to_string()))?;
        path_info(
            ni,
            Node::Symlink {
                target: placeholder,
            },
            ni.nar_size,
            [0; 32],
        )
        .validate()
        .map_err(|e| refused(format!("CA and StorePath disagree: {e}")))?;
        let mut nar = up.nar(ni).await?;
        let (mut feed, mut reader) = self.feed(client.is_some());
        // On a task of its own: parsing and hashing the NAR and feeding the
        // blob writers run beside the download, decompression and the client's
        // stream (on another core), not in turn with them. With a client, on
        // the background runtime, behind the download (see `spool`).
        let (blobs, directories) = (self.blobs.clone(), self.directories.clone());
        let ingestion = async move {
            // Hashed by the download, which feeds it exactly these bytes.
            let ingested = cairn_store::nar::ingest_unhashed(
                blobs.as_ref(),
                directories.as_ref(),
                &mut reader,
            )
            .await
            .map_err(|e| format!("its NAR: {e}"))?;
            let mut probe = [0u8; 1];
            if reader.read(&mut probe).await.unwrap_or(0) != 0 {
                return Err("data after the end of the NAR".to_owned());
            }
            Ok(ingested)
        };
        let ingesting = AbortOnDrop(match (&feed, spool::background()) {
            (Feed::Spool { .. }, Some(rt)) => rt.spawn(ingestion),
            _ => tokio::spawn(ingestion),
        });
        let limit = ni.nar_size;
        // Upstream → the client and the ingestion, hashed here so that the
        // client's last bytes need not wait for the ingestion. `Ok`: the
        // end reached; `Err(None)`: the ingestion stopped reading (its error
        // says why).
        let pumped = async {
            let mut seen = 0u64;
            let mut buf = BytesMut::new();
            loop {
                buf.reserve(READ_BUF);
                let n = tokio_util::io::read_buf(&mut nar, &mut buf)
                    .await
                    .map_err(|e| Some(read_error(up.url(), ni, e)))?;
                if n == 0 {
                    break;
                }
                seen += n as u64;
                if seen > limit {
                    return Err(Some(refused(format!(
                        "the NAR is longer than its NarSize {limit}"
                    ))));
                }
                let chunk = buf.split().freeze();
                feed.write(chunk.clone()).await?;
                if let Some(tx) = client.as_ref()
                    && let Some(prev) = held.replace(chunk)
                    && tx.send(Ok(prev)).await.is_err()
                {
                    // The client left: the download goes on for the store.
                    *client = None;
                    *held = None;
                }
            }
            let sha = feed.finish().await?;
            Ok((seen, sha))
        }
        .await;
        let stored_err = |e: tokio::task::JoinError| {
            UpstreamError::Store(format!("the NAR's ingestion task: {e}"))
        };
        let verified_sha256 = match pumped {
            Err(Some(e)) => return Err(e),
            Err(None) => {
                return Err(match ingesting.join().await.map_err(stored_err)? {
                    Err(e) => refused(e),
                    Ok(_) => refused("the NAR could not be stored".into()),
                });
            }
            Ok((seen, sha)) => {
                if seen != ni.nar_size {
                    return Err(refused(format!(
                        "the NAR has {seen} bytes, its narinfo says {}",
                        ni.nar_size
                    )));
                }
                let got = NixHash::Sha256(sha);
                if got != ni.nar_hash {
                    return Err(refused(format!(
                        "the NAR's hash is {got}, its narinfo says {}",
                        ni.nar_hash
                    )));
                }
                sha
            }
        };
        // The bytes are the signed ones: the client has them all now.
        if let (Some(tx), Some(last)) = (client.take(), held.take()) {
            let _ = tx.send(Ok(last)).await;
        }
        let (root, stored_size) = ingesting
            .join()
            .await
            .map_err(stored_err)?
            .map_err(refused)?;
        if stored_size != ni.nar_size {
            return Err(UpstreamError::Store(format!(
                "{}: the NAR stored has {stored_size} bytes, {} were received",
                ni.store_path, ni.nar_size
            )));
        }
        let info = path_info(ni, root, ni.nar_size, verified_sha256);
        self.path_info
            .put(info)
            .await
            .map_err(|e| UpstreamError::Store(e.to_string()))
    }
}

/// Where the download puts the NAR for its ingestion; it hashes what it is
/// given (SHA-256: what the narinfo's NarHash is checked against).
enum Feed {
    /// A pipe: the download waits for the ingestion.
    Pipe(tokio::io::DuplexStream, Sha256),
    /// A spool file, written and hashed by a thread of its own (so that the
    /// download decompresses while the last chunk is hashed, on another
    /// core); the ingestion follows as it can.
    Spool {
        to: mpsc::Sender<Spooled>,
        worker: tokio::task::JoinHandle<Result<[u8; 32], Option<String>>>,
    },
}

/// For a spool's thread.
enum Spooled {
    Chunk(Bytes),
    /// The NAR is complete (without it, the ingestion's read of the spool
    /// fails: the download stopped).
    End,
}

/// Chunks on their way to a spool's thread.
const SPOOL_QUEUE: usize = 8;

impl Feed {
    fn pipe(w: tokio::io::DuplexStream) -> Feed {
        Feed::Pipe(w, Sha256::new())
    }

    fn spool(mut w: spool::SpoolWriter) -> Feed {
        let (to, mut from) = mpsc::channel(SPOOL_QUEUE);
        let worker = tokio::task::spawn_blocking(move || {
            let mut sha = Sha256::new();
            while let Some(msg) = from.blocking_recv() {
                match msg {
                    Spooled::Chunk(chunk) => {
                        sha.update(&chunk);
                        w.write(&chunk).map_err(|e| e.map(|e| e.to_string()))?;
                    }
                    Spooled::End => {
                        w.finish();
                        return Ok(sha.finalize().into());
                    }
                }
            }
            Err(Some("the download stopped".to_owned()))
        });
        Feed::Spool { to, worker }
    }

    /// `Err(None)`: the ingestion stopped reading (its error says why). After
    /// an error the feed is dropped, not written to again.
    async fn write(&mut self, chunk: Bytes) -> Result<(), Option<UpstreamError>> {
        match self {
            Feed::Pipe(w, sha) => {
                sha.update(&chunk);
                w.write_all(&chunk).await.map_err(|_| None)
            }
            Feed::Spool { to, worker } => {
                if to.send(Spooled::Chunk(chunk)).await.is_ok() {
                    return Ok(());
                }
                // The thread ended: why (asked once: the download stops here).
                Err(spool_error(worker.await))
            }
        }
    }

    /// The SHA-256 of everything written, once the ingestion has it all (a
    /// pipe) or can read it all (a spool).
    async fn finish(self) -> Result<[u8; 32], Option<UpstreamError>> {
        match self {
            Feed::Pipe(mut w, sha) => {
                w.shutdown().await.map_err(|_| None)?;
                Ok(sha.finalize().into())
            }
            Feed::Spool { to, worker } => {
                let _ = to.send(Spooled::End).await;
                match worker.await {
                    Ok(Ok(sha)) => Ok(sha),
                    other => Err(spool_error(other)),
                }
            }
        }
    }
}

/// A spool thread's failure: `None` if its reader (the ingestion) had gone.
fn spool_error(
    r: Result<Result<[u8; 32], Option<String>>, tokio::task::JoinError>,
) -> Option<UpstreamError> {
    let e = match r {
        Ok(Ok(_)) => "it ended early".to_owned(),
        Ok(Err(None)) => return None,
        Ok(Err(Some(e))) => e,
        Err(e) => e.to_string(),
    };
    Some(UpstreamError::Store(format!(
        "writing the NAR to its spool file: {e}"
    )))
}

/// The path info of a pulled path: its content `node`, the rest from its
/// narinfo.
fn path_info(ni: &NarInfo, node: Node, nar_size: u64, nar_sha256: [u8; 32]) -> PathInfo {
    PathInfo {
        store_path: ni.store_path.clone(),
        node,
        references: ni.references.clone(),
        nar_size,
        nar_sha256,
        signatures: ni.signatures.clone(),
        deriver: ni.deriver.clone(),
        ca: ni.ca.clone(),
    }
}

/// A task aborted when its handle is dropped (the download failed, or its
/// task ended): no ingestion runs on with nobody waiting for it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failed read of an upstream's NAR: refused if its compressed file did not
/// match the narinfo, else the upstream failing.
fn read_error(upstream: &str, ni: &NarInfo, e: std::io::Error) -> UpstreamError {
    let upstream = upstream.to_owned();
    if let Some(m) = e.get_ref().and_then(|i| i.downcast_ref::<FileMismatch>()) {
        return UpstreamError::Refused {
            upstream,
            message: format!("{}: {m}", ni.store_path),
        };
    }
    let message = format!("reading the NAR of {}: {e}", ni.store_path);
    if e.kind() == std::io::ErrorKind::TimedOut {
        UpstreamError::TimedOut { upstream, message }
    } else {
        UpstreamError::Unavailable { upstream, message }
    }
}

/// The outcome of a download, once it ended.
async fn wait(mut rx: watch::Receiver<Outcome>) -> Result<PathInfo, UpstreamError> {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome
            .clone()
            .unwrap_or_else(|| Err(UpstreamError::Store("download lost".into()))),
        Err(_) => Err(UpstreamError::Store("the download task ended".into())),
    }
}

fn cache_error(e: UpstreamError) -> CacheError {
    match e {
        UpstreamError::Store(m) | UpstreamError::Config(m) => CacheError::Internal(m),
        e @ UpstreamError::TimedOut { .. } => CacheError::UpstreamTimeout(e.to_string()),
        other => CacheError::Upstream(other.to_string()),
    }
}

#[async_trait]
impl PullThrough for Puller {
    async fn narinfo(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<NarInfo>, CacheError> {
        Ok(self
            .upstream_narinfo(digest)
            .await
            .map_err(cache_error)?
            .map(|(_, ni)| ni))
    }

    async fn nar(
        &self,
        digest: [u8; DIGEST_LEN],
        nar_sha256: [u8; 32],
        stream: bool,
    ) -> Result<Option<PulledNar>, CacheError> {
        let Some((idx, ni)) = self.upstream_narinfo(digest).await.map_err(cache_error)? else {
            return Ok(None);
        };
        if ni.nar_hash != NixHash::Sha256(nar_sha256) {
            return Ok(None);
        }
        let nar_size = ni.nar_size;
        let (rx, body) = self.flight(digest, idx, ni, stream).map_err(cache_error)?;
        if let Some(body) = body {
            let body: BoxStream<'static, std::io::Result<Bytes>> =
                futures::stream::unfold(body, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                })
                .boxed();
            return Ok(Some(PulledNar::Streaming { nar_size, body }));
        }
        wait(rx).await.map_err(cache_error)?;
        Ok(Some(PulledNar::Stored))
    }
}

/// A path info service in front of upstreams: `get` of a path it does not
/// have asks the [`Puller`] (which stores it in `inner`), unless turned off
/// with [`PullThroughPathInfoService::pull_misses`]; with
/// [`PullThroughPathInfoService::skip_uploads`], `put` of a path a trusted
/// upstream has with the same NAR and references succeeds without storing it
/// (later reads pull it). Everything else is `inner`'s.
pub struct PullThroughPathInfoService {
    inner: Arc<dyn PathInfoService>,
    puller: Arc<Puller>,
    pull_misses: bool,
    skip_uploads: bool,
}

impl PullThroughPathInfoService {
    /// `inner`, pulling its misses with `puller` (which must store into
    /// `inner`), storing every put.
    pub fn new(inner: Arc<dyn PathInfoService>, puller: Arc<Puller>) -> Self {
        Self {
            inner,
            puller,
            pull_misses: true,
            skip_uploads: false,
        }
    }

    /// Whether `get` pulls a path `inner` does not have (default: yes).
    pub fn pull_misses(mut self, on: bool) -> Self {
        self.pull_misses = on;
        self
    }

    /// Whether `put` skips storing a path a trusted upstream has (default: no).
    pub fn skip_uploads(mut self, on: bool) -> Self {
        self.skip_uploads = on;
        self
    }
}

#[async_trait]
impl PathInfoService for PullThroughPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        if let Some(info) = self.inner.get(digest).await? {
            return Ok(Some(info));
        }
        if !self.pull_misses {
            return Ok(None);
        }
        self.puller.pull(digest).await.map_err(|e| match e {
            UpstreamError::Store(_) | UpstreamError::Config(_) => Error::Storage(Box::new(e)),
            // UNAVAILABLE over gRPC: the client may try again later.
            other => Error::Unavailable(format!(
                "{} is not stored here and the upstreams could not provide it: {other}",
                nixbase32::encode(&digest)
            )),
        })
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        // A path already here is put as usual (the store says whether the put
        // agrees with it).
        if self.skip_uploads
            && self.inner.get(*info.store_path.digest()).await?.is_none()
            && self.puller.upstream_has(&info).await
        {
            tracing::info!(path = %info.store_path, "upload not stored: a trusted upstream has it");
            return Ok(info);
        }
        self.inner.put(info).await
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        self.inner.list()
    }

    async fn referrers(
        &self,
        digest: [u8; 20],
    ) -> Result<Vec<cairn_nix::store_path::StorePath>, Error> {
        self.inner.referrers(digest).await
    }

    async fn cached_nar(&self, node: &Node) -> Result<Option<(u64, [u8; 32])>, Error> {
        self.inner.cached_nar(node).await
    }

    async fn remember_nar(&self, node: &Node, nar: (u64, [u8; 32])) -> Result<(), Error> {
        self.inner.remember_nar(node, nar).await
    }

    fn note_access(&self, digest: [u8; 20]) {
        self.inner.note_access(digest);
    }

    async fn access_times(&self) -> Result<HashMap<[u8; 20], u64>, Error> {
        self.inner.access_times().await
    }

    async fn delete(&self, digests: &[[u8; 20]]) -> Result<(), Error> {
        self.inner.delete(digests).await
    }

    async fn pins(&self) -> Result<Vec<[u8; 20]>, Error> {
        self.inner.pins().await
    }

    async fn set_pinned(&self, digests: &[[u8; 20]], pinned: bool) -> Result<(), Error> {
        self.inner.set_pinned(digests, pinned).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cairn_castore::blobservice::MemoryBlobService;
    use cairn_castore::directoryservice::MemoryDirectoryService;
    use cairn_nix::signature::SigningKey;
    use cairn_nix::store_path::StorePath;
    use cairn_store::pathinfo::MemoryPathInfoService;

    use super::*;
    use crate::upstream::Options;

    /// A `file://` upstream (in a temporary directory) holding one NAR,
    /// uncompressed, for the path `name` with digest `[tag; 20]`: the
    /// directory, the upstream, the NAR file, the path and its signed narinfo.
    fn upstream_with(
        nar: &[u8],
        tag: u8,
        name: &str,
    ) -> (
        tempfile::TempDir,
        Upstream,
        std::path::PathBuf,
        StorePath,
        NarInfo,
    ) {
        let up_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(up_dir.path().join("nar")).unwrap();
        let nar_file = up_dir.path().join(format!("nar/{name}.nar"));
        std::fs::write(&nar_file, nar).unwrap();
        let path = StorePath::new([tag; DIGEST_LEN], name).unwrap();
        let mut ni = NarInfo::parse(&format!(
            "StorePath: {}\nURL: nar/{name}.nar\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
            path.to_absolute(),
            NixHash::Sha256(Sha256::digest(nar).into()),
            nar.len()
        ))
        .unwrap();
        let key = SigningKey::generate("up-1").unwrap();
        ni.sign(&key);
        let options = Options {
            trusted_keys: vec![key.to_verifying_key()],
            ..Options::default()
        };
        let up = Upstream::new(&format!("file://{}", up_dir.path().display()), &options).unwrap();
        (up_dir, up, nar_file, path, ni)
    }

    /// A download started just after an earlier one of the same path
    /// registered it (the requester looked the path up before that) serves the
    /// stored path and downloads nothing: the upstream's NAR is gone by then,
    /// so a second download would fail.
    #[tokio::test]
    async fn a_flight_for_a_path_stored_meanwhile_serves_it_without_downloading() {
        let mut nar = cairn_nix::nar::Writer::new(Vec::new());
        nar.symlink(b"/somewhere/else").unwrap();
        let nar = nar.finish().unwrap();
        let (_up_dir, up, nar_file, path, ni) = upstream_with(&nar, 7, "linked");
        let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
        let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::new());
        let path_info = Arc::new(MemoryPathInfoService::new(blobs.clone(), dirs.clone()));
        let puller = Puller::new(vec![up], blobs, dirs, path_info, PullOptions::default());

        let (rx, _) = puller.flight(*path.digest(), 0, ni.clone(), false).unwrap();
        let stored = wait(rx).await.unwrap();
        std::fs::remove_file(&nar_file).unwrap();

        let (rx, body) = puller.flight(*path.digest(), 0, ni, true).unwrap();
        let mut body = body.expect("a started flight streams to its starter");
        let mut got = Vec::new();
        while let Some(chunk) = body.recv().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, nar);
        assert_eq!(wait(rx).await.unwrap(), stored);
        assert_eq!(puller.stats().pulls, 1);
        assert_eq!(puller.stats().failures, 0);
    }

    /// Blobs whose writers are handed out only once the test releases them:
    /// an ingestion that cannot keep up.
    struct Held {
        inner: MemoryBlobService,
        gate: Semaphore,
    }

    #[async_trait]
    impl BlobService for Held {
        async fn has(&self, digest: &cairn_castore::B3Digest) -> Result<bool, Error> {
            self.inner.has(digest).await
        }
        async fn open_read(
            &self,
            digest: &cairn_castore::B3Digest,
        ) -> Result<Option<Box<dyn cairn_castore::BlobReader>>, Error> {
            self.inner.open_read(digest).await
        }
        async fn open_write(&self) -> Box<dyn cairn_castore::BlobWriter> {
            let _ = self.gate.acquire().await.unwrap();
            self.inner.open_write().await
        }
        async fn chunks(
            &self,
            digest: &cairn_castore::B3Digest,
        ) -> Result<Option<Vec<cairn_castore::ChunkMeta>>, Error> {
            self.inner.chunks(digest).await
        }
    }

    /// A client streaming a pulled NAR gets all of it, checked, while the
    /// store has not yet taken a byte of it; the path is registered once the
    /// store catches up. (Through a pipe, the client waited for the store
    /// after its first MiB.)
    #[tokio::test]
    async fn a_client_gets_the_nar_without_waiting_for_the_store() {
        let contents: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let mut nar = cairn_nix::nar::Writer::new(Vec::new());
        nar.file(false, contents.len() as u64, &mut &contents[..])
            .unwrap();
        let nar = nar.finish().unwrap();
        let (_up_dir, up, _, path, ni) = upstream_with(&nar, 9, "big");
        let held = Arc::new(Held {
            inner: MemoryBlobService::new(),
            gate: Semaphore::new(0),
        });
        let blobs: Arc<dyn BlobService> = held.clone();
        let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::new());
        let path_info = Arc::new(MemoryPathInfoService::new(blobs.clone(), dirs.clone()));
        let spool_dir = tempfile::tempdir().unwrap();
        let options = PullOptions {
            spool_dir: Some(spool_dir.path().to_owned()),
            ..PullOptions::default()
        };
        let puller = Puller::new(vec![up], blobs, dirs, path_info.clone(), options);

        let (rx, body) = puller.flight(*path.digest(), 0, ni, true).unwrap();
        let mut body = body.expect("a started flight streams to its starter");
        let mut got = Vec::new();
        let streamed = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(chunk) = body.recv().await {
                got.extend_from_slice(&chunk.unwrap());
            }
        })
        .await;
        assert!(streamed.is_ok(), "the client waited for the store");
        assert!(got == nar, "the client got other bytes");
        assert!(path_info.get(*path.digest()).await.unwrap().is_none());
        assert_eq!(std::fs::read_dir(spool_dir.path()).unwrap().count(), 0);

        held.gate.add_permits(1);
        let stored = wait(rx).await.unwrap();
        assert_eq!(path_info.get(*path.digest()).await.unwrap(), Some(stored));
        assert_eq!(puller.stats().pulls, 1);
    }
}
