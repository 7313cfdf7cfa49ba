//! Errors of the dispatch core. Messages are lowercase and name the value that
//! was wrong; `server` maps them to gRPC status codes in one place.

use crate::lifecycle::IncidentState;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("unknown caregiver {0}")]
    UnknownCaregiver(String),
    #[error("unknown incident {0}")]
    UnknownIncident(String),
    #[error("incident {incident} cannot go from {from:?} to {to:?}")]
    InvalidTransition { incident: String, from: IncidentState, to: IncidentState },
    #[error("incident {incident} is not offered to or held by caregiver {caregiver}")]
    NotHolder { incident: String, caregiver: String },
    #[error("caregiver {caregiver} is not free: {reason}")]
    CaregiverNotFree { caregiver: String, reason: String },
    #[error("incident {0} could not be stored and was not accepted; retry with the same idempotency key")]
    Abandoned(String),
    #[error("journal write failed: {0}")]
    Journal(String),
    /// Routine lane and deferred backlog are both full: the alarm was not accepted.
    #[error("overloaded: {0}; retry later with the same idempotency key")]
    Overloaded(String),
}

impl DispatchError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DispatchError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

pub type Result<T, E = DispatchError> = std::result::Result<T, E>;
