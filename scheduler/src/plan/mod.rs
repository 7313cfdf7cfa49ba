//! Monthly visit planner (issue 4): every special-hardship elder visited as
//! required, with coverage first (never traded), then travel, continuity and
//! balance. Pipeline: input validation -> necessary-condition diagnosis ->
//! ILP assignment of primary caregivers (good_lp, decomposed) -> LP
//! assignment of visits to caregiver-days (decomposed, time-limited) ->
//! insertion of each visit on its LP caregiver-day, completed by per-elder
//! day selection by DP with insertion into caregiver-day routes ->
//! coverage repair by ejection -> intra-route local search (rayon) -> LNS ->
//! diagnosis of anything left uncovered.
//!
//! Knows nothing about gRPC, the store or files other than the CSV input.

pub mod calendar;
pub mod diagnose;
pub mod feasibility;
pub mod input;
pub mod model;
pub mod output;
pub mod replan;
pub mod synth;
pub mod travel;

mod assign;
mod build;
mod days;
mod lp;
mod routes;

pub use calendar::Month;
pub use diagnose::CoverageStatus;
pub use input::PlanInput;
pub use model::*;
pub use output::{coverage_of, to_geojson, Coverage, Plan, RoutePlan, Stats, Stop, Uncovered};
pub use replan::{replan, Event, ReplanOutcome};
pub use travel::{Haversine, TravelModel};

use std::time::{Duration, Instant};

/// Options of [`plan`].
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Wall-clock limit of the whole solve (default 60 s).
    pub time_limit: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Worker threads of the rayon pool (0 = rayon's default).
    pub threads: usize,
    /// LNS iterations; `None` = 20 per elder (capped at 200,000). The result is
    /// deterministic for a given seed unless the time limit cuts the LNS short.
    pub lns_iterations: Option<u64>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { time_limit: Duration::from_secs(60), seed: 1, threads: 0, lns_iterations: None }
    }
}

/// Phase of a running plan, for `WatchPlan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checking necessary conditions.
    Diagnose,
    /// ILP assignment of primary caregivers and of visits to caregiver-days.
    Assign,
    /// Building routes visit by visit.
    Construct,
    /// Local search and LNS.
    Improve,
    /// Finished.
    Done,
}

/// A progress report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    /// Current phase.
    pub phase: Phase,
    /// Time since the start.
    pub elapsed: Duration,
    /// Best total travel so far, minutes.
    pub best_travel_min: f64,
    /// Share of elders fully covered so far.
    pub coverage: f64,
}

/// Progress callback; must be cheap and thread-safe.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

/// A finished plan with its diagnosis.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOutcome {
    /// The `plan.json` document.
    pub plan: Plan,
    /// FULL / PROVED_IMPOSSIBLE / NOT_FOUND_IN_TIME.
    pub status: CoverageStatus,
    /// Smallest changes suggested to restore 100% (empty when FULL).
    pub suggestions: Vec<String>,
}

impl PlanOutcome {
    /// Process exit status the CLI should use: 0 when FULL, 3 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.status == CoverageStatus::Full {
            0
        } else {
            3
        }
    }

    /// Human summary for stdout.
    pub fn summary(&self) -> String {
        let p = &self.plan;
        let mut s = format!(
            "plan {}: coverage {}/{} elders ({:.1}%), {}/{} visits, status {:?}\n{} caregiver-day routes, total travel {:.1} min, solved in {:.1} s\n",
            p.month,
            p.coverage.fully_covered,
            p.coverage.elders,
            100.0 * p.coverage.rate,
            p.coverage.scheduled_visits,
            p.coverage.required_visits,
            self.status,
            p.routes.len(),
            p.stats.total_travel_min,
            p.stats.solve_seconds
        );
        let mut busy: Vec<&RoutePlan> = p.routes.iter().collect();
        busy.sort_by(|a, b| (b.end_min - b.start_min).total_cmp(&(a.end_min - a.start_min)).then(a.date.cmp(&b.date)));
        for r in busy.iter().take(3) {
            s.push_str(&format!(
                "  busiest: {} {} {} stops, {:.0} min on the road incl. visits\n",
                r.caregiver,
                r.date,
                r.stops.len(),
                r.end_min - r.start_min
            ));
        }
        for u in &p.uncovered {
            s.push_str(&format!("  UNCOVERED {} (missing {}): {}\n", u.elder, u.missing_visits, u.reason));
        }
        for x in &self.suggestions {
            s.push_str(&format!("  suggestion: {x}\n"));
        }
        s
    }
}

pub(crate) fn report(progress: Option<ProgressFn>, phase: Phase, t0: Instant, travel_s: i64, coverage: f64) {
    if let Some(f) = progress {
        f(&Progress { phase, elapsed: t0.elapsed(), best_travel_min: travel_s as f64 / 60.0, coverage });
    }
}

fn covered_share(input: &PlanInput, m: &routes::Month) -> f64 {
    if input.elders.is_empty() {
        return 1.0;
    }
    let full =
        input.elders.iter().enumerate().filter(|(e, el)| m.visits[*e].len() as u32 >= el.visits_per_month).count();
    full as f64 / input.elders.len() as f64
}

fn with_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> crate::Result<T> {
    if threads == 0 {
        return Ok(f());
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| crate::Error::BadOption {
        name: "threads",
        reason: format!("cannot start {threads} threads: {e}"),
    })?;
    Ok(pool.install(f))
}

/// Plans the month. Never fails on an infeasible instance: it returns the best
/// plan with every uncovered elder, its reason and the status.
pub fn plan(
    input: &PlanInput,
    travel: &dyn TravelModel,
    opts: &PlanOptions,
    progress: Option<ProgressFn>,
) -> crate::Result<PlanOutcome> {
    with_pool(opts.threads, || plan_in_pool(input, travel, opts, progress))
}

fn plan_in_pool(
    input: &PlanInput,
    travel: &dyn TravelModel,
    opts: &PlanOptions,
    progress: Option<ProgressFn>,
) -> PlanOutcome {
    let t0 = Instant::now();
    let deadline = t0 + opts.time_limit;
    let ctx = routes::Ctx::new(input, travel);
    report(progress, Phase::Diagnose, t0, 0, 0.0);
    let proofs = diagnose::proofs(&ctx);
    report(progress, Phase::Assign, t0, 0, 0.0);
    // The ILP may use at most a third of the budget.
    let assignment = assign::assign(&ctx, t0 + opts.time_limit / 3);
    tracing::debug!(lp_solved = assignment.lp_solved, clusters = assignment.clusters, "ilp stage");
    let planner = build::Planner::new(&ctx, &assignment.primary);
    let skip: Vec<bool> = proofs.iter().map(Option::is_some).collect();
    // Both LP stages together stay within the first third of the budget.
    let days = days::plan_days(&ctx, &planner.anchor, &skip, t0 + opts.time_limit / 3);
    tracing::debug!(lp_solved = days.lp_solved, groups = days.groups, "visit-day stage");
    report(progress, Phase::Construct, t0, 0, 0.0);
    let mut m = routes::Month::new(&ctx);
    let all_days = u64::MAX;
    let mut rng = build::rng(opts.seed, 1);
    // Hardest elders first: fewest plausible caregiver-days per visit, then tight windows.
    let mut order: Vec<(u64, i64, usize)> = (0..input.elders.len())
        .filter(|&e| proofs[e].is_none())
        .map(|e| {
            let el = &input.elders[e];
            let options: u64 = planner.near[e].iter().map(|&c| ctx.common_days(e, c).count_ones() as u64).sum();
            let width = el.window.map(|w| w.duration()).unwrap_or(86_400);
            (options / el.visits_per_month as u64, width, e)
        })
        .collect();
    order.sort_unstable();
    let mut failed = Vec::new();
    for &(_, _, e) in &order {
        if !planner.place_hinted(&mut m, e, &days.hint[e], all_days, &mut rng) {
            failed.push(e);
        }
    }
    report(progress, Phase::Improve, t0, m.travel(), covered_share(input, &m));
    build::improve_all_routes(&ctx, &mut m);
    let iters = opts.lns_iterations.unwrap_or_else(|| (20 * input.elders.len() as u64).min(200_000));
    let cov = covered_share(input, &m);
    planner.lns(&mut m, iters, deadline, &mut rng, all_days, |_, travel| {
        report(progress, Phase::Improve, t0, travel, cov)
    });
    build::improve_all_routes(&ctx, &mut m);
    // Second chance for elders the construction could not place.
    for &e in &failed {
        if Instant::now() < deadline {
            planner.place(&mut m, e, all_days, &mut rng);
        }
    }
    for &e in &failed {
        planner.place_partial(&mut m, e, all_days);
    }
    // Elders proved impossible still get what can be scheduled.
    for e in 0..input.elders.len() {
        if proofs[e].is_some() && !ctx.qualified[e].is_empty() {
            let need = input.elders[e].visits_per_month;
            if !planner.insert_elder(&mut m, e, need, &ctx.qualified[e], all_days, None) {
                planner.place_partial(&mut m, e, all_days);
            }
        }
    }
    finish(&ctx, &m, &planner.anchor, &assignment.cluster_of, &proofs, t0, progress)
}

pub(crate) fn finish(
    ctx: &routes::Ctx,
    m: &routes::Month,
    anchor: &[Option<usize>],
    cluster_of: &[usize],
    proofs: &[Option<String>],
    t0: Instant,
    progress: Option<ProgressFn>,
) -> PlanOutcome {
    let mut plan = output::to_plan(ctx, m);
    let (uncovered, suggestions) = diagnose::explain(ctx, m, anchor, cluster_of, proofs);
    let status = if uncovered.is_empty() {
        CoverageStatus::Full
    } else if ctx
        .input
        .elders
        .iter()
        .enumerate()
        .all(|(e, el)| m.visits[e].len() as u32 >= el.visits_per_month || proofs[e].is_some())
    {
        CoverageStatus::ProvedImpossible
    } else {
        CoverageStatus::NotFoundInTime
    };
    plan.uncovered = uncovered;
    plan.stats.solve_seconds = t0.elapsed().as_secs_f64();
    debug_assert!(
        feasibility::validate(ctx.input, ctx.travel, &plan).is_empty(),
        "planner produced an invalid plan: {:?}",
        feasibility::validate(ctx.input, ctx.travel, &plan)
    );
    report(progress, Phase::Done, t0, m.travel(), plan.coverage.rate);
    PlanOutcome { plan, status, suggestions }
}
