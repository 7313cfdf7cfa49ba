//! Device supervision on the server: the core's `Supervisor` learns every
//! supervised device from the registry and every heartbeat from the
//! Heartbeat stream; a task checks it each second and raises a DEVICE_OFFLINE
//! alarm, through the same path as a device's own alarm, for every device
//! silent for three intervals.
//!
//! After a restart supervision starts afresh from the restart time: heartbeats
//! sent while the server was down could not be heard, and an outage of the
//! platform must not turn into an offline alarm for every device.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{DeviceId, ElderId, Heard, Offline};
use proto::v1 as pb;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::WriteOp;

/// Starts (or stops, for an interval of 0) supervising a registry device.
pub fn watch(state: &AppState, d: &pb::Device, last_heard_ms: i64) {
    let (Ok(device), Ok(elder)) = (DeviceId::parse("device.id", &d.id), ElderId::parse("device.elder_id", &d.elder_id))
    else {
        return; // the registry only holds validated devices
    };
    state.supervisor.watch(device, elder, d.heartbeat_interval_s as i64 * 1000, last_heard_ms);
}

/// Records a heartbeat; a device that was offline is marked online again.
pub fn heard(state: &AppState, device: &str, at_ms: i64) {
    let Ok(id) = DeviceId::parse("device_id", device) else { return };
    if state.supervisor.heard(&id, at_ms) == Heard::BackOnline {
        tracing::info!(device, "device heard again after being reported offline");
        if let Some(d) = state.registry.devices.get(device).map(|d| d.clone()) {
            state.store.write_later(WriteOp::Device(d));
        }
    }
}

fn offline_alarm(o: &Offline) -> pb::RaiseAlarmRequest {
    pb::RaiseAlarmRequest {
        // One key per silence: a retry after a crash finds the same incident.
        idempotency_key: format!("supervision:{}:{}", o.device, o.last_heard_ms),
        elder_id: o.elder.to_string(),
        device_id: o.device.to_string(),
        kind: pb::AlarmKind::DeviceOffline as i32,
        detail: format!(
            "no heartbeat for {} s (interval {} s, last heard at {} ms)",
            o.silent_ms / 1000,
            o.interval_ms / 1000,
            o.last_heard_ms
        ),
        ..Default::default()
    }
}

/// A device-offline alarm that could not be raised is tried again after this long.
const RETRY_MS: i64 = 5_000;

/// Raises an alarm for every device that fell silent by now.
pub async fn check(state: &Arc<AppState>) -> usize {
    let now = crate::api::now_ms();
    let offline = state.supervisor.expire(now);
    let n = offline.len();
    for o in &offline {
        if let Some(mut d) = state.registry.devices.get_mut(o.device.as_str()) {
            d.online = false;
            state.store.write_later(WriteOp::Device(d.clone()));
        }
    }
    // One batch, as a gateway's stream: a power cut silences thousands of
    // devices at once, and their alarms share journal appends.
    let reqs: Vec<pb::RaiseAlarmRequest> = offline.iter().map(offline_alarm).collect();
    for (o, out) in offline.iter().zip(crate::api::alarm::raise_many(state.clone(), &reqs).await) {
        match out {
            Ok(_) => {}
            // The elder or device is gone, or the key's alarm differs: raising again cannot help.
            Err(e @ (ApiError::InvalidArgument { .. } | ApiError::NotFound { .. } | ApiError::AlreadyExists(_))) => {
                tracing::error!(device = %o.device, error = %e, "cannot raise the device-offline alarm");
            }
            Err(e) => {
                // Not taken in (the journal failed, the server is stopping):
                // the silence is reported again, with the same key, shortly.
                tracing::error!(device = %o.device, error = %e, "device-offline alarm not raised; retrying");
                state.supervisor.report_failed(o, now + RETRY_MS);
            }
        }
    }
    if n > 0 {
        tracing::warn!(devices = n, "devices fell silent; DEVICE_OFFLINE alarms raised");
    }
    n
}

/// The supervision task: checks once a second until the server closes.
pub fn spawn(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let closed = state.closed();
        tokio::pin!(closed);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => { check(&state).await; }
                _ = &mut closed => return,
            }
        }
    })
}
