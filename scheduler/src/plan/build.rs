//! Heuristic stages: per-elder day selection by dynamic programming over the
//! month (exact for one elder given the current routes), coverage repair by
//! ejection, intra-route local search (2-opt, or-opt; rayon parallel) and an
//! elder-level ruin-and-recreate (LNS) that never lowers coverage.

use super::model::Secs;
use super::routes::{Ctx, DayRoute, Month};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;

/// Cost (in travel seconds) of a visit not made by the elder's anchor caregiver.
pub(crate) const W_CONTINUITY: Secs = 120;
/// Cost per stop already on a route (workload balance, lowest priority).
pub(crate) const W_BALANCE: Secs = 1;
/// Candidate caregivers tried first for each elder (anchor + nearest).
const NEAR: usize = 4;

/// Everything the heuristic needs besides the month.
pub(crate) struct Planner<'a> {
    pub ctx: &'a Ctx<'a>,
    /// Anchor (continuity) caregiver of each elder.
    pub anchor: Vec<Option<usize>>,
    /// Near candidates of each elder (anchor first).
    pub near: Vec<Vec<usize>>,
}

impl<'a> Planner<'a> {
    pub fn new(ctx: &'a Ctx<'a>, primary: &[Option<usize>]) -> Self {
        let ne = ctx.input.elders.len();
        let mut anchor = primary.to_vec();
        // The preferred caregiver, when it can serve the elder, is the anchor.
        for e in 0..ne {
            if let Some(p) = &ctx.input.elders[e].preferred {
                if let Some(c) = ctx.input.caregivers.iter().position(|c| &c.id == p) {
                    if super::assign::plausible(ctx, e, c) {
                        anchor[e] = Some(c);
                    }
                }
            }
        }
        let near = (0..ne)
            .map(|e| {
                let mut v: Vec<usize> = anchor[e].into_iter().collect();
                for &c in &ctx.qualified[e] {
                    if v.len() >= NEAR {
                        break;
                    }
                    if !v.contains(&c) && ctx.reachable(c, e) {
                        v.push(c);
                    }
                }
                v
            })
            .collect();
        Planner { ctx, anchor, near }
    }

    /// Best insertion of `e` on each day among caregivers `cands`:
    /// `opts[d] = Some((cost, caregiver, position))`. Only days in `allowed`.
    fn day_options(
        &self,
        m: &Month,
        e: usize,
        cands: &[usize],
        allowed: u64,
        touch_penalty: Option<&dyn Fn(usize) -> Secs>,
    ) -> Vec<Option<(Secs, usize, usize)>> {
        let ctx = self.ctx;
        let mut opts = vec![None; ctx.days as usize + 1];
        for &c in cands {
            let days = ctx.common_days(e, c) & allowed;
            if days == 0 {
                continue;
            }
            let cont = if self.anchor[e] == Some(c) { 0 } else { W_CONTINUITY };
            for d in 1..=ctx.days {
                if days & (1 << d) == 0 {
                    continue;
                }
                if !m.blocked.is_empty() && m.blocked.contains(&m.idx(c, d)) {
                    continue;
                }
                let r = m.route(c, d);
                if let Some((delta, k)) = r.best_insertion(ctx, c, e) {
                    let mut cost = delta + cont + W_BALANCE * r.stops.len() as Secs;
                    if let Some(f) = touch_penalty {
                        cost += f(m.idx(c, d));
                    }
                    let slot: &mut Option<(Secs, usize, usize)> = &mut opts[d as usize];
                    if slot.is_none_or(|s| cost < s.0) {
                        *slot = Some((cost, c, k));
                    }
                }
            }
        }
        opts
    }

    /// Chooses `need` days (consecutive ones `gap` apart, and `gap` away from
    /// every day in `fixed`) minimising the summed option cost. Exact DP.
    fn choose_days(
        &self,
        e: usize,
        opts: &[Option<(Secs, usize, usize)>],
        need: u32,
        fixed: &[u32],
    ) -> Option<Vec<u32>> {
        let gap = self.ctx.gap[e];
        let days: Vec<u32> = (1..opts.len() as u32)
            .filter(|&d| opts[d as usize].is_some() && fixed.iter().all(|&f| f.abs_diff(d) >= gap.max(1)))
            .collect();
        let n = days.len();
        let need = need as usize;
        if need == 0 {
            return Some(Vec::new());
        }
        if n < need {
            return None;
        }
        const INF: Secs = Secs::MAX / 4;
        let cost = |i: usize| opts[days[i] as usize].map_or(INF, |o| o.0);
        // f[j][i]: best cost of j+1 picks ending at days[i]; p: predecessor.
        let mut f = vec![vec![INF; n]; need];
        let mut p = vec![vec![usize::MAX; n]; need];
        for i in 0..n {
            f[0][i] = cost(i);
        }
        for j in 1..need {
            for i in 0..n {
                let mut best = INF;
                let mut arg = usize::MAX;
                for h in 0..i {
                    if days[i] - days[h] >= gap.max(1) && f[j - 1][h] < best {
                        best = f[j - 1][h];
                        arg = h;
                    }
                }
                if arg != usize::MAX {
                    f[j][i] = best + cost(i);
                    p[j][i] = arg;
                }
            }
        }
        let (mut i, &best) = f[need - 1].iter().enumerate().min_by_key(|x| (*x.1, x.0))?;
        if best >= INF {
            return None;
        }
        let mut out = vec![0; need];
        for j in (0..need).rev() {
            out[j] = days[i];
            i = p[j][i];
        }
        Some(out)
    }

    /// Inserts `need` more visits of `e` (spaced from its current visits) using
    /// caregivers `cands` on `allowed` days. All or nothing.
    pub fn insert_elder(
        &self,
        m: &mut Month,
        e: usize,
        need: u32,
        cands: &[usize],
        allowed: u64,
        touch_penalty: Option<&dyn Fn(usize) -> Secs>,
    ) -> bool {
        let opts = self.day_options(m, e, cands, allowed, touch_penalty);
        let fixed: Vec<u32> = m.visits[e].iter().map(|v| v.0).collect();
        let Some(days) = self.choose_days(e, &opts, need, &fixed) else { return false };
        for d in days {
            if let Some((_, c, k)) = opts[d as usize] {
                m.insert(self.ctx, e, c, d, k);
            }
        }
        true
    }

    /// Full-coverage insertion of elder `e` with escalating effort: near
    /// caregivers, all qualified caregivers, then ejecting one neighbour.
    pub fn place(&self, m: &mut Month, e: usize, allowed: u64, rng: &mut ChaCha8Rng) -> bool {
        let need = self.ctx.input.elders[e].visits_per_month.saturating_sub(m.visits[e].len() as u32);
        if need == 0 {
            return true;
        }
        if self.insert_elder(m, e, need, &self.near[e], allowed, None) {
            return true;
        }
        if self.insert_elder(m, e, need, &self.ctx.qualified[e], allowed, None) {
            return true;
        }
        self.eject_and_place(m, e, need, allowed, rng)
    }

    /// Places elder `e` on the caregiver-days of its visit-day LP `hint` where
    /// the routes can take them, then completes it with [`Self::place`]. If
    /// that fails, the hinted visits are dropped and `place` runs alone, so
    /// the hint never costs coverage.
    pub fn place_hinted(
        &self,
        m: &mut Month,
        e: usize,
        hint: &[(u32, usize)],
        allowed: u64,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        let ctx = self.ctx;
        if hint.is_empty() || !m.visits[e].is_empty() {
            return self.place(m, e, allowed, rng);
        }
        let gap = ctx.gap[e].max(1);
        for &(d, c) in hint {
            let spaced = m.visits[e].iter().all(|v| v.0.abs_diff(d) >= gap);
            let open = allowed & (1 << d) != 0 && (m.blocked.is_empty() || !m.blocked.contains(&m.idx(c, d)));
            if spaced && open && ctx.common_days(e, c) & (1 << d) != 0 {
                if let Some((_, k)) = m.route(c, d).best_insertion(ctx, c, e) {
                    m.insert(ctx, e, c, d, k);
                }
            }
        }
        if self.place(m, e, allowed, rng) {
            return true;
        }
        m.remove_elder(ctx, e);
        self.place(m, e, allowed, rng)
    }

    /// Tries, for nearby elders f on the candidate routes, removing f, placing
    /// e, then re-placing f. Keeps the first success.
    fn eject_and_place(&self, m: &mut Month, e: usize, need: u32, allowed: u64, rng: &mut ChaCha8Rng) -> bool {
        let ctx = self.ctx;
        let mut victims: Vec<usize> = Vec::new();
        for &c in self.ctx.qualified[e].iter().take(8) {
            let days = ctx.common_days(e, c) & allowed;
            for d in 1..=ctx.days {
                if days & (1 << d) != 0 {
                    victims.extend(m.route(c, d).stops.iter().copied());
                }
            }
        }
        victims.sort_unstable();
        victims.dedup();
        let at = ctx.input.elders[e].at;
        victims.sort_by(|&a, &b| {
            let da = super::travel::haversine_km(at, ctx.input.elders[a].at);
            let db = super::travel::haversine_km(at, ctx.input.elders[b].at);
            da.total_cmp(&db).then(a.cmp(&b))
        });
        victims.retain(|&f| f != e && m.visits[f].iter().all(|v| allowed & (1 << v.0) != 0));
        victims.truncate(40);
        let _ = rng;
        for f in victims {
            let saved_f = m.visits[f].clone();
            let saved_e = m.visits[e].clone();
            let nf = ctx.input.elders[f].visits_per_month;
            m.journal = Some(Vec::new());
            m.remove_elder(ctx, f);
            let ok = self.insert_elder(m, e, need, &ctx.qualified[e], allowed, None)
                && (self.insert_elder(m, f, nf, &self.near[f], allowed, None)
                    || self.insert_elder(m, f, nf, &ctx.qualified[f], allowed, None));
            if ok {
                m.journal = None;
                return true;
            }
            m.rollback();
            m.visits[f] = saved_f;
            m.visits[e] = saved_e;
        }
        false
    }

    /// Inserts as many visits of `e` as possible (for partial coverage).
    pub fn place_partial(&self, m: &mut Month, e: usize, allowed: u64) {
        let need = self.ctx.input.elders[e].visits_per_month.saturating_sub(m.visits[e].len() as u32);
        for k in (1..need).rev() {
            if self.insert_elder(m, e, k, &self.ctx.qualified[e], allowed, None) {
                return;
            }
        }
    }

    fn elder_continuity(&self, m: &Month, e: usize) -> Secs {
        m.visits[e].iter().filter(|v| Some(v.1) != self.anchor[e]).count() as Secs * W_CONTINUITY
    }

    /// Elder-level ruin and recreate: remove a few related elders (sharing a
    /// route with a random elder), re-place them in random order; keep the
    /// change if every removed visit came back and the objective did not rise.
    pub fn lns(
        &self,
        m: &mut Month,
        iterations: u64,
        deadline: Instant,
        rng: &mut ChaCha8Rng,
        allowed: u64,
        mut on_progress: impl FnMut(u64, Secs),
    ) {
        let ctx = self.ctx;
        let placed: Vec<usize> = (0..ctx.input.elders.len()).filter(|&e| !m.visits[e].is_empty()).collect();
        if placed.is_empty() {
            return;
        }
        for it in 0..iterations {
            if it % 64 == 0 {
                if Instant::now() >= deadline {
                    break;
                }
                if it % 4096 == 0 {
                    on_progress(it, m.travel());
                }
            }
            let e0 = placed[rng.random_range(0..placed.len())];
            let vs = &m.visits[e0];
            if vs.is_empty() || vs.iter().any(|v| allowed & (1 << v.0) == 0) {
                continue;
            }
            let (d, c) = vs[rng.random_range(0..vs.len())];
            let mut group: Vec<usize> = m.route(c, d).stops.clone();
            group.shuffle(rng);
            group.retain(|&f| f != e0 && m.visits[f].iter().all(|v| allowed & (1 << v.0) != 0));
            group.truncate(rng.random_range(1..=4));
            group.push(e0);
            group.shuffle(rng);
            let saved: Vec<(usize, Vec<(u32, usize)>)> = group.iter().map(|&f| (f, m.visits[f].clone())).collect();
            let before_cont: Secs = group.iter().map(|&f| self.elder_continuity(m, f)).sum();
            m.journal = Some(Vec::new());
            for &f in &group {
                m.remove_elder(ctx, f);
            }
            let mut ok = true;
            for &f in &group {
                let need = ctx.input.elders[f].visits_per_month;
                if !(self.insert_elder(m, f, need, &self.near[f], allowed, None)
                    || self.insert_elder(m, f, need, &ctx.qualified[f], allowed, None))
                {
                    ok = false;
                    break;
                }
            }
            if ok {
                let journal = m.journal.as_deref().unwrap_or(&[]);
                let mut seen = std::collections::HashSet::new();
                let mut delta: Secs = 0;
                for (i, old) in journal {
                    if seen.insert(*i) {
                        delta += m.routes[*i].travel - old.travel;
                    }
                }
                let after_cont: Secs = group.iter().map(|&f| self.elder_continuity(m, f)).sum();
                delta += after_cont - before_cont;
                if delta <= 0 {
                    m.journal = None;
                    continue;
                }
            }
            m.rollback();
            for (f, v) in saved {
                m.visits[f] = v;
            }
        }
        m.journal = None;
    }
}

/// Intra-route improvement of one route: relocate one stop and 2-opt, full
/// re-simulation per candidate (routes are short). Returns the better route.
pub(crate) fn improve_route(ctx: &Ctx, c: usize, r: &DayRoute) -> DayRoute {
    let mut best = r.clone();
    let n = best.stops.len();
    if n < 2 {
        return best;
    }
    let mut improved = true;
    while improved {
        improved = false;
        'outer: for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                // relocate stop i to position j
                let mut cand = best.clone();
                let s = cand.stops.remove(i);
                cand.stops.insert(j, s);
                if cand.recompute(ctx, c) && cand.travel < best.travel {
                    best = cand;
                    improved = true;
                    break 'outer;
                }
                // reverse i..=j
                if i < j {
                    let mut cand = best.clone();
                    cand.stops[i..=j].reverse();
                    if cand.recompute(ctx, c) && cand.travel < best.travel {
                        best = cand;
                        improved = true;
                        break 'outer;
                    }
                }
            }
        }
    }
    best
}

/// Improves every route in parallel (deterministic: routes are independent).
pub(crate) fn improve_all_routes(ctx: &Ctx, m: &mut Month) {
    let per = m.days as usize + 1;
    m.routes.par_iter_mut().enumerate().for_each(|(i, r)| {
        if r.stops.len() >= 2 {
            *r = improve_route(ctx, i / per, r);
        }
    });
}

/// Seeded RNG for a stage.
pub(crate) fn rng(seed: u64, stage: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ stage.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
