//! [`Upstream`]: one Nix binary cache, over HTTP(S) or in a local directory.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use cairn_cache::Compression;
use cairn_nix::narinfo::NarInfo;
use cairn_nix::nixbase32;
use cairn_nix::signature::VerifyingKey;
use cairn_nix::store_path::DIGEST_LEN;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::StreamReader;

/// A NAR being read from an upstream, decompressed.
pub type NarStream = Pin<Box<dyn AsyncRead + Send>>;

/// The largest narinfo read: tens of thousands of references and signatures.
const MAX_NARINFO: usize = 4 << 20;

/// Why an upstream could not give what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The upstream did not answer properly (connection, timeout, a 5xx), even
    /// after the retries.
    #[error("{upstream}: {message}")]
    Unavailable {
        /// The upstream's URL.
        upstream: String,
        /// What went wrong.
        message: String,
    },
    /// The upstream did not answer in time (connecting, or between two reads),
    /// even after the retries.
    #[error("{upstream}: {message}")]
    TimedOut {
        /// The upstream's URL.
        upstream: String,
        /// What went wrong.
        message: String,
    },
    /// What the upstream sent is refused: a narinfo without a valid trusted
    /// signature, malformed, for another path, or a NAR not matching it.
    #[error("{upstream}: refused: {message}")]
    Refused {
        /// The upstream's URL.
        upstream: String,
        /// Why.
        message: String,
    },
    /// The upstream URL or options are invalid.
    #[error("upstream {0}")]
    Config(String),
    /// The local store failed.
    #[error("storing the pulled path: {0}")]
    Store(String),
}

/// Settings shared by the upstreams of one store; URL parameters override
/// some per upstream.
#[derive(Debug, Clone)]
pub struct Options {
    /// A narinfo is accepted only with a valid signature by one of these.
    pub trusted_keys: Vec<VerifyingKey>,
    /// Trusted for HTTPS in addition to the system's roots (PEM).
    pub ca_file: Option<PathBuf>,
    /// How long connecting, or waiting for the next bytes, may take
    /// (`?timeout=SECONDS`).
    pub timeout: Duration,
    /// How often a failed request is tried again, with doubling delays from
    /// 200 ms (`?retries=N`).
    pub retries: u32,
    /// Largest NAR accepted (its narinfo's `NarSize`).
    pub max_nar_size: u64,
}

impl Default for Options {
    /// No trusted keys, system roots only, 30 s timeout, 3 retries, NARs up to
    /// the binary cache's default limit.
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            ca_file: None,
            timeout: Duration::from_secs(30),
            retries: 3,
            max_nar_size: cairn_cache::DEFAULT_MAX_NAR_SIZE,
        }
    }
}

enum Base {
    Http {
        client: reqwest::Client,
        /// Without a trailing slash.
        url: String,
    },
    File(PathBuf),
}

/// One upstream binary cache.
pub struct Upstream {
    base: Base,
    /// The URL as given, without its parameters: for messages.
    name: String,
    trusted_keys: Vec<VerifyingKey>,
    check_signatures: bool,
    timeout: Duration,
    retries: u32,
    max_nar_size: u64,
    priority: u32,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.name)
            .field("check_signatures", &self.check_signatures)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The cache at `url`: `http://host[:port]/path`, `https://…` or
    /// `file:///dir`, with optional parameters `check-signatures=false` (accept
    /// unsigned narinfos from this one: only for a cache the operator controls),
    /// `timeout=SECONDS`, `retries=N`, `priority=N` (lower first; equal
    /// priorities keep their order).
    pub fn new(url: &str, options: &Options) -> Result<Self, UpstreamError> {
        let bad = |m: String| UpstreamError::Config(format!("{url}: {m}"));
        let (base_url, params) = match url.split_once('?') {
            Some((b, p)) => (b, p),
            None => (url, ""),
        };
        let base_url = base_url.trim_end_matches('/');
        let mut up = Upstream {
            base: Base::File(PathBuf::new()),
            name: base_url.to_owned(),
            trusted_keys: options.trusted_keys.clone(),
            check_signatures: true,
            timeout: options.timeout,
            retries: options.retries,
            max_nar_size: options.max_nar_size,
            priority: 50,
        };
        for param in params.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{k}={v}: not a number")))
            };
            match k {
                "check-signatures" => {
                    up.check_signatures = match v {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad(format!("{k}={v}: true or false"))),
                    }
                }
                "timeout" => up.timeout = Duration::from_secs(num(v)?.max(1)),
                "retries" => up.retries = u32::try_from(num(v)?).unwrap_or(u32::MAX),
                "priority" => up.priority = u32::try_from(num(v)?).unwrap_or(u32::MAX),
                _ => {
                    return Err(bad(format!(
                        "unknown parameter {k:?} (check-signatures, timeout, retries, priority)"
                    )));
                }
            }
        }
        if up.check_signatures && up.trusted_keys.is_empty() {
            return Err(bad(
                "no trusted key: give the keys that sign it (--upstream-trusted-key NAME:KEY), or add ?check-signatures=false to accept anything it sends".into(),
            ));
        }
        if let Some(dir) = base_url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(bad("file:// needs an absolute path (file:///dir)".into()));
            }
            up.base = Base::File(PathBuf::from(dir));
        } else if base_url.starts_with("http://") || base_url.starts_with("https://") {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(up.timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")));
            if let Some(ca) = &options.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| bad(format!("cannot read CA file {}: {e}", ca.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| bad(format!("CA file {}: {e}", ca.display())))?;
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            let client = builder.build().map_err(|e| bad(error_chain(&e)))?;
            up.base = Base::Http {
                client,
                url: base_url.to_owned(),
            };
        } else {
            return Err(bad("not http://, https:// or file:///".into()));
        }
        Ok(up)
    }

    /// The URL, without parameters.
    pub fn url(&self) -> &str {
        &self.name
    }

    /// Its `priority` parameter (default 50).
    pub fn priority(&self) -> u32 {
        self.priority
    }

    fn unavailable(&self, message: String) -> UpstreamError {
        UpstreamError::Unavailable {
            upstream: self.name.clone(),
            message,
        }
    }

    fn refused(&self, message: String) -> UpstreamError {
        UpstreamError::Refused {
            upstream: self.name.clone(),
            message,
        }
    }

    /// The narinfo of the path with this digest, accepted: `Ok(None)` if the
    /// upstream does not have it, `Refused` if what it has is not acceptable.
    pub async fn narinfo(
        &self,
        digest: &[u8; DIGEST_LEN],
    ) -> Result<Option<NarInfo>, UpstreamError> {
        let file = format!("{}.narinfo", nixbase32::encode(digest));
        let Some(text) = self.read_small(&file).await? else {
            return Ok(None);
        };
        self.accept(digest, &text).map(Some)
    }

    /// Checks a narinfo the upstream sent for `digest`.
    fn accept(&self, digest: &[u8; DIGEST_LEN], text: &[u8]) -> Result<NarInfo, UpstreamError> {
        let text =
            std::str::from_utf8(text).map_err(|_| self.refused("narinfo: not UTF-8".into()))?;
        let ni = NarInfo::parse(text).map_err(|e| self.refused(e.to_string()))?;
        if ni.store_path.digest() != digest {
            return Err(self.refused(format!(
                "narinfo for {} sent for {}",
                ni.store_path,
                nixbase32::encode(digest)
            )));
        }
        if Compression::from_name(ni.compression.as_str()).is_none() {
            return Err(self.refused(format!(
                "narinfo for {}: unknown Compression {}",
                ni.store_path, ni.compression
            )));
        }
        nar_location(ni.url.as_str()).ok_or_else(|| {
            self.refused(format!(
                "narinfo for {}: URL {:?} is not a relative path inside the cache",
                ni.store_path,
                ni.url.as_str()
            ))
        })?;
        if ni.nar_size > self.max_nar_size {
            return Err(self.refused(format!(
                "narinfo for {}: NarSize {} is above the limit {}",
                ni.store_path, ni.nar_size, self.max_nar_size
            )));
        }
        if self.check_signatures && ni.verify(&self.trusted_keys) == 0 {
            let names: Vec<&str> = self.trusted_keys.iter().map(|k| k.name()).collect();
            return Err(self.refused(format!(
                "narinfo for {}: no valid signature by a trusted key ({})",
                ni.store_path,
                names.join(", ")
            )));
        }
        Ok(ni)
    }

    /// The NAR of `ni` (a narinfo [`Upstream::narinfo`] accepted), decompressed
    /// as it is read. The compressed file is checked against the narinfo's
    /// `FileSize` (when it has one) as it streams: a read fails (an
    /// `InvalidData` error carrying a [`FileMismatch`]) once the file is longer,
    /// and at the NAR's end if it is shorter. The NAR's own bytes are not
    /// checked here: the caller hashes them against the signed `NarHash`, which
    /// covers every byte the file decompresses to. `FileHash` is not checked,
    /// as Nix does not check it: it is not signed, adds nothing to that check,
    /// and hashing the file in turn with the NAR cost a pull's client a third
    /// of its speed.
    pub async fn nar(&self, ni: &NarInfo) -> Result<NarStream, UpstreamError> {
        let compression = Compression::from_name(ni.compression.as_str())
            .ok_or_else(|| self.refused(format!("unknown Compression {}", ni.compression)))?;
        let rel = nar_location(ni.url.as_str())
            .ok_or_else(|| self.refused(format!("NAR URL {:?}", ni.url.as_str())))?;
        let file = self
            .open(rel)
            .await?
            .ok_or_else(|| self.unavailable(format!("{rel}: not found (its narinfo names it)")))?;
        let check = Arc::new(Mutex::new(FileCheck {
            name: rel.to_owned(),
            size: ni.file_size,
            seen: 0,
        }));
        let (per_chunk, at_end) = (check.clone(), check.clone());
        let checked = file
            .map(move |chunk| {
                let chunk = chunk?;
                lock(&per_chunk).update(&chunk)?;
                Ok(chunk)
            })
            .chain(
                futures::stream::once(async move { lock(&at_end).finish().err().map(Err) })
                    .filter_map(std::future::ready),
            );
        let raw = StreamReader::new(Box::pin(checked) as BoxedBytes);
        Ok(Box::pin(CheckedAtEnd {
            inner: compression.decoder(raw),
            check,
            done: false,
        }))
    }

    /// A file of the cache as a stream of bytes, each read bounded by the
    /// timeout; `None` if absent.
    async fn open(&self, rel: &str) -> Result<Option<BoxedBytes>, UpstreamError> {
        match &self.base {
            Base::File(dir) => {
                let path = dir.join(rel);
                match tokio::fs::File::open(&path).await {
                    Ok(f) => {
                        let s = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                        Ok(Some(Box::pin(s) as BoxedBytes))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(self.unavailable(format!("{}: {e}", path.display()))),
                }
            }
            Base::Http { client, url } => {
                let url = format!("{url}/{rel}");
                let Some(resp) = self.get(client, &url).await? else {
                    return Ok(None);
                };
                let body = resp.bytes_stream().map_err(|e| {
                    std::io::Error::other(format!(
                        "reading the upstream's answer: {}",
                        error_chain(&e)
                    ))
                });
                let timed = with_timeout(body, self.timeout);
                Ok(Some(Box::pin(timed) as BoxedBytes))
            }
        }
    }

    /// A small file of the cache (a narinfo), whole; `None` if absent.
    async fn read_small(&self, rel: &str) -> Result<Option<Vec<u8>>, UpstreamError> {
        let Some(mut stream) = self.open(rel).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unavailable(format!("{rel}: {e}")))?;
            if out.len() + chunk.len() > MAX_NARINFO {
                return Err(self.refused(format!("{rel}: larger than {MAX_NARINFO} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// GET with retries: the response of a 2xx, `None` for 404 and 403 (absent,
    /// as Nix reads them: S3 answers 403 for a missing key without list rights).
    async fn get(
        &self,
        client: &reqwest::Client,
        url: &str,
    ) -> Result<Option<reqwest::Response>, UpstreamError> {
        let mut delay = Duration::from_millis(200);
        let mut last;
        let mut attempt = 0;
        loop {
            let mut timed_out = false;
            match tokio::time::timeout(self.timeout, client.get(url).send()).await {
                Ok(Ok(r)) if r.status().is_success() => return Ok(Some(r)),
                Ok(Ok(r)) if matches!(r.status().as_u16(), 404 | 403 | 410) => return Ok(None),
                Ok(Ok(r)) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    last = format!("GET {url}: HTTP {}", r.status());
                }
                Ok(Ok(r)) => {
                    return Err(self.unavailable(format!("GET {url}: HTTP {}", r.status())));
                }
                Ok(Err(e)) => {
                    timed_out = e.is_timeout();
                    last = format!("GET {url}: {}", error_chain(&e));
                }
                Err(_) => {
                    timed_out = true;
                    last = format!("GET {url}: no answer within {:?}", self.timeout);
                }
            }
            if attempt >= self.retries {
                let message = format!("{last} (after {} tries)", attempt + 1);
                return Err(if timed_out {
                    UpstreamError::TimedOut {
                        upstream: self.name.clone(),
                        message,
                    }
                } else {
                    self.unavailable(message)
                });
            }
            tracing::debug!(upstream = %self.name, error = %last, ?delay, "retrying");
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

type BoxedBytes = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The compressed file of a NAR does not match its narinfo's `FileSize`:
/// inside the `InvalidData` error a [`NarStream`] read fails with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileMismatch(String);

/// The guard of `m`, poisoned or not (shared by this crate's modules).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a NAR's compressed file should be, and what came of it so far.
struct FileCheck {
    /// Its path in the cache, for messages.
    name: String,
    size: Option<u64>,
    seen: u64,
}

impl FileCheck {
    fn mismatch(&self, message: String) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            FileMismatch(format!("{}: {message}", self.name)),
        )
    }

    fn update(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.seen += chunk.len() as u64;
        if let Some(size) = self.size
            && self.seen > size
        {
            return Err(self.mismatch(format!("the file is longer than its FileSize {size}")));
        }
        Ok(())
    }

    /// Everything the decompressor took has been seen: it must be the whole
    /// file, as the narinfo describes it.
    fn finish(&self) -> std::io::Result<()> {
        if let Some(size) = self.size
            && self.seen != size
        {
            return Err(self.mismatch(format!(
                "the compressed NAR has {} bytes, its FileSize says {size}",
                self.seen
            )));
        }
        Ok(())
    }
}

/// The decompressed NAR, ending only once the compressed file it came from
/// passed [`FileCheck::finish`] (a decompressor stops at the end of its stream
/// without reading the input's end, so the file stream's own check may not
/// run).
struct CheckedAtEnd {
    inner: NarStream,
    check: Arc<Mutex<FileCheck>>,
    done: bool,
}

impl AsyncRead for CheckedAtEnd {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(self.inner.as_mut().poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 && !self.done {
            lock(&self.check).finish()?;
            self.done = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// `stream`, failing with `TimedOut` when its next item takes longer than
/// `timeout`.
fn with_timeout<S>(
    stream: S,
    timeout: Duration,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
{
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(timeout, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the upstream sent nothing for {timeout:?}"),
                )),
                None,
            )),
        }
    })
}

/// The path of a narinfo's `URL` inside the cache, if it is one: relative, no
/// `..`, no query, no scheme. A narinfo may not send a `file://` upstream's
/// reader elsewhere on the disk, nor an HTTP one to another host.
fn nar_location(url: &str) -> Option<&str> {
    let ok = !url.is_empty()
        && !url.starts_with('/')
        && !url.contains(['?', '#', ':', '\\'])
        && url
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    ok.then_some(url)
}

/// An error with its sources, for messages (reqwest's own says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nar_locations() {
        assert_eq!(nar_location("nar/abc.nar.xz"), Some("nar/abc.nar.xz"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "nar/../../x",
            "http://evil/x",
            "nar//x",
            "nar/x?y",
            "./x",
        ] {
            assert_eq!(nar_location(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls() {
        let key: VerifyingKey = "k-1:rN0pEbSLPQ0Bp2+2h6aHEZSoVeMiULJLHbSQGYt8LG8="
            .parse()
            .unwrap();
        let opts = Options {
            trusted_keys: vec![key],
            ..Options::default()
        };
        let u = Upstream::new("http://127.0.0.1:1/x/?priority=10&timeout=2", &opts).unwrap();
        assert_eq!(u.url(), "http://127.0.0.1:1/x");
        assert_eq!(u.priority(), 10);
        assert_eq!(u.timeout, Duration::from_secs(2));
        assert!(Upstream::new("ftp://x", &opts).is_err());
        assert!(Upstream::new("file://rel", &opts).is_err());
        assert!(Upstream::new("file:///d?bogus=1", &opts).is_err());
        // No key and no opt-out: refused.
        let e = Upstream::new("file:///d", &Options::default()).unwrap_err();
        assert!(e.to_string().contains("no trusted key"), "{e}");
        let u = Upstream::new("file:///d?check-signatures=false", &Options::default()).unwrap();
        assert!(!u.check_signatures);
    }
}
