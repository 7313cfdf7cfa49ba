//! Monthly visit planning on the server. A planning job runs off the request
//! path on a thread of its own (one job at a time, the others queued), reports
//! progress through a watch channel, and persists its input and result in the
//! store. Visit records (done / missed / refused) persist too; they give the
//! realised coverage and feed re-planning.
//!
//! Architecture Invariant: the input of every stored plan is kept as the CSV
//! text it was planned from, so a plan can always be re-planned or audited
//! against exactly what the planner saw, even after the registry changed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use proto::v1 as pb;
use scheduler::plan::{
    self, input, CoverageStatus, Event, Haversine, Month, Plan, PlanInput, PlanOptions, PlanOutcome, Progress,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use crate::config::PlanningConfig;
use crate::error::{ApiError, ApiResult};
use crate::store::{PlanRow, Store, WriteOp};

/// Longest planning time a client may ask for.
pub const MAX_TIME_LIMIT_S: f64 = 3600.0;
/// How often progress is published while the planner improves (it reports far more often).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What a plan was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputDoc {
    pub elders_csv: String,
    pub caregivers_csv: String,
    /// `YYYY-MM-DD`.
    pub holidays: Vec<String>,
    pub detour: f64,
}

impl InputDoc {
    pub fn parse(&self, month: Month) -> scheduler::Result<PlanInput> {
        let holidays = month.parse_holidays(&self.holidays.join(","))?;
        input::parse(&self.elders_csv, "elders.csv", &self.caregivers_csv, "caregivers.csv", month, holidays)
    }

    pub fn travel(&self) -> Haversine {
        Haversine { detour: self.detour, ..Haversine::default() }
    }
}

/// A finished plan, indexed for the caregiver apps.
#[derive(Debug)]
pub struct FinishedPlan {
    pub job_id: String,
    pub month: String,
    pub created_ms: i64,
    pub status: CoverageStatus,
    pub plan: Plan,
    pub suggestions: Vec<String>,
    pub input: InputDoc,
    /// Required visits of every planned elder.
    pub required: HashMap<String, u32>,
    pub caregivers: HashSet<String>,
    /// (caregiver, date) -> index into `plan.routes`.
    routes: HashMap<(String, String), usize>,
    /// (elder, date) of every planned visit.
    planned: HashSet<(String, String)>,
}

impl FinishedPlan {
    fn new(
        job_id: String,
        created_ms: i64,
        outcome: PlanOutcome,
        input_doc: InputDoc,
        input: &PlanInput,
    ) -> FinishedPlan {
        let plan = outcome.plan;
        let mut routes = HashMap::with_capacity(plan.routes.len());
        let mut planned = HashSet::new();
        for (i, r) in plan.routes.iter().enumerate() {
            routes.insert((r.caregiver.0.clone(), r.date.clone()), i);
            for s in &r.stops {
                planned.insert((s.elder.0.clone(), r.date.clone()));
            }
        }
        FinishedPlan {
            job_id,
            month: plan.month.clone(),
            created_ms,
            status: outcome.status,
            suggestions: outcome.suggestions,
            input: input_doc,
            required: input.elders.iter().map(|e| (e.id.0.clone(), e.visits_per_month)).collect(),
            caregivers: input.caregivers.iter().map(|c| c.id.0.clone()).collect(),
            routes,
            planned,
            plan,
        }
    }

    pub fn route(&self, caregiver: &str, date: &str) -> Option<&plan::RoutePlan> {
        self.routes.get(&(caregiver.to_string(), date.to_string())).map(|&i| &self.plan.routes[i])
    }

    pub fn is_planned(&self, elder: &str, date: &str) -> bool {
        self.planned.contains(&(elder.to_string(), date.to_string()))
    }

    fn row(&self) -> ApiResult<PlanRow> {
        Ok(PlanRow {
            job_id: self.job_id.clone(),
            month: self.month.clone(),
            created_ms: self.created_ms,
            phase: pb::PlanPhase::Done as i32,
            message: String::new(),
            status: status_pb(self.status) as i32,
            input: Some(json(&self.input)?),
            plan: Some(json(&self.plan)?),
            suggestions: Some(json(&self.suggestions)?),
        })
    }

    fn from_row(row: &PlanRow) -> Result<FinishedPlan, String> {
        let (Some(i), Some(p), Some(s)) = (&row.input, &row.plan, &row.suggestions) else {
            return Err("a finished plan without its input, plan or suggestions".into());
        };
        let doc: InputDoc = serde_json::from_str(i).map_err(|e| format!("input: {e}"))?;
        let plan: Plan = serde_json::from_str(p).map_err(|e| format!("plan: {e}"))?;
        let suggestions: Vec<String> = serde_json::from_str(s).map_err(|e| format!("suggestions: {e}"))?;
        let month = Month::parse(&row.month).map_err(|e| e.to_string())?;
        let input = doc.parse(month).map_err(|e| format!("input: {e}"))?;
        let status = match pb::CoverageStatus::try_from(row.status) {
            Ok(pb::CoverageStatus::Full) => CoverageStatus::Full,
            Ok(pb::CoverageStatus::ProvedImpossible) => CoverageStatus::ProvedImpossible,
            _ => CoverageStatus::NotFoundInTime,
        };
        let outcome = PlanOutcome { plan, status, suggestions };
        Ok(FinishedPlan::new(row.job_id.clone(), row.created_ms, outcome, doc, &input))
    }
}

fn json<T: Serialize>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v).map_err(|e| ApiError::Internal(format!("encoding the plan: {e}")))
}

pub fn status_pb(s: CoverageStatus) -> pb::CoverageStatus {
    match s {
        CoverageStatus::Full => pb::CoverageStatus::Full,
        CoverageStatus::ProvedImpossible => pb::CoverageStatus::ProvedImpossible,
        CoverageStatus::NotFoundInTime => pb::CoverageStatus::NotFoundInTime,
    }
}

fn phase_pb(p: plan::Phase) -> pb::PlanPhase {
    match p {
        plan::Phase::Diagnose => pb::PlanPhase::Validating,
        plan::Phase::Assign => pb::PlanPhase::Assigning,
        plan::Phase::Construct => pb::PlanPhase::Routing,
        plan::Phase::Improve => pb::PlanPhase::Improving,
        plan::Phase::Done => pb::PlanPhase::Done,
    }
}

pub fn is_terminal(phase: i32) -> bool {
    phase == pb::PlanPhase::Done as i32 || phase == pb::PlanPhase::Failed as i32
}

/// A planning job: its progress, and its plan once done.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub month: String,
    progress: watch::Sender<pb::PlanProgress>,
    result: Mutex<Option<Result<Arc<FinishedPlan>, String>>>,
}

impl Job {
    fn new(id: String, month: String, phase: pb::PlanPhase, message: String) -> Arc<Job> {
        let p = pb::PlanProgress { job_id: id.clone(), phase: phase as i32, message, ..Default::default() };
        Arc::new(Job { id, month, progress: watch::channel(p).0, result: Mutex::new(None) })
    }

    pub fn subscribe(&self) -> watch::Receiver<pb::PlanProgress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> pb::PlanProgress {
        self.progress.borrow().clone()
    }

    /// The plan, an error if the job failed, `None` while it runs.
    pub fn result(&self) -> Option<Result<Arc<FinishedPlan>, String>> {
        self.result.lock().clone()
    }
}

/// Re-planning: the plan to repair and what happened since.
pub struct Repair {
    pub base: Arc<FinishedPlan>,
    pub events: Vec<Event>,
    pub from_date: String,
}

/// A job ready to run.
pub struct JobSpec {
    pub month: Month,
    pub input: PlanInput,
    pub doc: InputDoc,
    pub options: PlanOptions,
    pub repair: Option<Repair>,
}

/// The planning service's state.
pub struct Planning {
    pub config: PlanningConfig,
    store: Store,
    jobs: DashMap<String, Arc<Job>>,
    /// Month -> its latest finished plan.
    latest: DashMap<String, Arc<FinishedPlan>>,
    /// (elder, date) -> the latest record of that visit.
    visits: DashMap<(String, String), pb::RecordVisitRequest>,
    /// One job plans at a time; the planner uses every core it is given.
    gate: Arc<Semaphore>,
    pending: AtomicU64,
    seq: AtomicU64,
}

impl Planning {
    /// Rebuilds from the store. Jobs that had not finished when the server
    /// stopped are marked failed (their clients must submit again).
    pub fn restore(
        config: PlanningConfig,
        store: Store,
        rows: Vec<PlanRow>,
        visits: Vec<pb::RecordVisitRequest>,
    ) -> anyhow::Result<Planning> {
        let p = Planning {
            config,
            store,
            jobs: DashMap::new(),
            latest: DashMap::new(),
            visits: DashMap::new(),
            gate: Arc::new(Semaphore::new(1)),
            pending: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        };
        for row in rows {
            let job = Job::new(row.job_id.clone(), row.month.clone(), pb::PlanPhase::Failed, row.message.clone());
            if row.phase == pb::PlanPhase::Done as i32 {
                let done = FinishedPlan::from_row(&row)
                    .map_err(|e| anyhow::anyhow!("stored plan {} cannot be read: {e}", row.job_id))?;
                p.finish(&job, Ok(Arc::new(done)), 0.0);
            } else {
                let reason = if row.phase == pb::PlanPhase::Failed as i32 {
                    row.message.clone()
                } else {
                    let why = "the server stopped before this plan finished; submit it again".to_string();
                    p.store.write_later(WriteOp::Plan(PlanRow {
                        phase: pb::PlanPhase::Failed as i32,
                        message: why.clone(),
                        ..row.clone()
                    }));
                    why
                };
                p.finish(&job, Err(reason), 0.0);
            }
            p.jobs.insert(job.id.clone(), job);
        }
        for v in visits {
            p.visits.insert((v.elder_id.clone(), v.date.clone()), v);
        }
        Ok(p)
    }

    pub fn job(&self, id: &str) -> ApiResult<Arc<Job>> {
        self.jobs.get(id).map(|j| j.clone()).ok_or_else(|| ApiError::NotFound { what: "plan job", id: id.into() })
    }

    /// The latest finished plan of `month` (`YYYY-MM`).
    pub fn latest(&self, month: &str) -> ApiResult<Arc<FinishedPlan>> {
        self.latest
            .get(month)
            .map(|p| p.clone())
            .ok_or_else(|| ApiError::NotFound { what: "finished plan for month", id: month.into() })
    }

    /// Queues a job; it starts when the planner is free. Blocks on the store.
    pub fn submit(self: &Arc<Self>, spec: JobSpec, now_ms: i64) -> ApiResult<String> {
        let queued = self.pending.fetch_add(1, Ordering::SeqCst);
        if queued >= self.config.max_queued_jobs as u64 {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::ResourceExhausted(format!(
                "{queued} planning jobs are already waiting or running (planning.max_queued_jobs); try again later"
            )));
        }
        let id = format!("plan-{now_ms}-{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let month = spec.month.to_text();
        let row = PlanRow {
            job_id: id.clone(),
            month: month.clone(),
            created_ms: now_ms,
            phase: pb::PlanPhase::Queued as i32,
            ..Default::default()
        };
        if let Err(e) = self.store.write(WriteOp::Plan(row)) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Unavailable(format!("cannot record the planning job: {e}")));
        }
        let job = Job::new(id.clone(), month, pb::PlanPhase::Queued, "waiting for the planner".into());
        self.jobs.insert(id.clone(), job.clone());
        let me = self.clone();
        let gate = self.gate.clone();
        tokio::spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let permit = gate.acquire_owned().await;
            // A thread of its own, not tokio's blocking pool: a long solve must
            // not hold up the runtime's shutdown.
            let (me2, job2) = (me.clone(), job.clone());
            let spawned = std::thread::Builder::new().name(format!("anxin-{}", job.id)).spawn(move || {
                let _permit = permit;
                me2.run(&job2, spec, now_ms);
                me2.pending.fetch_sub(1, Ordering::SeqCst);
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a planning thread");
                me.pending.fetch_sub(1, Ordering::SeqCst);
                me.finish(&job, Err(format!("cannot start a planning thread: {e}")), 0.0);
            }
        });
        Ok(id)
    }

    fn run(&self, job: &Job, spec: JobSpec, created_ms: i64) {
        let t0 = Instant::now();
        let last = Mutex::new((pb::PlanPhase::Queued, t0 - PROGRESS_EVERY));
        let elders = spec.input.elders.len() as f64;
        let report = |p: &Progress| {
            let phase = phase_pb(p.phase);
            {
                let mut last = last.lock();
                if phase == last.0 && last.1.elapsed() < PROGRESS_EVERY || phase == pb::PlanPhase::Done {
                    return;
                }
                *last = (phase, Instant::now());
            }
            job.progress.send_replace(pb::PlanProgress {
                job_id: job.id.clone(),
                phase: phase as i32,
                elapsed_s: p.elapsed.as_secs_f64(),
                best_travel_min: p.best_travel_min,
                coverage_rate: p.coverage,
                uncovered_elders: ((1.0 - p.coverage) * elders).round() as u32,
                message: String::new(),
            });
        };
        let travel = spec.doc.travel();
        let result = match &spec.repair {
            None => plan::plan(&spec.input, &travel, &spec.options, Some(&report)).map(|o| (o, None)),
            Some(r) => {
                plan::replan(&spec.input, &travel, &r.base.plan, &r.events, &r.from_date, &spec.options, Some(&report))
                    .map(|o| (o.outcome, Some(o.changed_routes.len())))
            }
        };
        let result = result.map_err(|e| e.to_string()).and_then(|(outcome, changed)| {
            let done = FinishedPlan::new(job.id.clone(), created_ms, outcome, spec.doc, &spec.input);
            let row = done.row().map_err(|e| e.to_string())?;
            self.store.write(WriteOp::Plan(row)).map_err(|e| format!("cannot store the plan: {e}"))?;
            tracing::info!(
                job = %job.id, month = %done.month, status = ?done.status, coverage = done.plan.coverage.rate,
                travel_min = done.plan.stats.total_travel_min, changed_routes = changed, "plan finished"
            );
            Ok(Arc::new(done))
        });
        if let Err(e) = &result {
            tracing::warn!(job = %job.id, error = %e, "planning job failed");
            let row = PlanRow {
                job_id: job.id.clone(),
                month: job.month.clone(),
                created_ms,
                phase: pb::PlanPhase::Failed as i32,
                message: e.clone(),
                ..Default::default()
            };
            self.store.write_later(WriteOp::Plan(row));
        }
        self.finish(job, result, t0.elapsed().as_secs_f64());
    }

    /// Publishes the end of a job.
    fn finish(&self, job: &Job, result: Result<Arc<FinishedPlan>, String>, elapsed_s: f64) {
        let last = match &result {
            Ok(done) => {
                let newer = self.latest.get(&done.month).is_none_or(|p| p.created_ms <= done.created_ms);
                if newer {
                    self.latest.insert(done.month.clone(), done.clone());
                }
                let c = &done.plan.coverage;
                pb::PlanProgress {
                    job_id: job.id.clone(),
                    phase: pb::PlanPhase::Done as i32,
                    elapsed_s,
                    best_travel_min: done.plan.stats.total_travel_min,
                    coverage_rate: c.rate,
                    uncovered_elders: (c.elders - c.fully_covered) as u32,
                    message: format!("{:?}", done.status),
                }
            }
            Err(e) => pb::PlanProgress {
                job_id: job.id.clone(),
                phase: pb::PlanPhase::Failed as i32,
                elapsed_s,
                message: e.clone(),
                ..Default::default()
            },
        };
        *job.result.lock() = Some(result);
        job.progress.send_replace(last);
    }

    /// Records a visit durably. Blocks on the store.
    pub fn record_visit(&self, v: pb::RecordVisitRequest) -> ApiResult<()> {
        self.store.write(WriteOp::Visit(v.clone())).map_err(|e| ApiError::Unavailable(format!("store: {e}")))?;
        self.visits.insert((v.elder_id.clone(), v.date.clone()), v);
        Ok(())
    }

    /// Recorded visits of `month` (`YYYY-MM`).
    pub fn visits_of(&self, month: &str) -> Vec<pb::RecordVisitRequest> {
        let prefix = format!("{month}-");
        let mut v: Vec<_> = self.visits.iter().filter(|e| e.key().1.starts_with(&prefix)).map(|e| e.clone()).collect();
        v.sort_by(|a, b| (&a.date, &a.elder_id).cmp(&(&b.date, &b.elder_id)));
        v
    }
}

/// Today's date (`YYYY-MM-DD`) at `now_ms` in a zone `utc_offset_h` hours from UTC.
pub fn local_date(now_ms: i64, utc_offset_h: i32) -> String {
    let days = (now_ms + utc_offset_h as i64 * 3_600_000).div_euclid(86_400_000);
    // Civil-from-days (proleptic Gregorian), after H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dates_cross_midnight_by_zone() {
        // 2026-11-30T20:00:00Z is already 1 December in China.
        let ms = 1_796_068_800_000;
        assert_eq!(local_date(ms, 0), "2026-11-30");
        assert_eq!(local_date(ms, 8), "2026-12-01");
        assert_eq!(local_date(0, 0), "1970-01-01");
        assert_eq!(local_date(951_782_400_000, 0), "2000-02-29");
    }
}
