//! The greeting that opens every connection, as Nix's daemon answers it:
//!
//! 1. client: `WORKER_MAGIC_1`; daemon: `WORKER_MAGIC_2`, its version (1.38);
//! 2. client: its version; the session uses the lower of the two;
//! 3. from 1.38: client: its feature set (strings); daemon: its own (cairn has
//!    none, so the session's is empty);
//! 4. client: from 1.14 a CPU-affinity flag (and the CPU if set), from 1.11 the
//!    obsolete reserveSpace flag;
//! 5. daemon: from 1.33 its version string, from 1.35 whether it trusts the
//!    client (1 trusted, 2 not), then `STDERR_LAST`.
//!
//! A client older than [`MIN_CLIENT_VERSION`] gets an error in its own (pre-1.26)
//! format after step 4, which it prints, and the connection closes.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::wire::{self, Error, minor, version, version_text};

/// The protocol version cairn speaks (Nix 2.24 and later).
pub const PROTOCOL_VERSION: u64 = version(1, 38);
/// The oldest client version served (Nix 2.3).
pub const MIN_CLIENT_VERSION: u64 = version(1, 21);

/// What a greeting agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The session's protocol version: the lower of the client's and ours.
    pub version: u64,
    /// Features both sides support (1.38 and later).
    pub features: Vec<String>,
}

/// Runs the daemon's side of the greeting. `trusted` is what clients of 1.35
/// and later are told.
pub async fn server<R, W>(
    from: &mut R,
    to: &mut W,
    trusted: bool,
    daemon_version: &str,
) -> Result<Session, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let magic = wire::read_u64(from).await?;
    if magic != wire::WORKER_MAGIC_1 {
        return Err(Error::Reported(format!(
            "protocol mismatch: expected the Nix daemon protocol's magic {:#x}, got {magic:#x}",
            wire::WORKER_MAGIC_1
        )));
    }
    wire::write_u64(to, wire::WORKER_MAGIC_2).await?;
    wire::write_u64(to, PROTOCOL_VERSION).await?;
    to.flush().await?;
    let client = wire::read_u64(from).await?;
    if wire::major(client) != 1 {
        return Err(Error::Reported(format!(
            "unsupported Nix daemon protocol version {} (cairn serves 1.x)",
            version_text(client)
        )));
    }
    let session_version = client.min(PROTOCOL_VERSION);
    let mut features = Vec::new();
    if minor(session_version) >= 38 {
        let theirs = wire::read_strings(from, 1024, 1024, "client features").await?;
        // cairn implements none of the optional features (so far there is one,
        // `hash-mismatch-status`): the intersection is empty.
        let ours: [&str; 0] = [];
        wire::write_strings(to, ours).await?;
        to.flush().await?;
        features = theirs
            .into_iter()
            .filter(|f| ours.contains(&f.as_str()))
            .collect();
    }
    if minor(session_version) >= 14 && wire::read_bool(from).await? {
        // Obsolete CPU affinity.
        wire::read_u64(from).await?;
    }
    if minor(session_version) >= 11 {
        // Obsolete reserveSpace.
        wire::read_u64(from).await?;
    }
    if session_version < MIN_CLIENT_VERSION {
        let msg = format!(
            "the Nix client's daemon protocol {} is too old: cairn serves clients of protocol {} (Nix 2.3) to {}",
            version_text(session_version),
            version_text(MIN_CLIENT_VERSION),
            version_text(PROTOCOL_VERSION)
        );
        wire::write_error(to, session_version, &msg).await?;
        to.flush().await?;
        return Err(Error::Reported(msg));
    }
    if minor(session_version) >= 33 {
        wire::write_bytes(to, daemon_version.as_bytes()).await?;
    }
    if minor(session_version) >= 35 {
        wire::write_u64(to, if trusted { 1 } else { 2 }).await?;
    }
    wire::write_u64(to, wire::STDERR_LAST).await?;
    to.flush().await?;
    Ok(Session {
        version: session_version,
        features,
    })
}
