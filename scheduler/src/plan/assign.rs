//! ILP stage (good_lp; solver chosen in `lp.rs`): chooses each elder's primary
//! caregiver (continuity of care) under monthly capacity, sparse over
//! plausible (elder, caregiver) pairs and decomposed into geographic clusters
//! of caregivers solved in parallel. See `MODEL.md` for the mathematics.
//! A greedy fallback assigns any elder the LP leaves out or cannot reach.

use super::lp;
use super::routes::{max_spaced, Ctx, Loc};
use good_lp::{variable, Expression, ProblemVariables, Solution, Variable};
use rayon::prelude::*;
use std::time::Instant;

/// Caregivers per cluster (decomposition size).
pub(crate) const CLUSTER: usize = 12;
/// Candidate caregivers per elder inside its cluster.
const CANDIDATES: usize = 6;
/// Share of shift time the monthly capacity may fill.
const UTILISATION: f64 = 0.8;
/// Bonus (seconds per visit) for an elder's preferred caregiver.
pub(crate) const PREFERRED_BONUS: f64 = 600.0;
/// Penalty per unit of uncovered elder in the LP (never traded: dominates any travel).
const UNCOVERED: f64 = 1e7;

/// Outcome of the assignment stage.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    /// Primary caregiver of each elder (`None` if no caregiver can serve it alone).
    pub primary: Vec<Option<usize>>,
    /// Cluster of each caregiver.
    pub cluster_of: Vec<usize>,
    /// Clusters whose LP was solved / total clusters.
    pub lp_solved: usize,
    pub clusters: usize,
}

/// Can caregiver `c` serve all of elder `e`'s visits on its own (skill,
/// reachable window, enough spaced common days)?
pub(crate) fn plausible(ctx: &Ctx, e: usize, c: usize) -> bool {
    let el = &ctx.input.elders[e];
    ctx.input.caregivers[c].qualifies_for(el)
        && max_spaced(ctx.common_days(e, c), ctx.days, ctx.gap[e]) >= el.visits_per_month
        && ctx.reachable(c, e)
}

/// Recursive coordinate bisection of caregivers `ids` into parts of at most
/// `size`, split across the wider of the two coordinate spans.
pub(crate) fn bisect(ctx: &Ctx, mut ids: Vec<usize>, size: usize) -> Vec<Vec<usize>> {
    if ids.len() <= size {
        return vec![ids];
    }
    let cg = &ctx.input.caregivers;
    let span = |f: &dyn Fn(usize) -> f64| {
        let (lo, hi) = ids.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &i| (lo.min(f(i)), hi.max(f(i))));
        hi - lo
    };
    let lat = |i: usize| cg[i].base.lat;
    let lon = |i: usize| cg[i].base.lon * cg[i].base.lat.to_radians().cos();
    if span(&lat) >= span(&lon) {
        ids.sort_by(|&a, &b| lat(a).total_cmp(&lat(b)).then(a.cmp(&b)));
    } else {
        ids.sort_by(|&a, &b| lon(a).total_cmp(&lon(b)).then(a.cmp(&b)));
    }
    let right = ids.split_off(ids.len() / 2);
    let mut out = bisect(ctx, ids, size);
    out.extend(bisect(ctx, right, size));
    out
}

/// Runs the stage. `deadline` bounds every LP.
pub(crate) fn assign(ctx: &Ctx, deadline: Instant) -> Assignment {
    let ne = ctx.input.elders.len();
    let parts = bisect(ctx, (0..ctx.input.caregivers.len()).collect(), CLUSTER);
    let mut cluster_of = vec![0; ctx.input.caregivers.len()];
    for (k, p) in parts.iter().enumerate() {
        for &c in p {
            cluster_of[c] = k;
        }
    }
    // Each elder goes to the cluster of its nearest plausible caregiver.
    let plaus: Vec<Vec<usize>> = (0..ne)
        .into_par_iter()
        .map(|e| ctx.qualified[e].iter().copied().filter(|&c| plausible(ctx, e, c)).collect())
        .collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); parts.len()];
    for e in 0..ne {
        if let Some(&c) = plaus[e].first() {
            members[cluster_of[c]].push(e);
        }
    }
    let results: Vec<Option<Vec<(usize, usize)>>> = (0..parts.len())
        .into_par_iter()
        .map(|k| {
            let cands: Vec<(usize, Vec<usize>)> = members[k]
                .iter()
                .map(|&e| (e, plaus[e].iter().copied().filter(|&c| cluster_of[c] == k).take(CANDIDATES).collect()))
                .collect();
            solve_cluster(ctx, &parts[k], &cands, deadline)
        })
        .collect();
    let mut primary = vec![None; ne];
    let mut lp_solved = 0;
    for r in results.iter().flatten() {
        lp_solved += 1;
        for &(e, c) in r {
            primary[e] = Some(c);
        }
    }
    // Greedy fallback: nearest plausible caregiver with monthly capacity left.
    let mut load = vec![0.0f64; ctx.input.caregivers.len()];
    for e in 0..ne {
        if let Some(c) = primary[e] {
            load[c] += workload(ctx, e, c);
        }
    }
    for e in 0..ne {
        if primary[e].is_some() {
            continue;
        }
        let pick = plaus[e]
            .iter()
            .copied()
            .find(|&c| load[c] + workload(ctx, e, c) <= capacity(ctx, c))
            .or(plaus[e].first().copied());
        if let Some(c) = pick {
            load[c] += workload(ctx, e, c);
            primary[e] = Some(c);
        }
    }
    tracing::debug!(clusters = parts.len(), lp_solved, "assignment stage done");
    Assignment { primary, cluster_of, lp_solved, clusters: parts.len() }
}

fn base_tt(ctx: &Ctx, e: usize, c: usize) -> f64 {
    ctx.tt(c, Loc::Base, Loc::Elder(e)) as f64
}

/// Estimated monthly seconds elder `e` costs caregiver `c`.
fn workload(ctx: &Ctx, e: usize, c: usize) -> f64 {
    let el = &ctx.input.elders[e];
    el.visits_per_month as f64 * (el.service as f64 + base_tt(ctx, e, c))
}

/// Monthly seconds caregiver `c` can give.
fn capacity(ctx: &Ctx, c: usize) -> f64 {
    let cg = &ctx.input.caregivers[c];
    ctx.cg_days[c].count_ones() as f64 * cg.shift.duration() as f64 * UTILISATION
}

/// LP relaxation of the cluster's generalised assignment problem, rounded to
/// each elder's largest `y`. `None` if the LP fails or runs out of time.
fn solve_cluster(
    ctx: &Ctx,
    cgs: &[usize],
    cands: &[(usize, Vec<usize>)],
    deadline: Instant,
) -> Option<Vec<(usize, usize)>> {
    if cands.is_empty() {
        return Some(Vec::new());
    }
    let mut vars = ProblemVariables::new();
    let mut y: Vec<Vec<(usize, Variable)>> = Vec::with_capacity(cands.len());
    let mut u = Vec::with_capacity(cands.len());
    let mut objective = Expression::default();
    for (e, cs) in cands {
        let el = &ctx.input.elders[*e];
        let row: Vec<(usize, Variable)> = cs.iter().map(|&c| (c, vars.add(variable().min(0.0).max(1.0)))).collect();
        for &(c, v) in &row {
            let mut cost = el.visits_per_month as f64 * base_tt(ctx, *e, c);
            if el.preferred.as_ref() == Some(&ctx.input.caregivers[c].id) {
                cost -= PREFERRED_BONUS * el.visits_per_month as f64;
            }
            objective += cost * v;
        }
        let ue = vars.add(variable().min(0.0).max(1.0));
        objective += UNCOVERED * ue;
        u.push(ue);
        y.push(row);
    }
    let mut constraints = Vec::new();
    for (i, row) in y.iter().enumerate() {
        let sum: Expression = row.iter().map(|&(_, v)| Expression::from(v)).sum::<Expression>() + u[i];
        constraints.push(sum.eq(1.0));
    }
    for &c in cgs {
        let mut time = Expression::default();
        let mut count = Expression::default();
        let mut any = false;
        for (i, (e, _)) in cands.iter().enumerate() {
            for &(cc, v) in &y[i] {
                if cc == c {
                    any = true;
                    time += workload(ctx, *e, c) * v;
                    count += ctx.input.elders[*e].visits_per_month as f64 * v;
                }
            }
        }
        if any {
            let cg = &ctx.input.caregivers[c];
            constraints.push(time.leq(capacity(ctx, c)));
            constraints.push(count.leq(ctx.cg_days[c].count_ones() as f64 * cg.max_visits_per_day as f64));
        }
    }
    let sol = lp::solve(vars.minimise(objective), constraints, deadline)?;
    let mut out = Vec::new();
    for (i, (e, _)) in cands.iter().enumerate() {
        if sol.value(u[i]) > 0.5 {
            continue;
        }
        let best = y[i].iter().max_by(|a, b| sol.value(a.1).total_cmp(&sol.value(b.1)).then(b.0.cmp(&a.0)));
        if let Some(&(c, _)) = best {
            out.push((*e, c));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{synth, Haversine};
    use std::time::Duration;

    #[test]
    fn every_cluster_lp_is_solved_and_every_elder_gets_a_plausible_primary() {
        let s = synth::generate(2, 150, 30, synth::default_centre());
        let tm = Haversine::default();
        let ctx = Ctx::new(&s.input, &tm);
        let a = assign(&ctx, Instant::now() + Duration::from_secs(30));
        assert_eq!(a.clusters, 4, "30 caregivers in clusters of <= 12");
        assert_eq!(a.lp_solved, a.clusters);
        for (e, p) in a.primary.iter().enumerate() {
            let c = p.expect("every synthetic elder is servable");
            assert!(plausible(&ctx, e, c));
        }
    }
}
