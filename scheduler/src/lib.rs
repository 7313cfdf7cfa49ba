//! Anxin scheduler: the monthly visit planner ([`plan`]) and its routing engine
//! exposed on the VRPTW benchmark ([`vrptw`]).
//!
//! Library only: knows nothing about gRPC, tokio's network or the database; the
//! `server` crate wraps it. Progress is reported through a callback trait and
//! every random choice is seeded.

pub mod error;
pub mod plan;
pub mod vrptw;

pub use error::{Error, InputIssue, Result};
