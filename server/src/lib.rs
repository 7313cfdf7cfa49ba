//! Anxin server: the only crate that knows gRPC (tonic/prost), the embedded
//! store (SQLite) and the dispatch core together. It converts at its edge,
//! persists through the core's `Journal` seam and fans events out to consoles
//! and caregiver apps.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod convert;
pub mod demo;
pub mod error;
pub mod fanout;
pub mod planning;
pub mod registry;
pub mod store;
pub mod supervision;
pub mod telemetry;
