//! The pull-through part of `cairn daemon`: its flags (`--upstream` and what
//! goes with it) and the [`Puller`] they make (the client is `cairn-upstream`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_upstream::{Options, PullOptions, Puller, Upstream};
use clap::Args;

/// Flags of `cairn daemon` for upstream caches.
#[derive(Args)]
pub struct UpstreamArgs {
    /// Serve what this Nix binary cache has too (http://, https:// or
    /// file:///dir): a path missing here is fetched from it on its first request
    /// (narinfo, NAR, gRPC PathInfoService.Get), checked, stored and served from
    /// here from then on. Repeatable: asked in the order given (or by
    /// `?priority=N`, lower first). Parameters: `?timeout=SECONDS`,
    /// `?retries=N`, and `?check-signatures=false` to accept its narinfos
    /// unsigned (only for a cache you control).
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,

    /// Accept an upstream's narinfo only with a valid signature by this key
    /// (`name:base64`, as in Nix's trusted-public-keys, e.g.
    /// cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=).
    /// Repeatable; needed for every upstream without `?check-signatures=false`.
    #[arg(long = "upstream-trusted-key", value_name = "KEY")]
    upstream_trusted_keys: Vec<String>,

    /// Also trust the CA certificates in this PEM file for https:// upstreams
    /// (besides the system's).
    #[arg(long, value_name = "FILE")]
    upstream_ca_file: Option<PathBuf>,

    /// Seconds an upstream may take to connect or to send more bytes before the
    /// request is retried (then the next upstream is asked).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    upstream_timeout: u64,

    /// Times a failed upstream request is retried, with doubling delays.
    #[arg(long, default_value_t = 3, value_name = "N")]
    upstream_retries: u32,

    /// Seconds a path no upstream has is answered 404 without asking them
    /// again (0: ask every time).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    upstream_negative_ttl: u64,

    /// After pulling a path, pull its references too, in the background
    /// (otherwise each is pulled when it is asked for).
    #[arg(long)]
    prefetch_references: bool,

    /// Accept uploads (HTTP narinfo PUT, gRPC PathInfoService.Put, the Nix
    /// daemon socket) of a path that a trusted upstream has with the same NAR
    /// and references without storing it: reads of it pull it from there.
    /// Each uploaded path not stored here costs one upstream narinfo request.
    #[arg(long, requires = "upstreams")]
    pub upstream_skip_uploads: bool,
}

impl UpstreamArgs {
    /// The upstreams' client options; `max_nar_size` is the largest NAR taken.
    fn options(&self, max_nar_size: u64) -> anyhow::Result<Options> {
        let trusted_keys = self
            .upstream_trusted_keys
            .iter()
            .map(|k| {
                k.parse()
                    .with_context(|| format!("--upstream-trusted-key {k:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Options {
            trusted_keys,
            ca_file: self.upstream_ca_file.clone(),
            timeout: Duration::from_secs(self.upstream_timeout.max(1)),
            retries: self.upstream_retries,
            max_nar_size,
        })
    }

    /// The puller of the daemon's store, if --upstream was given; NARs that
    /// clients wait for are spooled in `spool_dir`.
    pub fn puller(
        &self,
        store: super::store::Store,
        max_nar_size: u64,
        spool_dir: &std::path::Path,
    ) -> anyhow::Result<Option<Arc<Puller>>> {
        if self.upstreams.is_empty() {
            return Ok(None);
        }
        let options = self.options(max_nar_size)?;
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, &options).context("--upstream"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pull = PullOptions {
            negative_ttl: Duration::from_secs(self.upstream_negative_ttl),
            prefetch_references: self.prefetch_references,
            spool_dir: Some(spool_dir.to_owned()),
        };
        Ok(Some(Puller::new(
            upstreams,
            store.blobs,
            store.directories,
            store.path_info,
            pull,
        )))
    }

    /// For the startup line.
    pub fn note(&self) -> String {
        if self.upstreams.is_empty() {
            return String::new();
        }
        let urls: Vec<&str> = self
            .upstreams
            .iter()
            .map(|u| u.split('?').next().unwrap_or(u))
            .collect();
        format!(", pulling from {}", urls.join(", "))
    }
}
