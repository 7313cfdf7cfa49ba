//! gRPC services of package `anxin.v1`. Handlers stay thin: they convert and
//! validate at the edge, and run anything that may wait on the disk on tokio's
//! blocking pool.

pub mod alarm;
pub mod caregiver;
pub mod dispatch;
pub mod registry;
pub mod scheduling;

use crate::error::{ApiError, ApiResult};

/// Runs `f` (which may wait for a durable write) off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("worker task failed: {e}")))?
}

pub fn now_ms() -> i64 {
    use dispatch_core::Clock;
    dispatch_core::SystemClock.now_ms()
}
