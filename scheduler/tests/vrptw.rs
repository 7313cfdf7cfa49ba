//! VRPTW integration tests on the real Solomon files: reader + .sol give the
//! best-known cost; the solver's output passes the independent checker.

use scheduler::vrptw::{self, SolveOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Test fixtures shipped with the crate (a few Solomon instances; see tests/data/README.md).
fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

#[test]
fn solomon_bks_solutions_are_feasible_and_cost_matches_float64_file() {
    // R102 is one of the best-known solutions that is infeasible in exact arithmetic.
    for name in ["C101", "R101", "R102", "RC201"] {
        let inst = vrptw::read_instance(&data(&format!("solomon/{name}.vrp"))).expect("instance");
        let sol = vrptw::read_solution(&data(&format!("solomon/{name}.sol"))).expect("solution");
        assert_eq!(inst.n_customers(), 100);
        let rep = vrptw::check(&inst, &sol);
        let csv = std::fs::read_to_string(data("solomon/bks_float64.csv")).expect("csv");
        let line = csv.lines().find(|l| l.starts_with(&format!("{name},"))).expect("row");
        let f64cost: f64 = line.split(',').nth(1).and_then(|x| x.parse().ok()).expect("cost");
        let feasible = line.ends_with("True");
        assert_eq!(rep.is_ok(), feasible, "{name}: checker disagrees with bks_float64.csv");
        let dist = sol.distance(&inst);
        assert!((dist - f64cost).abs() < 1e-3, "{name}: {dist} vs {f64cost}");
        // .sol Cost line is the DIMACS (truncated) value
        assert!(sol.cost <= dist + 1e-9);
    }
}

#[test]
fn solver_output_on_a_solomon_instance_is_feasible_and_deterministic() {
    let inst = vrptw::read_instance(&data("solomon/RC105.vrp")).expect("instance");
    let opts = SolveOptions { time_limit: Duration::from_secs(60), seed: 7, threads: 1, max_iterations: Some(300) };
    let a = vrptw::solve(&inst, &opts).expect("solves");
    let rep = vrptw::check(&inst, &a).expect("feasible");
    assert!((rep.distance - a.cost).abs() < 1e-6);
    let b = vrptw::solve(&inst, &opts).expect("solves");
    assert_eq!(a, b, "same seed must give the same solution");
    // A sanity bound: within 15% of the float64 BKS after a few hundred iterations.
    assert!(a.cost < 1517.93 * 1.15, "cost {} too far from the best known", a.cost);
}

#[test]
fn unservable_customer_is_an_error_not_a_panic() {
    let text = "NAME : U\nDIMENSION : 2\nCAPACITY : 10\nNODE_COORD_SECTION\n1 0 0\n2 30 40\nDEMAND_SECTION\n1 0\n2 5\nTIME_WINDOW_SECTION\n1 0 100\n2 0 20\nDEPOT_SECTION\n1\n-1\nEOF\n";
    let inst = vrptw::parse_instance(text, "u").expect("parses");
    let opts = SolveOptions { max_iterations: Some(10), ..SolveOptions::default() };
    assert!(matches!(vrptw::solve(&inst, &opts), Err(scheduler::Error::Unservable { customer: 1, .. })));
}
