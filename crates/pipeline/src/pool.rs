//! A small bounded pool of dedicated big-stack threads for user CEL expressions.
//!
//! cel-interpreter's parser is ANTLR-generated and recursive, and evaluation recurses over the
//! expression tree; a deep expression can exhaust a small stack, which aborts the whole process.
//! User expressions are therefore never compiled or evaluated on the async runtime or an HTTP
//! worker: every compile/evaluation runs on its own thread with a [`CEL_STACK_BYTES`] stack
//! (after the static limits of [`crate::condition::scan`] have bounded the depth), and the
//! caller awaits the result with a deadline.
//!
//! Residual risk: cel-interpreter has no step hook, so an evaluation cannot be interrupted. On
//! its deadline (or when its run is cancelled) the caller stops waiting and the node fails, but
//! the thread keeps computing until the evaluation ends on its own, still holding its permit.
//! At most `threads` evaluations (abandoned ones included) run at once, so runaway expressions
//! cost at most that many cores; further evaluations wait for a permit within their own
//! deadline and time out. The static limits (no nested comprehensions, few macros, small
//! literals, bounded operands) keep a single evaluation polynomial and small, but an evaluation
//! over a large run input or node output can still take seconds of CPU and memory proportional
//! to that data.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Stack of a CEL thread. Only the pages actually touched are committed.
pub const CEL_STACK_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The deadline passed (waiting for a thread, or the work itself); the work is abandoned.
    TimedOut,
    /// The thread could not be started or the work panicked.
    Failed(String),
}

/// Cheap to clone; clones share the permits.
#[derive(Debug, Clone)]
pub struct CelPool {
    permits: Arc<Semaphore>,
    threads: usize,
}

impl Default for CelPool {
    fn default() -> Self {
        Self::new(4)
    }
}

impl CelPool {
    /// At most `threads` (at least 1) CEL computations run at once, abandoned ones included.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        Self {
            permits: Arc::new(Semaphore::new(threads)),
            threads,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a dedicated big-stack thread; waits at most `budget` in all (for a permit and
    /// for the result). Dropping the returned future abandons the work (see the module docs).
    pub async fn run<R, F>(&self, budget: Duration, f: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let permit = match tokio::time::timeout_at(
            deadline,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(PoolError::Failed("the CEL pool is closed".to_owned())),
            Err(_) => return Err(PoolError::TimedOut),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("gathering-cel".to_owned())
            .stack_size(CEL_STACK_BYTES)
            .spawn(move || {
                // The permit is held until the work really ends, abandoned or not.
                let _permit = permit;
                let r = std::panic::catch_unwind(AssertUnwindSafe(f));
                let _ = tx.send(r);
            })
            .map_err(|e| PoolError::Failed(format!("cannot start a CEL thread: {e}")))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(_))) => Err(PoolError::Failed("the expression panicked".to_owned())),
            Ok(Err(_)) => Err(PoolError::Failed("the CEL thread ended".to_owned())),
            Err(_) => Err(PoolError::TimedOut),
        }
    }
}

/// Runs `f` synchronously on a fresh big-stack thread (for synchronous callers that are not on
/// the async runtime, e.g. tests and tools).
pub fn on_big_stack<R, F>(f: F) -> Result<R, PoolError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("gathering-cel".to_owned())
            .stack_size(CEL_STACK_BYTES)
            .spawn_scoped(s, f)
            .map_err(|e| PoolError::Failed(format!("cannot start a CEL thread: {e}")))?;
        h.join()
            .map_err(|_| PoolError::Failed("the expression panicked".to_owned()))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn work_past_its_deadline_is_abandoned_and_keeps_its_permit_until_it_ends() {
        let pool = CelPool::new(1);
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let r = pool
            .run(Duration::from_millis(50), move || {
                let _ = release_rx.recv();
                1
            })
            .await;
        assert_eq!(r, Err(PoolError::TimedOut));
        // The abandoned work still holds the only permit: the next call times out waiting.
        let r = pool.run(Duration::from_millis(50), || 2).await;
        assert_eq!(r, Err(PoolError::TimedOut));
        release_tx.send(()).unwrap();
        let r = pool.run(Duration::from_secs(10), || 3).await;
        assert_eq!(r, Ok(3));
    }

    #[tokio::test]
    async fn a_panic_is_contained() {
        let pool = CelPool::new(1);
        let r: Result<(), _> = pool.run(Duration::from_secs(5), || panic!("boom")).await;
        assert!(matches!(r, Err(PoolError::Failed(_))));
        assert_eq!(pool.run(Duration::from_secs(5), || 7).await, Ok(7));
    }
}
