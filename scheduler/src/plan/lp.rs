//! The one place that decides which LP solver the planner uses: pure-Rust
//! `microlp` by default (builds with cargo alone), HiGHS with the `highs`
//! cargo feature (faster on large districts; needs cmake and a C++ compiler).
//! Every LP of the planner goes through [`solve`], time-limited.

use good_lp::variable::UnsolvedProblem;
use good_lp::{Constraint, Solution, SolutionStatus, SolverModel, WithTimeLimit};
use std::time::Instant;

/// Name of the compiled-in solver, for logs.
#[cfg(not(feature = "highs"))]
pub(crate) const SOLVER: &str = "microlp";
/// Name of the compiled-in solver, for logs.
#[cfg(feature = "highs")]
pub(crate) const SOLVER: &str = "highs";

/// An LP left with less than this many seconds is not started.
const MIN_SECONDS: f64 = 0.05;

/// Solves `problem` subject to `constraints` before `deadline`. `None` when
/// the deadline is (nearly) past, the solver fails, or it stops before proving
/// optimality; callers then fall back to their heuristic.
pub(crate) fn solve(
    problem: UnsolvedProblem,
    constraints: Vec<Constraint>,
    deadline: Instant,
) -> Option<impl Solution> {
    let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
    if left < MIN_SECONDS {
        return None;
    }
    #[cfg(not(feature = "highs"))]
    let model = problem.using(good_lp::microlp);
    #[cfg(feature = "highs")]
    let model = problem.using(good_lp::highs);
    let solution = model.with_time_limit(left).with_all(constraints).solve().ok()?;
    matches!(solution.status(), SolutionStatus::Optimal).then_some(solution)
}
