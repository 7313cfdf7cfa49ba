//! Anxin dispatch core: takes validated alarms, opens incidents, matches each
//! to the nearest available caregiver and follows it through its life cycle.
//!
//! Knows nothing of gRPC, tokio or the database: durability enters through
//! [`Journal`], time through [`Clock`], fan-out through [`EventSink`].

pub mod engine;
pub mod error;
pub mod geo;
pub mod incident;
pub mod index;
pub mod kpi;
pub mod lifecycle;
pub mod roster;
pub mod supervision;
pub mod types;
pub mod wheel;

pub use engine::{
    AppendDone, CaregiverView, Clock, DispatchConfig, Dispatcher, EventSink, Intake, Journal, JournaledRun,
    ManualClock, NoJournal, NoSink, PendingRun, RaiseOutcome, SystemClock, WouldWait,
};
pub use error::{DispatchError, Result};
pub use geo::{GeoPoint, TravelMode, TravelModel};
pub use incident::{Alarm, EventKind, Incident, IncidentEvent};
pub use index::{Candidate, GridIndex, MatchFilter};
pub use kpi::{KpiSnapshot, Latency};
pub use lifecycle::IncidentState;
pub use roster::{CaregiverProfile, CaregiverSlot, StatusCounts};
pub use supervision::{Heard, Offline, Supervisor, DEFAULT_MISSED_HEARTBEATS};
pub use types::{
    AlarmKind, CaregiverId, CaregiverStatus, DeviceId, ElderId, EscalationReason, IdempotencyKey, IncidentId, Outcome,
    Severity,
};
