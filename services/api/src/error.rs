//! The gateway's errors and their one mapping to gRPC statuses. Internal details
//! (broker errors, topic names) are logged, never sent to a client.

use tonic::Status;

/// What can go wrong in an RPC.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A request field is invalid; the message names the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The subscriber or resource does not exist for this tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// The resource already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The resource is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Kafka could not take the write.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A position beyond what exists (a cursor past the end of its partition).
    #[error("{0}")]
    OutOfRange(String),
}

impl PushError {
    /// An invalid-argument error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        PushError::Invalid { field: field.into(), message: message.to_string() }
    }
}

impl From<PushError> for Status {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            PushError::NotFound(_) => Status::not_found(e.to_string()),
            PushError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            PushError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            PushError::OutOfRange(_) => Status::out_of_range(e.to_string()),
            PushError::Unavailable(detail) => {
                tracing::warn!(%detail, "storage unavailable");
                Status::unavailable("storage unavailable, retry later")
            }
        }
    }
}

impl From<hexcast_runtime::WriteError> for PushError {
    fn from(e: hexcast_runtime::WriteError) -> Self {
        PushError::Unavailable(e.to_string())
    }
}

impl From<hexcast_runtime::ReadError> for PushError {
    fn from(e: hexcast_runtime::ReadError) -> Self {
        PushError::Unavailable(e.to_string())
    }
}
