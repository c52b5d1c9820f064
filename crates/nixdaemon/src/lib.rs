//! cairn's Nix daemon (worker) protocol server: the protocol `nix` speaks to
//! `--store unix://SOCKET` and `ssh-ng://HOST`, served from the store layer, so
//! that Nix commands which read, copy or add store paths work against cairn
//! directly. [`wire`] owns the byte-level primitives (integers, padded strings,
//! framed and tunnelled streams, `STDERR_*` messages and each version's error
//! format), [`handshake`] the greeting for client protocol versions 1.21 to 1.38,
//! and [`NixDaemon`] the operations: queries answered from the path info
//! service, NARs rendered by `cairn_store::nar::render`, and additions ingested
//! by `cairn_store::nar::ingest` and registered only after the NAR's declared
//! hash and size, its references and (for untrusted clients) its signatures or
//! content address were checked, so a connection that dies mid-NAR registers
//! nothing. A stored `.drv` is read for its outputs only (`drv`). Builds are
//! refused with Nix's error format: cairn stores, it does not build. Listening (unix socket with peer credentials, stdio) is [`serve`].

mod drv;
pub mod handshake;
mod ops;
pub mod serve;
pub mod wire;

use std::sync::Arc;

use cairn_castore::{BlobService, DirectoryService};
use cairn_nix::signature::VerifyingKey;
use cairn_store::pathinfo::PathInfoService;

pub use serve::{TrustPolicy, serve_stdio, serve_unix};
pub use wire::Error;

/// The message every build operation fails with.
pub const NO_BUILDS: &str = "cairn does not build derivations: it is a store, not a builder (build with Nix and copy the result with `nix copy --to`)";

/// What the operator decides for every connection.
#[derive(Clone, Debug)]
pub struct Config {
    /// Paths an untrusted client adds (`AddToStoreNar`, `AddMultipleToStore`),
    /// and any client that asks for signature checks, must carry a valid
    /// signature by one of these, unless their content address gives their
    /// store path (as Nix's daemon with `require-sigs`).
    pub trusted_keys: Vec<VerifyingKey>,
    /// Largest NAR accepted (declared, or counted as it arrives when no size is
    /// declared).
    pub max_nar_size: u64,
    /// Sent to clients of protocol 1.33 and later as the daemon's version.
    pub daemon_version: String,
}

impl Default for Config {
    /// No trusted keys, NARs up to 4 GiB.
    fn default() -> Self {
        Config {
            trusted_keys: Vec::new(),
            max_nar_size: 4 << 30,
            daemon_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A store served over the Nix daemon protocol: one per process, shared by its
/// connections.
pub struct NixDaemon {
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    path_info: Arc<dyn PathInfoService>,
    config: Config,
}

impl NixDaemon {
    /// Serves the store made of these three services.
    pub fn new(
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        path_info: Arc<dyn PathInfoService>,
        config: Config,
    ) -> Self {
        NixDaemon {
            blobs,
            directories,
            path_info,
            config,
        }
    }

    /// Serves one connection until the client closes it, a request breaks the
    /// protocol, or `stop` completes while no operation runs. `trusted` is the
    /// client's standing (sent to clients of 1.35 and later; an untrusted
    /// client's additions need signatures or a content address).
    pub async fn serve_connection<R, W>(
        &self,
        from: R,
        to: W,
        trusted: bool,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), Error>
    where
        R: tokio::io::AsyncRead + Unpin + Send,
        W: tokio::io::AsyncWrite + Unpin + Send,
    {
        let mut from = tokio::io::BufReader::with_capacity(64 * 1024, from);
        let mut to = tokio::io::BufWriter::with_capacity(64 * 1024, to);
        let session =
            handshake::server(&mut from, &mut to, trusted, &self.config.daemon_version).await?;
        ops::Conn {
            daemon: self,
            from,
            to,
            version: session.version,
            trusted,
        }
        .run(stop)
        .await
    }
}
