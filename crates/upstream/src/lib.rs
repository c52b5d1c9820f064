//! cairn's client of upstream Nix binary caches, and pull-through: paths a
//! store does not have are fetched from caches the operator trusts, checked,
//! and stored.
//!
//! - [`Upstream`]: one binary cache (`http://`, `https://` with rustls on the
//!   system's roots plus an optional CA file, `file:///dir` as `nix copy --to
//!   file://` writes it): [`Upstream::narinfo`] fetches and accepts a narinfo
//!   (fields well-formed, a valid signature by a trusted key unless the URL says
//!   `?check-signatures=false`), [`Upstream::nar`] opens its NAR decompressed as
//!   the narinfo says (xz, zstd, bzip2, br, none), streaming, its compressed
//!   file checked against `FileSize` (`FileHash` is neither signed nor
//!   needed: the NAR is checked against the signed `NarHash`). Requests time
//!   out, are retried with backoff, then fail.
//! - [`Puller`]: the upstreams of a store, in priority order, in front of its
//!   blob, directory and path info services: a missing path's narinfo from the
//!   first upstream that has an acceptable one, its NAR streamed to the client
//!   that asked and ingested behind it (from a spool file, at a lower priority),
//!   the path registered only once the NAR's SHA-256 and size match the signed
//!   narinfo and the store has all of it. One download per path at a time
//!   (single flight), absent paths remembered for a while (negative cache),
//!   references fetched when asked for or ahead. It is the binary cache's [`cairn_cache::PullThrough`].
//! - [`PullThroughPathInfoService`]: a path info service whose misses are
//!   pulled (the daemon's gRPC `PathInfoService.Get`, and the store commands
//!   through it), and which can skip storing puts of paths a trusted upstream
//!   has (`--upstream-skip-uploads`).
//!
//! The invariant: nothing enters the store this way unless its narinfo carries
//! a valid signature by a trusted key (or the operator turned the check off for
//! that upstream) and its NAR has exactly the signed hash and size.

mod pull;
mod spool;
mod upstream;

pub use pull::{PullOptions, PullStats, PullThroughPathInfoService, Puller};
pub use upstream::{FileMismatch, NarStream, Options, Upstream, UpstreamError};
