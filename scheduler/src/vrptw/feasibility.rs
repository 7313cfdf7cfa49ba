//! Independent CVRPTW feasibility checker: recomputes everything from the
//! instance and the route lists, trusting no solver bookkeeping. Used by tests,
//! the benchmark example and the solver's `debug_assert!`s.

use super::{Instance, Solution};

/// Tolerance on time-window and depot-close checks, in time units.
pub const TOLERANCE: f64 = 1e-6;

/// What a feasible solution measures.
#[derive(Debug, Clone, PartialEq)]
pub struct FeasibilityReport {
    /// Total exact Euclidean distance.
    pub distance: f64,
    /// Number of non-empty routes.
    pub routes: usize,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// A node number is 0 (the depot) or beyond the last customer.
    UnknownCustomer { route: usize, customer: usize },
    /// A customer appears more than once.
    Duplicate { customer: usize },
    /// A customer is never visited.
    Missing { customer: usize },
    /// A route's load exceeds capacity.
    Capacity { route: usize, load: i64, capacity: i64 },
    /// Service starts after the customer's due time.
    Late { route: usize, customer: usize, start: f64, due: f64 },
    /// The vehicle is back at the depot after its close.
    DepotClose { route: usize, back: f64, close: f64 },
}

/// Checks `sol` against `inst`: every customer exactly once, capacity, time
/// windows (waiting allowed) and depot close, in exact double precision with
/// tolerance [`TOLERANCE`]. Returns the recomputed distance, or every violation.
pub fn check(inst: &Instance, sol: &Solution) -> Result<FeasibilityReport, Vec<Violation>> {
    let n = inst.n_nodes();
    let mut seen = vec![0u32; n];
    let mut v = Vec::new();
    let mut distance = 0.0;
    let mut routes = 0;
    for (ri, r) in sol.routes.iter().enumerate() {
        if r.is_empty() {
            continue;
        }
        routes += 1;
        let mut load = 0i64;
        let mut t = inst.ready[0];
        let mut prev = 0usize;
        let mut ok_nodes = true;
        for &c in r {
            if c == 0 || c >= n {
                v.push(Violation::UnknownCustomer { route: ri, customer: c });
                ok_nodes = false;
                continue;
            }
            seen[c] += 1;
            load += inst.demand[c];
            let arrive = t + inst.service[prev] + inst.d(prev, c);
            let start = arrive.max(inst.ready[c]);
            if start > inst.due[c] + TOLERANCE {
                v.push(Violation::Late { route: ri, customer: c, start, due: inst.due[c] });
            }
            distance += inst.d(prev, c);
            t = start;
            prev = c;
        }
        if !ok_nodes {
            continue;
        }
        distance += inst.d(prev, 0);
        let back = t + inst.service[prev] + inst.d(prev, 0);
        if back > inst.due[0] + TOLERANCE {
            v.push(Violation::DepotClose { route: ri, back, close: inst.due[0] });
        }
        if load > inst.capacity {
            v.push(Violation::Capacity { route: ri, load, capacity: inst.capacity });
        }
    }
    for c in 1..n {
        match seen[c] {
            0 => v.push(Violation::Missing { customer: c }),
            1 => {}
            _ => v.push(Violation::Duplicate { customer: c }),
        }
    }
    if v.is_empty() {
        Ok(FeasibilityReport { distance, routes })
    } else {
        Err(v)
    }
}

/// Checks capacity, windows and depot close of routes alone (no coverage
/// check). Used by the search's `debug_assert!`s on partial solutions.
pub fn check_routes<'a>(inst: &Instance, routes: impl Iterator<Item = &'a [usize]>) -> Result<(), Violation> {
    for (ri, r) in routes.enumerate() {
        let mut load = 0i64;
        let mut t = inst.ready[0];
        let mut prev = 0usize;
        for &c in r {
            load += inst.demand[c];
            t = (t + inst.service[prev] + inst.d(prev, c)).max(inst.ready[c]);
            if t > inst.due[c] + TOLERANCE {
                return Err(Violation::Late { route: ri, customer: c, start: t, due: inst.due[c] });
            }
            prev = c;
        }
        let back = t + inst.service[prev] + inst.d(prev, 0);
        if !r.is_empty() && back > inst.due[0] + TOLERANCE {
            return Err(Violation::DepotClose { route: ri, back, close: inst.due[0] });
        }
        if load > inst.capacity {
            return Err(Violation::Capacity { route: ri, load, capacity: inst.capacity });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> Instance {
        Instance::new(
            "t".into(),
            10,
            None,
            vec![(0.0, 0.0), (3.0, 4.0), (0.0, 1.0)],
            vec![0, 6, 6],
            vec![0.0, 0.0, 0.0],
            vec![100.0, 5.0, 50.0],
            vec![0.0, 1.0, 1.0],
        )
    }

    #[test]
    fn detects_each_violation() {
        let i = inst();
        let ok = Solution { routes: vec![vec![1], vec![2]], cost: 0.0 };
        let rep = check(&i, &ok).expect("feasible");
        assert!((rep.distance - 12.0).abs() < 1e-12);
        let cap = Solution { routes: vec![vec![2, 1]], cost: 0.0 };
        let errs = check(&i, &cap).expect_err("infeasible");
        assert!(errs.iter().any(|e| matches!(e, Violation::Capacity { .. })));
        assert!(errs.iter().any(|e| matches!(e, Violation::Late { customer: 1, .. })));
        let miss = Solution { routes: vec![vec![1, 1]], cost: 0.0 };
        let errs = check(&i, &miss).expect_err("infeasible");
        assert!(errs.contains(&Violation::Missing { customer: 2 }));
        assert!(errs.contains(&Violation::Duplicate { customer: 1 }));
    }

    #[test]
    fn depot_close_is_checked() {
        let mut i = inst();
        i.due[0] = 9.0;
        let s = Solution { routes: vec![vec![1]], cost: 0.0 };
        let errs = check(&i, &s).expect_err("late return");
        assert!(matches!(errs[0], Violation::DepotClose { .. }));
    }
}
