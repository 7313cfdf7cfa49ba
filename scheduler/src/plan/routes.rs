//! Caregiver-day routes in integer seconds with cached earliest/latest service
//! starts (O(1) insertion checks), and the month's route table. Knows nothing
//! about how visits are chosen.

use super::calendar::min_gap;
use super::input::PlanInput;
use super::model::{GeoPoint, Secs};
use super::travel::TravelModel;

/// Precomputed facts about an input, shared by every stage.
pub(crate) struct Ctx<'a> {
    pub input: &'a PlanInput,
    pub travel: &'a dyn TravelModel,
    /// Days in the month.
    pub days: u32,
    /// Per elder: minimum days between consecutive visits.
    pub gap: Vec<u32>,
    /// Per elder: bit d set if day d (1-based) is allowed (weekday) and not a holiday.
    pub elder_days: Vec<u64>,
    /// Per caregiver: bit d set if the caregiver works on day d.
    pub cg_days: Vec<u64>,
    /// Per elder: qualified caregivers (skill), nearest base first.
    pub qualified: Vec<Vec<usize>>,
}

/// Where a leg starts or ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Loc {
    Base,
    Elder(usize),
}

impl<'a> Ctx<'a> {
    pub fn new(input: &'a PlanInput, travel: &'a dyn TravelModel) -> Self {
        let days = input.days();
        let mut day_wd = vec![0u8; days as usize + 1];
        for d in 1..=days {
            day_wd[d as usize] = input.month.weekday(d);
        }
        let mask = |w: super::model::Weekdays| -> u64 {
            (1..=days)
                .filter(|&d| w.contains(day_wd[d as usize]) && !input.is_holiday(d))
                .fold(0u64, |m, d| m | (1 << d))
        };
        let elder_days = input.elders.iter().map(|e| mask(e.days)).collect();
        let cg_days = input.caregivers.iter().map(|c| mask(c.days)).collect();
        let gap = input.elders.iter().map(|e| min_gap(days, e.visits_per_month)).collect();
        let qualified = input
            .elders
            .iter()
            .map(|e| {
                let mut v: Vec<(f64, usize)> = input
                    .caregivers
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.qualifies_for(e))
                    .map(|(i, c)| (super::travel::haversine_km(c.base, e.at), i))
                    .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                v.into_iter().map(|x| x.1).collect()
            })
            .collect();
        Ctx { input, travel, days, gap, elder_days, cg_days, qualified }
    }

    fn point(&self, c: usize, l: Loc) -> GeoPoint {
        match l {
            Loc::Base => self.input.caregivers[c].base,
            Loc::Elder(e) => self.input.elders[e].at,
        }
    }

    /// Travel seconds of caregiver `c` between two locations.
    pub fn tt(&self, c: usize, a: Loc, b: Loc) -> Secs {
        if a == b {
            return 0;
        }
        self.travel.seconds(self.input.caregivers[c].mode, self.point(c, a), self.point(c, b))
    }

    /// Earliest service start and latest service end of elder `e` (window or whole day).
    pub fn window(&self, e: usize) -> (Secs, Secs) {
        self.input.elders[e].window.map(|w| (w.open, w.close)).unwrap_or((0, 86_400))
    }

    /// Can caregiver `c` serve elder `e` alone within a shift (ignoring days)?
    pub fn reachable(&self, c: usize, e: usize) -> bool {
        let cg = &self.input.caregivers[c];
        let (open, close) = self.window(e);
        let svc = self.input.elders[e].service;
        let st = (cg.shift.open + self.tt(c, Loc::Base, Loc::Elder(e))).max(open);
        st + svc <= close && st + svc + self.tt(c, Loc::Elder(e), Loc::Base) <= cg.shift.close
    }

    /// Days on which elder `e` may be visited by caregiver `c`.
    pub fn common_days(&self, e: usize, c: usize) -> u64 {
        self.elder_days[e] & self.cg_days[c]
    }
}

/// Maximum number of days that can be picked from `mask` with consecutive
/// picks at least `gap` apart (greedy earliest-first is optimal).
pub(crate) fn max_spaced(mask: u64, days: u32, gap: u32) -> u32 {
    let mut n = 0;
    let mut last: Option<u32> = None;
    for d in 1..=days {
        if mask & (1 << d) != 0 && last.is_none_or(|l| d - l >= gap) {
            n += 1;
            last = Some(d);
        }
    }
    n
}

/// One caregiver-day route. Invariant (after `recompute`): feasible under
/// rules 3 and 4, `es[k]` the earliest service start of stop k, `ls[k]` the
/// latest service start that keeps the rest of the route feasible.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DayRoute {
    pub stops: Vec<usize>,
    pub es: Vec<Secs>,
    pub ls: Vec<Secs>,
    pub travel: Secs,
    pub end: Secs,
}

impl DayRoute {
    /// Recomputes the caches; returns false if the route is infeasible.
    pub fn recompute(&mut self, ctx: &Ctx, c: usize) -> bool {
        let cg = &ctx.input.caregivers[c];
        let n = self.stops.len();
        self.es.resize(n, 0);
        self.ls.resize(n, 0);
        let mut t = cg.shift.open;
        let mut prev = Loc::Base;
        let mut travel = 0;
        let mut ok = n as u32 <= cg.max_visits_per_day;
        for k in 0..n {
            let e = self.stops[k];
            let leg = ctx.tt(c, prev, Loc::Elder(e));
            travel += leg;
            let (open, close) = ctx.window(e);
            let st = (t + leg).max(open);
            let svc = ctx.input.elders[e].service;
            if st + svc > close {
                ok = false;
            }
            self.es[k] = st;
            t = st + svc;
            prev = Loc::Elder(e);
        }
        let back = ctx.tt(c, prev, Loc::Base);
        travel += back;
        self.end = t + back;
        if self.end > cg.shift.close {
            ok = false;
        }
        self.travel = travel;
        let mut next_latest = cg.shift.close;
        let mut next = Loc::Base;
        for k in (0..n).rev() {
            let e = self.stops[k];
            let (_, close) = ctx.window(e);
            let svc = ctx.input.elders[e].service;
            self.ls[k] = (close - svc).min(next_latest - svc - ctx.tt(c, Loc::Elder(e), next));
            next_latest = self.ls[k];
            next = Loc::Elder(e);
        }
        ok
    }

    /// Travel delta of inserting `e` at position `k`, or `None` if infeasible.
    pub fn insertion(&self, ctx: &Ctx, c: usize, e: usize, k: usize) -> Option<Secs> {
        let cg = &ctx.input.caregivers[c];
        if self.stops.len() as u32 >= cg.max_visits_per_day {
            return None;
        }
        let (prev, dep) = if k == 0 {
            (Loc::Base, cg.shift.open)
        } else {
            let p = self.stops[k - 1];
            (Loc::Elder(p), self.es[k - 1] + ctx.input.elders[p].service)
        };
        let next = if k == self.stops.len() { Loc::Base } else { Loc::Elder(self.stops[k]) };
        let a = ctx.tt(c, prev, Loc::Elder(e));
        let (open, close) = ctx.window(e);
        let svc = ctx.input.elders[e].service;
        let st = (dep + a).max(open);
        if st + svc > close {
            return None;
        }
        let b = ctx.tt(c, Loc::Elder(e), next);
        let arr = st + svc + b;
        match next {
            Loc::Base => {
                if arr > cg.shift.close {
                    return None;
                }
            }
            Loc::Elder(n) => {
                if arr.max(ctx.window(n).0) > self.ls[k] {
                    return None;
                }
            }
        }
        Some(a + b - ctx.tt(c, prev, next))
    }

    /// Cheapest feasible insertion `(delta, position)`.
    pub fn best_insertion(&self, ctx: &Ctx, c: usize, e: usize) -> Option<(Secs, usize)> {
        let mut best: Option<(Secs, usize)> = None;
        for k in 0..=self.stops.len() {
            if let Some(d) = self.insertion(ctx, c, e, k) {
                if best.is_none_or(|b| d < b.0) {
                    best = Some((d, k));
                }
            }
        }
        best
    }
}

/// All routes of the month, indexed by (caregiver, day), plus each elder's visits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Month {
    pub days: u32,
    pub routes: Vec<DayRoute>,
    /// Per elder: (day, caregiver) of each scheduled visit, sorted by day.
    pub visits: Vec<Vec<(u32, usize)>>,
    /// When `Some`, every route about to change is saved here first (undo log).
    pub journal: Option<Vec<(usize, DayRoute)>>,
    /// Caregiver-days that must stay empty (e.g. the caregiver is absent).
    pub blocked: std::collections::HashSet<usize>,
}

impl Month {
    pub fn new(ctx: &Ctx) -> Self {
        let days = ctx.days;
        Month {
            days,
            routes: vec![DayRoute::default(); ctx.input.caregivers.len() * (days as usize + 1)],
            visits: vec![Vec::new(); ctx.input.elders.len()],
            journal: None,
            blocked: Default::default(),
        }
    }

    #[inline]
    pub fn idx(&self, c: usize, d: u32) -> usize {
        c * (self.days as usize + 1) + d as usize
    }

    pub fn route(&self, c: usize, d: u32) -> &DayRoute {
        &self.routes[self.idx(c, d)]
    }

    /// Inserts a visit of `e` on (c, d) at position k. Precondition: feasible.
    pub fn insert(&mut self, ctx: &Ctx, e: usize, c: usize, d: u32, k: usize) {
        let i = self.idx(c, d);
        self.save(i);
        self.routes[i].stops.insert(k, e);
        let ok = self.routes[i].recompute(ctx, c);
        debug_assert!(ok, "insert made route ({c}, {d}) infeasible");
        let v = &mut self.visits[e];
        v.push((d, c));
        v.sort_unstable();
    }

    /// Removes every visit of elder `e`; returns them.
    pub fn remove_elder(&mut self, ctx: &Ctx, e: usize) -> Vec<(u32, usize)> {
        let vs = std::mem::take(&mut self.visits[e]);
        for &(d, c) in &vs {
            self.remove_stop(ctx, e, c, d);
        }
        vs
    }

    /// Removes the visit of `e` on (c, d) from the route only.
    pub fn remove_stop(&mut self, ctx: &Ctx, e: usize, c: usize, d: u32) {
        let i = self.idx(c, d);
        self.save(i);
        self.routes[i].stops.retain(|&x| x != e);
        // Removing a stop keeps a route feasible when travel obeys the triangle
        // inequality (haversine rounded up to seconds does); a road matrix may
        // not, so callers re-validate plans with the independent checker.
        self.routes[i].recompute(ctx, c);
    }

    fn save(&mut self, i: usize) {
        if let Some(j) = self.journal.as_mut() {
            j.push((i, self.routes[i].clone()));
        }
    }

    /// Undoes every journaled route change (visits are restored by the caller).
    pub fn rollback(&mut self) {
        if let Some(j) = self.journal.take() {
            for (i, r) in j.into_iter().rev() {
                self.routes[i] = r;
            }
        }
    }

    /// Total travel seconds.
    pub fn travel(&self) -> Secs {
        self.routes.iter().map(|r| r.travel).sum()
    }
}
