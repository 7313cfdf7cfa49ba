//! The `storm` scenario's devices: one supervised device per elder, kept
//! alive by heartbeats on one Heartbeat stream (a gateway's), until 90% of
//! them fall silent at once (a power cut). The server's supervision must then
//! raise a DEVICE_OFFLINE alarm for each; [`Storm::check`] looks every one up
//! by the key supervision gives it (`supervision:{device}:{last heard}`),
//! which the tool knows because it stamps its heartbeats.
//!
//! Across a restart of the server the gateway's stream is opened again, as a
//! real gateway's is, and supervision starts afresh from the restart (see the
//! server's `supervision.rs`): a device silent since before the restart is
//! reported three intervals after it, under a key the tool cannot know, so
//! such a device's alarm is looked for among its elder's incidents.

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
    /// answers what [`beat`] does.
    beats: Option<(Instant, tokio::task::JoinHandle<anyhow::Result<Beats>>)>,
}

/// What the heartbeat task saw.
struct Beats {
    /// The stamp of the last heartbeat sent for each device.
    last: Vec<i64>,
    /// If the server went away: when the stream was last opened again (or,
    /// if it was still away at the end, then). Supervision started afresh no
    /// earlier than this.
    afresh: Option<Instant>,
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
    /// rest at `until`. A broken stream is opened again for up to `retry_for`.
    pub fn begin(&mut self, channel: &Channel, silence_at: Instant, until: Instant, retry_for: Duration) {
        let reg = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
        let beats = beat(reg, self.devices.clone(), silence_at, until, retry_for);
        self.beats = Some((silence_at, tokio::spawn(beats)));
    }

    /// Waits for the heartbeats to end, then looks up every silent device's
    /// DEVICE_OFFLINE alarm, again each second for those not found yet, until
    /// all are found or supervision has had `RAISE_WITHIN` since the silence
    /// (or since the server came back, if it restarted; lookups wait for it
    /// for up to `retry_for`); then stops supervising the devices (so they
    /// raise nothing after the run). Returns (devices silenced, alarms found).
    pub async fn check(self, channel: &Channel, concurrency: usize, retry_for: Duration) -> anyhow::Result<(u64, u64)> {
        let Some((at, beats)) = self.beats else { return Ok((0, 0)) };
        let Beats { last, afresh } = beats.await.context("heartbeat task")??;
        let mut left: Vec<Silent> = (0..self.devices.len())
            .filter(|i| falls_silent(*i))
            .map(|i| Silent {
                key: format!("supervision:{}:{}", self.devices[i], last[i]),
                device: self.devices[i].clone(),
                elder: self.elders[i].clone(),
            })
            .collect();
        let silenced = left.len() as u64;
        let dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel.clone());
        let silence_ms = now_ms() - at.elapsed().as_millis() as i64;
        // Supervision's clock: from the silence, or afresh from a restart.
        let mut since = afresh.map_or(at, |r| r.max(at));
        let mut restarted = afresh.is_some_and(|r| r > at);
        let give_up = Instant::now() + retry_for + RAISE_WITHIN;
        // Not before three intervals and a check have passed.
        tokio::time::sleep_until((since + Duration::from_secs(3 * INTERVAL_S as u64 + 1)).into()).await;
        loop {
            let looked: Vec<(Silent, Result<bool, tonic::Status>)> = futures::stream::iter(left)
                .map(|s| {
                    let c = dispatch.clone();
                    async move {
                        let found = raised(c, &s, restarted, silence_ms).await;
                        (s, found)
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            left = Vec::new();
            let mut away = false;
            for (s, found) in looked {
                match found {
                    Ok(true) => {}
                    Ok(false) => left.push(s),
                    // The server is away (restarting): look again when it is back.
                    Err(e) if server_away(&e) => {
                        away = true;
                        left.push(s);
                    }
                    Err(e) => return Err(e).context("looking up a DEVICE_OFFLINE alarm"),
                }
            }
            if away {
                // Supervision starts afresh when it is back.
                (since, restarted) = (Instant::now(), true);
            }
            if left.is_empty() || Instant::now() >= (since + RAISE_WITHIN).min(give_up) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for s in &left {
            eprintln!("no DEVICE_OFFLINE alarm for silent device {} ({})", s.device, s.key);
        }
        let _best_effort = upsert_devices(channel, &self.devices, &self.elders, 0).await;
        Ok((silenced, silenced - left.len() as u64))
    }
}

/// Whether a call failed because the server went away (it was killed or is
/// restarting), rather than answering.
fn server_away(e: &tonic::Status) -> bool {
    matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
}

/// A device that fell silent, and the key of the alarm supervision raises for
/// it (unless the server restarted since).
struct Silent {
    device: String,
    elder: String,
    key: String,
}

/// Whether `s`'s DEVICE_OFFLINE alarm is on the server: by its key, or, after
/// a restart of the server (which gives it a key of the restart's time), as
/// an incident of `s`'s elder from its device, received after the silence.
async fn raised(
    mut c: pb::dispatch_service_client::DispatchServiceClient<Channel>,
    s: &Silent,
    restarted: bool,
    silence_ms: i64,
) -> Result<bool, tonic::Status> {
    let req = pb::GetIncidentRequest { idempotency_key: s.key.clone(), ..Default::default() };
    match c.get_incident(req).await {
        Ok(inc) if inc.get_ref().device_id == s.device => return Ok(true),
        Ok(_) => return Err(tonic::Status::internal(format!("{} is not an alarm of {}", s.key, s.device))),
        Err(e) if e.code() == tonic::Code::NotFound && restarted => {}
        Err(e) if e.code() == tonic::Code::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let req = pb::ListIncidentsRequest { elder_id: s.elder.clone(), page_size: 1000, ..Default::default() };
    let listed = c.list_incidents(req).await?.into_inner();
    Ok(listed.incidents.iter().any(|i| {
        i.device_id == s.device && i.kind == pb::AlarmKind::DeviceOffline as i32 && i.received_unix_ms >= silence_ms
    }))
}

/// Sends a heartbeat for every live device each `BEAT_EVERY` on one stream;
/// from `silence_at` the silent ones stop, at `until` all do. A stream the
/// server broke (it went away) is opened again, for up to `retry_for` after
/// it broke; heartbeats due meanwhile are not sent (a gateway's heartbeats
/// are of the moment).
async fn beat(
    reg: pb::registry_service_client::RegistryServiceClient<Channel>,
    devices: Vec<String>,
    silence_at: Instant,
    until: Instant,
    retry_for: Duration,
) -> anyhow::Result<Beats> {
    type Call = tokio::task::JoinHandle<Result<tonic::Response<pb::HeartbeatSummary>, tonic::Status>>;
    let open = || -> (mpsc::Sender<pb::DeviceHeartbeat>, Call) {
        let (tx, rx) = mpsc::channel::<pb::DeviceHeartbeat>(4096);
        let mut reg = reg.clone();
        (tx, tokio::spawn(async move { reg.heartbeat(ReceiverStream::new(rx)).await }))
    };
    let (mut tx, mut call) = open();
    let mut beats = Beats { last: vec![0; devices.len()], afresh: None };
    let mut broke: Option<Instant> = None;
    let mut next = Instant::now();
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        next += BEAT_EVERY;
        let quiet = Instant::now() >= silence_at;
        let at = now_ms();
        let mut sent = true;
        for (i, d) in devices.iter().enumerate().filter(|(i, _)| !(quiet && falls_silent(*i))) {
            if tx.send(pb::DeviceHeartbeat { device_id: d.clone(), at_unix_ms: at, battery_pct: 0 }).await.is_err() {
                sent = false; // the stream ended: its answer says why
                break;
            }
            beats.last[i] = at;
        }
        if sent {
            if broke.take().is_some() {
                beats.afresh = Some(Instant::now());
            }
            continue;
        }
        match call.await.context("heartbeat stream")? {
            Err(e) if server_away(&e) => {
                let since = *broke.get_or_insert_with(Instant::now);
                if since.elapsed() > retry_for {
                    return Err(e).context(format!("Heartbeat (gave up after {} s)", retry_for.as_secs_f64()));
                }
                (tx, call) = open();
            }
            Err(e) => return Err(e).context("Heartbeat"),
            Ok(_) => anyhow::bail!("Heartbeat: the server ended the stream"),
        }
    }
    if broke.is_some() {
        beats.afresh = Some(Instant::now()); // opened again at the very end
    }
    drop(tx);
    let summary = match call.await.context("heartbeat stream")? {
        // Away at the end: the check waits for it.
        Err(e) if server_away(&e) => {
            beats.afresh = Some(Instant::now());
            return Ok(beats);
        }
        answer => answer.context("Heartbeat")?.into_inner(),
    };
    if summary.rejected > 0 {
        anyhow::bail!("Heartbeat: {} heartbeats refused: {}", summary.rejected, summary.first_error);
    }
    Ok(beats)
}
