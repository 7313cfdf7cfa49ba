//! Coverage diagnosis: necessary conditions that prove an elder cannot be
//! fully covered (skill, common days with spacing, reachable window, group
//! capacity), reasons for elders left uncovered otherwise, and the smallest
//! change suggested to restore 100%.

use super::model::{hhmm, Secs};
use super::routes::{max_spaced, Ctx, Loc, Month};
use serde::{Deserialize, Serialize};

/// Which of the cases holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CoverageStatus {
    /// Every elder receives every visit.
    Full,
    /// Some elder cannot be covered: a necessary condition fails.
    ProvedImpossible,
    /// No 100% plan was found within the time limit (none is proved impossible).
    NotFoundInTime,
}

/// Per-elder proof that full coverage is impossible, if a necessary condition fails.
pub(crate) fn proofs(ctx: &Ctx) -> Vec<Option<String>> {
    let input = ctx.input;
    let mut out: Vec<Option<String>> = (0..input.elders.len())
        .map(|e| {
            let el = &input.elders[e];
            let v = el.visits_per_month;
            let q = &ctx.qualified[e];
            if q.is_empty() {
                return Some(match &el.skill {
                    Some(s) => format!("no caregiver has the skill {s:?}"),
                    None => "no caregiver at all".to_string(),
                });
            }
            let days = q.iter().fold(0u64, |m, &c| m | ctx.cg_days[c]) & ctx.elder_days[e];
            if days == 0 {
                return Some(format!(
                    "no common working day: allowed days {} never meet a working day of a qualified caregiver (holidays excluded)",
                    el.days.to_text()
                ));
            }
            let k = max_spaced(days, ctx.days, ctx.gap[e]);
            if k < v {
                return Some(format!(
                    "no common working day for all visits: only {k} common working day(s) at least {} day(s) apart, {v} needed",
                    ctx.gap[e]
                ));
            }
            let reach: Vec<usize> = q.iter().copied().filter(|&c| ctx.reachable(c, e)).collect();
            let rdays = reach.iter().fold(0u64, |m, &c| m | ctx.cg_days[c]) & ctx.elder_days[e];
            if reach.is_empty() || max_spaced(rdays, ctx.days, ctx.gap[e]) < v {
                let w = el.window.map(|w| w.to_text()).unwrap_or_else(|| "any time".into());
                return Some(format!("window {w} unreachable from any caregiver within a shift (service {} min)", el.service / 60));
            }
            None
        })
        .collect();
    // Group capacity: elders needing skill s (or any elder) versus the shift
    // hours and daily stops of caregivers who can serve them.
    let mut groups: Vec<Option<String>> = input.elders.iter().map(|e| e.skill.clone()).collect();
    groups.sort();
    groups.dedup();
    for g in groups {
        let members: Vec<usize> = (0..input.elders.len())
            .filter(|&e| g.is_none() || input.elders[e].skill == g)
            .filter(|&e| out[e].is_none())
            .collect();
        let cgs: Vec<usize> = (0..input.caregivers.len())
            .filter(|&c| g.as_ref().is_none_or(|s| input.caregivers[c].skills.contains(s)))
            .collect();
        let demand: Secs =
            members.iter().map(|&e| input.elders[e].service * input.elders[e].visits_per_month as Secs).sum();
        let supply: Secs =
            cgs.iter().map(|&c| input.caregivers[c].shift.duration() * ctx.cg_days[c].count_ones() as Secs).sum();
        let visits: u64 = members.iter().map(|&e| input.elders[e].visits_per_month as u64).sum();
        let slots: u64 = cgs
            .iter()
            .map(|&c| input.caregivers[c].max_visits_per_day as u64 * ctx.cg_days[c].count_ones() as u64)
            .sum();
        let what = g.as_ref().map(|s| format!("skill {s:?}")).unwrap_or_else(|| "all elders".into());
        let reason = if demand > supply {
            Some(format!(
                "capacity short by {:.1} hours for {what}: service alone needs {:.1} h, caregivers work {:.1} h",
                (demand - supply) as f64 / 3600.0,
                demand as f64 / 3600.0,
                supply as f64 / 3600.0
            ))
        } else if visits > slots {
            Some(format!(
                "capacity short by {} visits for {what}: {visits} visits needed, {slots} daily slots",
                visits - slots
            ))
        } else {
            None
        };
        if let Some(r) = reason {
            for e in members {
                out[e] = Some(r.clone());
            }
        }
    }
    out
}

/// Reasons for uncovered elders that are not proved impossible, and suggestions.
pub(crate) fn explain(
    ctx: &Ctx,
    m: &Month,
    anchor: &[Option<usize>],
    cluster_of: &[usize],
    proofs: &[Option<String>],
) -> (Vec<super::output::Uncovered>, Vec<String>) {
    let input = ctx.input;
    let missing = |e: usize| input.elders[e].visits_per_month.saturating_sub(m.visits[e].len() as u32);
    // Area = cluster of the anchor caregiver (or of the nearest qualified one).
    let area = |e: usize| anchor[e].or_else(|| ctx.qualified[e].first().copied()).map(|c| cluster_of[c]);
    // area -> (hours short, sum lat, sum lon, elders, a skill needed there)
    type Short = (f64, f64, f64, usize, Option<String>);
    let mut short: std::collections::BTreeMap<Option<usize>, Short> = Default::default();
    for e in 0..input.elders.len() {
        if missing(e) > 0 && proofs[e].is_none() {
            let el = &input.elders[e];
            let c = anchor[e].or_else(|| ctx.qualified[e].first().copied());
            let leg = c.map(|c| 2 * ctx.tt(c, Loc::Base, Loc::Elder(e))).unwrap_or(0);
            let s = short.entry(area(e)).or_insert((0.0, 0.0, 0.0, 0, el.skill.clone()));
            s.0 += missing(e) as f64 * (el.service + leg) as f64 / 3600.0;
            s.1 += el.at.lat;
            s.2 += el.at.lon;
            s.3 += 1;
        }
    }
    let mut uncovered = Vec::new();
    for e in 0..input.elders.len() {
        let k = missing(e);
        if k == 0 {
            continue;
        }
        let reason = match &proofs[e] {
            Some(p) => p.clone(),
            None => {
                let s =
                    short.get(&area(e)).map(|s| (s.0, s.1 / s.3 as f64, s.2 / s.3 as f64)).unwrap_or((0.0, 0.0, 0.0));
                format!("capacity short by {:.1} hours in the area around ({:.4}, {:.4}): the caregivers there are fully booked on the elder's allowed days", s.0, s.1, s.2)
            }
        };
        uncovered.push(super::output::Uncovered { elder: input.elders[e].id.clone(), missing_visits: k, reason });
    }
    let mut suggestions = Vec::new();
    for (h, lat, lon, n, skill) in short.values() {
        let (lat, lon) = (lat / *n as f64, lon / *n as f64);
        let skill = skill.as_ref().map(|s| format!(" with skill {s:?}")).unwrap_or_default();
        suggestions.push(format!(
            "add about {:.1} caregiver-hours this month near ({lat:.4}, {lon:.4}){skill}, e.g. one more caregiver based there for {} working day(s) of 8 h",
            h.max(0.1),
            ((h / 8.0).ceil() as i64).max(1)
        ));
    }
    for e in 0..input.elders.len() {
        if missing(e) == 0 {
            continue;
        }
        if let Some(p) = &proofs[e] {
            let el = &input.elders[e];
            let fix = if p.starts_with("no caregiver has the skill") {
                format!("give the skill {:?} to a caregiver near elder {}", el.skill.clone().unwrap_or_default(), el.id)
            } else if p.starts_with("no common working day") {
                format!(
                    "widen elder {}'s allowed days ({}) or schedule a qualified caregiver on them",
                    el.id,
                    el.days.to_text()
                )
            } else if p.starts_with("window") {
                let w = el.window.map(|w| format!("{}-{}", hhmm(w.open), hhmm(w.close))).unwrap_or_default();
                format!("widen elder {}'s window {w} or base a qualified caregiver closer", el.id)
            } else {
                format!("add caregiver hours for elder {} ({p})", el.id)
            };
            if !suggestions.contains(&fix) {
                suggestions.push(fix);
            }
        }
    }
    (uncovered, suggestions)
}
