//! Coverage stress run: many random synthetic districts (feasible by
//! construction, including tight ones with few caregivers), each planned and
//! checked by the crate's validator; prints any district not fully covered.
//!
//! Usage: `cargo run --release -p scheduler --example plan_stress -- [CASES] [FIRST_SEED]`

use scheduler::plan::{self, synth, CoverageStatus, Haversine, PlanOptions};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<u64> = std::env::args().skip(1).filter_map(|x| x.parse().ok()).collect();
    let (cases, first) = (a.first().copied().unwrap_or(200), a.get(1).copied().unwrap_or(0));
    let mut failures = 0;
    for seed in first..first + cases {
        let n_cg = 1 + (seed % 6) as usize;
        // up to ~45 elders per caregiver: close to the generator's capacity
        let n_el = 5 + ((seed * 7919) % (45 * n_cg as u64)) as usize;
        let s = synth::generate(seed, n_el, n_cg, synth::default_centre());
        let opts = PlanOptions { time_limit: Duration::from_secs(20), seed, threads: 1, lns_iterations: Some(200) };
        let out = plan::plan(&s.input, &Haversine::default(), &opts, None)?;
        let bad = plan::feasibility::validate(&s.input, &Haversine::default(), &out.plan);
        if out.status != CoverageStatus::Full || !bad.is_empty() {
            failures += 1;
            println!(
                "seed {seed}: {} elders {} caregivers -> {:?}, {} invalid, uncovered {:?}",
                s.input.elders.len(),
                n_cg,
                out.status,
                bad.len(),
                out.plan.uncovered.first()
            );
        }
    }
    println!("{cases} districts, {failures} not fully covered or invalid");
    Ok(())
}
