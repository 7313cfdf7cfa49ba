//! The scheduler's one error type. Messages are lowercase, without a trailing
//! period, and name the value that was wrong.

use std::path::PathBuf;

/// One problem found in an input file, located by file, line and column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InputIssue {
    /// File name as given by the caller (e.g. `elders.csv`).
    pub file: String,
    /// 1-based line number (the header is line 1).
    pub line: u64,
    /// Column name (or `-` when the problem concerns the whole row).
    pub column: String,
    /// What was wrong, naming the offending value.
    pub reason: String,
}

impl std::fmt::Display for InputIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: column {}: {}", self.file, self.line, self.column, self.reason)
    }
}

/// Every error the scheduler library can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// One or more rows of the planner's CSV input are invalid; nothing was planned.
    #[error("{} invalid input row(s); first: {}", .0.len(), .0.first().map(|i| i.to_string()).unwrap_or_default())]
    Input(Vec<InputIssue>),
    /// A VRPLIB instance or solution file is malformed.
    #[error("vrplib {file} line {line}: {reason}")]
    Vrplib {
        /// File name (or `<string>`).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// A month string is not `YYYY-MM`.
    #[error("bad month {0:?}, expected YYYY-MM")]
    BadMonth(String),
    /// A date string is not `YYYY-MM-DD` or lies outside the planned month.
    #[error("bad date {0:?}, expected YYYY-MM-DD inside the planned month")]
    BadDate(String),
    /// A plan given for re-planning does not match the input (unknown id, bad date...).
    #[error("plan does not match the input: {0}")]
    PlanMismatch(String),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A VRPTW customer cannot be served even by a vehicle of its own.
    #[error("customer {customer} cannot be served even alone: {reason}")]
    Unservable {
        /// Customer number (1-based, as in `.sol` files).
        customer: usize,
        /// Why.
        reason: &'static str,
    },
    /// An option is out of range.
    #[error("bad option {name}: {reason}")]
    BadOption {
        /// Option name.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// Short alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
