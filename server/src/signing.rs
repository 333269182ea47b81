//! Admission and execution of the CA's signing work (CSR verification, X.509 and JWT
//! signatures), so a flood of signing requests degrades into fast refusals instead of an
//! unbounded queue (SPIRE's open issue #4490).
//!
//! - **Admission**: at most `max_pending_signatures` signatures are admitted at once, being
//!   signed or waiting. A request that does not fit is refused at once
//!   ([`SignError::Saturated`], `RESOURCE_EXHAUSTED` on the wire), so callers learn quickly
//!   and back off, and memory and latency stay bounded.
//! - **Execution**: admitted work runs on tokio's blocking pool, at most one job per core at a
//!   time, never on the async worker threads, which stay free for I/O, sync streams and the
//!   admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why signing work was not done.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// More signatures are pending than the admission limit allows.
    #[error("the CA is saturated ({pending} signatures pending); retry later")]
    Saturated {
        /// The limit that was reached.
        pending: u32,
    },
    /// The signing job panicked or the runtime is shutting down.
    #[error("signing job failed: {0}")]
    Failed(String),
}

/// Bounds and runs the CA's signing work; one per server, shared by every handler.
#[derive(Debug)]
pub struct Signer {
    limit: u32,
    pending: Arc<Semaphore>,
    running: Arc<Semaphore>,
    admitted: AtomicU64,
}

/// Admission for `count` signatures; the slots are freed when the work is done or the value
/// is dropped.
#[derive(Debug)]
pub struct Admitted<'a> {
    signer: &'a Signer,
    permit: OwnedSemaphorePermit,
}

impl Signer {
    /// At most `max_pending` signatures admitted at once, run by at most `threads` blocking
    /// threads at a time.
    pub fn new(max_pending: u32, threads: usize) -> Self {
        Self {
            limit: max_pending.max(1),
            pending: Arc::new(Semaphore::new(max_pending.max(1) as usize)),
            running: Arc::new(Semaphore::new(threads.max(1))),
            admitted: AtomicU64::new(0),
        }
    }

    /// One signing thread per core.
    pub fn threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Admits `count` signatures (a batch larger than the whole limit counts as the limit), or
    /// refuses at once when they do not fit beside the pending ones.
    pub fn admit(&self, count: u32) -> Result<Admitted<'_>, SignError> {
        let permit = Arc::clone(&self.pending)
            .try_acquire_many_owned(count.clamp(1, self.limit))
            .map_err(|_| SignError::Saturated {
                pending: self.limit,
            })?;
        self.admitted.fetch_add(u64::from(count), Ordering::Relaxed);
        Ok(Admitted {
            signer: self,
            permit,
        })
    }

    /// Signatures admitted since start: a counter for metrics, and the proof in tests that a
    /// refused call did no signing work.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Admits `count` signatures and runs `work` (which performs them): shorthand for
    /// [`Signer::admit`] then [`Admitted::run`].
    pub async fn run<T, F>(&self, count: u32, work: F) -> Result<T, SignError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.admit(count)?.run(work).await
    }
}

impl Admitted<'_> {
    /// Runs `work` on the blocking pool once a signing thread is free. The admission is held
    /// until the work ends, even if the caller stops waiting: the work cannot be cancelled.
    pub async fn run<T, F>(self, work: F) -> Result<T, SignError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let thread = Arc::clone(&self.signer.running)
            .acquire_owned()
            .await
            .map_err(|e| SignError::Failed(e.to_string()))?;
        let permit = self.permit;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, thread);
            work()
        })
        .await
        .map_err(|e| SignError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_the_limit_and_frees_on_completion() {
        let s = Signer::new(10, 1);
        let held = s.admit(8).unwrap();
        assert!(matches!(
            s.admit(3),
            Err(SignError::Saturated { pending: 10 })
        ));
        assert_eq!(s.run(2, || 7).await.unwrap(), 7);
        // The two are free again; the eight are still held.
        assert!(s.admit(3).is_err());
        drop(held);
        // A batch larger than the limit is admitted alone, as the whole limit.
        let all = s.admit(500).unwrap();
        assert!(s.admit(1).is_err());
        assert_eq!(all.run(|| "done").await.unwrap(), "done");
        assert!(s.admit(10).is_ok());
        assert_eq!(s.admitted(), 8 + 2 + 500 + 10);
    }
}
