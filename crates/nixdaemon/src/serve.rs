//! Where connections come from: a unix socket, each client's standing decided by
//! its peer credentials (the uid the kernel reports, which a client cannot
//! forge), or the process's stdin and stdout (`cairn nix-daemon --stdio`, what
//! `ssh-ng://` runs on the remote side).

use std::future::Future;
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::{Error, NixDaemon};

/// Which clients of a socket are trusted (Nix's `trusted-users`): trusted
/// clients may add paths without signatures when they ask to skip the check
/// (`nix copy --no-check-sigs`); the others' additions need a valid signature by
/// a trusted key or a content address that gives their path.
#[derive(Clone, Debug, Default)]
pub struct TrustPolicy {
    /// The uids whose connections are trusted.
    pub trusted_uids: Vec<u32>,
}

impl TrustPolicy {
    /// Whether a client running as `uid` is trusted.
    pub fn trusts(&self, uid: u32) -> bool {
        self.trusted_uids.contains(&uid)
    }
}

/// Serves `listener` until `shutdown` completes: each connection on its own
/// task, trusted if its peer's uid is in `policy`, at most `max_connections` at
/// once (more are closed when accepted). At shutdown no connection is accepted,
/// and each open one ends once its current operation is answered.
pub async fn serve_unix(
    daemon: Arc<NixDaemon>,
    listener: UnixListener,
    policy: TrustPolicy,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: the listener itself is fine.
                    tracing::warn!(error = %e, "nix daemon socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= max_connections {
            tracing::warn!(
                max_connections,
                "nix daemon socket: too many connections; closing a new one"
            );
            continue;
        }
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "nix daemon socket: no peer credentials; closing");
                continue;
            }
        };
        let trusted = policy.trusts(uid);
        let daemon = daemon.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let (from, to) = stream.into_split();
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            log_end(
                daemon.serve_connection(from, to, trusted, stopped).await,
                &format!("uid {uid}"),
            );
        });
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one client on stdin and stdout, `trusted` or not.
pub async fn serve_stdio(daemon: Arc<NixDaemon>, trusted: bool) -> Result<(), Error> {
    daemon
        .serve_connection(
            tokio::io::stdin(),
            tokio::io::stdout(),
            trusted,
            std::future::pending(),
        )
        .await
}

fn log_end(result: Result<(), Error>, who: &str) {
    match result {
        Ok(()) => tracing::debug!(client = who, "nix daemon connection closed"),
        Err(Error::Io(e)) => {
            tracing::debug!(client = who, error = %e, "nix daemon connection broke")
        }
        Err(e) => {
            tracing::info!(client = who, error = %e, "nix daemon connection closed on an error")
        }
    }
}
