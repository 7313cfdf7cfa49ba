//! Scale run of the monthly planner on a synthetic district (feasible by
//! construction): prints coverage, travel, status and time.
//!
//! Usage: `cargo run --release -p scheduler --example plan_scale -- [ELDERS] [CAREGIVERS] [TIME_LIMIT_S] [THREADS] [SEED]`
//! (defaults 10000 200 60 2 1). Writes `plan.json` and `routes.geojson` to
//! `$PLAN_OUT_DIR` when that variable is set.

use scheduler::plan::{self, synth, Haversine, PlanOptions};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: f64| a.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(d);
    let (ne, nc, limit, threads, seed) =
        (arg(0, 10000.0) as usize, arg(1, 200.0) as usize, arg(2, 60.0), arg(3, 2.0) as usize, arg(4, 1.0) as u64);
    let t = Instant::now();
    let s = synth::generate(seed, ne, nc, synth::default_centre());
    println!(
        "generated {} elders ({} visits), {} caregivers in {:.2} s; witness travel {:.0} min",
        s.input.elders.len(),
        s.witness.coverage.required_visits,
        s.input.caregivers.len(),
        t.elapsed().as_secs_f64(),
        s.witness.stats.total_travel_min
    );
    let opts = PlanOptions { time_limit: Duration::from_secs_f64(limit), seed, threads, lns_iterations: None };
    let progress = |p: &plan::Progress| {
        eprintln!(
            "  [{:>6.2}s] {:?} travel {:.0} min coverage {:.4}",
            p.elapsed.as_secs_f64(),
            p.phase,
            p.best_travel_min,
            p.coverage
        )
    };
    let out = plan::plan(&s.input, &Haversine::default(), &opts, Some(&progress))?;
    print!("{}", out.summary());
    let bad = plan::feasibility::validate(&s.input, &Haversine::default(), &out.plan);
    println!("validator: {} violation(s)", bad.len());
    if let Ok(dir) = std::env::var("PLAN_OUT_DIR") {
        std::fs::write(format!("{dir}/plan.json"), serde_json::to_string_pretty(&out.plan)?)?;
        std::fs::write(format!("{dir}/routes.geojson"), plan::to_geojson(&s.input, &out.plan).to_string())?;
    }
    Ok(())
}
