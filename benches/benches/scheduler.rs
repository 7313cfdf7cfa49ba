//! Scheduler: the monthly planner on synthetic districts (feasible by
//! construction) and the routing engine on a Solomon instance. The work per
//! iteration is fixed (LNS iterations, ruin-and-recreate iterations) so the
//! time measures speed, not a time limit. Coverage and quality are asserted
//! outside the timed loop, so a regression to less than 100% fails the bench.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use scheduler::plan::{self, synth, Haversine, PlanOptions};
use scheduler::vrptw::{self, SolveOptions};

fn plan_month(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan_month");
    group.sample_size(10);
    for (elders, caregivers, id) in [(1_000, 20, "1k_elders_20_caregivers"), (10_000, 200, "10k_elders_200_caregivers")]
    {
        let s = synth::generate(1, elders, caregivers, synth::default_centre());
        // The planner's default LNS budget (20 per elder), 2 threads as on the standard machine;
        // the 60 s limit is the and is not reached.
        let opts = PlanOptions {
            time_limit: Duration::from_secs(60),
            seed: 1,
            threads: 2,
            lns_iterations: Some(20 * elders as u64),
        };
        let travel = Haversine::default();
        let check = plan::plan(&s.input, &travel, &opts, None).expect("plans");
        assert_eq!(check.plan.coverage.rate, 1.0, "{id}: a feasible district must be fully covered");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| std::hint::black_box(plan::plan(&s.input, &travel, &opts, None).expect("plans")))
        });
    }
    group.finish();
}

fn vrptw_solve(c: &mut Criterion) {
    let mut group = c.benchmark_group("vrptw_solve");
    group.sample_size(10);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scheduler/tests/data/solomon/R101.vrp");
    let inst = vrptw::read_instance(std::path::Path::new(path)).expect("R101 fixture");
    let opts = SolveOptions { time_limit: Duration::from_secs(60), seed: 1, threads: 1, max_iterations: Some(20_000) };
    let sol = vrptw::solve(&inst, &opts).expect("solves");
    assert!(vrptw::check(&inst, &sol).is_ok(), "R101 solution must be feasible");
    group.bench_function(BenchmarkId::from_parameter("solomon_R101_20k_iterations"), |b| {
        b.iter(|| std::hint::black_box(vrptw::solve(&inst, &opts).expect("solves")))
    });
    group.finish();
}

criterion_group!(benches, plan_month, vrptw_solve);
criterion_main!(benches);
