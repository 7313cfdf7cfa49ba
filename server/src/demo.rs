//! `anxin demo`: a synthetic but realistic district (Changchun, Erdao
//! district) driven through the real gRPC API of an in-process server on a
//! temporary store: elders with their devices, caregivers moving around and
//! answering offers in their app, a device gateway streaming mixed alarms
//! (with a cold-wave burst), and a supervisor handling escalations. Prints a
//! live line every second and a final report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::config::{Config, RawConfig};

/// Erdao district (二道区), Changchun: the district centre.
const CENTRE: (f64, f64) = (43.8650, 125.3860);

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds of simulated alarm traffic.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Elders in the district.
    #[arg(long, default_value_t = 3000)]
    pub elders: usize,
    /// Caregivers on duty.
    #[arg(long, default_value_t = 100)]
    pub caregivers: usize,
    /// Mean alarms per second (a 4x cold-wave burst runs in the middle third).
    #[arg(long, default_value_t = 12.0)]
    pub rate: f64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seconds the planner may spend on the district's visits of next month (0 = skip planning).
    #[arg(long, default_value_t = 20.0)]
    pub plan_time_limit: f64,
}

#[derive(Default)]
struct Metrics {
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    merged: AtomicU64,
    offered_on_ack: AtomicU64,
    escalated_on_ack: AtomicU64,
    events: Mutex<HashMap<String, u64>>,
    ack_ms: Mutex<Option<Histogram<u64>>>,
    window_ack_ms: Mutex<Option<Histogram<u64>>>,
    caregiver_jobs: Mutex<HashMap<String, u64>>,
}

fn hist() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).ok()
}

impl Metrics {
    fn record_ack(&self, us: u64) {
        for h in [&self.ack_ms, &self.window_ack_ms] {
            if let Some(h) = h.lock().as_mut() {
                let _ = h.record(us.max(1));
            }
        }
    }
}

fn pct(h: &Option<Histogram<u64>>, q: f64) -> f64 {
    h.as_ref().map(|h| h.value_at_quantile(q) as f64 / 1000.0).unwrap_or(0.0)
}

const SURNAMES: &[&str] =
    &["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "马", "朱", "胡", "郭"];
const GIVEN: &[&str] =
    &["秀英", "桂兰", "玉兰", "淑珍", "凤英", "建国", "国华", "德明", "志强", "春生", "文华", "桂芝"];
const STREETS: &[&str] = &["东盛街道", "吉林街道", "荣光街道", "东站街道", "远达街道", "八里堡街道", "长青街道"];

fn point_near(rng: &mut StdRng, centre: (f64, f64), km: f64) -> pb::GeoPoint {
    let r = km * rng.random::<f64>().sqrt();
    let a = rng.random::<f64>() * std::f64::consts::TAU;
    let dlat = r * a.cos() / 111.2;
    let dlon = r * a.sin() / (111.2 * centre.0.to_radians().cos());
    pb::GeoPoint { lat: centre.0 + dlat, lon: centre.1 + dlon }
}

struct District {
    elders: Vec<pb::Elder>,
    devices: Vec<pb::Device>,
    caregivers: Vec<pb::Caregiver>,
}

fn district(args: &DemoArgs, rng: &mut StdRng) -> District {
    // Elders live in residential compounds (小区) scattered over ~6 km.
    let compounds: Vec<pb::GeoPoint> = (0..60).map(|_| point_near(rng, CENTRE, 6.0)).collect();
    let mut elders = Vec::with_capacity(args.elders);
    let mut devices = Vec::new();
    for i in 0..args.elders {
        let c = &compounds[rng.random_range(0..compounds.len())];
        let loc = point_near(rng, (c.lat, c.lon), 0.3);
        let id = format!("E{i:05}");
        let cats = [1, 2, 3, 4, 5];
        let mut categories = vec![cats[rng.random_range(0..cats.len())]];
        if rng.random_bool(0.3) {
            categories.push(cats[rng.random_range(0..cats.len())]);
        }
        categories.dedup();
        let name =
            format!("{}{}", SURNAMES[rng.random_range(0..SURNAMES.len())], GIVEN[rng.random_range(0..GIVEN.len())]);
        elders.push(pb::Elder {
            id: id.clone(),
            name,
            address: format!("长春市二道区{}{}号楼{}单元", STREETS[i % STREETS.len()], 1 + i % 40, 1 + i % 6),
            location: Some(loc),
            categories,
            family_contacts: vec![pb::FamilyContact {
                name: "子女".into(),
                relation: "child".into(),
                phone: format!("139{:08}", rng.random_range(0..100_000_000u32)),
            }],
            phone: format!("0431-8{:07}", rng.random_range(0..10_000_000u32)),
            district: "二道区".into(),
            notes: String::new(),
            visits_per_month: rng.random_range(1..=4),
            required_skill: if rng.random_bool(0.1) { "nursing".into() } else { String::new() },
        });
        let mut bind = |kind: pb::DeviceKind, interval: u32| {
            devices.push(pb::Device {
                id: format!("{id}-{}", kind.as_str_name().trim_start_matches("DEVICE_KIND_").to_lowercase()),
                elder_id: id.clone(),
                kind: kind as i32,
                heartbeat_interval_s: interval,
                model: "AX-1".into(),
                ..Default::default()
            })
        };
        bind(pb::DeviceKind::SosButton, 3600);
        if rng.random_bool(0.4) {
            bind(pb::DeviceKind::BodySensor, 600);
        }
        if rng.random_bool(0.3) {
            bind(pb::DeviceKind::SmokeDetector, 3600);
        }
        if rng.random_bool(0.2) {
            bind(pb::DeviceKind::GasDetector, 3600);
        }
        if rng.random_bool(0.15) {
            bind(pb::DeviceKind::Locator, 300);
        }
    }
    let caregivers = (0..args.caregivers)
        .map(|i| {
            let mode = match i % 5 {
                0 | 1 => pb::TravelMode::Walk,
                2 | 3 => pb::TravelMode::Bike,
                _ => pb::TravelMode::Car,
            };
            pb::Caregiver {
                id: format!("C{i:03}"),
                name: format!("{}护理员", SURNAMES[i % SURNAMES.len()]),
                phone: format!("138{:08}", i),
                skills: if i % 4 == 0 { vec!["nursing".into()] } else { vec![] },
                home: Some(point_near(rng, CENTRE, 6.0)),
                shift: Some(pb::Shift { start_min: 8 * 60, end_min: 17 * 60, days: vec![] }),
                mode: mode as i32,
                max_visits_per_day: 8,
                ..Default::default()
            }
        })
        .collect();
    District { elders, devices, caregivers }
}

/// Alarm mix of a district: (kind, weight, device kind that raises it).
const MIX: &[(pb::AlarmKind, u32, pb::DeviceKind)] = &[
    (pb::AlarmKind::SosButton, 25, pb::DeviceKind::SosButton),
    (pb::AlarmKind::Fall, 10, pb::DeviceKind::BodySensor),
    (pb::AlarmKind::Inactivity, 15, pb::DeviceKind::BodySensor),
    (pb::AlarmKind::Smoke, 3, pb::DeviceKind::SmokeDetector),
    (pb::AlarmKind::Gas, 2, pb::DeviceKind::GasDetector),
    (pb::AlarmKind::Wandering, 8, pb::DeviceKind::Locator),
    (pb::AlarmKind::AbnormalVitals, 10, pb::DeviceKind::BodySensor),
    (pb::AlarmKind::DeviceOffline, 17, pb::DeviceKind::SosButton),
    (pb::AlarmKind::LowBattery, 10, pb::DeviceKind::SosButton),
];

fn pick_kind(rng: &mut StdRng) -> (pb::AlarmKind, pb::DeviceKind) {
    let total: u32 = MIX.iter().map(|m| m.1).sum();
    let mut x = rng.random_range(0..total);
    for (k, w, d) in MIX {
        if x < *w {
            return (*k, *d);
        }
        x -= w;
    }
    (pb::AlarmKind::SosButton, pb::DeviceKind::SosButton)
}

/// Runs the demo; returns the process exit code.
pub async fn run(args: &DemoArgs, _raw: &RawConfig) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.elders > 0 && args.caregivers > 0, "--elders and --caregivers must be at least 1");
    anyhow::ensure!(args.rate > 0.0 && args.rate <= 5000.0, "--rate must be in (0, 5000]");
    let dir = tempfile::tempdir().context("creating a temporary store")?;
    let raw =
        RawConfig { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.path().to_owned()), ..Default::default() };
    let mut config = Config::from_raw(&raw)?;
    config.tick_ms = 200;
    let server = crate::app::bind_and_start(&config).await?;
    let url = format!("http://{}", server.addr);
    println!("Anxin demo: server on {url}, temporary store {}", dir.path().display());
    let channel = Channel::from_shared(url)?.connect().await.context("connecting to the in-process server")?;

    let mut rng = StdRng::seed_from_u64(args.seed);
    let d = district(args, &mut rng);
    let t0 = Instant::now();
    load(&channel, &d).await?;
    println!(
        "Loaded 长春市二道区: {} elders, {} devices, {} caregivers through the registry API in {:.1} s",
        d.elders.len(),
        d.devices.len(),
        d.caregivers.len(),
        t0.elapsed().as_secs_f64()
    );

    let metrics =
        Arc::new(Metrics { ack_ms: Mutex::new(hist()), window_ack_ms: Mutex::new(hist()), ..Default::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(console(channel.clone(), metrics.clone(), stop.clone())));
    for c in &d.caregivers {
        tasks.push(tokio::spawn(caregiver_app(
            channel.clone(),
            c.id.clone(),
            metrics.clone(),
            args.seed,
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(movement(channel.clone(), d.caregivers.clone(), args.seed, stop.clone())));
    let gateway = tokio::spawn(gateway(channel.clone(), Arc::new(d), args.clone(), metrics.clone()));

    let mut dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel.clone());
    let started = Instant::now();
    let mut last_sent = 0;
    println!(
        "{:>4}  {:>7}  {:>7}  {:>9}  {:>9}  {:>6} {:>7} {:>8} {:>8} {:>9}",
        "t/s", "alarms/s", "acked", "p50 ms", "p99 ms", "open", "offered", "accepted", "on-scene", "escalated"
    );
    while !gateway.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = metrics.sent.load(Ordering::Relaxed);
        let w = metrics.window_ack_ms.lock().replace(hist().context("histogram")?);
        let k = dispatch.get_kpis(pb::GetKpisRequest {}).await?.into_inner();
        let s = |name: &str| k.incidents_by_state.get(name).copied().unwrap_or(0);
        println!(
            "{:>4}  {:>7}  {:>7}  {:>9.1}  {:>9.1}  {:>6} {:>7} {:>8} {:>8} {:>9}",
            started.elapsed().as_secs(),
            sent - last_sent,
            metrics.acked.load(Ordering::Relaxed),
            pct(&w, 0.5),
            pct(&w, 0.99),
            k.incidents_open,
            s("INCIDENT_STATE_OFFERED"),
            s("INCIDENT_STATE_ACCEPTED"),
            s("INCIDENT_STATE_ON_SCENE"),
            s("INCIDENT_STATE_ESCALATED"),
        );
        last_sent = sent;
    }
    gateway.await.context("gateway task")??;
    let traffic_s = started.elapsed().as_secs_f64();
    // Let caregivers and the supervisor finish what is open.
    let drain = Instant::now();
    loop {
        let k = dispatch.get_kpis(pb::GetKpisRequest {}).await?.into_inner();
        if k.incidents_open == 0 || drain.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let k = dispatch.get_kpis(pb::GetKpisRequest {}).await?.into_inner();
    report(&metrics, &k, traffic_s);
    for t in tasks {
        t.abort();
    }
    if args.plan_time_limit > 0.0 {
        plan_month(&channel, args.plan_time_limit).await?;
    }
    drop(dispatch);
    drop(channel);
    server.shutdown().await?;
    let lost = metrics.sent.load(Ordering::Relaxed)
        - metrics.acked.load(Ordering::Relaxed)
        - metrics.rejected.load(Ordering::Relaxed);
    if lost > 0 {
        println!("ERROR: {lost} alarms were sent but never answered");
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Plans next month's visits of the whole registry through SchedulingService
/// and prints coverage, travel and the three busiest caregiver-days.
async fn plan_month(channel: &Channel, time_limit_s: f64) -> anyhow::Result<()> {
    let today = crate::planning::local_date(crate::api::now_ms(), 8);
    let (y, m): (i32, u32) = (today[..4].parse()?, today[5..7].parse()?);
    let month = if m == 12 { format!("{}-01", y + 1) } else { format!("{y}-{:02}", m + 1) };
    println!("\nMonthly visits: planning {month} for every registered elder (time limit {time_limit_s} s)");
    let mut s = pb::scheduling_service_client::SchedulingServiceClient::new(channel.clone());
    let req = pb::SubmitPlanRequest { month: month.clone(), time_limit_s, seed: 1, ..Default::default() };
    let job = s.submit_plan(req).await.context("SubmitPlan")?.into_inner().job_id;
    let mut progress = s.watch_plan(pb::WatchPlanRequest { job_id: job.clone() }).await?.into_inner();
    let mut phase = -1;
    while let Some(p) = progress.next().await {
        let p = p?;
        if p.phase != phase {
            let name = pb::PlanPhase::try_from(p.phase).map(|p| p.as_str_name()).unwrap_or("?");
            println!(
                "  [{:>5.1} s] {:<22} coverage {:>6.2}%  travel {:>9.0} min",
                p.elapsed_s,
                name.trim_start_matches("PLAN_PHASE_"),
                100.0 * p.coverage_rate,
                p.best_travel_min
            );
            phase = p.phase;
        }
        if p.phase == pb::PlanPhase::Failed as i32 {
            anyhow::bail!("planning failed: {}", p.message);
        }
    }
    let plan = s.get_plan(pb::GetPlanRequest { job_id: job, month: String::new() }).await?.into_inner();
    let c = plan.coverage.clone().unwrap_or_default();
    let status = pb::CoverageStatus::try_from(c.status).map(|s| s.as_str_name()).unwrap_or("?");
    println!(
        "  coverage {}/{} elders ({:.1}%), {}/{} visits, {}; {} caregiver-day routes; total travel {:.0} min; solved in {:.1} s",
        c.fully_covered,
        c.elders,
        100.0 * c.rate,
        c.scheduled_visits,
        c.required_visits,
        status.trim_start_matches("COVERAGE_STATUS_"),
        plan.routes.len(),
        plan.total_travel_min,
        plan.solve_seconds
    );
    let mut busiest: Vec<&pb::Route> = plan.routes.iter().collect();
    busiest.sort_by(|a, b| (b.end_min - b.start_min).total_cmp(&(a.end_min - a.start_min)));
    for r in busiest.iter().take(3) {
        let hm = |m: f64| format!("{:02}:{:02}", (m / 60.0) as u32, (m % 60.0) as u32);
        println!(
            "  busiest: {} on {}: {} visits, {}-{}, {:.0} min travelling",
            r.caregiver_id,
            r.date,
            r.stops.len(),
            hm(r.start_min),
            hm(r.end_min),
            r.travel_min
        );
    }
    for u in c.uncovered.iter().take(5) {
        println!("  uncovered {} (missing {}): {}", u.elder_id, u.missing_visits, u.reason);
    }
    for x in &plan.suggestions {
        println!("  suggestion: {x}");
    }
    Ok(())
}

async fn load(channel: &Channel, d: &District) -> anyhow::Result<()> {
    let reg = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let elders = futures::stream::iter(d.elders.iter().cloned())
        .map(|e| {
            let mut r = reg.clone();
            async move { r.upsert_elder(pb::UpsertElderRequest { elder: Some(e) }).await }
        })
        .buffer_unordered(64);
    elders
        .for_each_concurrent(None, |r| async move { r.map(|_| ()).unwrap_or_else(|e| eprintln!("elder: {e}")) })
        .await;
    let devices = futures::stream::iter(d.devices.iter().cloned())
        .map(|dev| {
            let mut r = reg.clone();
            async move { r.upsert_device(pb::UpsertDeviceRequest { device: Some(dev) }).await }
        })
        .buffer_unordered(64);
    devices
        .for_each_concurrent(None, |r| async move { r.map(|_| ()).unwrap_or_else(|e| eprintln!("device: {e}")) })
        .await;
    let mut cg = pb::caregiver_service_client::CaregiverServiceClient::new(channel.clone());
    let mut reg = reg;
    for c in &d.caregivers {
        reg.upsert_caregiver(pb::UpsertCaregiverRequest { caregiver: Some(c.clone()) }).await?;
        cg.set_status(pb::SetStatusRequest {
            caregiver_id: c.id.clone(),
            status: pb::CaregiverStatus::Available as i32,
            location: c.home,
        })
        .await?;
    }
    Ok(())
}

/// The device gateway: one StreamAlarms stream; a few alarms are retried with
/// the same key (as gateways do after a timeout), and some repeat.
async fn gateway(channel: Channel, d: Arc<District>, args: DemoArgs, m: Arc<Metrics>) -> anyhow::Result<()> {
    let mut client = pb::alarm_service_client::AlarmServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::RaiseAlarmRequest>(1024);
    let mut acks = client.stream_alarms(ReceiverStream::new(rx)).await?.into_inner();
    let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let (m, pending) = (m.clone(), pending.clone());
        tokio::spawn(async move {
            while let Some(ack) = acks.next().await {
                let Ok(ack) = ack else { break };
                let sent = pending.lock().remove(&ack.sequence);
                match ack.result {
                    Some(pb::alarm_ack::Result::Accepted(r)) => {
                        m.acked.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = sent {
                            m.record_ack(t.elapsed().as_micros() as u64);
                        }
                        if r.duplicate {
                            m.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        if r.merged {
                            m.merged.fetch_add(1, Ordering::Relaxed);
                        }
                        let state = r.incident.map(|i| i.state).unwrap_or(0);
                        if state == pb::IncidentState::Offered as i32 {
                            m.offered_on_ack.fetch_add(1, Ordering::Relaxed);
                        } else if state == pb::IncidentState::Escalated as i32 {
                            m.escalated_on_ack.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        m.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0xA1A2);
    let by_elder: HashMap<&str, Vec<&pb::Device>> = d.devices.iter().fold(HashMap::new(), |mut acc, dev| {
        acc.entry(dev.elder_id.as_str()).or_default().push(dev);
        acc
    });
    let start = Instant::now();
    let total = Duration::from_secs(args.duration);
    let mut seq = 0u64;
    let mut last: Option<pb::RaiseAlarmRequest> = None;
    while start.elapsed() < total {
        let third = start.elapsed().as_secs_f64() / total.as_secs_f64();
        let rate = if (0.4..0.55).contains(&third) { args.rate * 4.0 } else { args.rate };
        let gap = Duration::from_secs_f64(-(1.0 - rng.random::<f64>()).ln() / rate);
        tokio::time::sleep(gap).await;
        seq += 1;
        let req = match &last {
            // A retry after a lost ack: same key.
            Some(prev) if rng.random_bool(0.02) => pb::RaiseAlarmRequest { sequence: seq, ..prev.clone() },
            _ => {
                let elder = &d.elders[rng.random_range(0..d.elders.len())];
                let (kind, dev_kind) = pick_kind(&mut rng);
                let device = by_elder
                    .get(elder.id.as_str())
                    .and_then(|v| v.iter().find(|x| x.kind == dev_kind as i32))
                    .map(|x| x.id.clone())
                    .unwrap_or_default();
                pb::RaiseAlarmRequest {
                    idempotency_key: format!("gw1-{seq}"),
                    elder_id: elder.id.clone(),
                    device_id: device,
                    kind: kind as i32,
                    location: None,
                    occurred_unix_ms: 0,
                    detail: String::new(),
                    sequence: seq,
                }
            }
        };
        pending.lock().insert(seq, Instant::now());
        m.sent.fetch_add(1, Ordering::Relaxed);
        last = Some(req.clone());
        if tx.send(req).await.is_err() {
            break;
        }
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), reader).await.context("waiting for the last acks")??;
    Ok(())
}

/// One caregiver's app: answers offers, travels (time compressed), arrives, resolves.
async fn caregiver_app(channel: Channel, id: String, m: Arc<Metrics>, seed: u64, stop: Arc<AtomicBool>) {
    let mut cg = pb::caregiver_service_client::CaregiverServiceClient::new(channel.clone());
    let mut dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel);
    let Ok(resp) = cg.watch_assignments(pb::WatchAssignmentsRequest { caregiver_id: id.clone() }).await else { return };
    let mut feed = resp.into_inner();
    let mut rng = StdRng::seed_from_u64(seed ^ id.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    while let Some(Ok(ev)) = feed.next().await {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if ev.kind != pb::AssignmentEventKind::Offer as i32 {
            continue;
        }
        let Some(inc) = ev.incident else { continue };
        let act = |note: &str| pb::IncidentActionRequest {
            incident_id: inc.id.clone(),
            caregiver_id: id.clone(),
            note: note.to_owned(),
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..1200))).await;
        if rng.random_bool(0.1) {
            let _ = dispatch.decline_incident(act("with another elder")).await;
            continue;
        }
        if dispatch.accept_incident(act("")).await.is_err() {
            continue;
        }
        // One simulated minute of travel takes half a real second.
        let travel = (ev.eta_s / 120.0).clamp(0.2, 3.0);
        tokio::time::sleep(Duration::from_secs_f64(travel)).await;
        if dispatch.mark_arrived(act("")).await.is_err() {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        let outcome = match rng.random_range(0..100) {
            0..70 => pb::ResolutionOutcome::Assisted,
            70..95 => pb::ResolutionOutcome::FalseAlarm,
            _ => pb::ResolutionOutcome::HospitalTransfer,
        };
        let done = dispatch
            .resolve_incident(pb::ResolveIncidentRequest {
                incident_id: inc.id.clone(),
                caregiver_id: id.clone(),
                outcome: outcome as i32,
                note: String::new(),
            })
            .await;
        if done.is_ok() {
            *m.caregiver_jobs.lock().entry(id.clone()).or_default() += 1;
        }
    }
}

/// Every two seconds each caregiver's phone reports a position (a small walk).
async fn movement(channel: Channel, caregivers: Vec<pb::Caregiver>, seed: u64, stop: Arc<AtomicBool>) {
    let mut client = pb::caregiver_service_client::CaregiverServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(1024);
    let call = tokio::spawn(async move { client.update_location(ReceiverStream::new(rx)).await });
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED);
    let mut pos: Vec<(f64, f64)> =
        caregivers.iter().map(|c| c.home.map(|h| (h.lat, h.lon)).unwrap_or(CENTRE)).collect();
    while !stop.load(Ordering::Relaxed) {
        for (c, p) in caregivers.iter().zip(pos.iter_mut()) {
            p.0 += (rng.random::<f64>() - 0.5) * 0.0008;
            p.1 += (rng.random::<f64>() - 0.5) * 0.0008;
            let u = pb::LocationUpdate {
                caregiver_id: c.id.clone(),
                location: Some(pb::GeoPoint { lat: p.0, lon: p.1 }),
                at_unix_ms: 0,
                accuracy_m: 8.0,
            };
            if tx.send(u).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(tx);
    let _ = call.await;
}

/// The dispatch console: counts events; a supervisor takes escalated
/// incidents (phones the family contact) after a short while.
async fn console(channel: Channel, m: Arc<Metrics>, stop: Arc<AtomicBool>) {
    let mut dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel);
    let Ok(resp) =
        dispatch.watch_incidents(pb::WatchIncidentsRequest { include_open_snapshot: true, min_severity: 0 }).await
    else {
        return;
    };
    let mut events = resp.into_inner();
    while let Some(Ok(ev)) = events.next().await {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let kind = pb::IncidentEventKind::try_from(ev.kind).unwrap_or(pb::IncidentEventKind::Unspecified);
        *m.events
            .lock()
            .entry(kind.as_str_name().trim_start_matches("INCIDENT_EVENT_KIND_").to_owned())
            .or_default() += 1;
        if kind == pb::IncidentEventKind::Escalated {
            let mut d = dispatch.clone();
            let id = ev.incident.map(|i| i.id).unwrap_or_default();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = d
                    .resolve_incident(pb::ResolveIncidentRequest {
                        incident_id: id,
                        caregiver_id: String::new(),
                        outcome: pb::ResolutionOutcome::FamilyHandled as i32,
                        note: "supervisor phoned the family contact, who attended".into(),
                    })
                    .await;
            });
        }
    }
}

fn report(m: &Metrics, k: &pb::Kpis, traffic_s: f64) {
    let sent = m.sent.load(Ordering::Relaxed);
    let acked = m.acked.load(Ordering::Relaxed);
    let h = m.ack_ms.lock();
    println!();
    println!("==== Anxin demo report ====");
    println!(
        "alarms sent {sent} in {traffic_s:.1} s ({:.1}/s), acknowledged durable {acked}, rejected {}, unanswered {}",
        sent as f64 / traffic_s.max(1e-9),
        m.rejected.load(Ordering::Relaxed),
        sent.saturating_sub(acked + m.rejected.load(Ordering::Relaxed))
    );
    println!(
        "  retries recognised as duplicates {}, repeats merged into open incidents {}",
        m.duplicates.load(Ordering::Relaxed),
        m.merged.load(Ordering::Relaxed)
    );
    println!(
        "ack latency (stored + matched), ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(&h, 0.5),
        pct(&h, 0.9),
        pct(&h, 0.99),
        h.as_ref().map(|h| h.max() as f64 / 1000.0).unwrap_or(0.0)
    );
    println!(
        "  at acknowledgement: {} already offered to a caregiver, {} escalated (nobody free)",
        m.offered_on_ack.load(Ordering::Relaxed),
        m.escalated_on_ack.load(Ordering::Relaxed)
    );
    if let Some(l) = &k.receipt_to_first_offer {
        println!(
            "server receipt -> first offer, ms: p50 {:.0}  p90 {:.0}  p99 {:.0}  (n = {})",
            l.p50_ms, l.p90_ms, l.p99_ms, l.count
        );
    }
    println!(
        "alarms accepted within 60 s: {:.1}%, within 180 s: {:.1}%",
        k.accepted_within_60s_ratio * 100.0,
        k.accepted_within_180s_ratio * 100.0
    );
    let mut states: Vec<_> = k.incidents_by_state.iter().filter(|(_, n)| **n > 0).collect();
    states.sort();
    println!(
        "incidents by state: {}",
        states
            .iter()
            .map(|(s, n)| format!("{} {n}", s.trim_start_matches("INCIDENT_STATE_").to_lowercase()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let esc: Vec<String> = k
        .escalations
        .iter()
        .map(|e| {
            let r = pb::EscalationReason::try_from(e.reason).unwrap_or(pb::EscalationReason::Unspecified);
            format!("{} {}", r.as_str_name().trim_start_matches("ESCALATION_REASON_").to_lowercase(), e.count)
        })
        .collect();
    println!(
        "escalations (each handled by the supervisor): {}",
        if esc.is_empty() { "none".into() } else { esc.join(", ") }
    );
    let mut ev: Vec<_> = m.events.lock().iter().map(|(k, v)| (k.clone(), *v)).collect();
    ev.sort();
    println!(
        "console events: {}",
        ev.iter().map(|(k, v)| format!("{} {v}", k.to_lowercase())).collect::<Vec<_>>().join(", ")
    );
    let jobs = m.caregiver_jobs.lock();
    let mut busiest: Vec<_> = jobs.iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!(
        "busiest caregivers: {}",
        busiest.iter().take(3).map(|(c, n)| format!("{c} ({n} incidents)")).collect::<Vec<_>>().join(", ")
    );
}
