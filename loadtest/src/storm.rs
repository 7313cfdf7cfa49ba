//! The `storm` scenario's devices: one supervised device per elder, kept
//! alive by heartbeats on one Heartbeat stream (a gateway's), until 90% of
//! them fall silent at once (a power cut). The server's supervision must then
//! raise a DEVICE_OFFLINE alarm for each; [`Storm::check`] looks every one up
//! by the key supervision gives it (`supervision:{device}:{last heard}`),
//! which the tool knows because it stamps its heartbeats.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Declared heartbeat interval of every storm device, seconds.
const INTERVAL_S: u32 = 2;
/// Heartbeats are sent twice per interval.
const BEAT_EVERY: Duration = Duration::from_millis(INTERVAL_S as u64 * 500);
/// Supervision raises a device's alarm after three silent intervals and
/// checks once a second; the check waits this long after the silence at most.
const RAISE_WITHIN: Duration = Duration::from_secs(3 * INTERVAL_S as u64 + 10);

pub struct Storm {
    devices: Vec<String>,
    /// The elder each device is bound to.
    elders: Vec<String>,
    /// The heartbeats, once begun, and when the silent devices stop; the task
    /// answers the stamp of the last heartbeat each device sent.
    beats: Option<(Instant, tokio::task::JoinHandle<anyhow::Result<Vec<i64>>>)>,
}

/// Whether device `i` falls silent in the power cut: nine in ten.
fn falls_silent(i: usize) -> bool {
    !i.is_multiple_of(10)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Registers `devices[i]` for `elders[i]` with heartbeat interval
/// `interval_s` (0: not supervised), 64 calls at a time; each call's result.
async fn upsert_devices(
    channel: &Channel,
    devices: &[String],
    elders: &[String],
    interval_s: u32,
) -> Vec<Result<tonic::Response<pb::UpsertDeviceResponse>, tonic::Status>> {
    let reg = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    futures::stream::iter(devices.iter().zip(elders))
        .map(|(id, elder)| {
            let mut r = reg.clone();
            let device = pb::Device {
                id: id.clone(),
                elder_id: elder.clone(),
                kind: pb::DeviceKind::SosButton as i32,
                heartbeat_interval_s: interval_s,
                model: "anxin-loadtest".into(),
                ..Default::default()
            };
            async move { r.upsert_device(pb::UpsertDeviceRequest { device: Some(device) }).await }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

impl Storm {
    /// Registers a supervised device for every elder.
    pub async fn register(channel: &Channel, run_id: &str, elders: &[String]) -> anyhow::Result<Storm> {
        let devices: Vec<String> = (0..elders.len()).map(|i| format!("{run_id}-D{i}")).collect();
        for r in upsert_devices(channel, &devices, elders, INTERVAL_S).await {
            r.context("registering storm devices")?;
        }
        Ok(Storm { devices, elders: elders.to_vec(), beats: None })
    }

    /// Starts the heartbeats: 90% of the devices stop at `silence_at`, the
    /// rest at `until`.
    pub fn begin(&mut self, channel: &Channel, silence_at: Instant, until: Instant) {
        let reg = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
        self.beats = Some((silence_at, tokio::spawn(beat(reg, self.devices.clone(), silence_at, until))));
    }

    /// Waits for the heartbeats to end, then looks up every silent device's
    /// DEVICE_OFFLINE alarm, again each second for those not found yet, until
    /// all are found or supervision has had `RAISE_WITHIN` since the silence;
    /// then stops supervising the devices (so they raise nothing after the
    /// run). Returns (devices silenced, alarms found).
    pub async fn check(self, channel: &Channel, concurrency: usize) -> anyhow::Result<(u64, u64)> {
        let Some((at, beats)) = self.beats else { return Ok((0, 0)) };
        let last = beats.await.context("heartbeat task")??;
        let mut left: Vec<(String, String)> = (0..self.devices.len())
            .filter(|i| falls_silent(*i))
            .map(|i| (self.devices[i].clone(), format!("supervision:{}:{}", self.devices[i], last[i])))
            .collect();
        let silenced = left.len() as u64;
        let dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel.clone());
        // Not before three intervals and a check have passed.
        tokio::time::sleep_until((at + Duration::from_secs(3 * INTERVAL_S as u64 + 1)).into()).await;
        loop {
            let found: Vec<Result<Option<(String, String)>, tonic::Status>> = futures::stream::iter(left)
                .map(|(device, key)| {
                    let mut c = dispatch.clone();
                    async move {
                        let req = pb::GetIncidentRequest { idempotency_key: key.clone(), ..Default::default() };
                        match c.get_incident(req).await {
                            Ok(inc) if inc.get_ref().device_id == device => Ok(None),
                            Ok(_) => Err(tonic::Status::internal(format!("{key} is not an alarm of {device}"))),
                            Err(s) if s.code() == tonic::Code::NotFound => Ok(Some((device, key))),
                            Err(s) => Err(s),
                        }
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            left = Vec::new();
            for f in found {
                left.extend(f.context("looking up a DEVICE_OFFLINE alarm")?);
            }
            if left.is_empty() || Instant::now() >= at + RAISE_WITHIN {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for (device, key) in &left {
            eprintln!("no DEVICE_OFFLINE alarm for silent device {device} ({key})");
        }
        let _best_effort = upsert_devices(channel, &self.devices, &self.elders, 0).await;
        Ok((silenced, silenced - left.len() as u64))
    }
}

/// Sends a heartbeat for every live device each `BEAT_EVERY` on one stream;
/// from `silence_at` the silent ones stop, at `until` all do. Answers the
/// stamp of the last heartbeat sent for each device.
async fn beat(
    mut reg: pb::registry_service_client::RegistryServiceClient<Channel>,
    devices: Vec<String>,
    silence_at: Instant,
    until: Instant,
) -> anyhow::Result<Vec<i64>> {
    let (tx, rx) = mpsc::channel::<pb::DeviceHeartbeat>(4096);
    let call = tokio::spawn(async move { reg.heartbeat(ReceiverStream::new(rx)).await });
    let mut last = vec![0; devices.len()];
    let mut next = Instant::now();
    'beats: while next < until {
        tokio::time::sleep_until(next.into()).await;
        let quiet = Instant::now() >= silence_at;
        let at = now_ms();
        for (i, d) in devices.iter().enumerate().filter(|(i, _)| !(quiet && falls_silent(*i))) {
            if tx.send(pb::DeviceHeartbeat { device_id: d.clone(), at_unix_ms: at, battery_pct: 0 }).await.is_err() {
                break 'beats; // the stream ended: its answer says why
            }
            last[i] = at;
        }
        next += BEAT_EVERY;
    }
    drop(tx);
    let summary = call.await.context("heartbeat stream")?.context("Heartbeat")?.into_inner();
    if summary.rejected > 0 {
        anyhow::bail!("Heartbeat: {} heartbeats refused: {}", summary.rejected, summary.first_error);
    }
    Ok(last)
}
