//! cairn's Nix binary cache over HTTP: what `nix copy --from/--to http://...`,
//! `nix path-info --store http://...` and substituters speak, served from the
//! store layer.
//!
//! - [`serve`] (and [`serve_tls`], HTTPS) and [`router`]: the HTTP server (narinfo lookups answered on a
//!   fast path, everything else by hyper) and its axum routes over a [`BinaryCache`] (blob,
//!   directory and path info services, plus [`PendingUploads`] and a
//!   [`CacheConfig`]): `GET /nix-cache-info`, `GET|HEAD /<hash>.narinfo` (signed on
//!   the fly by the configured keys), `GET|HEAD /nar/<file>` (rendered from the
//!   store, identity with `Range`, zstd or xz), `GET /<hash>.ls` (listing), and the
//!   uploads `nix copy --to` sends (`PUT /nar/<filehash>.nar[.xz|.zst|.bz2|.br]`
//!   ingested as it streams, then `PUT /<hash>.narinfo` checked against it).
//! - [`PendingUploads`]: uploaded NARs waiting for their narinfo, durable.
//! - [`PullThrough`]: where paths missing from the store come from (upstream
//!   caches), set with [`BinaryCache::with_pull_through`].
//! - [`Compression`], [`Token`], [`CacheError`] (every error's status code).
//! - [`metrics`]: the cache's Prometheus metrics and the `/metrics` endpoint.
//!
//! NAR rendering and ingestion and the path info model belong to `cairn-store`,
//! Nix's text formats and signatures to `cairn-nix`; this crate owns the HTTP
//! protocol and the upload checks.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cairn_cache::{BinaryCache, CacheConfig, PendingUploads};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let blobs = cairn_castore::blob_service_from_addr("memory://")?;
//! let dirs = cairn_castore::directory_service_from_addr("memory://")?;
//! let infos = cairn_store::pathinfo::path_info_service_from_addr(
//!     "memory://", blobs.clone(), dirs.clone())?;
//! let cache = BinaryCache::new(blobs, dirs, infos, PendingUploads::in_memory()?,
//!     CacheConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! cairn_cache::serve(listener, Arc::new(cache), std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod compression;
mod conn;
mod error;
mod hashing;
mod listing;
pub mod metrics;
mod pending;
mod pull;
mod server;

pub use cairn_castore::auth::Token;
pub use compression::Compression;
pub use conn::{RequestHead, parse_request, serve, serve_tls};
pub use error::CacheError;
pub use listing::listing;
pub use pending::{PendingNar, PendingUploads};
pub use pull::{PullThrough, PulledNar};
pub use server::{BinaryCache, CacheConfig, DEFAULT_MAX_NAR_SIZE, parse_hash_part, router};
