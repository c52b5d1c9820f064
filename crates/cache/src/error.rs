//! [`CacheError`]: every way a request can fail, and the HTTP status each one gets.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why a request failed. Client mistakes carry a message saying what was wrong,
/// sent as the (plain text) response body; server failures are logged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The path, NAR or file does not exist here.
    #[error("not found")]
    NotFound,
    /// Malformed or inconsistent input from the client (400).
    #[error("{0}")]
    BadRequest(String),
    /// An upload without valid credentials (401).
    #[error("uploads need a valid token (Authorization: Bearer or Basic)")]
    Unauthorized,
    /// A read of a private cache without valid credentials (401).
    #[error(
        "this cache is private: reads need its read token (Authorization: Bearer, or Basic with the token as password, e.g. a netrc line for Nix)"
    )]
    ReadUnauthorized,
    /// A narinfo not signed by a trusted key (403).
    #[error("{0}")]
    Forbidden(String),
    /// An uploaded narinfo not signed by any trusted key (403).
    #[error("{0}")]
    Untrusted(String),
    /// An upload whose content does not match the hash or size it was sent
    /// under, or an uploaded narinfo that does not match its NAR (400).
    #[error("{0}")]
    HashMismatch(String),
    /// An uploaded narinfo referring to a path the cache does not have (400).
    #[error("{0}")]
    MissingReference(String),
    /// A narinfo for a path already registered with other contents (409).
    #[error("{0}")]
    Conflict(String),
    /// A method this URL does not accept (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A body larger than this endpoint accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The store's disk is full (507): Nix retries a 500 and then hangs; a 507
    /// fails the copy at once, saying why.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A `Range` outside the NAR (416); carries the NAR size.
    #[error("range not satisfiable (the NAR has {0} bytes)")]
    RangeNotSatisfiable(u64),
    /// The server's own failure (storage, I/O): 500, logged.
    #[error("internal error: {0}")]
    Internal(String),
    /// A path not in the store could not be had from the upstream caches: they
    /// failed, or what they sent was refused (unsigned, tampered, a NAR not
    /// matching its hash): 502, logged.
    #[error("upstream: {0}")]
    Upstream(String),
    /// A path not in the store could not be had from the upstream caches in
    /// time: they did not answer within their timeout (504), logged.
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
}

impl CacheError {
    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            CacheError::NotFound => StatusCode::NOT_FOUND,
            CacheError::BadRequest(_)
            | CacheError::HashMismatch(_)
            | CacheError::MissingReference(_) => StatusCode::BAD_REQUEST,
            CacheError::Unauthorized | CacheError::ReadUnauthorized => StatusCode::UNAUTHORIZED,
            CacheError::Forbidden(_) | CacheError::Untrusted(_) => StatusCode::FORBIDDEN,
            CacheError::Conflict(_) => StatusCode::CONFLICT,
            CacheError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            CacheError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CacheError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            CacheError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            CacheError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CacheError::Upstream(_) => StatusCode::BAD_GATEWAY,
            CacheError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Why the request was refused, as the `reason` label of
    /// `cairn_http_uploads_refused_total`: a small fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            CacheError::NotFound => "not_found",
            CacheError::BadRequest(_) => "bad_request",
            CacheError::Unauthorized | CacheError::ReadUnauthorized => "unauthorized",
            CacheError::Forbidden(_) => "forbidden",
            CacheError::Untrusted(_) => "untrusted_signature",
            CacheError::HashMismatch(_) => "hash_mismatch",
            CacheError::MissingReference(_) => "missing_reference",
            CacheError::Conflict(_) => "conflict",
            CacheError::MethodNotAllowed => "method_not_allowed",
            CacheError::TooLarge(_) => "too_large",
            CacheError::InsufficientStorage(_) => "storage_full",
            CacheError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            CacheError::Internal(_) => "internal",
            CacheError::Upstream(_) => "upstream",
            CacheError::UpstreamTimeout(_) => "upstream_timeout",
        }
    }

    /// A castore/store error: the caller's mistake is a 400 naming it, input
    /// beyond a limit 413, a full disk 507, anything else the server's failure.
    pub fn from_store(e: cairn_castore::Error) -> Self {
        match e.kind() {
            cairn_castore::ErrorKind::InvalidArgument => CacheError::BadRequest(e.to_string()),
            cairn_castore::ErrorKind::ResourceExhausted => Self::exhausted(&e),
            cairn_castore::ErrorKind::Unavailable => CacheError::Upstream(e.to_string()),
            _ => CacheError::Internal(e.to_string()),
        }
    }

    /// 507 if `e` is a full disk somewhere in its chain, else 413.
    pub(crate) fn exhausted(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            {
                return CacheError::InsufficientStorage(format!(
                    "the cache's storage is full: {e}"
                ));
            }
            cause = c.source();
        }
        CacheError::TooLarge(e.to_string())
    }
}

impl IntoResponse for CacheError {
    fn into_response(self) -> Response {
        let status = self.status();
        let reason = crate::metrics::Refusal(self.reason());
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request refused");
        }
        let mut resp = (status, format!("{self}\n")).into_response();
        resp.extensions_mut().insert(reason);
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            CacheError::Unauthorized | CacheError::ReadUnauthorized => {
                // curl (and so Nix) sends netrc credentials after this challenge.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"cairn\""),
                );
            }
            CacheError::RangeNotSatisfiable(size) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}
