//! AlarmService: RaiseAlarm and StreamAlarms for devices and gateways.

use std::sync::Arc;

use dispatch_core as core;
use futures::FutureExt;
use proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::app::AppState;
use crate::convert::{alarm_kind, geo_opt, incident_pb, text, MAX_DETAIL_BYTES};
use crate::error::{ApiError, ApiResult};

/// Alarms of one stream read but not yet answered, at most.
const STREAM_WINDOW: usize = 16_384;
/// Alarms of one stream taken in together at most (see `raise_many`).
const STREAM_BATCH: usize = 1_024;

/// Batches of unary `RaiseAlarm` calls being taken in at once, at most. A
/// batch waiting for its commit no longer holds a thread, so more of them
/// can overlap: 16 gave ~15% more unary throughput than 4 here (BENCHMARKS).
const UNARY_IN_FLIGHT: usize = 16;

/// A unary call waiting for intake, and where its answer goes.
type Pending = (pb::RaiseAlarmRequest, oneshot::Sender<ApiResult<pb::RaiseAlarmResponse>>);

pub struct AlarmApi {
    state: Arc<AppState>,
    unary: mpsc::Sender<Pending>,
}

impl AlarmApi {
    /// The service, with its unary coalescer running on the current runtime:
    /// concurrent `RaiseAlarm` calls are taken in together as one
    /// `raise_batch` (one journal append, one blocking hand-off), the way a
    /// stream's alarms are, instead of one blocking thread and one commit
    /// wait each. Under light load a batch is one call, answered at once.
    pub fn new(state: Arc<AppState>) -> Self {
        let (unary, rx) = mpsc::channel(STREAM_WINDOW);
        tokio::spawn(coalesce(state.clone(), rx));
        AlarmApi { state, unary }
    }
}

/// Takes unary calls in batches: waits for a free batch slot, then takes
/// every call that has arrived (so batches grow exactly when intake is busy).
/// Ends when the service is dropped.
async fn coalesce(state: Arc<AppState>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(UNARY_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < STREAM_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let state = state.clone();
        tokio::spawn(async move {
            let (reqs, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            for (answer, out) in answers.into_iter().zip(raise_many(state, &reqs).await) {
                let _ = answer.send(out); // the caller may have gone
            }
            drop(slot);
        });
    }
}

/// Validates a request against the registry and turns it into a core alarm.
pub fn to_alarm(state: &AppState, req: &pb::RaiseAlarmRequest, now: i64) -> ApiResult<core::Alarm> {
    let key = core::IdempotencyKey::parse("idempotency_key", &req.idempotency_key)?;
    let elder_id = core::ElderId::parse("elder_id", &req.elder_id)?;
    let kind = pb::AlarmKind::try_from(req.kind)
        .ok()
        .and_then(alarm_kind)
        .ok_or_else(|| ApiError::invalid("kind", format!("{} is not an alarm kind", req.kind)))?;
    text("detail", &req.detail, MAX_DETAIL_BYTES)?;
    let location = geo_opt("location", req.location.as_ref())?;
    // Only the elder's registered location and required skill are needed: read them in place.
    let (home, required_skill) = match state.registry.elders.get(elder_id.as_str()) {
        Some(e) => (e.location, (!e.required_skill.is_empty()).then(|| Arc::<str>::from(e.required_skill.as_str()))),
        None => return Err(ApiError::NotFound { what: "elder_id: elder", id: elder_id.to_string() }),
    };
    let device = if req.device_id.is_empty() {
        None
    } else {
        let d = core::DeviceId::parse("device_id", &req.device_id)?;
        let bound = state.registry.devices.get(d.as_str()).map(|x| x.elder_id.clone());
        match bound {
            None => return Err(ApiError::NotFound { what: "device_id: device", id: d.to_string() }),
            Some(e) if e != elder_id.as_str() => {
                return Err(ApiError::invalid("device_id", format!("device {d} is bound to elder {e}, not {elder_id}")))
            }
            Some(_) => Some(d),
        }
    };
    let location = match location {
        Some(l) => l,
        None => crate::convert::geo("elder.location", home.as_ref())?,
    };
    if req.occurred_unix_ms < 0 {
        return Err(ApiError::invalid("occurred_unix_ms", "must not be negative"));
    }
    Ok(core::Alarm {
        key,
        elder: elder_id,
        device,
        kind,
        location,
        occurred_ms: if req.occurred_unix_ms == 0 { now } else { req.occurred_unix_ms },
        detail: req.detail.clone(),
        required_skill,
    })
}

/// Takes a batch in with one journal append per run (see
/// `Dispatcher::raise_batch`) and acknowledges each request in order.
pub async fn raise_batch(state: Arc<AppState>, reqs: Vec<pb::RaiseAlarmRequest>) -> Vec<pb::AlarmAck> {
    let answers = raise_many(state, &reqs).await;
    reqs.into_iter()
        .zip(answers)
        .map(|(req, answer)| {
            let result = match answer {
                Ok(r) => pb::alarm_ack::Result::Accepted(r),
                Err(e) => pb::alarm_ack::Result::Error(pb::AckError { code: e.code() as i32, message: e.to_string() }),
            };
            pb::AlarmAck { idempotency_key: req.idempotency_key, sequence: req.sequence, result: Some(result) }
        })
        .collect()
}

/// Validates, makes durable and dispatches each request of a batch, with one
/// journal append per run (see `Dispatcher::raise_batch`); answers in order.
/// A retried key returns the original incident; a key reused for a different
/// alarm is ALREADY_EXISTS. Every way in (unary calls, streams, device
/// supervision) comes through here.
pub async fn raise_many(
    state: Arc<AppState>,
    reqs: &[pb::RaiseAlarmRequest],
) -> Vec<ApiResult<pb::RaiseAlarmResponse>> {
    let now = super::now_ms();
    let mut answers: Vec<Option<ApiResult<pb::RaiseAlarmResponse>>> = Vec::with_capacity(reqs.len());
    let (mut alarms, mut taken) = (Vec::with_capacity(reqs.len()), Vec::with_capacity(reqs.len()));
    for (i, req) in reqs.iter().enumerate() {
        match to_alarm(&state, req, now) {
            Ok(a) => {
                alarms.push(a);
                taken.push(i);
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    if !alarms.is_empty() {
        let span = tracing::debug_span!("dispatch.raise_batch", alarms = alarms.len());
        match take_in(&state, alarms).instrument(span).await {
            Ok(outs) => {
                for (i, out) in taken.into_iter().zip(outs) {
                    answers[i] = Some(out.map_err(ApiError::from).and_then(|o| response(&reqs[i], o)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for i in taken {
                    answers[i] = Some(Err(ApiError::Internal(message.clone())));
                }
            }
        }
    }
    answers.into_iter().map(|a| a.unwrap_or_else(|| Err(ApiError::Internal("alarm not answered".into())))).collect()
}

/// Takes `alarms` in run by run (see `Dispatcher::next_run`). Small batches
/// (a few coalesced unary calls, a stream's alarms under light load) are
/// staged right here on the runtime's worker, which never waits for that
/// (`Dispatcher::try_next_run`); large ones, and an alarm that would wait (on
/// a key or incident a run being stored holds, on room in the urgent lane),
/// are staged by a stager thread. Each run goes to the journal, whose writer
/// hands it back once committed, and is finished here (its locks let go, its
/// events published, its alarms answered). Staging here and finishing here
/// saves the thread hand-offs that were most of a unary call's latency on
/// two cores. A stager waits only on runs already journaled, which this task
/// finishes without waiting on anything, so waits always end. Runs as its own
/// task, so that a caller that goes away (a cancelled call, a stopped loop)
/// never leaves a batch half taken in.
async fn take_in(state: &Arc<AppState>, alarms: Vec<core::Alarm>) -> ApiResult<Vec<core::Result<core::RaiseOutcome>>> {
    tokio::spawn(take_in_runs(state.clone(), alarms).in_current_span())
        .await
        .map_err(|e| ApiError::Internal(format!("intake task failed: {e}")))?
}

/// Batches of at most this many alarms are staged on the runtime's worker.
/// Staging takes a few microseconds per alarm, so a worker is held for well
/// under a millisecond; a larger batch goes to a stager thread.
const INLINE_BATCH: usize = 64;

async fn take_in_runs(
    state: Arc<AppState>,
    alarms: Vec<core::Alarm>,
) -> ApiResult<Vec<core::Result<core::RaiseOutcome>>> {
    let inline = alarms.len() <= INLINE_BATCH;
    let d = state.dispatcher.clone();
    let mut intake = d.intake(alarms);
    loop {
        let next = match inline.then(|| d.try_next_run(&mut intake)) {
            Some(Ok(next)) => next,
            _ if intake.is_done() => None,
            _ => {
                let staging = d.clone();
                let (back, next) = state
                    .stagers
                    .run(move || {
                        let next = staging.next_run(&mut intake);
                        (intake, next)
                    })
                    .await
                    .ok_or_else(|| ApiError::Internal("staging an intake run failed".into()))?;
                intake = back;
                next
            }
        };
        let Some(run) = next else { return Ok(intake.into_answers()) };
        let (tx, rx) = oneshot::channel();
        d.journal_run(run, move |run| {
            let _ = tx.send(run);
        });
        let run = rx.await.map_err(|_| ApiError::Internal("an intake run was not answered by the journal".into()))?;
        d.finish_run(&mut intake, run);
    }
}

/// A job for a [`Workers`] thread.
type Job = Box<dyn FnOnce() + Send>;

/// Threads of their own for staging alarms (see [`STAGERS`]), fed through a
/// queue. Not the runtime's workers: staging may wait on an incident a run
/// holds until that run is finished. Not the blocking pool: it starts a
/// thread whenever none is idle at the instant a job arrives, so thousands of
/// short staging jobs a second grew it to its 512-thread cap (each with its
/// own allocator heap: gigabytes). A queued job holds no lock (a paused alarm
/// lets its key go), so a fixed set of threads cannot deadlock: a stager
/// waits only on runs already journaled, which `take_in_runs` finishes on the
/// runtime. The threads end with the handle. The queue is bounded
/// ([`QUEUED_JOBS`]): a batch finding it full waits, on the runtime without
/// holding a worker, for room, and its sender's window (a stream's
/// `STREAM_WINDOW`, the coalescer's slots) holds back the rest.
pub struct Workers {
    jobs: crossbeam::channel::Sender<Job>,
    /// One permit per free place in `jobs`: taken before a job is queued,
    /// given back when a thread takes the job out.
    room: Arc<Semaphore>,
}

/// Staging jobs queued at most (each one batch's next run: at most 1,024
/// alarms).
pub const QUEUED_JOBS: usize = 1_024;

/// Stager threads. Staging is CPU work except when an alarm meets an incident
/// or key a journaled run holds (a repeat or retry of an alarm being stored),
/// where the thread waits for that commit; eight keep both cores busy
/// through such waits.
pub const STAGERS: usize = 8;

impl Workers {
    pub fn start(name: &str, threads: usize) -> std::io::Result<Self> {
        let (jobs, rx) = crossbeam::channel::bounded::<Job>(QUEUED_JOBS);
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                for job in rx {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("an intake job panicked; its alarms are answered with an error");
                    }
                }
            })?;
        }
        Ok(Workers { jobs, room: Arc::new(Semaphore::new(QUEUED_JOBS)) })
    }

    /// Runs `job` on one of the threads once the queue has room; `None` if it
    /// panicked (or the threads have ended: the job is dropped unrun).
    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let place = self.room.clone().acquire_owned().await.ok()?;
        let (tx, rx) = oneshot::channel();
        // Never full: a job is queued only with a permit, and a permit is given
        // back only once its job has left the queue.
        let queued = self.jobs.try_send(Box::new(move || {
            drop(place);
            let _ = tx.send(job());
        }));
        debug_assert!(
            !matches!(queued, Err(crossbeam::channel::TrySendError::Full(_))),
            "staging queue over its bound"
        );
        rx.await.ok()
    }
}

/// The answer to `req` once intake took it in.
fn response(req: &pb::RaiseAlarmRequest, out: core::RaiseOutcome) -> ApiResult<pb::RaiseAlarmResponse> {
    if out.duplicate && (out.incident.elder.as_str() != req.elder_id || Some(out.incident.kind) != alarm_kind_of(req)) {
        return Err(ApiError::AlreadyExists(format!(
            "idempotency_key: {} was already used for a different alarm ({})",
            req.idempotency_key, out.incident.id
        )));
    }
    Ok(pb::RaiseAlarmResponse {
        incident: Some(incident_pb(&out.incident)),
        duplicate: out.duplicate,
        merged: out.merged,
    })
}

fn alarm_kind_of(req: &pb::RaiseAlarmRequest) -> Option<core::AlarmKind> {
    pb::AlarmKind::try_from(req.kind).ok().and_then(alarm_kind)
}

type AckStream = super::ResponseStream<pb::AlarmAck>;

#[tonic::async_trait]
impl pb::alarm_service_server::AlarmService for AlarmApi {
    #[tracing::instrument(skip(self, request), fields(key = %request.get_ref().idempotency_key, elder = %request.get_ref().elder_id))]
    async fn raise_alarm(
        &self,
        request: Request<pb::RaiseAlarmRequest>,
    ) -> Result<Response<pb::RaiseAlarmResponse>, Status> {
        let (answer, answered) = oneshot::channel();
        if self.unary.send((request.into_inner(), answer)).await.is_err() {
            return Err(ApiError::Unavailable("the server is shutting down".into()).into());
        }
        match answered.await {
            Ok(out) => Ok(Response::new(out?)),
            Err(_) => Err(ApiError::Internal("alarm not answered".into()).into()),
        }
    }

    type StreamAlarmsStream = AckStream;

    #[tracing::instrument(skip(self, request))]
    async fn stream_alarms(
        &self,
        request: Request<Streaming<pb::RaiseAlarmRequest>>,
    ) -> Result<Response<Self::StreamAlarmsStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::AlarmAck, Status>>(STREAM_WINDOW);
        let state = self.state.clone();
        let closed = self.state.closed();
        tokio::spawn(async move {
            tokio::pin!(closed);
            let window = Arc::new(Semaphore::new(STREAM_WINDOW));
            let mut ended = false;
            while !ended {
                let first = tokio::select! {
                    m = input.next() => m,
                    _ = &mut closed => break,
                };
                let mut batch = match first {
                    Some(Ok(m)) => vec![m],
                    Some(Err(status)) => {
                        tracing::debug!(%status, "alarm stream ended by the client");
                        break;
                    }
                    None => break,
                };
                // Whatever else has already arrived goes into the same batch.
                while batch.len() < STREAM_BATCH {
                    match input.next().now_or_never() {
                        Some(Some(Ok(m))) => batch.push(m),
                        Some(Some(Err(_)) | None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                let Ok(permits) = window.clone().acquire_many_owned(batch.len() as u32).await else { break };
                let (state, tx) = (state.clone(), tx.clone());
                tokio::spawn(async move {
                    for ack in raise_batch(state, batch).await {
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    drop(permits);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the stager busy, jobs beyond the queue's bound wait for room
    /// instead of being queued or dropped, and all of them run in the end.
    #[tokio::test]
    async fn the_staging_queue_is_bounded_and_loses_no_job() {
        let workers = Arc::new(Workers::start("test-stage", 1).unwrap());
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let blocked = {
            let workers = workers.clone();
            tokio::spawn(async move {
                workers
                    .run(move || {
                        let _ = started.send(());
                        gate.recv().is_ok()
                    })
                    .await
            })
        };
        // The one thread holds the first job (so it takes no other).
        while running.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        let waiting: Vec<_> = (0..QUEUED_JOBS + 16)
            .map(|i| {
                let workers = workers.clone();
                tokio::spawn(async move { workers.run(move || i).await })
            })
            .collect();
        // Let every task get as far as it can while the thread is held.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(workers.jobs.len(), QUEUED_JOBS, "queued up to the bound, no further");
        open.send(()).unwrap();
        assert_eq!(blocked.await.unwrap(), Some(true));
        for (i, job) in waiting.into_iter().enumerate() {
            assert_eq!(job.await.unwrap(), Some(i));
        }
        assert!(workers.jobs.is_empty());
    }
}
