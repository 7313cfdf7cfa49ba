//! Assembles the server: store, registry, dispatcher, fan-out, timers and the
//! tonic services (with gRPC health and reflection), and runs it until shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dashmap::DashMap;
use dispatch_core::{self as core, Dispatcher, Supervisor, SystemClock};
use proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::alarm::AlarmApi;
use crate::api::caregiver::CaregiverApi;
use crate::api::dispatch::DispatchApi;
use crate::api::registry::RegistryApi;
use crate::api::scheduling::SchedulingApi;
use crate::config::Config;
use crate::convert::{caregiver_profile, core_status};
use crate::fanout::Fanout;
use crate::planning::Planning;
use crate::registry::Registry;
use crate::store::{Store, StoreWriter};

/// Largest request message accepted (bytes); larger ones are refused by tonic.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response message sent (bytes).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// How long shutdown waits for open calls to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Shared state of every handler.
pub struct AppState {
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
    pub fanout: Arc<Fanout>,
    pub store: Store,
    pub planning: Arc<Planning>,
    /// Heartbeat supervision of devices.
    pub supervisor: Supervisor,
    /// When each caregiver's position was last written to the store.
    pub position_persisted: DashMap<String, i64>,
    /// Turns true when the server shuts down; long-lived streams end on it.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Stage the alarm intake runs that may wait (see `api::alarm::take_in`).
    pub stagers: crate::api::alarm::Workers,
}

impl AppState {
    /// Resolves when the server starts shutting down.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

/// A server running in this process.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    ticker: JoinHandle<()>,
    supervision: JoinHandle<()>,
    writer: Option<StoreWriter>,
}

impl RunningServer {
    /// Stops accepting calls, ends the timers, commits what is queued and
    /// closes the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.state.closing.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.ticker.abort();
        self.supervision.abort();
        // Calls still open after the grace period (a client that keeps its
        // upload stream open) are cut off; every acknowledged write is durable.
        let served = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.serve).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("calls still open after {SHUTDOWN_GRACE:?}; closing them");
                self.serve.abort();
                Ok(Ok(()))
            }
        };
        if let Some(w) = self.writer.take() {
            tokio::task::spawn_blocking(move || w.close()).await.context("closing the store")?;
        }
        served.context("server task")?.context("gRPC server")?;
        Ok(())
    }

    /// Waits until the server stops by itself (an error) — `serve` runs until a signal.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.serve).await.context("server task")?.context("gRPC server")
    }
}

/// Opens the store under `config.data_dir`, rebuilds state, and starts
/// serving on `listener`.
pub async fn start(config: &Config, listener: TcpListener) -> anyhow::Result<RunningServer> {
    let addr = listener.local_addr().context("listener address")?;
    let dir = config.data_dir.clone();
    let (store, writer, snapshot) = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;

    let registry = Arc::new(Registry::default());
    let fanout = Arc::new(Fanout::new(registry.clone()));
    let dispatcher = Arc::new(Dispatcher::new(
        config.dispatch.clone(),
        Arc::new(store.clone()),
        fanout.clone(),
        Arc::new(SystemClock),
    ));
    let counts = (snapshot.elders.len(), snapshot.caregivers.len(), snapshot.devices.len());
    for e in snapshot.elders {
        registry.elders.insert(e.id.clone(), e);
    }
    let devices = snapshot.devices;
    for (c, status, pos, seen) in snapshot.caregivers {
        let profile = caregiver_profile(&c).map_err(|e| anyhow::anyhow!("stored caregiver {}: {e}", c.id))?;
        let id = profile.id.clone();
        dispatcher.upsert_caregiver(profile);
        if let Some(p) = pos.and_then(|(lat, lon)| core::GeoPoint::new("position", lat, lon).ok()) {
            dispatcher.update_location(&id, p, seen)?;
        }
        // A caregiver stored as busy was on duty: its claim comes back with
        // its open incident (`restore` below), and if that incident has
        // closed since, it is available, as a caregiver released from one is.
        let status = pb::CaregiverStatus::try_from(status).ok().and_then(core_status);
        if let Some(s) = status.map(duty_status) {
            dispatcher.set_status(&id, s, None)?;
        }
        registry.caregivers.insert(c.id.clone(), c);
    }
    let open = snapshot.incidents.iter().filter(|i| i.state.is_open()).count();
    let total = snapshot.incidents.len();
    dispatcher.restore(snapshot.incidents, snapshot.keys);
    let plans = snapshot.plans.len();
    let planning =
        Arc::new(Planning::restore(config.planning.clone(), store.clone(), snapshot.plans, snapshot.visits)?);
    tracing::info!(
        data = %store.path().display(),
        elders = counts.0, caregivers = counts.1, devices = counts.2, incidents = total, open_incidents = open,
        plans, "store opened"
    );

    let state = Arc::new(AppState {
        dispatcher,
        registry,
        fanout,
        store,
        planning,
        supervisor: Supervisor::new(core::DEFAULT_MISSED_HEARTBEATS, crate::api::now_ms()),
        position_persisted: DashMap::new(),
        closing: tokio::sync::watch::channel(false).0,
        stagers: crate::api::alarm::Workers::start("anxin-stage", crate::api::alarm::STAGERS)?,
    });

    let restarted_ms = crate::api::now_ms();
    for d in devices {
        crate::supervision::watch(&state, &d, d.last_heartbeat_unix_ms.max(restarted_ms));
        state.registry.devices.insert(d.id.clone(), d);
    }
    let supervision = crate::supervision::spawn(state.clone());

    let ticker = {
        let d = state.dispatcher.clone();
        let period = Duration::from_millis(config.tick_ms);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let d = d.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || d.tick()).await {
                    tracing::error!(error = %e, "timer tick failed");
                }
            }
        })
    };

    if config.kpi_log_s > 0 {
        spawn_kpi_log(state.clone(), Duration::from_secs(config.kpi_log_s));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::alarm_service_server::AlarmServiceServer<AlarmApi>>().await;
    health.set_serving::<pb::dispatch_service_server::DispatchServiceServer<DispatchApi>>().await;
    health.set_serving::<pb::caregiver_service_server::CaregiverServiceServer<CaregiverApi>>().await;
    health.set_serving::<pb::registry_service_server::RegistryServiceServer<RegistryApi>>().await;
    health.set_serving::<pb::scheduling_service_server::SchedulingServiceServer<SchedulingApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;

    macro_rules! limited {
        ($server:ty, $api:expr) => {
            <$server>::new($api)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES)
        };
    }
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(limited!(pb::alarm_service_server::AlarmServiceServer<AlarmApi>, AlarmApi::new(state.clone())))
        .add_service(limited!(
            pb::dispatch_service_server::DispatchServiceServer<DispatchApi>,
            DispatchApi { state: state.clone() }
        ))
        .add_service(limited!(
            pb::caregiver_service_server::CaregiverServiceServer<CaregiverApi>,
            CaregiverApi { state: state.clone() }
        ))
        .add_service(limited!(
            pb::registry_service_server::RegistryServiceServer<RegistryApi>,
            RegistryApi { state: state.clone() }
        ))
        .add_service(limited!(
            pb::scheduling_service_server::SchedulingServiceServer<SchedulingApi>,
            SchedulingApi { state: state.clone() }
        ));
    let (tx, rx) = oneshot::channel::<()>();
    // The builder's `tcp_nodelay` is ignored for a listener of our own: set
    // on each accepted socket here. Without it, small answers waited for
    // Nagle's algorithm (a unary call took ~30 ms at light load).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = rx.await;
    }));
    tracing::info!(%addr, "anxin listening");
    Ok(RunningServer { addr, state, shutdown: Some(tx), serve, ticker, supervision, writer: Some(writer) })
}

/// Binds `config.listen` and starts.
pub async fn bind_and_start(config: &Config) -> anyhow::Result<RunningServer> {
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("listen: cannot bind {}", config.listen))?;
    start(config, listener).await
}

/// The duty status to store for a caregiver in `status`: busy is a claim,
/// not a duty status, and a caregiver released from its claim is available.
pub(crate) fn duty_status(status: core::CaregiverStatus) -> core::CaregiverStatus {
    match status {
        core::CaregiverStatus::Busy => core::CaregiverStatus::Available,
        s => s,
    }
}

/// Writes the telecare KPIs to the log every `period` (one INFO line with
/// fields, as the `GetKpis` RPC reports them) until the server closes.
fn spawn_kpi_log(state: Arc<AppState>, period: Duration) {
    tokio::spawn(async move {
        let closed = state.closed();
        tokio::pin!(closed);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = &mut closed => return,
            }
            let d = state.dispatcher.clone();
            let Ok(k) = tokio::task::spawn_blocking(move || d.kpis()).await else { continue };
            let open: u64 = k.incidents_by_state.iter().filter(|(s, _)| s.is_open()).map(|(_, n)| n).sum();
            let escalations: Vec<String> = k.escalations.iter().map(|(r, n)| format!("{r:?}={n}")).collect();
            tracing::info!(
                alarms = k.alarms_received,
                duplicates = k.duplicates,
                merged = k.merged,
                open,
                alarms_opened = k.incidents_opened,
                offered = k.offered,
                accepted_60s = format!("{:.1}%", 100.0 * k.accepted_within_60s_ratio()),
                accepted_180s = format!("{:.1}%", 100.0 * k.accepted_within_180s_ratio()),
                first_offer_p50_ms = k.receipt_to_first_offer.p50_ms,
                first_offer_p99_ms = k.receipt_to_first_offer.p99_ms,
                arrival_p50_ms = k.receipt_to_arrival.p50_ms,
                arrival_p99_ms = k.receipt_to_arrival.p99_ms,
                escalations = escalations.join(","),
                "kpis"
            );
        }
    });
}
