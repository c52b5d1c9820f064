//! The HTTP routes of the binary cache, over the blob, directory and path info
//! services.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use cairn_castore::{BlobService, DirectoryService};
use cairn_nix::cache_info::CacheInfo;
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::{self, FieldText, NarInfo};
use cairn_nix::nixbase32;
use cairn_nix::signature::{SigningKey, VerifyingKey};
use cairn_nix::store_path::{DIGEST_LEN, FileIngestionMethod, HASH_PART_LEN};
use cairn_store::lru::Lru;
use cairn_store::nar::NarError;
use cairn_store::pathinfo::{PathInfo, PathInfoService};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt as _};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::compression::Compression;
use crate::error::CacheError;
use crate::hashing::HashingStream;
use crate::listing::listing;
use crate::metrics::{HttpMetrics, Route};
use crate::pending::{PendingNar, PendingUploads};
use crate::pull::{PullThrough, PulledNar};
use cairn_castore::auth::Token;

/// [`CacheConfig::max_nar_size`] unless the operator says otherwise: above all
/// but the very largest NARs in nixpkgs (CUDA toolkits reach a few GiB: their
/// caches raise it), and below what a small compressed upload can expand to
/// (xz turns 610 KB of zeros into a file of 4 GiB, whose NAR is just over this).
pub const DEFAULT_MAX_NAR_SIZE: u64 = 4 << 30;

/// What a cache serves and accepts, beyond its storage.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Served as `/nix-cache-info`.
    pub cache_info: CacheInfo,
    /// Every narinfo served is signed with each of these (in addition to the
    /// signatures stored with the path).
    pub sign_keys: Vec<SigningKey>,
    /// If not empty, an uploaded narinfo is accepted only with a valid signature
    /// by one of these.
    pub trusted_keys: Vec<VerifyingKey>,
    /// If set, uploads (PUT) must carry this token.
    pub upload_token: Option<Token>,
    /// Largest NAR an upload may decompress to (413 as soon as it grows past).
    pub max_nar_size: u64,
    /// Connections served at once; more are closed as soon as they are accepted,
    /// so a flood cannot take every file descriptor of the process.
    pub max_connections: usize,
    /// How long a client may take to send a request head once it started one.
    pub header_read_timeout: Duration,
    /// How long a connection may wait idle for its next request.
    pub idle_timeout: Duration,
    /// Without an upload token: accept uploads from anyone (else they are
    /// refused with 403).
    pub allow_anonymous_uploads: bool,
    /// If set, the cache is private: every other request (reads) must carry this
    /// token or the upload token (a writer reads too: `nix copy --to` asks which
    /// paths the cache has).
    pub read_token: Option<Token>,
    /// An uploaded NAR whose narinfo has not come this long after the upload is
    /// forgotten (its blobs stay in the store).
    pub pending_max_age: Duration,
}

impl Default for CacheConfig {
    /// `StoreDir: /nix/store`, `WantMassQuery: 1`, `Priority: 40` (as
    /// cache.nixos.org), no keys, uploads refused, reads open, pending uploads
    /// kept for a day, NARs up to 4 GiB, 4096 connections, 30 s to send a
    /// request head, 120 s idle between requests.
    fn default() -> Self {
        let mut cache_info = CacheInfo::new(cairn_nix::store_path::STORE_DIR).unwrap_or_default();
        cache_info.want_mass_query = Some(true);
        cache_info.priority = Some(40);
        Self {
            cache_info,
            sign_keys: Vec::new(),
            trusted_keys: Vec::new(),
            upload_token: None,
            max_nar_size: DEFAULT_MAX_NAR_SIZE,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            allow_anonymous_uploads: false,
            read_token: None,
            pending_max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A binary cache over a store: build one, then serve [`router`].
pub struct BinaryCache {
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    path_info: Arc<dyn PathInfoService>,
    pending: PendingUploads,
    config: CacheConfig,
    cache_info_text: Bytes,
    /// Rendered, signed narinfos: see [`BinaryCache::narinfo`].
    rendered: Mutex<Lru<[u8; DIGEST_LEN], (PathInfo, Bytes)>>,
    /// When pending uploads were last expired.
    last_expiry: Mutex<Instant>,
    /// What it counts.
    pub(crate) metrics: Arc<HttpMetrics>,
    /// Served as `/metrics` if set.
    exposition: Option<Arc<prometheus_client::registry::Registry>>,
    /// Asked for paths the store does not have.
    pull: Option<Arc<dyn PullThrough>>,
}

/// Memory the rendered narinfos may take (about: each entry costs
/// [`rendered_cost`]); the least recently used are dropped beyond it.
const MAX_RENDERED_BYTES: usize = 32 << 20;

/// What a rendered narinfo costs in the cache: its text, about as much again for
/// the path info kept with it, and the maps' own entries.
fn rendered_cost(text: &Bytes) -> usize {
    2 * text.len() + 256
}

impl BinaryCache {
    /// A cache serving and storing into these services; `pending` records NARs
    /// waiting for their narinfo.
    ///
    /// Expires the pending uploads older than [`CacheConfig::pending_max_age`]
    /// now (blocking briefly), then every so often as uploads come.
    pub fn new(
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        path_info: Arc<dyn PathInfoService>,
        pending: PendingUploads,
        config: CacheConfig,
    ) -> Self {
        let cache_info_text = Bytes::from(config.cache_info.to_string());
        match pending.expire_blocking(config.pending_max_age) {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "expired pending uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot expire pending uploads"),
        }
        Self {
            last_expiry: Mutex::new(Instant::now()),
            blobs,
            directories,
            path_info,
            pending,
            config,
            cache_info_text,
            rendered: Mutex::new(Lru::new(MAX_RENDERED_BYTES)),
            metrics: Arc::default(),
            exposition: None,
            pull: None,
        }
    }

    /// Asks `pull` for the narinfos and NARs of paths not in the store.
    pub fn with_pull_through(mut self, pull: Arc<dyn PullThrough>) -> Self {
        self.pull = Some(pull);
        self
    }

    /// Counts into `metrics` (shared with whoever registered them), and serves
    /// `exposition` as `GET /metrics` if given (under the same read access as
    /// the rest of the cache).
    pub fn with_metrics(
        mut self,
        metrics: Arc<HttpMetrics>,
        exposition: Option<Arc<prometheus_client::registry::Registry>>,
    ) -> Self {
        self.metrics = metrics;
        self.exposition = exposition;
        self
    }
}

impl BinaryCache {
    /// The settings it was made with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Whether a read whose `Authorization` header is `authorization` may go on:
    /// always for a public cache; for a private one, with the read or the upload
    /// token.
    pub(crate) fn may_read(&self, authorization: Option<&[u8]>) -> bool {
        let Some(read) = &self.config.read_token else {
            return true;
        };
        authorization.is_some_and(|v| {
            read.check_authorization(v)
                || self
                    .config
                    .upload_token
                    .as_ref()
                    .is_some_and(|u| u.check_authorization(v))
        })
    }

    /// Expires old pending uploads if the last time was long enough ago (a
    /// quarter of their maximum age, at most an hour).
    async fn expire_pending(&self) {
        let every = (self.config.pending_max_age / 4).min(Duration::from_secs(3600));
        {
            let mut last = self
                .last_expiry
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() < every {
                return;
            }
            *last = Instant::now();
        }
        match self.pending.expire(self.config.pending_max_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "expired pending uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot expire pending uploads"),
        }
    }
}

impl BinaryCache {
    /// The narinfo of `info`, signed by the configured keys.
    ///
    /// Signing (ed25519) and formatting are most of a narinfo request's own
    /// cost, so the text is kept with the path info it was made from and
    /// reused while a lookup returns that same path info. Comparing with the
    /// lookup, rather than forgetting the text when this cache stores a path,
    /// stays right when paths are stored by others (the daemon's gRPC service
    /// shares the path info service).
    fn narinfo(&self, info: PathInfo) -> Result<Bytes, CacheError> {
        let digest = *info.store_path.digest();
        let lock = || self.rendered.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, text)) = lock().get(&digest)
            && *cached == info
        {
            self.metrics.rendered_hits.inc();
            return Ok(text.clone());
        }
        self.metrics.rendered_misses.inc();
        let url = FieldText::try_from(nar_url(&info))
            .map_err(|e| CacheError::Internal(format!("NAR URL: {e}")))?;
        let mut ni = info.to_narinfo(
            url,
            "none"
                .parse()
                .map_err(|e| CacheError::Internal(format!("compression: {e}")))?,
            Some(info.nar_hash()),
            Some(info.nar_size),
        );
        let fingerprint = ni.fingerprint();
        for key in &self.config.sign_keys {
            ni.add_signature(key.sign(fingerprint.as_bytes()));
        }
        let text = Bytes::from(ni.to_string());
        let cost = rendered_cost(&text);
        lock().insert(digest, (info, text.clone()), cost);
        Ok(text)
    }
}

impl BinaryCache {
    /// The narinfo of a path only an upstream has, as this cache will serve it
    /// (its NAR uncompressed, under the URL a stored path's NAR has) and signed
    /// by the configured keys: the upstream's signatures were checked, and the
    /// NAR is checked against the signed hash before anything is registered.
    /// Not kept: the path's own narinfo replaces it once stored.
    fn upstream_narinfo(&self, upstream: NarInfo) -> Result<Bytes, CacheError> {
        let url = format!(
            "nar/{}-{}.nar",
            upstream.store_path.hash_part(),
            nixbase32::encode(upstream.nar_hash.digest())
        );
        let mut ni = NarInfo {
            url: FieldText::try_from(url)
                .map_err(|e| CacheError::Internal(format!("NAR URL: {e}")))?,
            compression: "none"
                .parse()
                .map_err(|e| CacheError::Internal(format!("compression: {e}")))?,
            file_hash: Some(upstream.nar_hash),
            file_size: Some(upstream.nar_size),
            system: None,
            ..upstream
        };
        let fingerprint = ni.fingerprint();
        for key in &self.config.sign_keys {
            ni.add_signature(key.sign(fingerprint.as_bytes()));
        }
        Ok(Bytes::from(ni.to_string()))
    }
}

type Cache = State<Arc<BinaryCache>>;

/// The routes: `/nix-cache-info`, `/<hash>.narinfo`, `/<hash>.ls`,
/// `/nar/<file>`.
pub fn router(cache: Arc<BinaryCache>) -> Router {
    Router::new()
        .route("/nix-cache-info", get(get_cache_info).put(put_cache_info))
        .route("/metrics", get(get_metrics))
        .route(
            "/nar/{file}",
            get(get_nar).put(put_nar).layer(DefaultBodyLimit::disable()),
        )
        .route("/{file}", get(get_file).put(put_file))
        .fallback(|| async { CacheError::NotFound })
        .layer(middleware::from_fn_with_state(cache.clone(), guard_reads))
        .layer(middleware::from_fn_with_state(cache.clone(), observe))
        .with_state(cache)
}

/// The `tracing` target of the access log: one debug event per request
/// (`RUST_LOG=cairn_cache::access=debug`), in the span of its connection, which
/// names the peer.
pub(crate) const ACCESS: &str = "cairn_cache::access";

/// Counts a request in the metrics and logs it to [`ACCESS`] (if enabled) when
/// its answer's head is ready (a NAR's body is still to come then).
async fn observe(State(cache): Cache, req: Request, next: Next) -> Response {
    let route = Route::of(req.method(), req.uri().path());
    let logged = tracing::enabled!(target: ACCESS, tracing::Level::DEBUG)
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let start = Instant::now();
    let response = next.run(req).await;
    cache.metrics.request(route, &response, start.elapsed());
    if let Some((method, path)) = logged {
        access(method.as_str(), &path, response.status(), start);
    }
    response
}

/// `GET /metrics`: the registry given to [`BinaryCache::with_metrics`], if any.
async fn get_metrics(State(cache): Cache) -> Response {
    match &cache.exposition {
        Some(registry) => crate::metrics::exposition(registry.clone()).await,
        None => CacheError::NotFound.into_response(),
    }
}

/// One access log event.
pub(crate) fn access(method: &str, path: &str, status: StatusCode, start: Instant) {
    tracing::debug!(
        target: ACCESS,
        method,
        path,
        status = status.as_u16(),
        us = start.elapsed().as_micros() as u64,
        "request"
    );
}

/// A private cache answers every request but an upload with 401 unless it
/// carries a token that may read (uploads check theirs in their handlers). The
/// 404 of an unknown URL is no exception: it would tell what the cache holds.
async fn guard_reads(State(cache): Cache, req: Request, next: Next) -> Response {
    let auth = req.headers().get(header::AUTHORIZATION);
    if req.method() != Method::PUT && !cache.may_read(auth.map(HeaderValue::as_bytes)) {
        return CacheError::ReadUnauthorized.into_response();
    }
    next.run(req).await
}

/// Objects whose URL names their content: never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// A narinfo can gain signatures; its NAR never changes.
pub(crate) const NARINFO_CACHE: &str = "public, max-age=3600";

fn response(ctype: &'static str, cache: &'static str, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

fn check_upload(cache: &BinaryCache, headers: &HeaderMap) -> Result<(), CacheError> {
    match &cache.config.upload_token {
        Some(t) if !t.check(headers) => Err(CacheError::Unauthorized),
        Some(_) => Ok(()),
        None if cache.config.allow_anonymous_uploads => Ok(()),
        None => Err(CacheError::Forbidden(
            "uploads to this cache are disabled: its operator can enable them with --upload-token-file FILE (clients then send the token, e.g. from a netrc file) or --allow-anonymous-uploads".into(),
        )),
    }
}

async fn get_cache_info(State(cache): Cache) -> Response {
    response(
        "text/x-nix-cache-info",
        "public, max-age=300",
        cache.cache_info_text.clone(),
    )
}

/// Nix sends its `nix-cache-info` only when it found none; cairn keeps its own
/// but refuses a store directory it does not serve.
async fn put_cache_info(
    State(cache): Cache,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, CacheError> {
    check_upload(&cache, &headers)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| CacheError::BadRequest("nix-cache-info: not UTF-8".into()))?;
    let info = CacheInfo::parse(text).map_err(|e| CacheError::BadRequest(e.to_string()))?;
    if let (Some(theirs), Some(ours)) = (info.store_dir(), cache.config.cache_info.store_dir())
        && theirs != ours
    {
        return Err(CacheError::BadRequest(format!(
            "nix-cache-info: this cache serves StoreDir {ours}, not {theirs}"
        )));
    }
    Ok(StatusCode::CREATED)
}

/// The store path digest of a URL's hash part (`/<hash>.narinfo`, `/<hash>.ls`,
/// `nar/<hash>-...`); `None` (a 404) unless it is 32 nixbase32 characters.
pub fn parse_hash_part(s: &str) -> Option<[u8; DIGEST_LEN]> {
    if s.len() != HASH_PART_LEN {
        return None;
    }
    nixbase32::decode_fixed(s).ok()
}

fn parse_sha256_nix32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 52 {
        return None;
    }
    nixbase32::decode_fixed(s).ok()
}

/// Where the NAR of `info` is served: named by its store path and NAR hash, so
/// the URL's content never changes.
fn nar_url(info: &PathInfo) -> String {
    format!(
        "nar/{}-{}.nar",
        info.store_path.hash_part(),
        nixbase32::encode(&info.nar_sha256)
    )
}

async fn lookup(cache: &BinaryCache, digest: [u8; DIGEST_LEN]) -> Result<PathInfo, CacheError> {
    cache
        .path_info
        .get(digest)
        .await
        .map_err(CacheError::from_store)?
        .ok_or(CacheError::NotFound)
}

/// The narinfo served as `/<hash>.narinfo`.
pub(crate) async fn narinfo_text(cache: &BinaryCache, hash: &str) -> Result<Bytes, CacheError> {
    let digest = parse_hash_part(hash).ok_or(CacheError::NotFound)?;
    match lookup(cache, digest).await {
        Err(CacheError::NotFound) => {}
        found => return cache.narinfo(found?),
    }
    let Some(pull) = &cache.pull else {
        return Err(CacheError::NotFound);
    };
    let upstream = pull.narinfo(digest).await?.ok_or(CacheError::NotFound)?;
    cache.upstream_narinfo(upstream)
}

async fn get_file(State(cache): Cache, Path(file): Path<String>) -> Result<Response, CacheError> {
    if let Some(hash) = file.strip_suffix(".narinfo") {
        let text = narinfo_text(&cache, hash).await?;
        return Ok(response("text/x-nix-narinfo", NARINFO_CACHE, text));
    }
    if let Some(hash) = file.strip_suffix(".ls") {
        let digest = parse_hash_part(hash).ok_or(CacheError::NotFound)?;
        let info = lookup(&cache, digest).await?;
        let mut chunks = listing(cache.directories.clone(), info.node);
        // The first chunk (all of a small listing) before answering, so that a
        // missing root directory is a 500, not an aborted 200.
        let first = chunks.next().await.transpose()?;
        let rest = chunks.inspect_err(|e| tracing::warn!(error = %e, "listing aborted"));
        let body = Body::from_stream(futures::stream::iter(first.map(Ok)).chain(rest));
        return Ok(response("application/json", IMMUTABLE, body));
    }
    Err(CacheError::NotFound)
}

/// The largest narinfo accepted: tens of thousands of references and signatures.
const MAX_NARINFO: usize = 4 << 20;

async fn put_file(
    State(cache): Cache,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, CacheError> {
    check_upload(&cache, &headers)?;
    if let Some(hash) = file.strip_suffix(".narinfo") {
        let digest = parse_hash_part(hash).ok_or_else(|| {
            CacheError::BadRequest(format!("{file}: not <store path hash>.narinfo"))
        })?;
        let body = axum::body::to_bytes(body, MAX_NARINFO).await.map_err(|_| {
            CacheError::TooLarge(format!(
                "{file}: larger than {MAX_NARINFO} bytes, or the upload failed"
            ))
        })?;
        return put_narinfo(&cache, digest, &body).await;
    }
    if file.ends_with(".ls") {
        // `write-nar-listing=true` uploads Nix's listing; cairn makes its own from
        // the tree, so there is nothing to keep (but the body, which can be large,
        // is read to its end so the connection stays usable).
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            chunk.map_err(|e| CacheError::BadRequest(format!("{file}: {e}")))?;
        }
        return Ok(StatusCode::CREATED);
    }
    Err(CacheError::NotFound)
}

/// Checks an uploaded narinfo against its uploaded NAR and registers the path.
async fn put_narinfo(
    cache: &BinaryCache,
    digest: [u8; DIGEST_LEN],
    body: &[u8],
) -> Result<StatusCode, CacheError> {
    let bad = CacheError::BadRequest;
    let mismatch = CacheError::HashMismatch;
    let text = std::str::from_utf8(body).map_err(|_| bad("narinfo: not UTF-8".into()))?;
    let ni = NarInfo::parse(text).map_err(|e| bad(e.to_string()))?;
    if ni.store_path.digest() != &digest {
        return Err(bad(format!(
            "narinfo: StorePath {} does not match the URL's hash {}",
            ni.store_path,
            nixbase32::encode(&digest)
        )));
    }
    let url = ni.url.as_str();
    let (file_sha256, compression) = url
        .strip_prefix("nar/")
        .and_then(Compression::split_file_name)
        .and_then(|(stem, c)| Some((parse_sha256_nix32(stem)?, c)))
        .ok_or_else(|| {
            bad(format!(
                "narinfo: URL {url:?} is not nar/<file sha256>.nar[.xz|.zst|.bz2|.br]"
            ))
        })?;
    if ni.compression.as_str() != compression.name() {
        return Err(bad(format!(
            "narinfo: Compression {} does not match URL {url}",
            ni.compression
        )));
    }
    if let Some(fh) = &ni.file_hash
        && fh.digest() != file_sha256
    {
        return Err(mismatch(format!(
            "narinfo: FileHash {fh} does not match URL {url}"
        )));
    }
    let nar = cache.pending.get(file_sha256).await?.ok_or_else(|| {
        bad(format!(
            "narinfo for {}: its NAR {url} has not been uploaded",
            ni.store_path
        ))
    })?;
    if let Some(size) = ni.file_size
        && size != nar.file_size
    {
        return Err(mismatch(format!(
            "narinfo: FileSize {size}, but {url} has {} bytes",
            nar.file_size
        )));
    }
    let nar_hash = NixHash::Sha256(nar.nar_sha256);
    if ni.nar_hash != nar_hash {
        return Err(mismatch(format!(
            "narinfo: NarHash {}, but the NAR in {url} has {nar_hash}",
            ni.nar_hash
        )));
    }
    if ni.nar_size != nar.nar_size {
        return Err(mismatch(format!(
            "narinfo: NarSize {}, but the NAR in {url} has {} bytes",
            ni.nar_size, nar.nar_size
        )));
    }
    if let Some(narinfo::ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: NixHash::Sha256(h),
    }) = &ni.ca
        && *h != nar.nar_sha256
    {
        return Err(mismatch(format!(
            "narinfo: CA {} does not match the NAR's hash {nar_hash}",
            ni.ca.as_ref().map(ToString::to_string).unwrap_or_default()
        )));
    }
    for r in &ni.references {
        if r == &ni.store_path {
            continue;
        }
        if cache
            .path_info
            .get(*r.digest())
            .await
            .map_err(CacheError::from_store)?
            .is_none()
            && !upstream_has(cache, *r.digest()).await?
        {
            return Err(CacheError::MissingReference(format!(
                "narinfo for {}: reference {r} is not in this cache (upload it first)",
                ni.store_path
            )));
        }
    }
    if !cache.config.trusted_keys.is_empty() && ni.verify(&cache.config.trusted_keys) == 0 {
        let names: Vec<&str> = cache.config.trusted_keys.iter().map(|k| k.name()).collect();
        return Err(CacheError::Untrusted(format!(
            "narinfo for {}: no valid signature by a trusted key ({})",
            ni.store_path,
            names.join(", ")
        )));
    }
    let mut info = PathInfo {
        store_path: ni.store_path.clone(),
        node: nar.root,
        references: ni.references,
        nar_size: nar.nar_size,
        nar_sha256: nar.nar_sha256,
        signatures: ni.signatures,
        deriver: ni.deriver,
        ca: ni.ca,
    };
    // Nix refuses to substitute a path whose CA gives another store path: never
    // sign and serve one.
    info.validate().map_err(|e| {
        bad(format!(
            "narinfo for {}: CA and StorePath disagree ({e})",
            info.store_path
        ))
    })?;
    let mut status = StatusCode::CREATED;
    if let Some(old) = cache
        .path_info
        .get(digest)
        .await
        .map_err(CacheError::from_store)?
    {
        if old.nar_sha256 != info.nar_sha256 || old.node != info.node {
            return Err(CacheError::Conflict(format!(
                "{} is already in this cache with NarHash {}",
                info.store_path,
                old.nar_hash()
            )));
        }
        // The same path again: keep what was known, add new signatures.
        let mut merged = old.signatures.clone();
        for s in info.signatures.drain(..) {
            if !merged.contains(&s) {
                merged.push(s);
            }
        }
        if merged.len() == old.signatures.len() {
            claim(cache, file_sha256).await;
            return Ok(StatusCode::OK);
        }
        info = PathInfo {
            signatures: merged,
            ..old
        };
        status = StatusCode::OK;
    }
    cache
        .path_info
        .put(info)
        .await
        .map_err(CacheError::from_store)?;
    claim(cache, file_sha256).await;
    Ok(status)
}

/// Whether an upstream has an acceptable narinfo for the path: a reference
/// only an upstream has is pulled when it is asked for, like any other (Nix
/// does not upload a path whose narinfo this cache serves, upstream or not).
async fn upstream_has(cache: &BinaryCache, digest: [u8; DIGEST_LEN]) -> Result<bool, CacheError> {
    match &cache.pull {
        Some(pull) => Ok(pull.narinfo(digest).await?.is_some()),
        None => Ok(false),
    }
}

/// The path is registered: its upload has served its purpose. A failure here is
/// only logged (the path is in; the record expires later).
async fn claim(cache: &BinaryCache, file_sha256: [u8; 32]) {
    if let Err(e) = cache.pending.claim(file_sha256).await {
        tracing::warn!(error = %e, "cannot remove a claimed pending upload");
    }
}

/// What a `/nar/` file name refers to.
enum NarFile {
    /// A NAR this cache serves: `<store path hash>-<NAR sha256>.nar[.ext]`.
    Served {
        digest: [u8; DIGEST_LEN],
        nar_sha256: [u8; 32],
        compression: Compression,
    },
    /// An uploaded file, by its SHA-256: `<file sha256>.nar[.ext]`.
    Uploaded { file_sha256: [u8; 32] },
}

fn parse_nar_file(file: &str) -> Option<NarFile> {
    let (stem, compression) = Compression::split_file_name(file)?;
    match stem.split_once('-') {
        Some((sp, nh)) => Some(NarFile::Served {
            digest: parse_hash_part(sp)?,
            nar_sha256: parse_sha256_nix32(nh)?,
            compression,
        }),
        None => Some(NarFile::Uploaded {
            file_sha256: parse_sha256_nix32(stem)?,
        }),
    }
}

/// A single byte range of a `size`-byte object: `Ok(None)` for none (or one
/// cairn does not serve as a range: several ranges), `Err` if unsatisfiable.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, CacheError> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let Some(spec) = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (start, end) = if a.is_empty() {
        // The last `n` bytes.
        let Some(n) = num(b) else { return Ok(None) };
        if n == 0 {
            return Err(CacheError::RangeNotSatisfiable(size));
        }
        (size.saturating_sub(n), size)
    } else {
        let Some(start) = num(a) else { return Ok(None) };
        let end = if b.is_empty() {
            size
        } else {
            let Some(last) = num(b) else { return Ok(None) };
            if last < start {
                return Ok(None);
            }
            last.saturating_add(1).min(size)
        };
        (start, end)
    };
    if start >= size {
        return Err(CacheError::RangeNotSatisfiable(size));
    }
    Ok(Some((start, end)))
}

fn stream_body<R: AsyncRead + Send + 'static>(reader: R) -> Body {
    // A read error (a blob missing mid-stream) ends the body with an error: hyper
    // then closes the connection without completing the response, so a client
    // never mistakes a truncated NAR for a whole one.
    Body::from_stream(
        ReaderStream::with_capacity(reader, 256 * 1024).inspect_err(|e| {
            tracing::warn!(error = %e, "NAR download aborted");
        }),
    )
}

/// `GET` and `HEAD` of `/nar/<file>`. The answer never depends on the method
/// (axum drops the body of a `HEAD` response after this returns), so that a `HEAD`
/// says exactly what the `GET` of the same URL would: status, `Content-Length`,
/// `Content-Range`. Building a body is cheap: nothing is read until it is polled.
async fn get_nar(
    State(cache): Cache,
    method: Method,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CacheError> {
    let (digest, nar_sha256, compression) = match parse_nar_file(&file) {
        None => return Err(CacheError::NotFound),
        // An uploaded file is not kept as sent (its NAR was decompressed and
        // ingested), so it cannot be served under its file hash, and a `HEAD`
        // must not claim it either: Nix's `HEAD` before an upload then finds
        // nothing and sends the NAR, which ingests again at the cost of the
        // transfer (its chunks are already stored).
        Some(NarFile::Uploaded { .. }) => return Err(CacheError::NotFound),
        Some(NarFile::Served {
            digest,
            nar_sha256,
            compression,
        }) => (digest, nar_sha256, compression),
    };
    let info = match lookup(&cache, digest).await {
        Err(CacheError::NotFound) if cache.pull.is_some() && method == Method::HEAD => {
            // A probe: answered from the upstream's narinfo, without starting
            // the download a GET would.
            return head_upstream(&cache, digest, nar_sha256, compression, &headers).await;
        }
        Err(CacheError::NotFound) if cache.pull.is_some() => {
            // Streamed as it is pulled only when served as it arrives: whole
            // and uncompressed.
            let stream = compression == Compression::None && !headers.contains_key(header::RANGE);
            match pull_nar(&cache, digest, nar_sha256, stream).await? {
                Some(r) => return Ok(r),
                None => lookup(&cache, digest).await?,
            }
        }
        found => found?,
    };
    if info.nar_sha256 != nar_sha256 {
        return Err(CacheError::NotFound);
    }
    let ctype = "application/x-nix-nar";
    if compression != Compression::None {
        let nar =
            cairn_store::nar::render(cache.blobs.clone(), cache.directories.clone(), info.node);
        // bzip2 and brotli are accepted in uploads but not served.
        let enc = compression.encoder(nar).ok_or(CacheError::NotFound)?;
        return Ok(response(ctype, IMMUTABLE, stream_body(enc)));
    }
    let size = info.nar_size;
    let range = parse_range(&headers, size)?;
    let (start, end) = range.unwrap_or((0, size));
    let body = if start == 0 {
        let nar =
            cairn_store::nar::render(cache.blobs.clone(), cache.directories.clone(), info.node);
        stream_body(nar.take(end))
    } else {
        let nar = cairn_store::nar::render_from(
            cache.blobs.clone(),
            cache.directories.clone(),
            info.node,
            start,
        )
        .await
        .map_err(nar_error)?;
        stream_body(nar.take(end - start))
    };
    Ok(uncompressed_nar(body, size, range))
}

/// The response of an uncompressed NAR of `size` bytes (or of its `range`).
fn uncompressed_nar(body: Body, size: u64, range: Option<(u64, u64)>) -> Response {
    let (start, end) = range.unwrap_or((0, size));
    let mut r = response("application/x-nix-nar", IMMUTABLE, body);
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// The `HEAD` of a NAR only an upstream has: what its `GET` would answer
/// (status, `Content-Length` of the uncompressed NAR), from the upstream's
/// narinfo alone.
async fn head_upstream(
    cache: &BinaryCache,
    digest: [u8; DIGEST_LEN],
    nar_sha256: [u8; 32],
    compression: Compression,
    headers: &HeaderMap,
) -> Result<Response, CacheError> {
    let Some(pull) = &cache.pull else {
        return Err(CacheError::NotFound);
    };
    let ni = pull.narinfo(digest).await?.ok_or(CacheError::NotFound)?;
    if ni.nar_hash != NixHash::Sha256(nar_sha256) {
        return Err(CacheError::NotFound);
    }
    if compression != Compression::None {
        // Served compressed on the fly: no length known ahead; bzip2 and
        // brotli not served at all.
        if compression.encoder(tokio::io::empty()).is_none() {
            return Err(CacheError::NotFound);
        }
        return Ok(response("application/x-nix-nar", IMMUTABLE, Body::empty()));
    }
    let range = parse_range(headers, ni.nar_size)?;
    Ok(uncompressed_nar(Body::empty(), ni.nar_size, range))
}

/// Asks the upstreams for a NAR not in the store: a response streaming it as it
/// arrives, or `None` once it is stored (to be served from there).
async fn pull_nar(
    cache: &BinaryCache,
    digest: [u8; DIGEST_LEN],
    nar_sha256: [u8; 32],
    stream: bool,
) -> Result<Option<Response>, CacheError> {
    let Some(pull) = &cache.pull else {
        return Err(CacheError::NotFound);
    };
    match pull.nar(digest, nar_sha256, stream).await? {
        None => Err(CacheError::NotFound),
        Some(PulledNar::Stored) => Ok(None),
        Some(PulledNar::Streaming { nar_size, body }) => {
            // With its length declared, a body that ends early (the stream's
            // error, when the NAR did not match) is an aborted response, never a
            // complete-looking one.
            let body = Body::from_stream(body.inspect_err(|e| {
                tracing::warn!(error = %e, "pulled NAR aborted");
            }));
            let mut r = response("application/x-nix-nar", IMMUTABLE, body);
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(nar_size));
            Ok(Some(r))
        }
    }
}

fn nar_error(e: NarError) -> CacheError {
    if e.kind() == cairn_castore::ErrorKind::ResourceExhausted {
        return CacheError::exhausted(&e);
    }
    match e {
        NarError::Nar(_)
        | NarError::Name { .. }
        | NarError::Target { .. }
        | NarError::Directory { .. } => CacheError::BadRequest(format!("invalid NAR: {e}")),
        other => CacheError::Internal(other.to_string()),
    }
}

/// A reader failing with `FileTooLarge` once more than `left` bytes came
/// through: an upload's decompressed NAR is refused as it grows past the
/// limit, never after.
struct AtMost<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: AsyncRead + Unpin> AsyncRead for AtMost<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        match this.left.checked_sub(n) {
            Some(left) => {
                this.left = left;
                std::task::Poll::Ready(Ok(()))
            }
            None => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!(
                    "the NAR is larger than this cache accepts ({} bytes; its operator can raise --max-nar-size)",
                    this.limit
                ),
            ))),
        }
    }
}

async fn put_nar(
    State(cache): Cache,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, CacheError> {
    check_upload(&cache, &headers)?;
    cache.expire_pending().await;
    let Some(NarFile::Uploaded { file_sha256 }) = parse_nar_file(&file) else {
        return Err(CacheError::BadRequest(format!(
            "nar/{file}: uploads go to nar/<file sha256 in nixbase32>.nar[.xz|.zst|.bz2|.br]"
        )));
    };
    let Some((_, compression)) = Compression::split_file_name(&file) else {
        return Err(CacheError::NotFound);
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut input = StreamReader::new(HashingStream::new(stream, compression != Compression::None));
    let ingested = ingest_all(&cache, compression, &mut input).await?;
    let (file_hash, file_size) = input.into_inner().finish();
    // Uncompressed, the file is the NAR.
    let got_sha256 = file_hash.unwrap_or(ingested.nar_sha256);
    if got_sha256 != file_sha256 {
        return Err(CacheError::HashMismatch(format!(
            "nar/{file}: the file's SHA-256 is {}, not the one its name says",
            nixbase32::encode(&got_sha256)
        )));
    }
    let nar = PendingNar {
        root: ingested.root,
        nar_size: ingested.nar_size,
        nar_sha256: ingested.nar_sha256,
        file_size,
        compression,
    };
    cache.pending.put(file_sha256, &nar).await?;
    tracing::debug!(file, nar_size = nar.nar_size, file_size, "NAR uploaded");
    Ok(StatusCode::CREATED)
}

/// Ingests the NAR decompressed from `input`, then checks that nothing follows
/// it (in the decompressed stream, then in the upload), reading the upload to its
/// end so that its hash covers every byte.
async fn ingest_all<R: AsyncBufRead + Send + Unpin>(
    cache: &BinaryCache,
    compression: Compression,
    input: &mut R,
) -> Result<cairn_store::nar::Ingested, CacheError> {
    let mut decoder = AtMost {
        inner: compression.decoder(&mut *input),
        left: cache.config.max_nar_size,
        limit: cache.config.max_nar_size,
    };
    let ingested = cairn_store::nar::ingest(
        cache.blobs.as_ref(),
        cache.directories.as_ref(),
        &mut decoder,
    )
    .await
    .map_err(nar_error)?;
    let mut probe = [0u8; 1];
    let n = decoder
        .read(&mut probe)
        .await
        .map_err(|e| CacheError::BadRequest(format!("reading the upload: {e}")))?;
    if n != 0 {
        return Err(CacheError::BadRequest(
            "the upload has data after the end of the NAR".into(),
        ));
    }
    drop(decoder);
    let n = input
        .read(&mut probe)
        .await
        .map_err(|e| CacheError::BadRequest(format!("reading the upload: {e}")))?;
    if n != 0 {
        return Err(CacheError::BadRequest(
            "the upload has data after the end of the compressed stream".into(),
        ));
    }
    Ok(ingested)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>, u16> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        parse_range(&h, size).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(range("bytes=500-", 1000), Ok(Some((500, 1000))));
        assert_eq!(range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(range("bytes=-2000", 1000), Ok(Some((0, 1000))));
        assert_eq!(range("bytes=990-5000", 1000), Ok(Some((990, 1000))));
        assert_eq!(range("bytes=1000-", 1000), Err(416));
        assert_eq!(range("bytes=-0", 1000), Err(416));
        // Ignored (served whole): several ranges, nonsense, other units.
        assert_eq!(range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(range("bytes=5-1", 1000), Ok(None));
        assert_eq!(range("bytes=x-", 1000), Ok(None));
        assert_eq!(range("items=0-1", 1000), Ok(None));
    }

    fn cache_with_key() -> (BinaryCache, SigningKey) {
        let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let infos = cairn_store::pathinfo::path_info_service_from_addr(
            "memory://",
            blobs.clone(),
            dirs.clone(),
        )
        .unwrap();
        let key = SigningKey::from_seed("cache-1", &[7; 32]).unwrap();
        let mut config = CacheConfig::default();
        config.sign_keys.push(key.clone());
        let pending = PendingUploads::in_memory().unwrap();
        (BinaryCache::new(blobs, dirs, infos, pending, config), key)
    }

    fn symlink_info(n: u8) -> PathInfo {
        PathInfo {
            store_path: cairn_nix::store_path::StorePath::new([n; 20], &format!("p{n}")).unwrap(),
            node: cairn_castore::Node::Symlink {
                target: cairn_castore::SymlinkTarget::try_from("target").unwrap(),
            },
            references: vec![],
            nar_size: 128,
            nar_sha256: [n; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    /// A kept narinfo text is served only for the path info it was made from: a
    /// path stored again (here with another signature, as a gRPC client could
    /// store it, bypassing this cache) is rendered again.
    #[test]
    fn rendered_narinfos_follow_the_path_info() {
        let (cache, key) = cache_with_key();
        let a = symlink_info(1);
        let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
        let first = cache.narinfo(a.clone()).unwrap();
        let own = key.sign(a.fingerprint().as_bytes()).to_string();
        assert!(
            text(&first).contains(&format!("Sig: {own}\n")),
            "{}",
            text(&first)
        );
        // Kept: the very same bytes.
        let again = cache.narinfo(a.clone()).unwrap();
        assert_eq!(again.as_ptr(), first.as_ptr());

        let other = SigningKey::from_seed("other-1", &[9; 32]).unwrap();
        let mut b = a.clone();
        b.signatures.push(other.sign(a.fingerprint().as_bytes()));
        let with_b = text(&cache.narinfo(b.clone()).unwrap());
        assert!(
            with_b.contains(&format!("Sig: {}\n", b.signatures[0])),
            "{with_b}"
        );
        assert!(with_b.contains(&format!("Sig: {own}\n")), "{with_b}");
        let back = text(&cache.narinfo(a.clone()).unwrap());
        assert_eq!(back, text(&first));
        assert!(!back.contains("other-1:"), "{back}");

        // A different path with the same text length does not take its place.
        let c = cache.narinfo(symlink_info(2)).unwrap();
        assert!(text(&c).contains("-p2\n"));
        assert_eq!(text(&cache.narinfo(a).unwrap()), text(&first));
        let r = cache.rendered.lock().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.cost(), rendered_cost(&first) + rendered_cost(&c));
    }

    #[test]
    fn nar_file_names() {
        let h = "0f8hj6j4c64b13ncpyx3pcwak3h3gx2p92ynyd9f4w6kd3sv0mas";
        let sp = "x4rvp8xvig6hlhp3p0m3wxy847wc38v0";
        assert!(matches!(
            parse_nar_file(&format!("{h}.nar.xz")),
            Some(NarFile::Uploaded { .. })
        ));
        assert!(matches!(
            parse_nar_file(&format!("{sp}-{h}.nar.zst")),
            Some(NarFile::Served {
                compression: Compression::Zstd,
                ..
            })
        ));
        assert!(parse_nar_file(&format!("{h}.nar.gz")).is_none());
        assert!(parse_nar_file(&format!("{sp}.nar")).is_none());
        assert!(parse_nar_file("../x.nar").is_none());
    }
}
