//! Errors of the server's edge and their one mapping to gRPC status codes.

use dispatch_core::DispatchError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is missing or wrong; `field` is its path (`elder.location.lat`).
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// Prefixes the field path, e.g. `location.lat` inside `elder` becomes `elder.location.lat`.
    pub fn within(self, parent: &str) -> Self {
        match self {
            ApiError::InvalidArgument { field, reason } => {
                ApiError::InvalidArgument { field: format!("{parent}.{field}"), reason }
            }
            other => other,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Unimplemented(_) => Code::Unimplemented,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::InvalidArgument { field, reason } => ApiError::InvalidArgument { field, reason },
            DispatchError::UnknownCaregiver(id) => ApiError::NotFound { what: "caregiver", id },
            DispatchError::UnknownIncident(id) => ApiError::NotFound { what: "incident", id },
            e @ (DispatchError::InvalidTransition { .. }
            | DispatchError::NotHolder { .. }
            | DispatchError::CaregiverNotFree { .. }) => ApiError::FailedPrecondition(e.to_string()),
            e @ (DispatchError::Abandoned(_) | DispatchError::Journal(_)) => ApiError::Unavailable(e.to_string()),
            // Only routine alarms are ever refused for load.
            e @ DispatchError::Overloaded(_) => ApiError::ResourceExhausted(e.to_string()),
        }
    }
}

/// The one place where errors become gRPC statuses.
impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        if matches!(e, ApiError::Internal(_)) {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(e.code(), e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
