//! Independent checker of a `plan.json` against its input and travel model:
//! rules 1-4 and the coverage figures, recomputed from scratch in exact
//! double-precision minutes (tolerance 1e-6). Used by tests, by the planner's
//! `debug_assert!`s and by the server before trusting a stored plan.

use super::calendar::min_gap;
use super::input::PlanInput;
use super::output::Plan;
use super::travel::TravelModel;
use std::collections::HashMap;

const TOL: f64 = 1e-6;

/// Returns every broken rule (empty = valid plan).
pub fn validate(input: &PlanInput, travel: &dyn TravelModel, plan: &Plan) -> Vec<String> {
    let mut bad = Vec::new();
    if plan.month != input.month.to_text() {
        bad.push(format!("month {} is not {}", plan.month, input.month.to_text()));
    }
    let cgs: HashMap<&str, usize> = input.caregivers.iter().enumerate().map(|(i, c)| (c.id.0.as_str(), i)).collect();
    let els: HashMap<&str, usize> = input.elders.iter().enumerate().map(|(i, e)| (e.id.0.as_str(), i)).collect();
    let mut visits: Vec<Vec<u32>> = vec![Vec::new(); input.elders.len()];
    let mut seen_route = std::collections::HashSet::new();
    let mut scheduled = 0u64;
    for r in &plan.routes {
        let Some(&c) = cgs.get(r.caregiver.0.as_str()) else {
            bad.push(format!("unknown caregiver {}", r.caregiver));
            continue;
        };
        let cg = &input.caregivers[c];
        let Ok(d) = input.month.parse_date(&r.date) else {
            bad.push(format!("bad date {} for caregiver {}", r.date, r.caregiver));
            continue;
        };
        let tag = format!("{} {}", r.caregiver, r.date);
        if !seen_route.insert((c, d)) {
            bad.push(format!("{tag}: two routes for one caregiver-day"));
        }
        let wd = input.month.weekday(d);
        if input.is_holiday(d) {
            bad.push(format!("{tag}: route on a holiday"));
        }
        if !cg.days.contains(wd) {
            bad.push(format!("{tag}: not a working day of the caregiver"));
        }
        if r.start_min < cg.shift.open as f64 / 60.0 - TOL {
            bad.push(format!("{tag}: leaves at {} before shift start", r.start_min));
        }
        if r.stops.len() as u32 > cg.max_visits_per_day {
            bad.push(format!("{tag}: {} stops exceed max {}", r.stops.len(), cg.max_visits_per_day));
        }
        let mut t = r.start_min;
        let mut prev = cg.base;
        let mut travel_sum = 0.0;
        for s in &r.stops {
            let Some(&e) = els.get(s.elder.0.as_str()) else {
                bad.push(format!("{tag}: unknown elder {}", s.elder));
                continue;
            };
            let el = &input.elders[e];
            scheduled += 1;
            visits[e].push(d);
            if !cg.qualifies_for(el) {
                bad.push(format!("{tag}: lacks skill for elder {}", el.id));
            }
            if !el.days.contains(wd) {
                bad.push(format!("{tag}: weekday not allowed for elder {}", el.id));
            }
            let leg = travel.minutes(cg.mode, prev, el.at);
            travel_sum += leg;
            if s.arrive_min < t + leg - TOL {
                bad.push(format!("{tag}: arrives at elder {} at {} before {}", el.id, s.arrive_min, t + leg));
            }
            if s.start_min < s.arrive_min - TOL {
                bad.push(format!("{tag}: elder {} served before arrival", el.id));
            }
            let (open, close) =
                el.window.map(|w| (w.open as f64 / 60.0, w.close as f64 / 60.0)).unwrap_or((0.0, 1440.0));
            if s.start_min < open - TOL || s.end_min > close + TOL {
                bad.push(format!("{tag}: elder {} served {}-{} outside window", el.id, s.start_min, s.end_min));
            }
            if (s.end_min - s.start_min - el.service as f64 / 60.0).abs() > TOL {
                bad.push(format!("{tag}: elder {} service length wrong", el.id));
            }
            t = s.end_min;
            prev = el.at;
        }
        let back = travel.minutes(cg.mode, prev, cg.base);
        travel_sum += back;
        if !r.stops.is_empty() && r.end_min < t + back - TOL {
            bad.push(format!("{tag}: back at {} before {}", r.end_min, t + back));
        }
        if r.end_min > cg.shift.close as f64 / 60.0 + TOL {
            bad.push(format!("{tag}: back at {} after shift end", r.end_min));
        }
        if r.travel_min < travel_sum - 1e-3 {
            bad.push(format!("{tag}: travel_min {} below the model's {}", r.travel_min, travel_sum));
        }
    }
    let days = input.days();
    let mut full = 0;
    let unc: HashMap<&str, u32> = plan.uncovered.iter().map(|u| (u.elder.0.as_str(), u.missing_visits)).collect();
    for (e, el) in input.elders.iter().enumerate() {
        let v = &mut visits[e];
        v.sort_unstable();
        if v.windows(2).any(|w| w[0] == w[1]) {
            bad.push(format!("elder {}: two visits on one date", el.id));
        }
        let gap = min_gap(days, el.visits_per_month);
        if v.windows(2).any(|w| w[1] - w[0] < gap) {
            bad.push(format!("elder {}: visits {v:?} closer than {gap} days", el.id));
        }
        let n = v.len() as u32;
        if n > el.visits_per_month {
            bad.push(format!("elder {}: {n} visits, {} required", el.id, el.visits_per_month));
        }
        let missing = el.visits_per_month.saturating_sub(n);
        if missing == 0 {
            full += 1;
        }
        if unc.get(el.id.0.as_str()).copied().unwrap_or(0) != missing {
            bad.push(format!(
                "elder {}: {missing} visits missing but uncovered lists {:?}",
                el.id,
                unc.get(el.id.0.as_str())
            ));
        }
    }
    if plan.coverage.fully_covered != full
        || plan.coverage.scheduled_visits != scheduled
        || plan.coverage.elders != input.elders.len()
    {
        bad.push(format!(
            "coverage figures {:?} do not match the routes ({full} full, {scheduled} visits)",
            plan.coverage
        ));
    }
    bad
}
