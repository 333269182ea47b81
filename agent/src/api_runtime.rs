//! The runtime that serves the Workload API and SDS socket, apart from the agent's own work.
//!
//! A cached fetch is little work between two socket wake-ups, so what it costs is mostly
//! scheduling: on a runtime shared with sync, rotation and key generation, each request was
//! handed between worker threads (a futex wake and a context switch each way). Serving the
//! socket from its own runtime keeps a request on the thread that read it, and keeps the
//! socket's latency apart from bursts of rotation work. With one thread (the default) that
//! runtime is single-threaded; more threads give a multi-threaded one.

use std::future::Future;

use tokio::task::JoinHandle;

use crate::serve::StartError;

/// Runs the future `make` builds on a new runtime of `threads` threads, in a thread of its own;
/// the returned task (on the caller's runtime) ends when that future has.
pub(crate) fn spawn<F, Fut>(threads: usize, make: F) -> Result<JoinHandle<()>, StartError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sigil-api-worker")
            .enable_all()
            .build()
    }
    .map_err(StartError::Runtime)?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("sigil-api".into())
        .spawn(move || {
            rt.block_on(make());
            let _ = done.send(());
        })
        .map_err(StartError::Runtime)?;
    Ok(tokio::spawn(async move {
        if finished.await.is_err() {
            tracing::error!("the Workload API thread ended abnormally");
        }
    }))
}
