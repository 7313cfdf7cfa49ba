//! The `plan.json` document (serde, exactly the shape), its GeoJSON
//! export and the human summary. Times are minutes after midnight of `date`.

use super::input::PlanInput;
use super::model::{CaregiverId, ElderId};
use super::routes::{Ctx, Loc, Month};
use serde::{Deserialize, Serialize};

/// `plan.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `YYYY-MM`.
    pub month: String,
    /// One entry per caregiver-day with at least one stop, by date then caregiver.
    pub routes: Vec<RoutePlan>,
    /// Coverage figures.
    pub coverage: Coverage,
    /// Every elder not fully covered, with the reason.
    pub uncovered: Vec<Uncovered>,
    /// Statistics.
    pub stats: Stats,
}

/// One caregiver-day route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutePlan {
    /// Caregiver id.
    pub caregiver: CaregiverId,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Departure from the caregiver's point.
    pub start_min: f64,
    /// Return to the caregiver's point.
    pub end_min: f64,
    /// Travel minutes of the route.
    pub travel_min: f64,
    /// Stops in visiting order.
    pub stops: Vec<Stop>,
}

/// One visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// Elder id.
    pub elder: ElderId,
    /// Arrival (before any waiting).
    pub arrive_min: f64,
    /// Service start.
    pub start_min: f64,
    /// Service end.
    pub end_min: f64,
}

/// Coverage figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Elders in the input.
    pub elders: usize,
    /// Elders receiving all their visits.
    pub fully_covered: usize,
    /// Sum of `visits_per_month`.
    pub required_visits: u64,
    /// Visits in the plan.
    pub scheduled_visits: u64,
    /// `fully_covered / elders` (1.0 when there are no elders).
    pub rate: f64,
}

/// An elder the plan does not fully cover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uncovered {
    /// Elder id.
    pub elder: ElderId,
    /// Visits short.
    pub missing_visits: u32,
    /// Specific reason.
    pub reason: String,
}

/// Statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Sum of the routes' travel minutes.
    pub total_travel_min: f64,
    /// Wall-clock seconds of the solve.
    pub solve_seconds: f64,
}

fn min(s: i64) -> f64 {
    s as f64 / 60.0
}

/// Converts the internal month into the document (without `uncovered`/`stats`).
pub(crate) fn to_plan(ctx: &Ctx, m: &Month) -> Plan {
    let input = ctx.input;
    let mut routes = Vec::new();
    for d in 1..=ctx.days {
        for (c, cg) in input.caregivers.iter().enumerate() {
            let r = m.route(c, d);
            if r.stops.is_empty() {
                continue;
            }
            let first = r.stops[0];
            let depart = cg.shift.open.max(r.es[0] - ctx.tt(c, Loc::Base, Loc::Elder(first)));
            let mut stops = Vec::with_capacity(r.stops.len());
            let mut dep = depart;
            let mut prev = Loc::Base;
            for (k, &e) in r.stops.iter().enumerate() {
                let arrive = dep + ctx.tt(c, prev, Loc::Elder(e));
                let svc = input.elders[e].service;
                debug_assert!(arrive <= r.es[k]);
                stops.push(Stop {
                    elder: input.elders[e].id.clone(),
                    arrive_min: min(arrive),
                    start_min: min(r.es[k]),
                    end_min: min(r.es[k] + svc),
                });
                dep = r.es[k] + svc;
                prev = Loc::Elder(e);
            }
            routes.push(RoutePlan {
                caregiver: cg.id.clone(),
                date: input.month.date(d),
                start_min: min(depart),
                end_min: min(r.end),
                travel_min: min(r.travel),
                stops,
            });
        }
    }
    let required: u64 = input.elders.iter().map(|e| e.visits_per_month as u64).sum();
    let scheduled: u64 = m.visits.iter().map(|v| v.len() as u64).sum();
    let full =
        input.elders.iter().enumerate().filter(|(e, el)| m.visits[*e].len() as u32 >= el.visits_per_month).count();
    let n = input.elders.len();
    Plan {
        month: input.month.to_text(),
        routes,
        coverage: Coverage {
            elders: n,
            fully_covered: full,
            required_visits: required,
            scheduled_visits: scheduled,
            rate: if n == 0 { 1.0 } else { full as f64 / n as f64 },
        },
        uncovered: Vec::new(),
        stats: Stats { total_travel_min: min(m.travel()), solve_seconds: 0.0 },
    }
}

/// Coverage of a set of realised (or planned) visits, one `ElderId` per visit,
/// e.g. the visits recorded done for `GetCoverage`. Unknown ids are ignored;
/// visits beyond an elder's requirement do not count twice.
pub fn coverage_of<'a>(input: &PlanInput, visits: impl IntoIterator<Item = &'a ElderId>) -> Coverage {
    let mut count: std::collections::HashMap<&ElderId, u32> = std::collections::HashMap::new();
    for v in visits {
        *count.entry(v).or_default() += 1;
    }
    let mut full = 0;
    let mut scheduled = 0u64;
    for e in &input.elders {
        let n = count.get(&e.id).copied().unwrap_or(0).min(e.visits_per_month);
        scheduled += n as u64;
        if n == e.visits_per_month {
            full += 1;
        }
    }
    let n = input.elders.len();
    Coverage {
        elders: n,
        fully_covered: full,
        required_visits: input.elders.iter().map(|e| e.visits_per_month as u64).sum(),
        scheduled_visits: scheduled,
        rate: if n == 0 { 1.0 } else { full as f64 / n as f64 },
    }
}

/// GeoJSON FeatureCollection: one LineString per route (base -> stops -> base,
/// `[lon, lat]` order) and one Point per visit, with properties for QGIS/kepler.gl.
pub fn to_geojson(input: &PlanInput, plan: &Plan) -> serde_json::Value {
    use serde_json::json;
    let cg: std::collections::HashMap<&CaregiverId, &super::model::Caregiver> =
        input.caregivers.iter().map(|c| (&c.id, c)).collect();
    let el: std::collections::HashMap<&ElderId, &super::model::Elder> =
        input.elders.iter().map(|e| (&e.id, e)).collect();
    let mut features = Vec::new();
    for r in &plan.routes {
        let Some(c) = cg.get(&r.caregiver) else { continue };
        let mut coords = vec![json!([c.base.lon, c.base.lat])];
        for (k, s) in r.stops.iter().enumerate() {
            if let Some(e) = el.get(&s.elder) {
                coords.push(json!([e.at.lon, e.at.lat]));
                features.push(json!({
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [e.at.lon, e.at.lat]},
                    "properties": {"kind": "visit", "elder": s.elder.0, "name": e.name, "caregiver": r.caregiver.0,
                        "date": r.date, "order": k + 1, "start_min": s.start_min, "end_min": s.end_min}
                }));
            }
        }
        coords.push(json!([c.base.lon, c.base.lat]));
        features.push(json!({
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": coords},
            "properties": {"kind": "route", "caregiver": r.caregiver.0, "date": r.date, "stops": r.stops.len(),
                "travel_min": r.travel_min, "start_min": r.start_min, "end_min": r.end_min}
        }));
    }
    json!({"type": "FeatureCollection", "features": features})
}
