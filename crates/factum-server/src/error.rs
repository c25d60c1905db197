//! Errors as HTTP responses: a status and a JSON body `{"error": "…"}` that names the problem.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use factum_core::{ExpectedState, StoreError};
use serde::Serialize;

/// The JSON body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the input at fault.
    pub error: String,
    /// On a wrong expected revision (409): the `Expected-Revision` the request gave —
    /// `"any"`, `"no-stream"`, `"exists"` or a revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub expected: Option<serde_json::Value>,
    /// On a wrong expected revision (409): the stream's revision (`null` when it does not
    /// exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub actual: Option<Option<u64>>,
    /// On a failed append condition (409): the condition, as the request gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<factum_core::AppendCondition>)]
    pub condition: Option<Box<factum_core::AppendCondition>>,
    /// On a failed append condition (409): the position of the first event after its
    /// `after` that matches its query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// An error response of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Seconds a client should wait before it tries again (`Retry-After`), when it should.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: message.to_string(),
                expected: None,
                actual: None,
                condition: None,
                position: None,
            },
            retry_after: None,
        }
    }

    /// The same error, telling the client to try again after `seconds` (`Retry-After`).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 409: a DCB append's condition failed; nothing was written.
    pub fn condition_failed(
        condition: factum_core::AppendCondition,
        after: Option<u64>,
        position: u64,
    ) -> Self {
        let error = StoreError::ConditionFailed { after, position };
        let mut answer = ApiError::new(StatusCode::CONFLICT, error);
        answer.body.condition = Some(Box::new(condition));
        answer.body.position = Some(position);
        answer
    }

    /// 400: the request is malformed; nothing was written.
    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The JSON body: `{"error": "…"}`, and for a wrong expected revision `expected` and
    /// `actual`.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// The JSON body as text.
    pub fn json(&self) -> String {
        serde_json::to_string(&self.body).unwrap_or_else(|_| r#"{"error":"unprintable"}"#.into())
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// How an expected state is written in the `Expected-Revision` header.
pub(crate) fn expected_json(expected: ExpectedState) -> serde_json::Value {
    match expected {
        ExpectedState::Any => "any".into(),
        ExpectedState::NoStream => "no-stream".into(),
        ExpectedState::StreamExists => "exists".into(),
        ExpectedState::Exact(revision) => revision.into(),
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let status = match &error {
            StoreError::WrongExpectedRevision {
                expected, actual, ..
            } => {
                return ApiError {
                    status: StatusCode::CONFLICT,
                    body: ErrorBody {
                        error: error.to_string(),
                        expected: Some(expected_json(*expected)),
                        actual: Some(actual.0),
                        condition: None,
                        position: None,
                    },
                    retry_after: None,
                };
            }
            StoreError::CheckpointBehind { .. }
            | StoreError::Claimed(_)
            | StoreError::ConditionFailed { .. }
            | StoreError::Busy(_) => StatusCode::CONFLICT,
            StoreError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            StoreError::StreamDeleted(_) => StatusCode::GONE,
            StoreError::NotFound(_) | StoreError::UnknownSubject(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            StoreError::Closed
            | StoreError::Poisoned(_)
            | StoreError::Locked { .. }
            | StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Corrupted { .. } | StoreError::Io(_) => {
                tracing::error!(error = %error, "the store failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}
