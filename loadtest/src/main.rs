//! `anxin-loadtest`: drives an Anxin server through its public gRPC API —
//! seeds elders and caregivers, simulates caregiver apps and device gateways —
//! and measures acknowledgement and assignment latency with HDR histograms.
//! `verify` checks that every acknowledged alarm exists on the server.
//! Talks to the server only on the address given; every loop is bounded.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// mimalloc, as the server ships with: the generator allocates a message per
/// alarm on several threads and must not be what limits a run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

mod storm;

#[derive(Debug, Parser)]
#[command(name = "anxin-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seed the registry, simulate caregivers and gateways, and measure.
    Run(RunArgs),
    /// Confirm that every acknowledged alarm of an acked log exists on the server.
    Verify {
        #[arg(long)]
        target: String,
        #[arg(long)]
        acked_log: PathBuf,
        /// Look-ups in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Scenario {
    /// Constant rate.
    Steady,
    /// A 20x spike in the middle fifth of the run.
    Burst,
    /// Every elder's device sends heartbeats; at the start of the middle fifth 90% of them fall
    /// silent at once (a power cut) and critical alarms spike 20x. The server's supervision must raise
    /// a DEVICE_OFFLINE alarm for every silent device; the run checks each one.
    Storm,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    /// Gateways on StreamAlarms.
    Stream,
    /// RaiseAlarm calls, `--concurrency` in flight.
    Unary,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Server URL, e.g. http://127.0.0.1:50051 (loopback only in tests and CI).
    #[arg(long)]
    target: String,
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    scenario: Scenario,
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    mode: Mode,
    /// Alarms per second (base rate).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of load (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 200)]
    caregivers: usize,
    #[arg(long, default_value_t = 2000)]
    elders: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A caregiver's pace, seconds: from an offer to accepting it, from accepting to arriving, and
    /// from arriving to resolving, each drawn from [0.5, 1.5] x this. Real caregivers take minutes;
    /// 0 acts at once (the heaviest load per alarm: three more durable calls right away).
    #[arg(long, default_value_t = 2.0)]
    pace_s: f64,
    /// Every caregiver app sends a position fix about this often (a walk of up to ~100 m each time)
    /// on its UpdateLocation stream; 0 keeps caregivers still.
    #[arg(long, default_value_t = 5.0)]
    move_every_s: f64,
    /// Stream mode: alarms sent but not yet acknowledged on one gateway stream, at most (a
    /// gateway's buffer); beyond it the gateway waits for acknowledgements.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Requests in flight in unary mode; gateway streams in stream mode.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Append the idempotency key of every acknowledged alarm, one per line (written within
    /// `LOG_FLUSH` of its acknowledgement).
    #[arg(long)]
    acked_log: Option<PathBuf>,
    /// Seconds a gateway keeps trying an alarm the server did not answer (a failed call, or a
    /// stream that broke) before counting it lost: it sends it again with the same key.
    #[arg(long, default_value_t = 60.0)]
    retry_for: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Run(a) => run(a).await,
        Command::Verify { target, acked_log, concurrency } => verify(&target, &acked_log, concurrency).await,
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("anxin-loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn connect(target: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(target.to_owned())
        .with_context(|| format!("--target: {target:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))
}

struct Stats {
    sent: AtomicU64,
    acked: AtomicU64,
    /// Refused by the server (a bad request, or a routine alarm shed under overload).
    rejected: AtomicU64,
    /// Answered with an error that is not a refusal (the server failed to take the alarm in):
    /// these count as lost.
    failed: AtomicU64,
    assigned: AtomicU64,
    escalated: AtomicU64,
    /// Alarms sent again (same key): after a failed unary call, or on a new
    /// stream after the old one broke.
    resent: AtomicU64,
    ack_us: Mutex<Histogram<u64>>,
    assign_us: Mutex<Histogram<u64>>,
    acked_log: Option<Mutex<AckedLog>>,
    /// Acknowledged keys whose write to the acked log failed (`verify` would
    /// never check them, so the run fails).
    unlogged: AtomicU64,
}

impl Stats {
    fn ack(&self, key: &str, sent: Instant, r: Option<pb::alarm_ack::Result>) {
        let us = sent.elapsed().as_micros().max(1) as u64;
        match r {
            Some(pb::alarm_ack::Result::Accepted(resp)) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                let _ = self.ack_us.lock().record(us);
                let state = resp.incident.map(|i| i.state).unwrap_or(0);
                if state == pb::IncidentState::Offered as i32 {
                    self.assigned.fetch_add(1, Ordering::Relaxed);
                    let _ = self.assign_us.lock().record(us);
                } else if state == pb::IncidentState::Escalated as i32 {
                    self.escalated.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(log) = &self.acked_log {
                    let mut log = log.lock();
                    if writeln!(log.out, "{key}").is_ok() {
                        log.buffered += 1;
                    } else {
                        let lost = std::mem::take(&mut log.buffered) + 1;
                        self.unlogged.fetch_add(lost, Ordering::Relaxed);
                    }
                }
            }
            Some(pb::alarm_ack::Result::Error(e)) if is_refusal(tonic::Code::from_i32(e.code)) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes out the acked log's buffer. Keys in a buffer that failed to
    /// be written count as unlogged.
    fn flush_log(&self) -> std::io::Result<()> {
        let Some(log) = &self.acked_log else { return Ok(()) };
        let mut log = log.lock();
        let r = log.out.flush();
        let buffered = std::mem::take(&mut log.buffered);
        if r.is_err() {
            self.unlogged.fetch_add(buffered, Ordering::Relaxed);
        }
        r
    }
}

/// The acked log: keys buffered, written out every `LOG_FLUSH` and at the end.
struct AckedLog {
    out: std::io::BufWriter<std::fs::File>,
    /// Keys written to the buffer since it was last written out.
    buffered: u64,
}

/// How often the acked log's buffer is written out during a run.
const LOG_FLUSH: Duration = Duration::from_millis(100);

/// A status by which the server refused an alarm (it will refuse it again):
/// counted as rejected. Any other failure is the server failing to take it
/// in: a gateway sends it again, and if it never gets in it is lost.
fn is_refusal(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument
            | NotFound
            | AlreadyExists
            | PermissionDenied
            | FailedPrecondition
            | OutOfRange
            | ResourceExhausted
            | Unauthenticated
            | Unimplemented
    )
}

fn hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("histogram")
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    serde_json::json!({
        "p50": ms(h.value_at_quantile(0.5)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

const CENTRE: (f64, f64) = (43.8650, 125.3860);

fn near(rng: &mut StdRng, km: f64) -> pb::GeoPoint {
    let r = km * rng.random::<f64>().sqrt();
    let a = rng.random::<f64>() * std::f64::consts::TAU;
    pb::GeoPoint {
        lat: CENTRE.0 + r * a.cos() / 111.2,
        lon: CENTRE.1 + r * a.sin() / (111.2 * CENTRE.0.to_radians().cos()),
    }
}

/// Every `NURSING_EVERY`-th elder is disabled (失能) and needs a caregiver
/// with the skill `nursing`, which every `NURSES_EVERY`-th caregiver holds,
/// so alarms of those elders take the dispatcher's skill-aware search.
const NURSING_EVERY: usize = 10;
const NURSES_EVERY: usize = 4;

/// Seeds the registry; returns the elder ids and the caregivers with their home points.
async fn seed(
    channel: &Channel,
    a: &RunArgs,
    run_id: &str,
) -> anyhow::Result<(Vec<String>, Vec<(String, pb::GeoPoint)>)> {
    let reg = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let mut rng = StdRng::seed_from_u64(a.seed);
    let elders: Vec<pb::Elder> = (0..a.elders)
        .map(|i| pb::Elder {
            id: format!("{run_id}-E{i}"),
            name: format!("elder {i}"),
            location: Some(near(&mut rng, 8.0)),
            categories: vec![if i % NURSING_EVERY == 0 {
                pb::ElderCategory::Disabled
            } else {
                pb::ElderCategory::LivingAlone
            } as i32],
            required_skill: if i % NURSING_EVERY == 0 { "nursing".into() } else { String::new() },
            ..Default::default()
        })
        .collect();
    let ids: Vec<String> = elders.iter().map(|e| e.id.clone()).collect();
    let results: Vec<_> = futures::stream::iter(elders)
        .map(|e| {
            let mut r = reg.clone();
            async move { r.upsert_elder(pb::UpsertElderRequest { elder: Some(e) }).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r.context("seeding elders")?;
    }
    let cgs: Vec<(String, pb::GeoPoint)> =
        (0..a.caregivers).map(|i| (format!("{run_id}-C{i}"), near(&mut rng, 8.0))).collect();
    let app = pb::caregiver_service_client::CaregiverServiceClient::new(channel.clone());
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(cgs.iter().cloned().enumerate())
        .map(|(i, (id, home))| {
            let (mut reg, mut app) = (reg.clone(), app.clone());
            async move {
                let c = pb::Caregiver {
                    id: id.clone(),
                    home: Some(home),
                    mode: [pb::TravelMode::Walk, pb::TravelMode::Bike, pb::TravelMode::Car][i % 3] as i32,
                    skills: if i % NURSES_EVERY == 0 { vec!["nursing".into()] } else { Vec::new() },
                    ..Default::default()
                };
                reg.upsert_caregiver(pb::UpsertCaregiverRequest { caregiver: Some(c) }).await?;
                app.set_status(pb::SetStatusRequest {
                    caregiver_id: id,
                    status: pb::CaregiverStatus::Available as i32,
                    location: Some(home),
                })
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r.context("seeding caregivers")?;
    }
    let cg_ids = cgs;
    Ok((ids, cg_ids))
}

/// A caregiver app: declines some offers; accepts the others, arrives and
/// resolves, each step after a human pause of `pace_s` (drawn from [0.5, 1.5]
/// x pace). An offer withdrawn meanwhile (the other caregiver of a critical
/// alarm accepted first) just fails the next step.
async fn caregiver(channel: Channel, id: String, seed: u64, pace_s: f64, deadline: Instant) {
    let mut app = pb::caregiver_service_client::CaregiverServiceClient::new(channel.clone());
    let mut d = pb::dispatch_service_client::DispatchServiceClient::new(channel);
    let Ok(r) = app.watch_assignments(pb::WatchAssignmentsRequest { caregiver_id: id.clone() }).await else { return };
    let mut feed = r.into_inner();
    let mut rng = StdRng::seed_from_u64(seed);
    let pause = |rng: &mut StdRng| Duration::from_secs_f64(pace_s * rng.random_range(0.5..1.5));
    while let Ok(Some(Ok(ev))) = tokio::time::timeout_at(deadline.into(), feed.next()).await {
        if ev.kind != pb::AssignmentEventKind::Offer as i32 {
            continue;
        }
        let Some(inc) = ev.incident else { continue };
        let act =
            pb::IncidentActionRequest { incident_id: inc.id.clone(), caregiver_id: id.clone(), note: String::new() };
        tokio::time::sleep(pause(&mut rng)).await;
        if rng.random_bool(0.05) {
            let _ = d.decline_incident(act).await;
            continue;
        }
        if d.accept_incident(act.clone()).await.is_err() {
            continue;
        }
        tokio::time::sleep(pause(&mut rng)).await;
        if d.mark_arrived(act).await.is_err() {
            continue;
        }
        tokio::time::sleep(pause(&mut rng)).await;
        let _ = d
            .resolve_incident(pb::ResolveIncidentRequest {
                incident_id: inc.id,
                caregiver_id: id.clone(),
                outcome: pb::ResolutionOutcome::Assisted as i32,
                note: String::new(),
            })
            .await;
    }
}

/// A caregiver on the move: a position fix about every `every_s` seconds on
/// one UpdateLocation stream, each up to ~100 m from the last, until `until`.
async fn mover(channel: Channel, id: String, home: pb::GeoPoint, seed: u64, every_s: f64, until: Instant) {
    let mut app = pb::caregiver_service_client::CaregiverServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::LocationUpdate>(4);
    let call = tokio::spawn(async move { app.update_location(ReceiverStream::new(rx)).await });
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(7));
    let mut at = home;
    // Spread the first fixes over one interval so the caregivers do not move in lockstep.
    let mut next = Instant::now() + Duration::from_secs_f64(every_s * rng.random::<f64>());
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        at.lat += rng.random_range(-0.0009..0.0009);
        at.lon += rng.random_range(-0.0012..0.0012);
        let fix = pb::LocationUpdate { caregiver_id: id.clone(), location: Some(at), ..Default::default() };
        if tx.send(fix).await.is_err() {
            break;
        }
        next += Duration::from_secs_f64(every_s * rng.random_range(0.5..1.5));
    }
    drop(tx);
    let _ = call.await;
}

fn alarm_for(rng: &mut StdRng, elders: &[String], key: String, storm: bool) -> pb::RaiseAlarmRequest {
    use pb::AlarmKind as K;
    let kind = if storm {
        [K::SosButton, K::Fall, K::Smoke, K::Gas][rng.random_range(0..4)]
    } else {
        [
            K::SosButton,
            K::Fall,
            K::Inactivity,
            K::Smoke,
            K::Gas,
            K::Wandering,
            K::AbnormalVitals,
            K::DeviceOffline,
            K::LowBattery,
        ][rng.random_range(0..9)]
    };
    pb::RaiseAlarmRequest {
        idempotency_key: key,
        elder_id: elders[rng.random_range(0..elders.len())].clone(),
        kind: kind as i32,
        ..Default::default()
    }
}

async fn run(a: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    if !(a.rate > 0.0 && a.rate <= 10_000_000.0) {
        bail!("--rate: {} is not in (0, 10000000]", a.rate);
    }
    if !(a.duration > 0.0 && a.duration <= 3600.0) {
        bail!("--duration: {} is not in (0, 3600] seconds", a.duration);
    }
    if a.elders == 0 || a.caregivers == 0 || a.concurrency == 0 || a.window == 0 {
        bail!("--elders, --caregivers, --concurrency and --window must be at least 1");
    }
    if !(0.0..=3600.0).contains(&a.retry_for) {
        bail!("--retry-for: {} is not in [0, 3600] seconds", a.retry_for);
    }
    if !(0.0..=600.0).contains(&a.pace_s) {
        bail!("--pace-s: {} is not in [0, 600] seconds", a.pace_s);
    }
    if !(a.move_every_s == 0.0 || (0.1..=3600.0).contains(&a.move_every_s)) {
        bail!("--move-every-s: {} is neither 0 nor in [0.1, 3600] seconds", a.move_every_s);
    }
    let channel = connect(&a.target).await?;
    let run_id = format!("lt{}-{}", a.seed, std::process::id());
    eprintln!("seeding {} elders and {} caregivers ...", a.elders, a.caregivers);
    let (elders, cgs) = seed(&channel, &a, &run_id).await?;
    let mut storm = match a.scenario {
        Scenario::Storm => Some(storm::Storm::register(&channel, &run_id, &elders).await?),
        _ => None,
    };
    let elders = Arc::new(elders);
    let acked_log = match &a.acked_log {
        Some(p) => Some(Mutex::new(AckedLog {
            out: std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("--acked-log {}", p.display()))?,
            ),
            buffered: 0,
        })),
        None => None,
    };
    let stats = Arc::new(Stats {
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        assigned: AtomicU64::new(0),
        escalated: AtomicU64::new(0),
        resent: AtomicU64::new(0),
        ack_us: Mutex::new(hist()?),
        assign_us: Mutex::new(hist()?),
        acked_log,
        unlogged: AtomicU64::new(0),
    });
    let total = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    if let Some(storm) = &mut storm {
        // The power cut: at the start of the middle fifth, as the spike.
        storm.begin(&channel, start + total.mul_f64(0.4), start + total, Duration::from_secs_f64(a.retry_for));
    }
    let apps_deadline = start + total + Duration::from_secs(30);
    for (i, (id, home)) in cgs.into_iter().enumerate() {
        let seed = a.seed ^ i as u64;
        if a.move_every_s > 0.0 {
            tokio::spawn(mover(channel.clone(), id.clone(), home, seed, a.move_every_s, start + total));
        }
        tokio::spawn(caregiver(channel.clone(), id, seed, a.pace_s, apps_deadline));
    }
    // Senders: each owns a share of the rate and paces itself.
    let senders = a.concurrency.clamp(1, 64);
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (a, stats, elders, channel, run_id) =
            (a.clone(), stats.clone(), elders.clone(), channel.clone(), run_id.clone());
        tasks.push(tokio::spawn(
            async move { sender(s, senders, a, stats, elders, channel, run_id, start, total).await },
        ));
    }
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let acked = stats.acked.load(Ordering::Relaxed);
                let p99 = stats.ack_us.lock().value_at_quantile(0.99) as f64 / 1000.0;
                eprintln!(
                    "t={:>5.1}s sent {} acked {} ({}/s) rejected {} failed {} p99 ack {:.2} ms",
                    start.elapsed().as_secs_f64(),
                    stats.sent.load(Ordering::Relaxed),
                    acked,
                    acked - last,
                    stats.rejected.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed),
                    p99
                );
                last = acked;
            }
        })
    };
    // Keys reach the acked log within LOG_FLUSH of their acknowledgement, so
    // a run cut short (the tool killed) leaves nearly all of them behind.
    let log_flusher = {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOG_FLUSH).await;
                let _ = stats.flush_log(); // counted as unlogged; the run fails below
            }
        })
    };
    for t in tasks {
        t.await.context("sender task")??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (silenced, offline_raised) = match storm {
        Some(storm) => {
            eprintln!("storm: checking the silent devices' DEVICE_OFFLINE alarms ...");
            storm.check(&channel, a.concurrency, Duration::from_secs_f64(a.retry_for)).await?
        }
        None => (0, 0),
    };
    progress.abort();
    log_flusher.abort();
    if let Some(path) = &a.acked_log {
        let flushed = stats.flush_log();
        let unlogged = stats.unlogged.load(Ordering::Relaxed);
        if unlogged > 0 {
            bail!("--acked-log {}: {unlogged} acknowledged keys failed to be written", path.display());
        }
        flushed.with_context(|| format!("--acked-log {}: writing", path.display()))?;
    }
    let sent = stats.sent.load(Ordering::Relaxed);
    let acked = stats.acked.load(Ordering::Relaxed);
    let rejected = stats.rejected.load(Ordering::Relaxed);
    let result = serde_json::json!({
        "scenario": format!("{:?}", a.scenario).to_lowercase(),
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "sent": sent,
        "acked": acked,
        "rejected": rejected,
        "failed": stats.failed.load(Ordering::Relaxed),
        "resent": stats.resent.load(Ordering::Relaxed),
        "assigned": stats.assigned.load(Ordering::Relaxed),
        "escalated": stats.escalated.load(Ordering::Relaxed),
        "lost": sent - acked - rejected,
        "devices_silenced": silenced,
        "offline_raised": offline_raised,
        "duration_s": elapsed,
        "ack_throughput_per_s": acked as f64 / elapsed,
        "ack_latency_ms": summary(&stats.ack_us.lock()),
        "assign_latency_ms": summary(&stats.assign_us.lock()),
    });
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    if let Some(p) = &a.json {
        std::fs::write(p, &text).with_context(|| format!("--json {}", p.display()))?;
    }
    let whole = sent == acked + rejected && offline_raised == silenced;
    Ok(if whole { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

/// A gateway's alarm awaiting its ack: key, first send time, place in the
/// window, and the request itself (sent again if the stream breaks).
type Pending = (String, Instant, tokio::sync::OwnedSemaphorePermit, pb::RaiseAlarmRequest);
type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// One open StreamAlarms call: the request side and the task reading acks
/// (it ends when the stream closes, breaks or falls silent for `ACK_SILENCE`).
struct Link {
    tx: mpsc::Sender<pb::RaiseAlarmRequest>,
    reader: tokio::task::JoinHandle<()>,
}

/// Opens a stream, retrying for `retry_for` (the server may be
/// restarting), and sends every alarm still pending on it again with its key:
/// the server answers a retry of a stored alarm as a duplicate of it, and
/// takes in one it never stored. A real gateway does the same.
async fn open_link(
    client: &mut pb::alarm_service_client::AlarmServiceClient<Channel>,
    pending: &PendingMap,
    stats: &Arc<Stats>,
    retry_for: Duration,
) -> anyhow::Result<Link> {
    let give_up = Instant::now() + retry_for;
    loop {
        let (tx, rx) = mpsc::channel::<pb::RaiseAlarmRequest>(4096);
        match client.stream_alarms(ReceiverStream::new(rx)).await {
            Ok(r) => {
                let mut acks = r.into_inner();
                let (stats2, pending2) = (stats.clone(), pending.clone());
                // Ends with the stream, or after ACK_SILENCE without an ack.
                let reader = tokio::spawn(async move {
                    while let Ok(Some(Ok(ack))) = tokio::time::timeout(ACK_SILENCE, acks.next()).await {
                        if let Some((key, t, _slot, _)) = pending2.lock().remove(&ack.sequence) {
                            stats2.ack(&key, t, ack.result);
                        }
                    }
                });
                let mut again: Vec<(u64, pb::RaiseAlarmRequest)> =
                    pending.lock().iter().map(|(n, p)| (*n, p.3.clone())).collect();
                again.sort_unstable_by_key(|(n, _)| *n);
                stats.resent.fetch_add(again.len() as u64, Ordering::Relaxed);
                for (_, req) in again {
                    if tx.send(req).await.is_err() {
                        break; // broke again: the caller reopens
                    }
                }
                return Ok(Link { tx, reader });
            }
            // Expected while the server restarts: try again shortly.
            Err(_) if Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(status) => bail!("StreamAlarms: {status} (gave up after {} s)", retry_for.as_secs_f64()),
        }
    }
}

/// A stream that has sent nothing back for this long is given up on.
const ACK_SILENCE: Duration = Duration::from_secs(30);

#[allow(clippy::too_many_arguments)]
async fn sender(
    s: usize,
    senders: usize,
    a: RunArgs,
    stats: Arc<Stats>,
    elders: Arc<Vec<String>>,
    channel: Channel,
    run_id: String,
    start: Instant,
    total: Duration,
) -> anyhow::Result<()> {
    let retry_for = Duration::from_secs_f64(a.retry_for);
    let mut rng = StdRng::seed_from_u64(a.seed.wrapping_add(1000 + s as u64));
    let mut n = 0u64;
    let mut client = pb::alarm_service_client::AlarmServiceClient::new(channel);
    let pending: PendingMap = Arc::default();
    let window = Arc::new(tokio::sync::Semaphore::new(a.window));
    let mut link =
        if a.mode == Mode::Stream { Some(open_link(&mut client, &pending, &stats, retry_for).await?) } else { None };
    let in_flight = (a.concurrency / senders).max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut due = start;
    while start.elapsed() < total {
        let frac = start.elapsed().as_secs_f64() / total.as_secs_f64();
        let spike = (0.4..0.6).contains(&frac) && a.scenario != Scenario::Steady;
        let rate = a.rate / senders as f64 * if spike { 20.0 } else { 1.0 };
        due += Duration::from_secs_f64(1.0 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        n += 1;
        let key = format!("{run_id}-s{s}-{n}");
        let mut req = alarm_for(&mut rng, &elders, key.clone(), spike && a.scenario == Scenario::Storm);
        req.sequence = n;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        match &mut link {
            Some(l) => {
                let slot = window.clone().acquire_owned().await?;
                pending.lock().insert(n, (key, now, slot, req.clone()));
                if l.tx.send(req).await.is_err() {
                    // The stream broke (the server died?): reopen it; this alarm is resent with the rest.
                    *l = open_link(&mut client, &pending, &stats, retry_for).await?;
                }
            }
            None => {
                let permit = slots.clone().acquire_owned().await?;
                let (mut c, stats) = (client.clone(), stats.clone());
                // Not joined one by one: a kept handle keeps its task's memory
                // (0.9-1 GB after 15 s at 18k calls/s), and faulting in fresh
                // pages for every call cost 8% more CPU per call.
                tokio::spawn(async move {
                    let result = raise_until_answered(&mut c, req, &stats, retry_for).await;
                    stats.ack(&key, now, result);
                    drop(permit);
                });
            }
        }
    }
    // Every unary call has ended once all its permits are back.
    drop(slots.acquire_many(in_flight as u32).await?);
    // Drain: close the request side and wait for the acks; a stream that ended
    // with alarms still pending (it broke, or the server was restarting) is
    // reopened and they are sent again.
    let give_up = Instant::now() + retry_for;
    while let Some(Link { tx, reader }) = link.take() {
        drop(tx);
        let _ = reader.await;
        if pending.lock().is_empty() || Instant::now() > give_up {
            break;
        }
        link = Some(open_link(&mut client, &pending, &stats, retry_for).await?);
    }
    Ok(())
}

/// A unary call waits this long for its answer before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises `req` by unary calls until the server answers it (accepted or
/// refused), sending it again with the same key after any other failure (the
/// server restarting, a broken connection, an internal error) for up to
/// `retry_for`, as a real gateway does. `None` if it never got an answer.
async fn raise_until_answered(
    client: &mut pb::alarm_service_client::AlarmServiceClient<Channel>,
    req: pb::RaiseAlarmRequest,
    stats: &Stats,
    retry_for: Duration,
) -> Option<pb::alarm_ack::Result> {
    let give_up = Instant::now() + retry_for;
    loop {
        let status = match tokio::time::timeout(CALL_TIMEOUT, client.raise_alarm(req.clone())).await {
            Ok(Ok(resp)) => return Some(pb::alarm_ack::Result::Accepted(resp.into_inner())),
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("no answer"),
        };
        if is_refusal(status.code()) {
            let error = pb::AckError { code: status.code() as i32, message: status.message().to_owned() };
            return Some(pb::alarm_ack::Result::Error(error));
        }
        if Instant::now() >= give_up {
            return None;
        }
        stats.resent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn verify(target: &str, log: &PathBuf, concurrency: usize) -> anyhow::Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(log).with_context(|| format!("--acked-log {}", log.display()))?;
    let keys: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let channel = connect(target).await?;
    let client = pb::dispatch_service_client::DispatchServiceClient::new(channel);
    let missing = Arc::new(AtomicU64::new(0));
    let results: Vec<Result<(), tonic::Status>> = futures::stream::iter(keys.iter().cloned())
        .map(|key| {
            let (mut c, missing) = (client.clone(), missing.clone());
            async move {
                match c
                    .get_incident(pb::GetIncidentRequest { idempotency_key: key.clone(), ..Default::default() })
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        eprintln!("missing: {key}");
                        missing.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(s) => Err(s),
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for r in results {
        r.context("looking up an alarm")?;
    }
    let m = missing.load(Ordering::Relaxed);
    println!("{}", serde_json::json!({"checked": keys.len(), "missing": m}));
    Ok(if m == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
