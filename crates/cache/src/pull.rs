//! [`PullThrough`]: what the cache asks when a path is not in its store, so that
//! a cache in front of upstream caches (`cairn-upstream`) serves their paths too.
//!
//! The cache owns the HTTP side (the narinfo it renders and signs, the response
//! that streams a NAR or is aborted); the implementation owns the upstreams,
//! their signatures and the store's ingestion.

use async_trait::async_trait;
use bytes::Bytes;
use cairn_nix::narinfo::NarInfo;
use cairn_nix::store_path::DIGEST_LEN;
use futures::stream::BoxStream;

use crate::error::CacheError;

/// A NAR asked for that was not in the store.
pub enum PulledNar {
    /// This request started the download: the NAR as it arrives. The stream
    /// ends with an error (and without its last bytes) unless the whole NAR
    /// matched its hash and size and the path was registered.
    Streaming {
        /// The NAR's size, to be sent as `Content-Length`.
        nar_size: u64,
        /// The NAR's bytes.
        body: BoxStream<'static, std::io::Result<Bytes>>,
    },
    /// The path is in the store now (another request's download finished, or
    /// this one waited for its own): serve it from there.
    Stored,
}

/// Where paths missing from the store come from.
#[async_trait]
pub trait PullThrough: Send + Sync {
    /// The narinfo of a path not in the store, as an upstream cache has it,
    /// accepted (signature and fields checked); `None` if no upstream has it.
    async fn narinfo(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<NarInfo>, CacheError>;

    /// The NAR of a path not in the store whose NAR hash is `nar_sha256`;
    /// `None` if no upstream has it (or with another hash). With `stream`, the
    /// caller can take [`PulledNar::Streaming`]; else the call returns once the
    /// path is stored.
    async fn nar(
        &self,
        digest: [u8; DIGEST_LEN],
        nar_sha256: [u8; 32],
        stream: bool,
    ) -> Result<Option<PulledNar>, CacheError>;
}
