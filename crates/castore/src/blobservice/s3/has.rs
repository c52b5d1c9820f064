//! `has` calls made at the same time answered by one index query: an import
//! asks for every file before it uploads it, and a query each was most of
//! PostgreSQL's work on an import of many small files.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use tokio::sync::oneshot;

use super::{Inner, index, rebuild, split};
use crate::{B3Digest, Error, ErrorKind};

/// Digests one query asks about at most.
const MAX_BATCH: usize = 4096;

type Reply = oneshot::Sender<Result<bool, (ErrorKind, String)>>;

/// The `has` calls waiting for a query, and whether a flusher is running.
#[derive(Default)]
pub(super) struct Queue {
    waiting: Vec<([u8; 32], Reply)>,
    running: bool,
}

impl Inner {
    /// Whether `digest` is stored, asked together with the other calls waiting.
    pub(super) async fn has_batched(self: &Arc<Self>, digest: &B3Digest) -> Result<bool, Error> {
        // A lookup task cancelled with its runtime drops the calls it held;
        // asked again, they start a flusher on this caller's runtime.
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            let start = {
                let mut q = self
                    .has_queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                q.waiting.push((*digest.as_bytes(), tx));
                !std::mem::replace(&mut q.running, true)
            };
            if start {
                tokio::spawn(flush(Running {
                    inner: self.clone(),
                    finished: false,
                }));
            }
            if let Ok(answer) = rx.await {
                return answer.map_err(|(kind, msg)| rebuild(kind, msg));
            }
        }
        Err(Error::Storage("the blob lookup task ended".into()))
    }
}

/// The flusher's hold on the service. Dropped before it finished (its task
/// cancelled: its runtime shut down), it lets the next call start a flusher,
/// and the calls it leaves waiting fail instead of hanging.
struct Running {
    inner: Arc<Inner>,
    /// Set, with the queue locked and empty, when the flusher ends by itself.
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut q = self
            .inner
            .has_queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        q.running = false;
        q.waiting.clear();
    }
}

/// Answers the waiting calls, a batch per query, until none wait.
async fn flush(mut running: Running) {
    let inner = running.inner.clone();
    loop {
        let batch: Vec<([u8; 32], Reply)> = {
            let mut q = inner
                .has_queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if q.waiting.is_empty() {
                q.running = false;
                running.finished = true;
                return;
            }
            let n = q.waiting.len().min(MAX_BATCH);
            q.waiting.drain(..n).collect()
        };
        let digests: Vec<[u8; 32]> = batch.iter().map(|(d, _)| *d).collect();
        let found: Result<HashSet<[u8; 32]>, Error> = async {
            let mut client = inner.client().await?;
            index::stored(&mut client, &digests).await
        }
        .await;
        match found {
            Ok(found) => {
                for (d, reply) in batch {
                    let _ = reply.send(Ok(found.contains(&d)));
                }
            }
            Err(e) => {
                let (kind, msg) = split(&e);
                for (_, reply) in batch {
                    let _ = reply.send(Err((kind, msg.clone())));
                }
            }
        }
    }
}
