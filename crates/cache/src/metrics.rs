//! Prometheus metrics of the binary cache ([`HttpMetrics`]) and the `/metrics`
//! endpoint that serves a registry in the text exposition format.
//!
//! Requests are counted by route, a small fixed set named by [`Route`] (never the
//! raw path, so that label sets stay bounded whatever clients ask for), and by
//! status. The narinfo fast path ([`crate::conn`]) only adds to counters created
//! up front: atomics, no lock and no allocation per request.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use cairn_castore::server::metrics::Histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// What a request asked for, as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/nix-cache-info`.
    CacheInfo,
    /// `GET|HEAD /<hash>.narinfo`.
    Narinfo,
    /// `GET|HEAD /nar/<file>`.
    Nar,
    /// `GET /<hash>.ls`.
    Listing,
    /// `PUT /<hash>.narinfo`.
    UploadNarinfo,
    /// `PUT /nar/<file>`.
    UploadNar,
    /// `/metrics`.
    Metrics,
    /// Anything else.
    Other,
}

impl Route {
    const ALL: [Route; 8] = [
        Route::CacheInfo,
        Route::Narinfo,
        Route::Nar,
        Route::Listing,
        Route::UploadNarinfo,
        Route::UploadNar,
        Route::Metrics,
        Route::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::CacheInfo => "nix-cache-info",
            Route::Narinfo => "narinfo",
            Route::Nar => "nar",
            Route::Listing => "listing",
            Route::UploadNarinfo => "upload_narinfo",
            Route::UploadNar => "upload_nar",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }

    /// The route of a request, by method and path.
    pub fn of(method: &Method, path: &str) -> Route {
        let put = method == Method::PUT;
        // A file at the top level: `/<name>`.
        let top = !path.strip_prefix('/').unwrap_or(path).contains('/');
        let read = method == Method::GET || method == Method::HEAD;
        if path == "/nix-cache-info" {
            return Route::CacheInfo;
        }
        if path == "/metrics" {
            return Route::Metrics;
        }
        if path.starts_with("/nar/") {
            return match (read, put) {
                (true, _) => Route::Nar,
                (_, true) => Route::UploadNar,
                _ => Route::Other,
            };
        }
        if path.ends_with(".narinfo") && top {
            return match (read, put) {
                (true, _) => Route::Narinfo,
                (_, true) => Route::UploadNarinfo,
                _ => Route::Other,
            };
        }
        if read && path.ends_with(".ls") && top {
            return Route::Listing;
        }
        Route::Other
    }

    fn upload_kind(self) -> Option<&'static str> {
        match self {
            Route::UploadNar => Some("nar"),
            Route::UploadNarinfo => Some("narinfo"),
            _ => None,
        }
    }
}

/// Why an upload was refused: the label of `cairn_http_uploads_refused_total`,
/// set on the error responses by [`crate::CacheError`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refusal(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    kind: &'static str,
    reason: &'static str,
}

/// The binary cache's metrics. Every [`crate::BinaryCache`] has one (counting
/// costs a few atomic additions); [`HttpMetrics::register`] exposes them.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    /// Per [`Route::ALL`], made up front.
    latency_by_route: [Histogram; 8],
    /// The narinfo fast path's answers, made up front.
    narinfo_ok: Counter,
    narinfo_not_found: Counter,
    pub(crate) sent: Counter,
    pub(crate) received: Counter,
    uploads: Family<UploadLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    pub(crate) rendered_hits: Counter,
    pub(crate) rendered_misses: Counter,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::default();
        let latency_by_route = Route::ALL.map(|route| {
            latency
                .get_or_create(&RouteLabels {
                    route: route.as_str(),
                })
                .clone()
        });
        let narinfo = |status: StatusCode| {
            requests
                .get_or_create(&RequestLabels {
                    route: Route::Narinfo.as_str(),
                    status: status.as_u16(),
                })
                .clone()
        };
        Self {
            narinfo_ok: narinfo(StatusCode::OK),
            narinfo_not_found: narinfo(StatusCode::NOT_FOUND),
            requests,
            latency,
            latency_by_route,
            sent: Counter::default(),
            received: Counter::default(),
            uploads: Family::default(),
            refused: Family::default(),
            rendered_hits: Counter::default(),
            rendered_misses: Counter::default(),
        }
    }
}

impl HttpMetrics {
    /// Adds the metrics to `registry` (named `http_...` and
    /// `narinfo_render_cache_...`; the caller's registry gives the `cairn_`
    /// prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "Binary cache HTTP requests answered, by route and status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Binary cache request latency until the response head (a NAR's body is still to come), by route",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register_with_unit(
            "http_sent",
            "Bytes the binary cache sent (HTTP heads and bodies)",
            Unit::Bytes,
            self.sent.clone(),
        );
        registry.register_with_unit(
            "http_received",
            "Bytes the binary cache received (HTTP heads and bodies)",
            Unit::Bytes,
            self.received.clone(),
        );
        registry.register(
            "http_uploads_accepted",
            "Uploads (PUT of a NAR or a narinfo) accepted, by kind",
            self.uploads.clone(),
        );
        registry.register(
            "http_uploads_refused",
            "Uploads refused, by kind and reason",
            self.refused.clone(),
        );
        registry.register(
            "narinfo_render_cache_hits",
            "narinfo requests answered with a kept signed narinfo text",
            self.rendered_hits.clone(),
        );
        registry.register(
            "narinfo_render_cache_misses",
            "narinfo texts rendered and signed anew",
            self.rendered_misses.clone(),
        );
    }

    /// Counts a request of the fast path (a narinfo, answered with `status`).
    pub(crate) fn narinfo(&self, status: StatusCode, elapsed: Duration) {
        match status {
            StatusCode::OK => self.narinfo_ok.inc(),
            StatusCode::NOT_FOUND => self.narinfo_not_found.inc(),
            _ => self.requests_for(Route::Narinfo, status).inc(),
        };
        self.latency_by_route[Route::Narinfo as usize].observe(elapsed);
    }

    fn requests_for(&self, route: Route, status: StatusCode) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.as_str(),
                status: status.as_u16(),
            })
            .clone()
    }

    /// Counts a request answered by the router.
    pub(crate) fn request(&self, route: Route, response: &Response, elapsed: Duration) {
        let status = response.status();
        self.requests_for(route, status).inc();
        self.latency_by_route[route as usize].observe(elapsed);
        let Some(kind) = route.upload_kind() else {
            return;
        };
        if status.is_success() {
            self.uploads.get_or_create(&UploadLabels { kind }).inc();
        } else {
            // Refusals not made by a CacheError (axum's own) are named by status.
            let reason = match response.extensions().get::<Refusal>() {
                Some(r) => r.0,
                None if status == StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                None => "other",
            };
            self.refused
                .get_or_create(&RefusedLabels { kind, reason })
                .inc();
        }
    }
}

/// The content type of [`exposition`]'s text: OpenMetrics, which Prometheus
/// scrapes (and which is the text format with `_total`, units and `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `/metrics` answer for `registry`. Encoding runs the registry's
/// collectors, which may read the store: on a blocking thread.
pub async fn exposition(registry: Arc<Registry>) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).map(|()| text)
    })
    .await;
    match text {
        Ok(Ok(text)) => {
            let mut r = Response::new(axum::body::Body::from(text));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        _ => {
            tracing::error!("cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves only `GET /metrics` on `listener` (a listener of its own, without
/// authentication) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || exposition(registry.clone())),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let h = "mrca5xlp64pk5zy3z7rf3yzv3xsid47g";
        for (m, p, r) in [
            (Method::GET, "/nix-cache-info", Route::CacheInfo),
            (Method::PUT, "/nix-cache-info", Route::CacheInfo),
            (Method::GET, &format!("/{h}.narinfo"), Route::Narinfo),
            (Method::HEAD, &format!("/{h}.narinfo"), Route::Narinfo),
            (Method::PUT, &format!("/{h}.narinfo"), Route::UploadNarinfo),
            (Method::GET, &format!("/{h}.ls"), Route::Listing),
            (Method::PUT, &format!("/{h}.ls"), Route::Other),
            (Method::GET, "/nar/x.nar", Route::Nar),
            (Method::PUT, "/nar/x.nar", Route::UploadNar),
            (Method::DELETE, "/nar/x.nar", Route::Other),
            (Method::GET, "/metrics", Route::Metrics),
            (Method::GET, "/a/b.narinfo", Route::Other),
            (Method::GET, "/", Route::Other),
            (Method::GET, "/whatever", Route::Other),
        ] {
            assert_eq!(Route::of(&m, p), r, "{m} {p}");
        }
        for (i, r) in Route::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
