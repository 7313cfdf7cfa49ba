//! Visit-day LP stage: decides which caregiver-days carry each elder's visits
//! (capacity, days, skills, spacing, continuity), sparse over a few plausible
//! caregivers per elder and their common days, decomposed into small groups of
//! caregivers solved in parallel, each LP time-limited. The result is only a
//! first choice for the routing stage ([`DayPlan::hint`]): an elder whose LP
//! did not solve, or whose hinted visit a route cannot take, is placed by the
//! day-selection DP of `build.rs`. See `MODEL.md` section 2.

use super::assign::{bisect, plausible, CLUSTER};
use super::build::W_CONTINUITY;
use super::lp;
use super::model::GeoPoint;
use super::routes::{Ctx, Loc};
use good_lp::{variable, Expression, ProblemVariables, Solution, Variable};
use rayon::prelude::*;
use std::time::Instant;

/// Caregivers per group (one LP each): groups split the assignment clusters.
const GROUP: usize = 4;
/// Candidate caregivers per elder (its anchor plus the nearest plausible ones of its group).
const CANDIDATES: usize = 2;
/// Share of a shift the estimated service and travel of a day may fill.
const DAY_UTILISATION: f64 = 0.9;
/// Cost (seconds) per stop above a caregiver's even share of stops per day.
const W_LOAD: f64 = 30.0;
/// Cost per visit the LP leaves out (never traded: dominates any travel).
const UNPLACED: f64 = 1e7;
/// LP values at or above this count as chosen when rounding.
const CHOSEN: f64 = 0.3;

/// `(day, caregiver)` pairs of one elder's visits, sorted by day.
type Visits = Vec<(u32, usize)>;

/// Outcome of the stage.
#[derive(Debug, Clone, Default)]
pub(crate) struct DayPlan {
    /// Per elder: the `(day, caregiver)` pairs chosen for its visits, sorted by
    /// day, pairwise spaced; empty when its group's LP did not solve.
    pub hint: Vec<Visits>,
    /// Groups whose LP was solved / groups with at least one elder.
    pub lp_solved: usize,
    pub groups: usize,
}

/// Runs the stage for every elder with an anchor and no proof of
/// impossibility (`skip[e]`). `deadline` bounds every LP.
pub(crate) fn plan_days(ctx: &Ctx, anchor: &[Option<usize>], skip: &[bool], deadline: Instant) -> DayPlan {
    let ne = ctx.input.elders.len();
    let groups: Vec<Vec<usize>> = bisect(ctx, (0..ctx.input.caregivers.len()).collect(), CLUSTER)
        .into_iter()
        .flat_map(|cluster| bisect(ctx, cluster, GROUP))
        .collect();
    let mut group_of = vec![0; ctx.input.caregivers.len()];
    for (g, cgs) in groups.iter().enumerate() {
        for &c in cgs {
            group_of[c] = g;
        }
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    for e in 0..ne {
        if let (Some(a), false) = (anchor[e], skip[e]) {
            members[group_of[a]].push(e);
        }
    }
    let results: Vec<Option<Vec<(usize, Visits)>>> = (0..groups.len())
        .into_par_iter()
        .map(|g| {
            if members[g].is_empty() {
                return Some(Vec::new());
            }
            let cands: Vec<(usize, Vec<usize>)> = members[g]
                .iter()
                .map(|&e| {
                    let a = anchor[e].unwrap_or_default();
                    let mut cs = vec![a];
                    cs.extend(
                        ctx.qualified[e]
                            .iter()
                            .copied()
                            .filter(|&c| c != a && group_of[c] == g && plausible(ctx, e, c))
                            .take(CANDIDATES - 1),
                    );
                    (e, cs)
                })
                .collect();
            solve_group(ctx, &groups[g], &cands, anchor, deadline)
        })
        .collect();
    let mut plan = DayPlan { hint: vec![Vec::new(); ne], ..Default::default() };
    for (g, r) in results.into_iter().enumerate() {
        if members[g].is_empty() {
            continue;
        }
        plan.groups += 1;
        if let Some(r) = r {
            plan.lp_solved += 1;
            for (e, h) in r {
                plan.hint[e] = h;
            }
        }
    }
    tracing::debug!(groups = plan.groups, lp_solved = plan.lp_solved, solver = lp::SOLVER, "visit-day stage done");
    plan
}

/// Seed point ("zone") of each working weekday of caregiver `c`: the
/// caregiver's anchored elders swept by angle around its base and cut into one
/// arc of equal visit weight per working weekday; the seed is the arc's
/// centroid. Returns `seed[weekday]` (`None` on weekdays off or without elders).
fn zone_seeds(ctx: &Ctx, c: usize, elders: &[usize]) -> [Option<GeoPoint>; 7] {
    let mut seeds = [None; 7];
    let base = ctx.input.caregivers[c].base;
    let weekdays: Vec<u8> = (0..7u8)
        .filter(|&wd| (1..=ctx.days).any(|d| ctx.cg_days[c] & (1 << d) != 0 && ctx.input.month.weekday(d) == wd))
        .collect();
    if elders.is_empty() || weekdays.is_empty() {
        return seeds;
    }
    let scale = base.lat.to_radians().cos();
    let angle = |e: usize| {
        let p = ctx.input.elders[e].at;
        ((p.lat - base.lat).atan2((p.lon - base.lon) * scale), e)
    };
    let mut swept: Vec<(f64, usize)> = elders.iter().map(|&e| angle(e)).collect();
    swept.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Start the sweep after the widest empty angle so that arcs are compact.
    let n = swept.len();
    let widest = (0..n)
        .max_by(|&i, &j| {
            let gap = |k: usize| (swept[(k + 1) % n].0 - swept[k].0).rem_euclid(std::f64::consts::TAU);
            gap(i).total_cmp(&gap(j)).then(j.cmp(&i))
        })
        .unwrap_or(0);
    swept.rotate_left((widest + 1) % n);
    let weight = |e: usize| ctx.input.elders[e].visits_per_month as f64;
    let total: f64 = swept.iter().map(|&(_, e)| weight(e)).sum();
    let k = weekdays.len();
    let mut sums = vec![(0.0, 0.0, 0.0); k];
    let mut before = 0.0;
    for &(_, e) in &swept {
        let w = weight(e);
        let arc = (((before + w / 2.0) / total * k as f64) as usize).min(k - 1);
        before += w;
        let p = ctx.input.elders[e].at;
        let s = &mut sums[arc];
        *s = (s.0 + w * p.lat, s.1 + w * p.lon, s.2 + w);
    }
    for (arc, &wd) in weekdays.iter().enumerate() {
        let (lat, lon, w) = sums[arc];
        if w > 0.0 {
            seeds[wd as usize] = Some(GeoPoint { lat: lat / w, lon: lon / w });
        }
    }
    seeds
}

/// Travel seconds of caregiver `c` from the zone seed of weekday `wd` to
/// elder `e` (from its base when the weekday has no seed).
fn zone_tt(ctx: &Ctx, c: usize, seeds: &[Option<GeoPoint>; 7], wd: u8, e: usize) -> f64 {
    match seeds[wd as usize] {
        Some(p) => ctx.travel.seconds(ctx.input.caregivers[c].mode, p, ctx.input.elders[e].at) as f64,
        None => ctx.tt(c, Loc::Base, Loc::Elder(e)) as f64,
    }
}

/// One visit-day variable: elder `e` (index into the group's elders), caregiver, day.
struct Visit {
    i: usize,
    c: usize,
    d: u32,
    var: Variable,
}

/// LP relaxation of the group's visit-day assignment, rounded per elder.
/// `None` if the LP fails or runs out of time.
fn solve_group(
    ctx: &Ctx,
    cgs: &[usize],
    cands: &[(usize, Vec<usize>)],
    anchor: &[Option<usize>],
    deadline: Instant,
) -> Option<Vec<(usize, Visits)>> {
    if Instant::now() >= deadline {
        return None;
    }
    let input = ctx.input;
    let seeds: Vec<[Option<GeoPoint>; 7]> = cgs
        .iter()
        .map(|&c| {
            let own: Vec<usize> = cands.iter().map(|(e, _)| *e).filter(|&e| anchor[e] == Some(c)).collect();
            zone_seeds(ctx, c, &own)
        })
        .collect();
    let slot = |c: usize| cgs.iter().position(|&x| x == c).unwrap_or_default();
    let mut vars = ProblemVariables::new();
    let mut objective = Expression::default();
    let mut visits: Vec<Visit> = Vec::new();
    let mut constraints = Vec::new();
    for (i, (e, cs)) in cands.iter().enumerate() {
        let el = &input.elders[*e];
        let first = visits.len();
        for &c in cs {
            let days = ctx.common_days(*e, c);
            for d in 1..=ctx.days {
                if days & (1 << d) == 0 {
                    continue;
                }
                let var = vars.add(variable().min(0.0).max(1.0));
                let mut cost = zone_tt(ctx, c, &seeds[slot(c)], ctx.input.month.weekday(d), *e);
                if anchor[*e] != Some(c) {
                    cost += W_CONTINUITY as f64;
                }
                objective += cost * var;
                visits.push(Visit { i, c, d, var });
            }
        }
        let mine = &mut visits[first..];
        mine.sort_by_key(|v| (v.d, v.c));
        // Exactly v_e visits, or the rest left to the DP at a prohibitive cost.
        let short = vars.add(variable().min(0.0).max(el.visits_per_month as f64));
        objective += UNPLACED * short;
        let count: Expression = mine.iter().map(|v| Expression::from(v.var)).sum();
        constraints.push((count + short).eq(el.visits_per_month as f64));
        // Spacing: at most one visit in any g consecutive days (this also
        // allows at most one visit per day). A window whose last day equals
        // the previous window's last day is contained in it and skipped.
        let gap = ctx.gap[*e].max(1);
        let mut last_end = None;
        for s in 0..mine.len() {
            let end = mine[s..].iter().take_while(|v| v.d < mine[s].d + gap).count() + s;
            if end - s >= 2 && last_end != Some(end) {
                constraints.push(mine[s..end].iter().map(|v| Expression::from(v.var)).sum::<Expression>().leq(1.0));
            }
            last_end = Some(end);
        }
    }
    // Caregiver-day capacity: stops, and service plus estimated travel
    // (the base leg of each visit) within the usable shift; stops above the
    // caregiver's even share cost W_LOAD each.
    let per = ctx.days as usize + 1;
    let mut stops: Vec<Expression> = vec![Expression::default(); cgs.len() * per];
    let mut minutes: Vec<Expression> = vec![Expression::default(); cgs.len() * per];
    let mut used = vec![false; cgs.len() * per];
    for v in &visits {
        let e = cands[v.i].0;
        let k = slot(v.c) * per + v.d as usize;
        let est = input.elders[e].service as f64 + ctx.tt(v.c, Loc::Base, Loc::Elder(e)) as f64;
        stops[k] += v.var;
        minutes[k] += est * v.var;
        used[k] = true;
    }
    for (s, &c) in cgs.iter().enumerate() {
        let cg = &input.caregivers[c];
        let demand: f64 = cands
            .iter()
            .filter(|(e, _)| anchor[*e] == Some(c))
            .map(|(e, _)| input.elders[*e].visits_per_month as f64)
            .sum();
        let share = (demand / ctx.cg_days[c].count_ones().max(1) as f64).ceil();
        for d in 1..=ctx.days as usize {
            let k = s * per + d;
            if !used[k] {
                continue;
            }
            let over = vars.add(variable().min(0.0));
            objective += W_LOAD * over;
            let n = std::mem::take(&mut stops[k]);
            constraints.push(n.clone().leq(cg.max_visits_per_day as f64));
            constraints.push((n - over).leq(share));
            constraints.push(std::mem::take(&mut minutes[k]).leq(DAY_UTILISATION * cg.shift.duration() as f64));
        }
    }
    let sol = lp::solve(vars.minimise(objective), constraints, deadline)?;
    // Rounding: per elder, largest values first, keeping spacing.
    let mut out = Vec::with_capacity(cands.len());
    let mut start = 0;
    while start < visits.len() {
        let i = visits[start].i;
        let end = start + visits[start..].iter().take_while(|v| v.i == i).count();
        let (e, _) = &cands[i];
        let mut ranked: Vec<(f64, u32, usize)> =
            visits[start..end].iter().map(|v| (sol.value(v.var), v.d, v.c)).filter(|x| x.0 >= CHOSEN).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let gap = ctx.gap[*e].max(1);
        let mut picked: Visits = Vec::new();
        for (_, d, c) in ranked {
            if picked.len() as u32 >= input.elders[*e].visits_per_month {
                break;
            }
            if picked.iter().all(|p| p.0.abs_diff(d) >= gap) {
                picked.push((d, c));
            }
        }
        picked.sort_unstable();
        out.push((*e, picked));
        start = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::model::*;
    use crate::plan::{Haversine, Month, PlanInput};
    use std::time::Duration;

    fn at(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint { lat, lon }
    }

    /// One caregiver with `max_per_day` stops a day (Mon-Fri, 08:00-17:00 by
    /// bike) and `n` weekly elders (4 visits, 60 min) close to its base.
    fn small(n: usize, max_per_day: u32) -> PlanInput {
        let month = Month::parse("2026-12").expect("month");
        let cg = Caregiver {
            id: CaregiverId("C1".into()),
            name: "c".into(),
            base: at(30.0, 120.0),
            days: Weekdays::parse("Mon-Fri").expect("days"),
            shift: TimeWindow::parse("08:00-17:00").expect("shift"),
            max_visits_per_day: max_per_day,
            skills: Vec::new(),
            mode: Mode::Bike,
        };
        let elders = (0..n)
            .map(|i| Elder {
                id: ElderId(format!("E{i}")),
                name: "e".into(),
                at: at(30.0 + 0.004 * i as f64, 120.0 + 0.003 * (i % 3) as f64),
                categories: Vec::new(),
                visits_per_month: 4,
                service: 3600,
                days: Weekdays::ALL,
                window: None,
                skill: None,
                preferred: None,
            })
            .collect();
        PlanInput::new(month, vec![25], elders, vec![cg]).expect("valid input")
    }

    #[test]
    fn lp_respects_spacing_and_daily_capacity() {
        // 5 weekly elders, one stop a day: 20 visits on 22 working days.
        let input = small(5, 1);
        let tm = Haversine::default();
        let ctx = Ctx::new(&input, &tm);
        let anchor = vec![Some(0); 5];
        let p = plan_days(&ctx, &anchor, &[false; 5], Instant::now() + Duration::from_secs(30));
        assert_eq!((p.lp_solved, p.groups), (1, 1));
        let mut per_day = vec![0; 32];
        let mut hinted = 0;
        for (e, h) in p.hint.iter().enumerate() {
            assert!(h.len() <= 4, "elder {e}: {h:?}");
            for w in h.windows(2) {
                assert!(w[1].0 - w[0].0 >= ctx.gap[e], "elder {e} visits too close: {h:?}");
            }
            for &(d, c) in h {
                assert!(ctx.common_days(e, c) & (1 << d) != 0, "elder {e} on day {d} off");
                per_day[d as usize] += 1;
            }
            hinted += h.len();
        }
        assert!(per_day.iter().all(|&n| n <= 1), "more than one stop a day: {per_day:?}");
        assert!(hinted >= 16, "the LP placed only {hinted} of 20 visits");
    }

    #[test]
    fn lp_fills_days_up_to_the_stop_limit_only() {
        // 9 weekly elders, 2 stops a day: the LP must spread 36 visits over >= 18 days.
        let input = small(9, 2);
        let tm = Haversine::default();
        let ctx = Ctx::new(&input, &tm);
        let p = plan_days(&ctx, &[Some(0); 9], &[false; 9], Instant::now() + Duration::from_secs(30));
        let mut per_day = vec![0; 32];
        for h in &p.hint {
            for &(d, _) in h {
                per_day[d as usize] += 1;
            }
        }
        assert!(per_day.iter().all(|&n| n <= 2), "{per_day:?}");
        assert!(per_day.iter().sum::<usize>() >= 30, "{per_day:?}");
    }

    #[test]
    fn a_hint_the_routes_cannot_take_falls_back_to_the_dp() {
        use crate::plan::build::{rng, Planner};
        use crate::plan::routes::Month as Routes;
        let input = small(3, 2);
        let tm = Haversine::default();
        let ctx = Ctx::new(&input, &tm);
        let planner = Planner::new(&ctx, &[Some(0); 3]);
        let mut m = Routes::new(&ctx);
        // Four visits on consecutive days (too close) and one on a Sunday (day off).
        let bad = [(1, 0), (2, 0), (3, 0), (4, 0), (6, 0)];
        assert!(planner.place_hinted(&mut m, 0, &bad, u64::MAX, &mut rng(1, 1)));
        let days: Vec<u32> = m.visits[0].iter().map(|v| v.0).collect();
        assert_eq!(days.len(), 4, "{days:?}");
        assert!(days.windows(2).all(|w| w[1] - w[0] >= ctx.gap[0]), "{days:?}");
        assert!(days.iter().all(|&d| ctx.common_days(0, 0) & (1 << d) != 0), "{days:?}");
    }

    #[test]
    fn past_deadline_leaves_every_elder_to_the_dp() {
        let input = small(5, 2);
        let tm = Haversine::default();
        let ctx = Ctx::new(&input, &tm);
        let p = plan_days(&ctx, &[Some(0); 5], &[false; 5], Instant::now());
        assert_eq!((p.lp_solved, p.groups), (0, 1));
        assert!(p.hint.iter().all(|h| h.is_empty()));
    }
}
