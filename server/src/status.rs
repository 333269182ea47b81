//! The one place where server errors become gRPC statuses. Internal details are logged, not
//! sent; callers that failed attestation learn nothing about why.

use tonic::{Code, Status};

use crate::ca::CaError;
use crate::datastore::StoreError;
use crate::signing::SignError;

/// Errors of the server's API handlers.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is malformed; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Field name as in the proto.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller is not authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not yet provided by this server.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// The request is well-formed but the server is not in a state to do it (e.g. activating a
    /// JWT key when none is prepared).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server is too busy for this call right now (rate limit, signing admission);
    /// the caller should back off and retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Storage error (NotFound/AlreadyExists pass through with their message).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// CA error.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Anything else unexpected.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Shorthand for an InvalidArgument naming `field`.
    pub fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.to_string(),
        }
    }

    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Store(StoreError::NotFound(_)) => Code::NotFound,
            Self::Store(StoreError::AlreadyExists(_)) => Code::AlreadyExists,
            Self::Store(StoreError::Expired(_) | StoreError::Refused(_)) => Code::PermissionDenied,
            Self::Ca(CaError::NothingPrepared) => Code::FailedPrecondition,
            Self::Store(_) | Self::Ca(_) | Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<SignError> for ApiError {
    fn from(e: SignError) -> Self {
        match e {
            SignError::Saturated { .. } => Self::ResourceExhausted(e.to_string()),
            SignError::Failed(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
            return Status::internal("internal error");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let s: Status = ApiError::invalid("spiffe_id", "bad").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "spiffe_id: bad");
        let s: Status =
            ApiError::Store(StoreError::NotFound("entry \"x\" not found".into())).into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = ApiError::FailedPrecondition("no key is prepared".into()).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "no key is prepared");
        let s: Status = ApiError::Store(StoreError::AlreadyExists("dup".into())).into();
        assert_eq!(s.code(), Code::AlreadyExists);
        let s: Status = ApiError::from(SignError::Saturated { pending: 9 }).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("retry"), "{}", s.message());
        let s: Status = ApiError::Store(StoreError::Refused("the agent is banned".into())).into();
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "the agent is banned");
        let s: Status = ApiError::Internal("secret detail".into()).into();
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"));
    }
}
