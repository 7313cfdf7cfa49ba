//! Local-search operators, one per file. Each exposes a pure `evaluate`
//! (returns the move with its exact distance delta only if the result is
//! feasible; never mutates) and an `apply` (called only after `evaluate`).

pub(crate) mod cross_exchange;
pub(crate) mod or_opt;
pub(crate) mod relocate;
pub(crate) mod swap;
pub(crate) mod two_opt;
pub(crate) mod two_opt_star;
