//! Anxin scheduler: the monthly visit planner ([`plan`]) and its routing engine
//! exposed on the VRPTW benchmark ([`vrptw`]).
//!
//! Library only: knows nothing about gRPC, tokio's network or the database; the
//! `server` crate wraps it. Progress is reported through a callback trait and
//! every random choice is seeded.

// Stages keep per-elder / per-caregiver data in parallel index-aligned
// vectors; indexed loops over them read better than zipped iterators.
#![allow(clippy::needless_range_loop)]

pub mod error;
pub mod plan;
pub mod vrptw;

pub use error::{Error, InputIssue, Result};
