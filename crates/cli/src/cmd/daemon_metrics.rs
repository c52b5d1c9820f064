//! Prometheus metrics of `cairn daemon`: its flags, the registry (the binary
//! cache's and the gRPC server's counters, the store's size and the path info
//! cache's hits), and the optional listener of its own.
//!
//! The counting happens at the servers' edges (`cairn_cache::metrics`,
//! `cairn_castore::server::metrics`); the store's figures are read when scraped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_cache::metrics::HttpMetrics;
use cairn_castore::blobservice::BackendCounter;
use cairn_castore::embedded::{EmbeddedStore, StoreStats};
use cairn_castore::server::metrics::GrpcMetrics;
use cairn_castore::{BlobService, DirectoryService};
use cairn_store::pathinfo::{CachingPathInfoService, RedbPathInfoService};
use clap::Args;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// Flags of `cairn daemon` for its metrics.
#[derive(Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (GET /metrics) on this address, and not on the
    /// binary cache's listener, where they are by default (so, with --no-http,
    /// only with this flag). The safer choice for
    /// a public cache: the metrics tell request rates and store size to whoever
    /// reaches the cache. Bind it to a private address: this listener has no
    /// authentication. (On the cache's listener, a private cache's
    /// --read-token-file guards /metrics as every other read.)
    #[arg(long, value_name = "ADDR", conflicts_with = "no_metrics")]
    metrics_listen: Option<String>,

    /// Do not serve Prometheus metrics at all.
    #[arg(long)]
    no_metrics: bool,
}

/// What the servers count into, and where the metrics are served.
pub struct Metrics {
    /// For the gRPC servers (`None` with --no-metrics).
    pub grpc: Option<Arc<GrpcMetrics>>,
    /// For the binary cache.
    pub http: Arc<HttpMetrics>,
    /// Served by the binary cache as /metrics (default), else `None`.
    pub on_cache: Option<Arc<Registry>>,
}

/// What is needed to report on the store.
pub struct StoreSources<'a> {
    /// The blob service's URL (its chunks and disk are reported if embedded).
    pub blob_url: &'a str,
    /// The path info service's URL (its path count is reported if redb).
    pub info_url: &'a str,
    /// The blob and directory services the path info service checks against
    /// (to open the one already open).
    pub blobs: Arc<dyn BlobService>,
    /// See `blobs`.
    pub directories: Arc<dyn DirectoryService>,
    /// The path info cache in front of the store, if any.
    pub path_info_cache: Option<Arc<CachingPathInfoService>>,
    /// What pulls from the upstreams (`--upstream`), if any.
    pub puller: Option<Arc<cairn_upstream::Puller>>,
}

/// Builds the registry. Returns the metrics, and the server of --metrics-listen
/// (its address and future, which runs until `shutdown` completes) if given.
pub async fn setup(
    args: &MetricsArgs,
    sources: StoreSources<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    Metrics,
    Option<(
        SocketAddr,
        impl Future<Output = Result<(), cairn_castore::Error>> + Send + 'static,
    )>,
)> {
    let http = Arc::new(HttpMetrics::default());
    if args.no_metrics {
        let metrics = Metrics {
            grpc: None,
            http,
            on_cache: None,
        };
        return Ok((metrics, None));
    }
    let grpc = Arc::new(GrpcMetrics::default());
    let mut registry = Registry::with_prefix("cairn");
    http.register(&mut registry);
    grpc.register(&mut registry);
    registry.register_collector(Box::new(StoreCollector::open(sources)?));
    let registry = Arc::new(registry);
    let mut metrics = Metrics {
        grpc: Some(grpc),
        http,
        on_cache: None,
    };
    let Some(addr) = &args.metrics_listen else {
        metrics.on_cache = Some(registry);
        return Ok((metrics, None));
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let server = async move {
        cairn_cache::metrics::serve(listener, registry, shutdown)
            .await
            .map_err(cairn_castore::Error::Io)
    };
    Ok((metrics, Some((local, server))))
}

/// How long the store's figures are reused: a scrape every few seconds (or
/// several Prometheus servers) costs one read of the index, not one each.
const STORE_STATS_TTL: Duration = Duration::from_secs(5);

/// Reports the store's size and the path info cache's hits when scraped.
struct StoreCollector {
    /// For its own counters ([`BlobService::counters`]: S3 requests...).
    blobs: Arc<dyn BlobService>,
    store: Option<EmbeddedStore>,
    paths: Option<RedbPathInfoService>,
    path_info_cache: Option<Arc<CachingPathInfoService>>,
    puller: Option<Arc<cairn_upstream::Puller>>,
    last: Mutex<Option<(Instant, Figures)>>,
}

/// The embedded store's stats and the number of paths, each if known.
type Figures = (Option<StoreStats>, Option<u64>);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCollector").finish_non_exhaustive()
    }
}

impl StoreCollector {
    /// Takes the handles this process already has open on the embedded store
    /// (redb allows one opener), for the services that are embedded.
    fn open(sources: StoreSources<'_>) -> anyhow::Result<Self> {
        let store = match sources.blob_url.strip_prefix("redb://") {
            Some(dir) => Some(
                EmbeddedStore::open_shared(dir)
                    .with_context(|| format!("cannot open {dir} for its metrics"))?,
            ),
            None => None,
        };
        let paths = match sources.info_url.strip_prefix("redb://") {
            Some(dir) => Some(
                RedbPathInfoService::open_shared(dir, sources.blobs.clone(), sources.directories)
                    .with_context(|| format!("cannot open {dir} for its metrics"))?,
            ),
            None => None,
        };
        Ok(Self {
            blobs: sources.blobs,
            store,
            paths,
            path_info_cache: sources.path_info_cache,
            puller: sources.puller,
            last: Mutex::new(None),
        })
    }

    /// The store's figures, read again if the last are older than the TTL. A
    /// failure is logged and leaves those figures out of the scrape.
    fn figures(&self) -> Figures {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, figures)) = *last
            && at.elapsed() < STORE_STATS_TTL
        {
            return figures;
        }
        let stats = self.store.as_ref().and_then(|s| {
            s.stats()
                .inspect_err(|e| tracing::warn!(error = %e, "cannot read the store's size"))
                .ok()
        });
        let paths = self.paths.as_ref().and_then(|p| {
            p.len()
                .inspect_err(|e| tracing::warn!(error = %e, "cannot count the store's paths"))
                .ok()
        });
        *last = Some((Instant::now(), (stats, paths)));
        (stats, paths)
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// The blob backend's counters, one family per name (in the order given).
fn backend_counters(
    encoder: &mut DescriptorEncoder,
    counters: &[BackendCounter],
) -> Result<(), std::fmt::Error> {
    let mut names: Vec<&'static str> = counters.iter().map(|c| c.name).collect();
    names.dedup();
    for name in names {
        let family: Vec<&BackendCounter> = counters.iter().filter(|c| c.name == name).collect();
        let help = family.first().map_or("", |c| c.help);
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        match family.as_slice() {
            [one] if one.label.is_none() => ConstCounter::new(one.value).encode(metric)?,
            _ => {
                for c in family.iter().filter_map(|c| Some((c.label?, c.value))) {
                    ConstCounter::new(c.1).encode(metric.encode_family(&[c.0])?)?;
                }
            }
        }
    }
    Ok(())
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        backend_counters(&mut encoder, &self.blobs.counters())?;
        let (stats, paths) = self.figures();
        if let Some(n) = paths {
            gauge(
                &mut encoder,
                "store_paths",
                "Store paths registered",
                None,
                n,
            )?;
        }
        if let Some(s) = stats {
            gauge(
                &mut encoder,
                "store_chunks",
                "Chunks stored (each blob of one chunk is one; a larger blob is several)",
                None,
                s.chunks,
            )?;
            gauge(
                &mut encoder,
                "store_chunked_blobs",
                "Blobs stored as several chunks",
                None,
                s.chunked_blobs,
            )?;
            gauge(
                &mut encoder,
                "store_directories",
                "Directories stored",
                None,
                s.directories,
            )?;
            gauge(
                &mut encoder,
                "store_disk",
                "Disk the embedded store's pack files and index take (allocated blocks)",
                Some(&Unit::Bytes),
                s.disk_bytes,
            )?;
        }
        if let Some(cache) = &self.path_info_cache {
            let (hits, misses) = cache.hits_and_misses();
            counter(
                &mut encoder,
                "path_info_cache_hits",
                "Path info lookups answered from the daemon's in-memory cache",
                hits,
            )?;
            counter(
                &mut encoder,
                "path_info_cache_misses",
                "Path info lookups that went to the store",
                misses,
            )?;
        }
        if let Some(puller) = &self.puller {
            let st = puller.stats();
            for (name, help, value) in [
                (
                    "upstream_pulls",
                    "Paths pulled from upstream caches and stored",
                    st.pulls,
                ),
                (
                    "upstream_nar_bytes",
                    "Bytes of the NARs pulled from upstream caches (uncompressed)",
                    st.nar_bytes,
                ),
                (
                    "upstream_failures",
                    "Upstream narinfo lookups that failed everywhere, and pulls that failed or were refused",
                    st.failures,
                ),
                (
                    "upstream_negative_cache_hits",
                    "Lookups answered absent from the negative cache, without asking the upstreams",
                    st.negative_hits,
                ),
            ] {
                counter(&mut encoder, name, help, value)?;
            }
        }
        Ok(())
    }
}
