//! The JSON error body every endpoint answers with:
//! `{"error":{"code":"snake_case_code","message":"..."}}`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::messages::TxValidationError;

/// `{"error":{"code":…,"message":…}}`, the body of every error answer. It has no other
/// field (the OpenAPI document says so, to tell it apart from the answers that carry an
/// error with more fields, such as 503 `body_unavailable`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply<'a> {
    pub error: ErrorBody<'a>,
}

/// What went wrong: a stable snake_case `code` for programs, a `message` for people.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody<'a> {
    #[schema(pattern = "^[a-z][a-z0-9_]*$")]
    pub code: &'static str,
    pub message: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (503 answers).
    pub retry_after: Option<u32>,
    /// Close the connection after this answer (`Connection: close`): the request's body
    /// was not read to its end, so nothing else can follow it on this connection.
    pub close: bool,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            code,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    /// The same answer, closing the connection after it.
    pub fn closing(self) -> Self {
        Self {
            close: true,
            ..self
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "not_found", what)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(503, "overloaded", message)
        }
    }

    pub fn storage_unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(503, "storage_unavailable", message)
        }
    }

    pub fn body(&self) -> ErrorReply<'_> {
        ErrorReply {
            error: ErrorBody {
                code: self.code,
                message: &self.message,
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if self.close {
            resp.force_close();
        }
        resp.json(self.body())
    }
}

impl From<TxValidationError> for ApiError {
    fn from(e: TxValidationError) -> Self {
        Self::new(e.status(), e.code(), e.to_string())
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// A 503 answer that is either the route's own body (`T`) or the plain error body any
/// route may answer when the node is at one of its bounds.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OrError<T> {
    Reply(T),
    Error(ErrorReply<'static>),
}
