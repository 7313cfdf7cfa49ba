//! SchedulingService: monthly visit plans (`SubmitPlan` runs the planner off
//! the request path, `WatchPlan` follows it), the caregiver app's daily route,
//! visit records and coverage, and re-planning after events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use proto::v1 as pb;
use scheduler::plan::{self, CaregiverId, ElderId, Event, Month, PlanOptions, TimeWindow, Weekdays};
use tonic::{Request, Response, Status};

use crate::api::{blocking, now_ms, ResponseStream};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::planning::{
    is_terminal, local_date, status_pb, FinishedPlan, InputDoc, JobSpec, Planning, Repair, MAX_TIME_LIMIT_S,
};

pub struct SchedulingApi {
    pub state: Arc<AppState>,
}

/// Issues listed in one error message; the count of the rest follows.
const MAX_LISTED_ISSUES: usize = 20;

fn parse_month(field: &str, s: &str) -> ApiResult<Month> {
    Month::parse(s).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// The month of a `YYYY-MM-DD` date, checking the date.
fn parse_date(field: &str, s: &str) -> ApiResult<Month> {
    let month = s.get(..7).and_then(|m| Month::parse(m).ok());
    match month {
        Some(m) if m.parse_date(s).is_ok() => Ok(m),
        _ => Err(ApiError::invalid(field, format!("{s:?} is not a date like 2026-12-01"))),
    }
}

fn time_limit(field: &str, s: f64) -> ApiResult<Duration> {
    match s {
        0.0 => Ok(Duration::from_secs(60)),
        s if s.is_finite() && s > 0.0 && s <= MAX_TIME_LIMIT_S => Ok(Duration::from_secs_f64(s)),
        s => Err(ApiError::invalid(field, format!("{s} is not in (0, {MAX_TIME_LIMIT_S}] seconds"))),
    }
}

fn threads(n: u32) -> ApiResult<usize> {
    if n > 256 {
        return Err(ApiError::invalid("threads", format!("{n} is more than 256")));
    }
    Ok(n as usize)
}

/// The planner's input errors, each with its line and column; rows from the
/// registry are named by id instead of line.
fn input_error(e: scheduler::Error, ids: Option<(&[String], &[String])>) -> ApiError {
    let scheduler::Error::Input(issues) = e else {
        return ApiError::invalid("elders_csv", e.to_string());
    };
    let field = issues.first().map(|i| i.file.replace(".csv", "_csv")).unwrap_or_else(|| "elders_csv".into());
    let mut text: Vec<String> = issues
        .iter()
        .take(MAX_LISTED_ISSUES)
        .map(|i| match ids {
            Some((elders, caregivers)) => {
                let (what, list) =
                    if i.file.starts_with("elders") { ("elder", elders) } else { ("caregiver", caregivers) };
                let id = list.get((i.line as usize).saturating_sub(2)).map(String::as_str).unwrap_or("?");
                format!("registry {what} {id}: {}: {}", i.column, i.reason)
            }
            None => i.to_string(),
        })
        .collect();
    if issues.len() > MAX_LISTED_ISSUES {
        text.push(format!("and {} more", issues.len() - MAX_LISTED_ISSUES));
    }
    match ids {
        Some(_) => ApiError::FailedPrecondition(format!("the registry cannot be planned: {}", text.join("; "))),
        None => ApiError::invalid(field, text.join("; ")),
    }
}

/// The registry's elders and caregivers as the planner's spreadsheets, with
/// the ids in row order (for error messages).
fn registry_csv(
    state: &AppState,
    cfg: &crate::config::PlanningConfig,
) -> ApiResult<(String, String, Vec<String>, Vec<String>)> {
    let mut elders: Vec<pb::Elder> = state.registry.elders.iter().map(|e| e.clone()).collect();
    let mut cgs: Vec<pb::Caregiver> = state.registry.caregivers.iter().map(|c| c.clone()).collect();
    if elders.is_empty() {
        return Err(ApiError::FailedPrecondition(
            "the registry has no elders; register them, or send elders_csv and caregivers_csv".into(),
        ));
    }
    elders.sort_by(|a, b| a.id.cmp(&b.id));
    cgs.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out_e = Vec::with_capacity(elders.len());
    for e in &elders {
        let at = e.location.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(format!("registry elder {} has no location; it cannot be planned", e.id))
        })?;
        let categories = e
            .categories
            .iter()
            .filter_map(|&c| match pb::ElderCategory::try_from(c).ok()? {
                pb::ElderCategory::EmptyNest => Some(plan::Category::EmptyNest),
                pb::ElderCategory::LivingAlone => Some(plan::Category::LivingAlone),
                pb::ElderCategory::LeftBehind => Some(plan::Category::LeftBehind),
                pb::ElderCategory::Disabled => Some(plan::Category::Disabled),
                pb::ElderCategory::SpecialFamily => Some(plan::Category::SpecialFamily),
                pb::ElderCategory::Other => Some(plan::Category::Other),
                pb::ElderCategory::Unspecified => None,
            })
            .collect();
        out_e.push(plan::Elder {
            id: ElderId(e.id.clone()),
            name: e.name.clone(),
            at: plan::GeoPoint { lat: at.lat, lon: at.lon },
            categories,
            visits_per_month: e.visits_per_month.max(1),
            service: cfg.service_min as i64 * 60,
            days: Weekdays::ALL,
            window: None,
            skill: Some(e.required_skill.clone()).filter(|s| !s.is_empty()),
            preferred: None,
        });
    }
    // Caregivers without a home or a shift answer alarms only; they get no visits.
    cgs.retain(|c| c.home.is_some() && c.shift.as_ref().is_some_and(|s| s.end_min > s.start_min));
    if cgs.is_empty() {
        return Err(ApiError::FailedPrecondition(
            "no registry caregiver has a home and a shift to plan visits in".into(),
        ));
    }
    let mut out_c = Vec::with_capacity(cgs.len());
    for c in &cgs {
        let (Some(home), Some(shift)) = (&c.home, &c.shift) else { continue };
        let days = match shift.days.as_slice() {
            [] => Weekdays::ALL,
            days => Weekdays(days.iter().filter(|&&d| (1..=7).contains(&d)).fold(0, |acc, &d| acc | 1 << (d - 1))),
        };
        let mode = match pb::TravelMode::try_from(c.mode).unwrap_or(pb::TravelMode::Unspecified) {
            pb::TravelMode::Car => plan::Mode::Car,
            pb::TravelMode::Bike => plan::Mode::Bike,
            pb::TravelMode::Walk | pb::TravelMode::Unspecified => plan::Mode::Walk,
        };
        out_c.push(plan::Caregiver {
            id: CaregiverId(c.id.clone()),
            name: c.name.clone(),
            base: plan::GeoPoint { lat: home.lat, lon: home.lon },
            days,
            shift: TimeWindow { open: shift.start_min as i64 * 60, close: shift.end_min as i64 * 60 },
            max_visits_per_day: match c.max_visits_per_day {
                0 => cfg.max_visits_per_day,
                n => n,
            },
            skills: c.skills.clone(),
            mode,
        });
    }
    Ok((
        plan::input::elders_to_csv(&out_e),
        plan::input::caregivers_to_csv(&out_c),
        elders.into_iter().map(|e| e.id).collect(),
        cgs.into_iter().map(|c| c.id).collect(),
    ))
}

fn csv_text(field: &str, bytes: Vec<u8>) -> ApiResult<String> {
    String::from_utf8(bytes).map_err(|e| ApiError::invalid(field, format!("not UTF-8 text: {e}")))
}

fn route_pb(r: &plan::RoutePlan) -> pb::Route {
    pb::Route {
        caregiver_id: r.caregiver.0.clone(),
        date: r.date.clone(),
        start_min: r.start_min,
        end_min: r.end_min,
        travel_min: r.travel_min,
        stops: r
            .stops
            .iter()
            .map(|s| pb::Stop {
                elder_id: s.elder.0.clone(),
                arrive_min: s.arrive_min,
                start_min: s.start_min,
                end_min: s.end_min,
            })
            .collect(),
    }
}

/// Planned coverage of `done` and the coverage realised by recorded visits.
fn coverage_pb(planning: &Planning, done: &FinishedPlan) -> pb::Coverage {
    let c = &done.plan.coverage;
    let mut realised: HashMap<&str, u32> = HashMap::new();
    let records = planning.visits_of(&done.month);
    for v in &records {
        if v.outcome == pb::VisitOutcome::Done as i32 && done.required.contains_key(v.elder_id.as_str()) {
            *realised.entry(v.elder_id.as_str()).or_default() += 1;
        }
    }
    let realised_visits: u32 = realised.values().sum();
    let fully =
        done.required.iter().filter(|(e, &need)| realised.get(e.as_str()).copied().unwrap_or(0) >= need).count();
    pb::Coverage {
        month: done.month.clone(),
        elders: c.elders as u32,
        fully_covered: c.fully_covered as u32,
        required_visits: c.required_visits as u32,
        scheduled_visits: c.scheduled_visits as u32,
        rate: c.rate,
        realised_visits,
        realised_rate: if done.required.is_empty() { 1.0 } else { fully as f64 / done.required.len() as f64 },
        uncovered: done
            .plan
            .uncovered
            .iter()
            .map(|u| pb::UncoveredElder {
                elder_id: u.elder.0.clone(),
                missing_visits: u.missing_visits,
                reason: u.reason.clone(),
            })
            .collect(),
        status: status_pb(done.status) as i32,
    }
}

fn plan_pb(planning: &Planning, done: &FinishedPlan) -> pb::Plan {
    pb::Plan {
        job_id: done.job_id.clone(),
        month: done.month.clone(),
        routes: done.plan.routes.iter().map(route_pb).collect(),
        coverage: Some(coverage_pb(planning, done)),
        total_travel_min: done.plan.stats.total_travel_min,
        solve_seconds: done.plan.stats.solve_seconds,
        suggestions: done.suggestions.clone(),
    }
}

/// The replan events of a request, checked against the plan they repair.
fn replan_events(done: &FinishedPlan, month: Month, events: &[pb::ReplanEvent]) -> ApiResult<Vec<Event>> {
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let at = format!("events[{i}]");
        match &e.event {
            Some(pb::replan_event::Event::Absence(a)) => {
                if !done.caregivers.contains(&a.caregiver_id) {
                    return Err(ApiError::invalid(
                        format!("{at}.absence.caregiver_id"),
                        format!("caregiver {:?} is not in the plan", a.caregiver_id),
                    ));
                }
                if parse_date(&format!("{at}.absence.date"), &a.date)? != month {
                    return Err(ApiError::invalid(
                        format!("{at}.absence.date"),
                        format!("{} is not in {}", a.date, done.month),
                    ));
                }
                out.push(Event::CaregiverAbsent {
                    caregiver: CaregiverId(a.caregiver_id.clone()),
                    date: a.date.clone(),
                });
            }
            Some(pb::replan_event::Event::Visit(v)) => {
                if !done.is_planned(&v.elder_id, &v.date) {
                    return Err(ApiError::invalid(
                        format!("{at}.visit"),
                        format!("elder {:?} has no planned visit on {:?}", v.elder_id, v.date),
                    ));
                }
                out.push(visit_event(v).ok_or_else(|| {
                    ApiError::invalid(format!("{at}.visit.outcome"), "must be DONE, MISSED or REFUSED")
                })?);
            }
            None => return Err(ApiError::invalid(format!("{at}.event"), "is empty")),
        }
    }
    Ok(out)
}

fn visit_event(v: &pb::RecordVisitRequest) -> Option<Event> {
    let (elder, date) = (ElderId(v.elder_id.clone()), v.date.clone());
    match pb::VisitOutcome::try_from(v.outcome).ok()? {
        pb::VisitOutcome::Done => Some(Event::VisitDone { elder, date }),
        pb::VisitOutcome::Missed | pb::VisitOutcome::Refused => Some(Event::VisitMissed { elder, date }),
        pb::VisitOutcome::Unspecified => None,
    }
}

#[tonic::async_trait]
impl pb::scheduling_service_server::SchedulingService for SchedulingApi {
    async fn submit_plan(
        &self,
        req: Request<pb::SubmitPlanRequest>,
    ) -> Result<Response<pb::SubmitPlanResponse>, Status> {
        let r = req.into_inner();
        let month = parse_month("month", &r.month)?;
        for (i, h) in r.holidays.iter().enumerate() {
            month.parse_date(h).map_err(|e| ApiError::invalid(format!("holidays[{i}]"), e.to_string()))?;
        }
        let limit = time_limit("time_limit_s", r.time_limit_s)?;
        let detour = match r.detour_factor {
            0.0 => 1.3,
            d if d.is_finite() && (1.0..=5.0).contains(&d) => d,
            d => return Err(ApiError::invalid("detour_factor", format!("{d} is not between 1 and 5")).into()),
        };
        let threads = threads(r.threads)?;
        let state = self.state.clone();
        let id = blocking(move || {
            let planning = &state.planning;
            let (elders_csv, caregivers_csv, ids) = match (r.elders_csv.is_empty(), r.caregivers_csv.is_empty()) {
                (true, true) => {
                    let (e, c, ei, ci) = registry_csv(&state, &planning.config)?;
                    (e, c, Some((ei, ci)))
                }
                (false, false) => {
                    (csv_text("elders_csv", r.elders_csv)?, csv_text("caregivers_csv", r.caregivers_csv)?, None)
                }
                (true, false) => {
                    return Err(ApiError::invalid(
                        "elders_csv",
                        "send both spreadsheets, or neither to plan the registry",
                    ))
                }
                (false, true) => {
                    return Err(ApiError::invalid(
                        "caregivers_csv",
                        "send both spreadsheets, or neither to plan the registry",
                    ))
                }
            };
            let doc = InputDoc { elders_csv, caregivers_csv, holidays: r.holidays, detour };
            let input = doc
                .parse(month)
                .map_err(|e| input_error(e, ids.as_ref().map(|(e, c)| (e.as_slice(), c.as_slice()))))?;
            let options = PlanOptions { time_limit: limit, seed: r.seed, threads, lns_iterations: None };
            planning.submit(JobSpec { month, input, doc, options, repair: None }, now_ms())
        })
        .await?;
        Ok(Response::new(pb::SubmitPlanResponse { job_id: id }))
    }

    type WatchPlanStream = ResponseStream<pb::PlanProgress>;

    async fn watch_plan(&self, req: Request<pb::WatchPlanRequest>) -> Result<Response<Self::WatchPlanStream>, Status> {
        let job = self.state.planning.job(&req.into_inner().job_id)?;
        let rx = job.subscribe();
        let updates = futures::stream::unfold(Some((rx, true)), |st| async move {
            let (mut rx, first) = st?;
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let p = rx.borrow_and_update().clone();
            let next = if is_terminal(p.phase) { None } else { Some((rx, false)) };
            Some((Ok(p), next))
        });
        Ok(Response::new(Box::pin(updates.take_until(self.state.closed()))))
    }

    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let r = req.into_inner();
        let planning = &self.state.planning;
        let done = if !r.job_id.is_empty() {
            let job = planning.job(&r.job_id)?;
            match job.result() {
                Some(Ok(done)) => done,
                Some(Err(e)) => {
                    return Err(ApiError::FailedPrecondition(format!("plan job {} failed: {e}", job.id)).into())
                }
                None => {
                    let phase = pb::PlanPhase::try_from(job.progress().phase).unwrap_or(pb::PlanPhase::Unspecified);
                    return Err(ApiError::FailedPrecondition(format!(
                        "plan job {} has not finished (phase {}); follow it with WatchPlan",
                        job.id,
                        phase.as_str_name()
                    ))
                    .into());
                }
            }
        } else if !r.month.is_empty() {
            planning.latest(&parse_month("month", &r.month)?.to_text())?
        } else {
            return Err(ApiError::invalid("job_id", "give a job_id or a month").into());
        };
        Ok(Response::new(plan_pb(planning, &done)))
    }

    async fn get_route(&self, req: Request<pb::GetRouteRequest>) -> Result<Response<pb::Route>, Status> {
        let r = req.into_inner();
        if r.caregiver_id.is_empty() {
            return Err(ApiError::invalid("caregiver_id", "is empty").into());
        }
        let month = parse_date("date", &r.date)?;
        let done = self.state.planning.latest(&month.to_text())?;
        if let Some(route) = done.route(&r.caregiver_id, &r.date) {
            return Ok(Response::new(route_pb(route)));
        }
        if !done.caregivers.contains(&r.caregiver_id) {
            let id = format!("{} in the plan of {}", r.caregiver_id, done.month);
            return Err(ApiError::NotFound { what: "caregiver", id }.into());
        }
        // A caregiver with no visits that day gets an empty route, not an error.
        Ok(Response::new(pb::Route { caregiver_id: r.caregiver_id, date: r.date, ..Default::default() }))
    }

    async fn record_visit(
        &self,
        req: Request<pb::RecordVisitRequest>,
    ) -> Result<Response<pb::RecordVisitResponse>, Status> {
        let mut v = req.into_inner();
        let month = parse_date("date", &v.date)?;
        let planning = &self.state.planning;
        let registry = &self.state.registry;
        let plan = planning.latest(&month.to_text()).ok();
        let known_elder = registry.elders.contains_key(&v.elder_id)
            || plan.as_ref().is_some_and(|p| p.required.contains_key(&v.elder_id));
        if v.elder_id.is_empty() || !known_elder {
            return Err(ApiError::NotFound { what: "elder", id: v.elder_id }.into());
        }
        let known_caregiver = registry.caregivers.contains_key(&v.caregiver_id)
            || plan.as_ref().is_some_and(|p| p.caregivers.contains(&v.caregiver_id));
        if v.caregiver_id.is_empty() || !known_caregiver {
            return Err(ApiError::NotFound { what: "caregiver", id: v.caregiver_id }.into());
        }
        if visit_event(&v).is_none() {
            return Err(ApiError::invalid("outcome", "must be DONE, MISSED or REFUSED").into());
        }
        if v.note.chars().count() > 2000 {
            return Err(ApiError::invalid("note", "is longer than 2000 characters").into());
        }
        if v.at_unix_ms == 0 {
            v.at_unix_ms = now_ms();
        }
        let state = self.state.clone();
        blocking(move || state.planning.record_visit(v)).await?;
        Ok(Response::new(pb::RecordVisitResponse { recorded: true }))
    }

    async fn get_coverage(&self, req: Request<pb::GetCoverageRequest>) -> Result<Response<pb::Coverage>, Status> {
        let month = parse_month("month", &req.into_inner().month)?;
        let planning = &self.state.planning;
        let done = planning.latest(&month.to_text())?;
        Ok(Response::new(coverage_pb(planning, &done)))
    }

    async fn replan(&self, req: Request<pb::ReplanRequest>) -> Result<Response<pb::SubmitPlanResponse>, Status> {
        let r = req.into_inner();
        let month = parse_month("month", &r.month)?;
        let planning = self.state.planning.clone();
        let base = planning.latest(&month.to_text())?;
        let from_date = if r.from_date.is_empty() {
            let today = local_date(now_ms(), planning.config.utc_offset_h);
            let first = month.date(1);
            let last = month.date(month.days());
            if today > last {
                return Err(ApiError::FailedPrecondition(format!(
                    "{} is over; nothing is left to re-plan",
                    base.month
                ))
                .into());
            }
            today.max(first)
        } else {
            month.parse_date(&r.from_date).map_err(|e| ApiError::invalid("from_date", e.to_string()))?;
            r.from_date.clone()
        };
        let mut events = replan_events(&base, month, &r.events)?;
        // Recorded visits of planned stops count as events too (the request's own come first).
        let named: std::collections::HashSet<(String, String)> = events
            .iter()
            .filter_map(|e| match e {
                Event::VisitDone { elder, date } | Event::VisitMissed { elder, date } => {
                    Some((elder.0.clone(), date.clone()))
                }
                Event::CaregiverAbsent { .. } => None,
            })
            .collect();
        for v in planning.visits_of(&base.month) {
            if base.is_planned(&v.elder_id, &v.date) && !named.contains(&(v.elder_id.clone(), v.date.clone())) {
                events.extend(visit_event(&v));
            }
        }
        let limit = time_limit("time_limit_s", r.time_limit_s)?;
        let threads = threads(r.threads)?;
        let id = blocking(move || {
            let input = base.input.parse(month).map_err(|e| {
                ApiError::Internal(format!("stored input of plan {} no longer parses: {e}", base.job_id))
            })?;
            let options = PlanOptions { time_limit: limit, seed: r.seed, threads, lns_iterations: None };
            let doc = base.input.clone();
            let repair = Some(Repair { base, events, from_date });
            planning.submit(JobSpec { month, input, doc, options, repair }, now_ms())
        })
        .await?;
        Ok(Response::new(pb::SubmitPlanResponse { job_id: id }))
    }
}
