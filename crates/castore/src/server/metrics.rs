//! Prometheus metrics of the gRPC server: calls by service, method and status
//! code, and their latency, counted by [`MetricsLayer`] at the server's edge so
//! that no storage service knows about them. Also [`Histogram`], a lock-free
//! latency histogram the binary cache uses too.
//!
//! Label values come from fixed lists (a call to an unknown method is counted as
//! `other`), so a client cannot grow the label sets.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt as _};
use http_body::Frame;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};

/// Upper bounds of [`Histogram`]'s buckets, in nanoseconds: 50 µs (a narinfo
/// served from memory) to a minute (a large NAR or blob).
const BOUNDS_NS: [u64; 18] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    60_000_000_000,
];

/// A latency histogram in seconds made of atomics: observing takes no lock
/// (prometheus-client's own histogram takes a write lock per observation, which
/// every connection's task would contend for). Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug, Default)]
struct HistogramInner {
    /// Per bucket (not cumulative), the last one unbounded.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); BOUNDS_NS.len() + 1];
        for (i, (bound, n)) in buckets.iter_mut().enumerate() {
            // prometheus-client writes f64::MAX as +Inf.
            *bound = BOUNDS_NS.get(i).map_or(f64::MAX, |&b| b as f64 / 1e9);
            *n = self.0.buckets[i].load(Ordering::Relaxed);
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Labels of a counted call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

/// Labels of a call's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: &'static str,
    method: &'static str,
}

/// The methods counted by name; any other call is `other`.
const METHODS: &[(&str, &str)] = &[
    ("tvix.castore.v1.BlobService", "Stat"),
    ("tvix.castore.v1.BlobService", "Read"),
    ("tvix.castore.v1.BlobService", "Put"),
    ("tvix.castore.v1.DirectoryService", "Get"),
    ("tvix.castore.v1.DirectoryService", "Put"),
    ("tvix.store.v1.BlobService", "Stat"),
    ("tvix.store.v1.BlobService", "Read"),
    ("tvix.store.v1.BlobService", "Put"),
    ("tvix.store.v1.DirectoryService", "Get"),
    ("tvix.store.v1.DirectoryService", "Put"),
    ("tvix.store.v1.PathInfoService", "Get"),
    ("tvix.store.v1.PathInfoService", "Put"),
    ("tvix.store.v1.PathInfoService", "CalculateNAR"),
    ("tvix.store.v1.PathInfoService", "List"),
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
    ),
];

fn method_of(path: &str) -> MethodLabels {
    let found = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(s, m)| METHODS.iter().find(|(ks, km)| *ks == s && *km == m));
    match found {
        Some(&(service, method)) => MethodLabels { service, method },
        None => MethodLabels {
            service: "other",
            method: "other",
        },
    }
}

/// The name of a gRPC status code (`grpc-status`), as in the gRPC spec.
fn code_name(code: Option<&[u8]>) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    code.and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<usize>().ok())
        .and_then(|c| NAMES.get(c).copied())
        .unwrap_or("UNKNOWN")
}

/// The gRPC server's metrics; register them with [`GrpcMetrics::register`].
#[derive(Debug, Default)]
pub struct GrpcMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
}

impl GrpcMetrics {
    /// Adds `cairn_grpc_calls_total{service,method,code}` and
    /// `cairn_grpc_call_duration_seconds{service,method}` to `registry` (whose
    /// prefix is the caller's).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_calls",
            "gRPC calls finished, by service, method and status code",
            self.calls.clone(),
        );
        registry.register_with_unit(
            "grpc_call_duration",
            "gRPC call latency, from the request to the end of the response stream",
            Unit::Seconds,
            self.latency.clone(),
        );
    }

    fn record(&self, method: &MethodLabels, code: &'static str, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                service: method.service,
                method: method.method,
                code,
            })
            .inc();
        self.latency.get_or_create(method).observe(elapsed);
    }
}

/// A tower layer counting every call of the services it wraps (outermost, so
/// calls refused by the access layer count too).
#[derive(Clone, Debug)]
pub struct MetricsLayer(pub Option<Arc<GrpcMetrics>>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            metrics: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    metrics: Option<Arc<GrpcMetrics>>,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for MetricsService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return self.inner.call(request).boxed();
        };
        let method = method_of(request.uri().path());
        let start = Instant::now();
        let response = self.inner.call(request);
        async move {
            let response = response.await?;
            // An error answered at once (trailers-only) has its status in the
            // headers; otherwise it comes in the trailers, at the end of the body.
            let code = response.headers().get("grpc-status").map(|v| v.as_bytes());
            let mut call = Call {
                metrics,
                method,
                start,
                code: None,
            };
            if let Some(code) = code {
                call.code = Some(code_name(Some(code)));
            }
            Ok(response.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    call: Some(call),
                })
            }))
        }
        .boxed()
    }
}

/// A call in flight: recorded once, when its response body ends or is dropped.
struct Call {
    metrics: Arc<GrpcMetrics>,
    method: MethodLabels,
    start: Instant,
    code: Option<&'static str>,
}

impl Call {
    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(v) = trailers.get("grpc-status") {
            self.code = Some(code_name(Some(v.as_bytes())));
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A body dropped before its status: the client went away (or the
        // connection broke) mid-call.
        let code = self.code.unwrap_or("CANCELLED");
        self.metrics
            .record(&self.method, code, self.start.elapsed());
    }
}

/// A response body that records its call when it ends.
struct CountedBody {
    inner: Body,
    call: Option<Call>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(t), Some(call)) = (frame.trailers_ref(), this.call.as_mut()) {
                    call.trailers(t);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.as_mut() {
                    call.code.get_or_insert("UNKNOWN");
                }
                this.call.take();
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.as_mut() {
                    // A body that ended without trailers or a status header.
                    call.code.get_or_insert("UNKNOWN");
                }
                this.call.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes() {
        let m = method_of("/tvix.store.v1.PathInfoService/Get");
        assert_eq!(
            (m.service, m.method),
            ("tvix.store.v1.PathInfoService", "Get")
        );
        for unknown in ["/x.Y/Get", "/tvix.store.v1.PathInfoService/Nope", "", "/"] {
            assert_eq!(method_of(unknown).service, "other", "{unknown}");
        }
        assert_eq!(code_name(Some(b"0")), "OK");
        assert_eq!(code_name(Some(b"16")), "UNAUTHENTICATED");
        assert_eq!(code_name(Some(b"99")), "UNKNOWN");
        assert_eq!(code_name(None), "UNKNOWN");
    }

    #[test]
    fn histogram_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_secs(3600));
        assert_eq!(h.count(), 3);
        assert_eq!(h.0.buckets[0].load(Ordering::Relaxed), 2);
        assert_eq!(h.0.buckets[BOUNDS_NS.len()].load(Ordering::Relaxed), 1);
    }
}
