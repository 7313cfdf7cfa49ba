//! Re-planning: repair the rest of the month after events (caregiver absent,
//! visit missed or done), keeping 100% coverage when possible and changing as
//! few routes as possible (touching a new route costs more than a detour).

use super::build::Planner;
use super::model::{CaregiverId, ElderId};
use super::output::Plan;
use super::routes::{Ctx, Month};
use super::{finish, report, Phase, PlanInput, PlanOptions, PlanOutcome, ProgressFn, TravelModel};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Something that happened after the plan was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The caregiver cannot work on `date` (`YYYY-MM-DD`): the route is cancelled.
    CaregiverAbsent {
        /// Who.
        caregiver: CaregiverId,
        /// When.
        date: String,
    },
    /// The planned visit of `elder` on `date` took place (must be in the plan).
    VisitDone {
        /// Who.
        elder: ElderId,
        /// When.
        date: String,
    },
    /// The planned visit of `elder` on `date` did not take place (missed or
    /// refused): it is removed and a make-up visit is scheduled.
    VisitMissed {
        /// Who.
        elder: ElderId,
        /// When.
        date: String,
    },
}

/// A repaired plan and what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplanOutcome {
    /// The new plan and its diagnosis.
    pub outcome: PlanOutcome,
    /// Caregiver-days whose stops changed (including cancelled ones), by date.
    pub changed_routes: Vec<(CaregiverId, String)>,
}

/// Cost (seconds) of changing a route that has not been changed yet.
const TOUCH: i64 = 3600;

/// Repairs `plan` after `events`. Days before `from_date` are history (kept as
/// they are, except missed visits which are removed); new visits go on
/// `from_date` or later.
pub fn replan(
    input: &PlanInput,
    travel: &dyn TravelModel,
    plan: &Plan,
    events: &[Event],
    from_date: &str,
    opts: &PlanOptions,
    progress: Option<ProgressFn>,
) -> Result<ReplanOutcome> {
    super::with_pool(opts.threads, || replan_in_pool(input, travel, plan, events, from_date, opts, progress))?
}

fn replan_in_pool(
    input: &PlanInput,
    travel: &dyn TravelModel,
    plan: &Plan,
    events: &[Event],
    from_date: &str,
    opts: &PlanOptions,
    progress: Option<ProgressFn>,
) -> Result<ReplanOutcome> {
    let t0 = Instant::now();
    let ctx = Ctx::new(input, travel);
    if plan.month != input.month.to_text() {
        return Err(Error::PlanMismatch(format!("plan month {} is not {}", plan.month, input.month.to_text())));
    }
    let from = input.month.parse_date(from_date)?;
    let cg_idx: HashMap<&str, usize> = input.caregivers.iter().enumerate().map(|(i, c)| (c.id.0.as_str(), i)).collect();
    let el_idx: HashMap<&str, usize> = input.elders.iter().enumerate().map(|(i, e)| (e.id.0.as_str(), i)).collect();
    let mut m = Month::new(&ctx);
    for r in &plan.routes {
        let c = *cg_idx
            .get(r.caregiver.0.as_str())
            .ok_or_else(|| Error::PlanMismatch(format!("unknown caregiver {}", r.caregiver)))?;
        let d = input.month.parse_date(&r.date)?;
        let i = m.idx(c, d);
        for s in &r.stops {
            let e = *el_idx
                .get(s.elder.0.as_str())
                .ok_or_else(|| Error::PlanMismatch(format!("unknown elder {}", s.elder)))?;
            m.routes[i].stops.push(e);
            m.visits[e].push((d, c));
        }
        if !m.routes[i].recompute(&ctx, c) {
            return Err(Error::PlanMismatch(format!("route {} {} is infeasible for this input", r.caregiver, r.date)));
        }
    }
    for v in &mut m.visits {
        v.sort_unstable();
    }
    let original: Vec<Vec<usize>> = m.routes.iter().map(|r| r.stops.clone()).collect();
    // Apply events.
    for ev in events {
        match ev {
            Event::CaregiverAbsent { caregiver, date } => {
                let c = *cg_idx
                    .get(caregiver.0.as_str())
                    .ok_or_else(|| Error::PlanMismatch(format!("unknown caregiver {caregiver}")))?;
                let d = input.month.parse_date(date)?;
                if d < from {
                    continue;
                }
                let i = m.idx(c, d);
                m.blocked.insert(i);
                for e in m.route(c, d).stops.clone() {
                    m.remove_stop(&ctx, e, c, d);
                    m.visits[e].retain(|v| *v != (d, c));
                }
            }
            Event::VisitDone { elder, date } | Event::VisitMissed { elder, date } => {
                let e = *el_idx
                    .get(elder.0.as_str())
                    .ok_or_else(|| Error::PlanMismatch(format!("unknown elder {elder}")))?;
                let d = input.month.parse_date(date)?;
                let Some(&(_, c)) = m.visits[e].iter().find(|v| v.0 == d) else {
                    return Err(Error::PlanMismatch(format!("no planned visit of elder {elder} on {date}")));
                };
                if matches!(ev, Event::VisitMissed { .. }) {
                    m.remove_stop(&ctx, e, c, d);
                    m.visits[e].retain(|v| v.0 != d);
                }
            }
        }
    }
    // Anchor = the caregiver who visits the elder most in the current plan.
    let mut primary = vec![None; input.elders.len()];
    for (e, vs) in m.visits.iter().enumerate() {
        let mut count: HashMap<usize, usize> = HashMap::new();
        for v in vs {
            *count.entry(v.1).or_default() += 1;
        }
        primary[e] = count.into_iter().max_by_key(|&(c, n)| (n, std::cmp::Reverse(c))).map(|x| x.0);
    }
    let proofs = super::diagnose::proofs(&ctx);
    for e in 0..input.elders.len() {
        if primary[e].is_none() {
            primary[e] = ctx.qualified[e].iter().copied().find(|&c| super::assign::plausible(&ctx, e, c));
        }
    }
    let planner = Planner::new(&ctx, &primary);
    report(progress, Phase::Construct, t0, m.travel(), 0.0);
    let allowed: u64 = (from..=ctx.days).fold(0u64, |a, d| a | (1 << d));
    let mut rng = super::build::rng(opts.seed, 2);
    let mut touched: HashSet<usize> = (0..m.routes.len()).filter(|&i| m.routes[i].stops != original[i]).collect();
    let mut needy: Vec<usize> =
        (0..input.elders.len()).filter(|&e| (m.visits[e].len() as u32) < input.elders[e].visits_per_month).collect();
    needy.sort_by_key(|&e| (ctx.qualified[e].len(), e));
    for &e in &needy {
        let need = input.elders[e].visits_per_month - m.visits[e].len() as u32;
        let pen = |i: usize| if touched.contains(&i) { 0 } else { TOUCH };
        let ok = planner.insert_elder(&mut m, e, need, &planner.near[e], allowed, Some(&pen))
            || planner.insert_elder(&mut m, e, need, &ctx.qualified[e], allowed, Some(&pen))
            || planner.place(&mut m, e, allowed, &mut rng);
        if !ok {
            planner.place_partial(&mut m, e, allowed);
        }
        touched.extend((0..m.routes.len()).filter(|&i| m.routes[i].stops != original[i]));
    }
    let mut changed = Vec::new();
    let per = ctx.days as usize + 1;
    for i in 0..m.routes.len() {
        if m.routes[i].stops != original[i] {
            let (c, d) = (i / per, (i % per) as u32);
            changed.push((d, c));
        }
    }
    changed.sort_unstable();
    let cluster_of: Vec<usize> = (0..input.caregivers.len()).collect();
    let outcome = finish(&ctx, &m, &planner.anchor, &cluster_of, &proofs, t0, progress);
    let changed_routes =
        changed.into_iter().map(|(d, c)| (input.caregivers[c].id.clone(), input.month.date(d))).collect();
    Ok(ReplanOutcome { outcome, changed_routes })
}
