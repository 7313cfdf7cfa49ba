//! gRPC services of package `anxin.v1`. Handlers stay thin: they convert and
//! validate at the edge, and run anything that may wait on the disk on tokio's
//! blocking pool.

pub mod alarm;
pub mod caregiver;
pub mod dispatch;
pub mod registry;
pub mod scheduling;

use std::pin::Pin;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// A server-streaming response.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Streams `first`, then every broadcast item that `keep` turns into a
/// message; a receiver that fell behind gets `lagged(missed)`. Ends when the
/// client goes away, the channel closes or the server shuts down.
pub fn forward<T, U>(
    state: &AppState,
    first: Vec<T>,
    mut rx: broadcast::Receiver<U>,
    keep: impl Fn(U) -> Option<T> + Send + 'static,
    lagged: impl Fn(u64) -> T + Send + 'static,
    buffer: usize,
) -> ResponseStream<T>
where
    T: Send + 'static,
    U: Clone + Send + 'static,
{
    let (tx, out) = mpsc::channel(buffer);
    let closed = state.closed();
    tokio::spawn(async move {
        tokio::pin!(closed);
        for m in first {
            if tx.send(Ok(m)).await.is_err() {
                return;
            }
        }
        loop {
            let recv = tokio::select! {
                r = rx.recv() => r,
                _ = &mut closed => return,
            };
            let msg = match recv {
                Ok(item) => match keep(item) {
                    Some(m) => m,
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => lagged(n),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

/// Runs `f` (which may wait for a durable write) off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    let _permit = BLOCKING.acquire().await.map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("worker task failed: {e}")))?
}

/// Runs `f` on the dispatcher on the blocking pool (see [`blocking`]): for
/// anything that may wait for a commit or on an incident a commit holds,
/// which must not stall one of the runtime's workers.
pub async fn on_dispatcher<T: Send + 'static>(
    state: &crate::app::AppState,
    f: impl FnOnce(&dispatch_core::Dispatcher) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let d = state.dispatcher.clone();
    blocking(move || f(&d)).await
}

/// Handler work on tokio's blocking pool at once, at most; further calls
/// wait here without a thread. The pool starts a thread whenever none is
/// idle at the instant work arrives, and such work mostly waits for a store
/// commit (actions, status and registry changes) or for an incident a commit
/// holds: unbounded, a storm of it grew the pool to its 512-thread cap, each
/// thread with its own allocator heap. At a 10 ms commit, 64 allow 6,400
/// caregiver and console actions a second, far above what people do.
const BLOCKING_THREADS: usize = 64;
static BLOCKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BLOCKING_THREADS);

pub fn now_ms() -> i64 {
    use dispatch_core::Clock;
    dispatch_core::SystemClock.now_ms()
}
