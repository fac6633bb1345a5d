//! Errors as RFC 9457 problem details (`application/problem+json`), each with a stable `type`
//! (`urn:agentd:problem:<slug>`) a client can branch on, the status code users expect, and
//! whether retrying can help.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use control_plane::{ApprovalError, CancelError, IdentityError, RunError, RunStoreError, StoreError};
use serde::Serialize;

/// An RFC 9457 problem detail.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:agentd:problem:<slug>`: stable, one per kind of error.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind (the same for every occurrence).
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong this time, naming the offending field or id.
    pub detail: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// Seconds to wait before retrying (429, 503), also sent as `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// The media type of problem details (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

impl Problem {
    /// A problem of kind `slug` with `status`; `title` is the kind's fixed summary.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("urn:agentd:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            retryable: matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT
            ),
            retry_after_secs: None,
        }
    }

    /// Marks the problem retryable (or not), whatever its status says.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Asks the client to wait `secs` before retrying.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self.retryable = true;
        self
    }

    pub fn bad_request(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, slug, "The request is malformed", detail)
    }

    pub fn unprocessable(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            "The request cannot be carried out",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such resource in your tenant",
            detail,
        )
    }

    pub fn forbidden(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, slug, "Not permitted for this principal", detail)
    }

    pub fn conflict(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::CONFLICT,
            slug,
            "Conflicts with the resource's state",
            detail,
        )
    }

    pub fn unauthorized(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, slug, "Authentication required", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The server failed",
            detail,
        )
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let retry_after = self.retry_after_secs;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if unauthorized {
            // RFC 6750 §3.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"agentd\""),
            );
        }
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<IdentityError> for Problem {
    fn from(error: IdentityError) -> Self {
        Problem::unauthorized("invalid-token", error.to_string())
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        if error.is_retryable() {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "The state store cannot serve the request now",
                error.to_string(),
            )
            .retry_after(1)
        } else {
            Problem::internal(error.to_string())
        }
    }
}

impl From<ApprovalError> for Problem {
    fn from(error: ApprovalError) -> Self {
        let detail = error.to_string();
        match error {
            ApprovalError::NotFound { .. } => Problem::not_found(detail),
            ApprovalError::NotAReviewer { .. } => Problem::forbidden("not-a-reviewer", detail),
            ApprovalError::ReviewNotPermitted { .. } => Problem::forbidden("review-not-permitted", detail),
            ApprovalError::SelfApproval { .. } => Problem::forbidden("self-approval", detail),
            ApprovalError::AlreadyVoted { .. } => Problem::conflict("already-voted", detail),
            ApprovalError::AlreadyDecided { .. } => Problem::conflict("already-decided", detail),
            ApprovalError::DecisionNotAllowed { .. } => Problem::unprocessable("decision-not-allowed", detail),
            ApprovalError::BadModification { .. } => Problem::unprocessable("bad-modification", detail),
            ApprovalError::Store(error) => error.into(),
            other => Problem::conflict("approval-unusable", other.to_string()),
        }
    }
}

impl From<RunStoreError> for Problem {
    fn from(error: RunStoreError) -> Self {
        match error {
            RunStoreError::Run(RunError::NotFound(run_id)) => {
                Problem::not_found(format!("run `{run_id}` does not exist in your tenant"))
            }
            RunStoreError::Run(error) => Problem::unprocessable("run-refused", error.to_string()),
            RunStoreError::LeaseLost { .. } => Problem::conflict("lease-lost", error.to_string()),
            RunStoreError::Approval(error) => error.into(),
            RunStoreError::Store(error) => error.into(),
        }
    }
}

impl From<CancelError> for Problem {
    fn from(error: CancelError) -> Self {
        let detail = error.to_string();
        match error {
            CancelError::NotAllowed { .. } => Problem::forbidden("cancel-not-allowed", detail),
            CancelError::Finished { .. } => Problem::conflict("run-finished", detail),
            CancelError::Run(error) => error.into(),
            CancelError::Approval(error) => error.into(),
        }
    }
}

impl From<agent_runtime::StepError> for Problem {
    fn from(error: agent_runtime::StepError) -> Self {
        use agent_runtime::StepError;
        let retryable = error.is_retryable();
        match error {
            StepError::Store(error) => error.into(),
            StepError::Approval(error) => error.into(),
            StepError::Run(error) => error.into(),
            StepError::RunHeld { .. } => Problem::conflict("run-held", error.to_string()).retry_after(5),
            StepError::NotWaiting { .. } => Problem::conflict("not-waiting", error.to_string()),
            StepError::TimedOut { .. } => Problem::conflict("run-timed-out", error.to_string()),
            StepError::NotResumed { .. } => Problem::conflict("not-resumed", error.to_string()).retryable(retryable),
            other => Problem::unprocessable("step-refused", other.to_string()),
        }
    }
}
