//! [`Budget`]: the bytes a mount may hold for reads, shared by all files.
//!
//! What a mount holds between and during the kernel's reads grows with the
//! number of files being read unless something bounds it all together: every
//! blob reader kept open holds its backend's read-ahead
//! ([`cairn_castore::BlobService::reader_memory`], megabytes each), and bytes
//! read past for requests that came out of order are kept until asked for. Each
//! takes a share of one budget of bytes ([`Budget::take`]) for as long as it
//! lives, and gives it back when dropped. A reader that finds the budget spent
//! waits, and while anyone waits, readers are given up after their request once
//! they served about what they hold (and idle kept ones are dropped, see `fs`),
//! so what was spent comes back as the requests in flight go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A share of a [`Budget`], given back when dropped.
pub type Share = OwnedSemaphorePermit;

/// Bytes to hand out in shares.
pub struct Budget {
    bytes: u32,
    free: Arc<Semaphore>,
    /// Requests waiting for a share.
    waiting: AtomicUsize,
}

impl Budget {
    /// A budget of `bytes` (at most 4 GiB, at least 1).
    pub fn new(bytes: u64) -> Self {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Budget {
            bytes,
            free: Arc::new(Semaphore::new(bytes as usize)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// `bytes` (a whole budget's worth at most, so that it can be had) if they
    /// are free now.
    pub fn try_take(&self, bytes: u64) -> Option<Share> {
        self.free
            .clone()
            .try_acquire_many_owned(self.clamp(bytes))
            .ok()
    }

    /// `bytes` (a whole budget's worth at most), waiting until they are free.
    /// While it waits, [`Budget::wanted`] says so, and `make_room` is called
    /// each time before waiting a little: it drops something idle that holds a
    /// share and returns whether it did.
    pub async fn take(&self, bytes: u64, make_room: impl Fn() -> bool) -> Share {
        if let Some(share) = self.try_take(bytes) {
            return share;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let n = self.clamp(bytes);
        loop {
            if let Ok(share) = self.free.clone().try_acquire_many_owned(n) {
                return share;
            }
            if make_room() {
                continue;
            }
            // What is freed while this waits wakes it; a reader kept by a
            // request that ended just before the wait started does not (it was
            // not idle yet when `make_room` looked), so look again soon.
            let wait = self.free.clone().acquire_many_owned(n);
            if let Ok(Ok(share)) = tokio::time::timeout(RECHECK, wait).await {
                return share;
            }
        }
    }

    /// Whether someone waits for a share: then whatever is not needed any more
    /// should be given back rather than kept.
    pub fn wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Bytes not handed out.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.free.available_permits()
    }

    fn clamp(&self, bytes: u64) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.bytes)
    }
}

/// How long a waiter waits before it looks for idle shares again.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(5);

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn shares_are_bounded_and_a_waiter_gets_what_is_made_room_for() {
        let budget = Budget::new(100);
        let a = budget.try_take(60).unwrap();
        assert!(budget.try_take(50).is_none());
        // More than the whole budget is clamped to it.
        assert!(budget.try_take(1000).is_none());
        let b = budget.try_take(40).unwrap();
        assert_eq!(budget.free(), 0);
        // A waiter drops idle shares through `make_room` until it fits.
        let idle = Mutex::new(vec![a, b]);
        let c = budget
            .take(70, || idle.lock().unwrap().pop().is_some())
            .await;
        assert!(idle.lock().unwrap().is_empty());
        assert_eq!(budget.free(), 30);
        assert!(!budget.wanted());
        drop(c);
        assert_eq!(budget.free(), 100);
    }

    #[tokio::test]
    async fn a_waiter_is_seen_and_wakes_when_a_share_comes_back() {
        let budget = Arc::new(Budget::new(10));
        let held = budget.try_take(10).unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.take(5, || false).await.num_permits() })
        };
        while !budget.wanted() {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert_eq!(waiter.await.unwrap(), 5);
        assert!(!budget.wanted());
    }
}
