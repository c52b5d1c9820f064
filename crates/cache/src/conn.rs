//! The binary cache's HTTP/1.1 connections. A narinfo lookup, what a substituter
//! sends most, is answered by [`Conn`] itself: parsed with `httparse`, answered
//! with one write, several pipelined requests with one. Any other request (or one
//! this parser does not take: another HTTP version, a body, `Expect`,
//! `Connection`, `Upgrade`) hands the connection, with the bytes already read, to
//! hyper and the axum router for the rest of its life.
//!
//! Why: under load a narinfo request costs the server about as much in hyper,
//! axum's routing and their allocations as in the kernel's loopback path, and
//! latency at a given rate follows the CPU each request takes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use bytes::{Buf as _, BytesMut};
use cairn_castore::tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::metrics::HttpMetrics;
use crate::server::{ACCESS, BinaryCache, NARINFO_CACHE, access, narinfo_text};

/// A request head larger than this that is still incomplete goes to hyper (which
/// has its own limits and errors).
const MAX_HEAD: usize = 16 << 10;
/// Headers `httparse` reads for the fast path; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;
/// A narinfo error's body (a one-line message) longer than this is cut.
const MAX_ERROR_BODY: usize = 64 << 10;

/// What the connection loop's parser made of the start of its buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestHead {
    /// `GET` (or `HEAD` if `head`) of `/<hash>.narinfo` whose request head takes
    /// `len` bytes: answered by the loop itself.
    Narinfo {
        /// The URL's hash part: 32 ASCII digits and lowercase letters (not
        /// necessarily nixbase32; see [`crate::parse_hash_part`]).
        hash: [u8; 32],
        /// A `HEAD` request.
        head: bool,
        /// Bytes of the request head, the blank line included.
        len: usize,
    },
    /// An incomplete request head.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Parses the request at the start of `buf`, as a connection does before it
/// answers or hands over (public for the fuzz target: no socket, no store). A
/// narinfo request that `may_read` refuses (given its `Authorization` header) is
/// hyper's, which answers it 401.
pub fn parse_request(buf: &[u8], may_read: impl Fn(Option<&[u8]>) -> bool) -> RequestHead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return RequestHead::Partial,
        Err(_) => return RequestHead::Other,
    };
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return RequestHead::Other,
    };
    if req.version != Some(1) {
        return RequestHead::Other;
    }
    let Some(hash) = req
        .path
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.strip_suffix(".narinfo"))
        .and_then(|h| <[u8; 32]>::try_from(h.as_bytes()).ok())
    else {
        return RequestHead::Other;
    };
    // The hash part's alphabet, so the path needs no percent-decoding (a wrong
    // hash in it is still a 404, from the lookup).
    if !hash
        .iter()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    {
        return RequestHead::Other;
    }
    let mut authorization = None;
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if (is("content-length") && h.value != b"0")
            || is("transfer-encoding")
            || is("expect")
            || is("upgrade")
            || (is("connection") && !h.value.eq_ignore_ascii_case(b"keep-alive"))
            // Two are rare enough to leave to hyper and the router.
            || (is("authorization") && authorization.replace(h.value).is_some())
        {
            return RequestHead::Other;
        }
    }
    if !may_read(authorization) {
        return RequestHead::Other;
    }
    RequestHead::Narinfo { hash, head, len }
}

/// The `Date` header's value, formatted once a second.
struct Date {
    secs: u64,
    text: String,
}

impl Date {
    fn new() -> Self {
        Self {
            secs: u64::MAX,
            text: String::new(),
        }
    }

    fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.secs {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

/// Appends a response as hyper writes it (status line, then the headers in order,
/// `content-length` and `date` last); without the body for a `HEAD`.
fn encode(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: impl IntoIterator<Item = (&'static str, &'static [u8])>,
    extra: &HeaderMap,
    body: &[u8],
    head: bool,
    date: &str,
) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        line(name.as_bytes(), value);
    }
    for (name, value) in extra {
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    line(b"content-length", body.len().to_string().as_bytes());
    line(b"date", date.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(body);
    }
}

/// Appends the answer to a narinfo request: what the router's `GET
/// /<hash>.narinfo` would answer.
async fn narinfo(cache: &BinaryCache, hash: &[u8; 32], head: bool, date: &str, out: &mut Vec<u8>) {
    // The parser let only ASCII through.
    let hash = std::str::from_utf8(hash).unwrap_or_default();
    let start = Instant::now();
    let status = match narinfo_text(cache, hash).await {
        Ok(text) => {
            encode(
                out,
                StatusCode::OK,
                [
                    ("content-type", &b"text/x-nix-narinfo"[..]),
                    ("cache-control", NARINFO_CACHE.as_bytes()),
                ],
                &HeaderMap::new(),
                &text,
                head,
                date,
            );
            StatusCode::OK
        }
        Err(e) => {
            let (parts, body) = e.into_response().into_parts();
            let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
                .await
                .unwrap_or_else(|_| Bytes::new());
            encode(out, parts.status, [], &parts.headers, &body, head, date);
            parts.status
        }
    };
    cache.metrics.narinfo(status, start.elapsed());
    if tracing::enabled!(target: ACCESS, tracing::Level::DEBUG) {
        let method = if head { "HEAD" } else { "GET" };
        access(method, &format!("/{hash}.narinfo"), status, start);
    }
}

/// Serves the binary cache on `listener` (keep-alive HTTP/1.1, `TCP_NODELAY`)
/// until `shutdown` completes; then stops accepting, closes idle connections and
/// waits for the others to finish the request they are on.
pub async fn serve(
    listener: TcpListener,
    cache: Arc<BinaryCache>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_maybe_tls(listener, cache, None, shutdown).await
}

/// [`serve`] over TLS (HTTPS): each connection shakes hands with `tls` in its own
/// task, within the header timeout, holding its connection slot meanwhile. Make
/// the acceptor offer ALPN `http/1.1` only: the cache speaks HTTP/1.1.
pub async fn serve_tls(
    listener: TcpListener,
    cache: Arc<BinaryCache>,
    tls: TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_maybe_tls(listener, cache, Some(tls), shutdown).await
}

async fn serve_maybe_tls(
    listener: TcpListener,
    cache: Arc<BinaryCache>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = crate::server::router(cache.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(cache.config().max_connections));
    let mut refused = 0u64;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over the cap: closed at once (the client sees a reset), so
                    // the accept queue keeps moving and file descriptors stay free
                    // for the other listeners.
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%peer, refused, "binary cache at its connection limit: closing new connections");
                        }
                        continue;
                    };
                    // Small responses (narinfo) must not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    let span = tracing::debug_span!(target: ACCESS, "conn", %peer);
                    let (cache, router, stop, tls) = (cache.clone(), router.clone(), stop_rx.clone(), tls.clone());
                    conns.spawn(async move {
                        match tls {
                            None => serve_connection(stream, cache, router, stop).await,
                            Some(tls) => {
                                let limit = cache.config().header_read_timeout;
                                let mut stopping = stop.clone();
                                // A handshake not done at shutdown is dropped, as an
                                // idle connection is, rather than waited for.
                                tokio::select! {
                                    shaken = cairn_castore::tls::accept(&tls, stream, limit) => match shaken {
                                        Ok(stream) => serve_connection(stream, cache, router, stop).await,
                                        Err(e) => tracing::debug!(target: ACCESS, error = %e, "TLS handshake failed"),
                                    },
                                    // The guard wait_for returns is not Send: dropped here.
                                    () = async { let _ = stopping.wait_for(|s| *s).await; } => {}
                                }
                            }
                        }
                        drop(slot);
                    }.instrument(span));
                }
                Err(e) => accept_error(e).await,
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => log_end(done),
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while let Some(done) = conns.join_next().await {
        log_end(done);
    }
    Ok(())
}

fn log_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "connection task failed");
    }
}

/// As axum's `serve`: a connection that failed before it was accepted is the
/// client's business; anything else (out of file descriptors) is logged and
/// waited out for a second, rather than spinning.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves one connection until the client closes it, or, once `stop` is true,
/// until it is idle.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    cache: Arc<BinaryCache>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut date = Date::new();
    loop {
        loop {
            match parse_request(&buf, |a| cache.may_read(a)) {
                RequestHead::Narinfo { hash, head, len } => {
                    narinfo(&cache, &hash, head, date.now(), &mut out).await;
                    buf.advance(len);
                }
                RequestHead::Partial if buf.len() <= MAX_HEAD => break,
                RequestHead::Partial | RequestHead::Other => {
                    cache.metrics.sent.inc_by(out.len() as u64);
                    if write_out(&mut stream, &out).await.is_ok() {
                        hand_over(stream, buf, router, stop, &cache).await;
                    }
                    return;
                }
            }
        }
        if !out.is_empty() {
            cache.metrics.sent.inc_by(out.len() as u64);
            if write_out(&mut stream, &out).await.is_err() {
                return;
            }
            out.clear();
        }
        if buf.is_empty() && *stop.borrow() {
            return;
        }
        buf.reserve(4096);
        // Waiting for a request, or for the rest of one begun.
        let wait = if buf.is_empty() {
            cache.config().idle_timeout
        } else {
            cache.config().header_read_timeout
        };
        tokio::select! {
            r = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => match r {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => {
                    cache.metrics.received.inc_by(n as u64);
                }
                Err(_) => {
                    tracing::debug!(target: ACCESS, ?wait, "connection closed: no request in time");
                    return;
                }
            },
            // Between requests only: one begun is answered first. A closed
            // channel also means stop.
            _ = stop.wait_for(|s| *s), if buf.is_empty() => return,
        }
    }
}

/// Writes `out` and flushes it: a TLS stream may hold written bytes back until
/// flushed (a TCP stream sends them at once).
async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

/// Serves the rest of the connection with hyper, `read` (bytes read but not
/// answered) first.
async fn hand_over<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    read: BytesMut,
    router: Router,
    mut stop: watch::Receiver<bool>,
    cache: &BinaryCache,
) {
    let config = cache.config();
    let io = hyper_util::rt::TokioIo::new(Rewind {
        read: read.freeze(),
        inner: stream,
        metrics: cache.metrics.clone(),
    });
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(config.idle_timeout / 4)
        .keep_alive_timeout(config.header_read_timeout);
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "connection ended");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::trace!(error = %e, "connection ended");
    }
}

/// A stream whose first bytes are `read` (already counted), counting the bytes
/// it reads and writes.
struct Rewind<S> {
    read: Bytes,
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.metrics
            .received
            .inc_by((buf.filled().len() - before) as u64);
        polled
    }
}

impl<S> Rewind<S> {
    fn sent(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            self.metrics.sent.inc_by(*n as u64);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.sent(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.sent(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const H: &str = "mrca5xlp64pk5zy3z7rf3yzv3xsid47g";

    fn narinfo_head(req: &str) -> RequestHead {
        parse_request(req.as_bytes(), |_| true)
    }

    #[test]
    fn private_cache_reads_without_the_token_go_to_hyper() {
        let may_read = |a: Option<&[u8]>| a == Some(b"Bearer r34d");
        let req = |auth: &str| format!("GET /{H}.narinfo HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
        let ok = req("authorization: Bearer r34d\r\n");
        assert_eq!(
            parse_request(ok.as_bytes(), may_read),
            RequestHead::Narinfo {
                hash: H.as_bytes().try_into().unwrap(),
                head: false,
                len: ok.len()
            }
        );
        for auth in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: Bearer r34d\r\nAuthorization: Bearer r34d\r\n",
        ] {
            assert_eq!(
                parse_request(req(auth).as_bytes(), may_read),
                RequestHead::Other,
                "{auth:?}"
            );
        }
    }

    #[test]
    fn fast_path_requests() {
        let get = format!("GET /{H}.narinfo HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert_eq!(
            narinfo_head(&get),
            RequestHead::Narinfo {
                hash: H.as_bytes().try_into().unwrap(),
                head: false,
                len: get.len()
            }
        );
        let head = format!("HEAD /{H}.narinfo HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\nGET");
        assert!(matches!(
            narinfo_head(&head),
            RequestHead::Narinfo { head: true, len, .. } if len == head.len() - 3
        ));
        assert_eq!(narinfo_head(&get[..get.len() - 1]), RequestHead::Partial);
        assert_eq!(narinfo_head(""), RequestHead::Partial);
    }

    #[test]
    fn other_requests_go_to_hyper() {
        for req in [
            format!("PUT /{H}.narinfo HTTP/1.1\r\n\r\n"),
            format!("GET /{H}.narinfo HTTP/1.0\r\n\r\n"),
            format!("GET /{H}.narinfo?x HTTP/1.1\r\n\r\n"),
            format!("GET /{H}.ls HTTP/1.1\r\n\r\n"),
            "GET /nix-cache-info HTTP/1.1\r\n\r\n".to_owned(),
            "GET /MRCA5XLP64PK5ZY3Z7RF3YZV3XSID47G.narinfo HTTP/1.1\r\n\r\n".to_owned(),
            "GET /mrca5xlp64pk5zy3z7rf3yzv3xsid4%67.narinfo HTTP/1.1\r\n\r\n".to_owned(),
            format!("GET /{H}.narinfo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            format!("GET /{H}.narinfo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("GET /{H}.narinfo HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
            format!("GET /{H}.narinfo HTTP/1.1\r\nConnection: close\r\n\r\n"),
            format!("GET /{H}.narinfo HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
            "\x16\x03\x01 not http".to_owned(),
        ] {
            assert_eq!(narinfo_head(&req), RequestHead::Other, "{req:?}");
        }
    }
}
