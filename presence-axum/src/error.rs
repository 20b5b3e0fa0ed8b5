//! Errors as HTTP answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A refused or failed request, answered as JSON: `400 { error, field }`
/// for bad input, `401` without an identity where one is needed, `403` for
/// a refused cross-site request, `413` for a body too large, `429 {
/// wait_seconds }` with `Retry-After` over the rate limit, `503` when the
/// store failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
    wait_seconds: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_seconds: Option<u64>,
}

impl ApiError {
    /// `400`: `field` of the request broke a rule.
    pub fn bad_input(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            field: Some(field.into()),
            wait_seconds: None,
        }
    }

    /// `401`: the request needs a member and `identify` found none.
    pub fn unauthenticated() -> Self {
        Self::plain(
            StatusCode::UNAUTHORIZED,
            "this request needs a signed-in member",
        )
    }

    /// `403`: a cross-site request to an endpoint that changes presence.
    pub fn cross_site() -> Self {
        Self::plain(StatusCode::FORBIDDEN, "cross-site requests are refused")
    }

    /// `413`: the body is over `max_body_bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: format!("the body is over {limit} bytes"),
            field: Some("body".into()),
            wait_seconds: None,
        }
    }

    /// `429`: over the rate limit; try again after `wait_seconds`.
    pub fn rate_limited(wait_seconds: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: format!("too many updates; wait {wait_seconds} s"),
            field: None,
            wait_seconds: Some(wait_seconds),
        }
    }

    /// `503`: the store failed (logged with its cause; the answer says no
    /// more, so nothing about the backend leaks).
    pub fn unavailable(error: &presence::Error) -> Self {
        tracing::warn!(error = %error.chain(), "presence request failed in the store");
        Self::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "presence is unavailable right now; try again",
        )
    }

    /// `503`: the shutdown signal was given; no new stream is opened.
    pub fn shutting_down() -> Self {
        Self::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
    }

    fn plain(status: StatusCode, error: &str) -> Self {
        Self {
            status,
            error: error.into(),
            field: None,
            wait_seconds: None,
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The request field it names, for bad input.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl From<presence::Error> for ApiError {
    /// Bad input names its field; everything else the router does not
    /// answer itself is the store failing.
    fn from(error: presence::Error) -> Self {
        match &error {
            presence::Error::InvalidInput { field, reason } => Self::bad_input(*field, reason),
            _ => Self::unavailable(&error),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.error)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: &self.error,
            field: self.field.as_deref(),
            wait_seconds: self.wait_seconds,
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(wait) = self.wait_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        response
    }
}
