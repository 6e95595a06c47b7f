//! The one error type at the HTTP boundary. Every failure answers
//! `{"error":{"code":"...","message":"..."}}` with a stable code; internal causes are logged here
//! and never sent to the caller.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rally_sdk::wire::{ErrorBody, ErrorDetail};

/// A failure a caller can be told about.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is well-formed but a value in it is not acceptable.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// No credentials, or credentials that prove nothing.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// Input that breaks rules, with every problem found in `details`.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        details: serde_json::Value,
    },
    #[error("this account may not do that")]
    Forbidden,
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A body, path or query that could not be read.
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("the service is not ready")]
    Unavailable,
    /// A client served by another node (`docs/nodes.md`): 421 with that node's base URL.
    #[error("this client is served by the node at {node_url}; ask there")]
    WrongNode { node_url: String },
    /// Anything the caller did not cause. The cause is logged, the caller sees `internal`.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unauthorized {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// A duplicate (unique-constraint violation) becomes 409 `code` with `message`; any other
    /// database error stays internal.
    pub fn conflict_on_duplicate(
        error: impl Into<crate::storage::StorageError>,
        code: &'static str,
        message: impl FnOnce() -> String,
    ) -> Self {
        let error = error.into();
        if error.is_unique_violation() {
            ApiError::conflict(code, message())
        } else {
            error.into()
        }
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(cause.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } | ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::WrongNode { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Invalid { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Rejected { code, .. } => code,
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Unavailable => "unavailable",
            ApiError::WrongNode { .. } => rally_sdk::player::WRONG_NODE,
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Internal(crate::storage::StorageError::from(error).into())
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        ApiError::Internal(error.into())
    }
}

impl From<crate::deployed::LoadError> for ApiError {
    fn from(error: crate::deployed::LoadError) -> Self {
        ApiError::Internal(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let status = self.status();
        let code = self.code();
        match self {
            ApiError::Invalid {
                message, details, ..
            } => shaped_response(status, code, message, Some(details)),
            ApiError::WrongNode { ref node_url } => {
                let details = serde_json::json!({ "node_url": node_url });
                shaped_response(status, code, self.to_string(), Some(details))
            }
            other => shaped_response(status, code, other.to_string(), None),
        }
    }
}

/// The error shape, for the few places that build a response without an `ApiError`.
pub fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    shaped_response(status, code, message, None)
}

fn shaped_response(
    status: StatusCode,
    code: &str,
    message: String,
    details: Option<serde_json::Value>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message,
            details,
        },
    };
    (status, axum::Json(body)).into_response()
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "unreadable_body"),
        };
        ApiError::Rejected {
            status,
            code,
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::Rejected {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_path",
            message: rejection.body_text(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Rejected {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_query",
            message: rejection.body_text(),
        }
    }
}

/// `axum::Json` whose rejection is an [`ApiError`], so a bad body gets the common error shape.
/// Every body is a JSON object: serde would also fill a struct from an array of its fields in
/// order (`["Studio"]`), which no documented request is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(Object(value)) =
            axum::Json::<Object<T>>::from_request(request, state).await?;
        // No text the platform keeps or looks up can hold NUL (PostgreSQL refuses it). What
        // was read is written again to look: fields the request does not have are ignored.
        let read = serde_json::to_vec(&value).map_err(ApiError::internal)?;
        if has_nul(&read) {
            return Err(ApiError::bad_request(
                "invalid_text",
                "strings in the body must not contain NUL (\\u0000)",
            ));
        }
        Ok(Json(value))
    }
}

/// Whether a JSON text has a string holding NUL: the escape `\u0000` (a raw NUL byte is not
/// JSON at all), not itself escaped (`\\u0000` is a backslash and `u0000`).
fn has_nul(json: &[u8]) -> bool {
    let mut backslashes = 0;
    for (at, &byte) in json.iter().enumerate() {
        if byte == b'\\' {
            backslashes += 1;
            continue;
        }
        if byte == b'u' && backslashes % 2 == 1 && json[at + 1..].starts_with(b"0000") {
            return true;
        }
        backslashes = 0;
    }
    false
}

/// `T` read from a JSON object only.
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with the common error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with the common error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A path or query holding NUL (`%00`) names nothing the platform keeps: a path is not found,
/// a query is refused, before any lookup (PostgreSQL refuses NUL in text).
pub async fn refuse_nul(request: Request, next: axum::middleware::Next) -> Response {
    let uri = request.uri();
    if uri.path().contains("%00") {
        return ApiError::NotFound { what: "resource" }.into_response();
    }
    if uri.query().is_some_and(|query| query.contains("%00")) {
        return ApiError::Rejected {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_query",
            message: "the query must not contain NUL (%00)".to_owned(),
        }
        .into_response();
    }
    next.run(request).await
}

/// Last layer: gives the common error shape to error responses that did not come from an
/// [`ApiError`] (unknown routes, wrong methods, panics, limits enforced by lower layers).
pub async fn shape_errors(request: Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "request timed out"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported media type"),
        status if status.is_server_error() => ("internal", "internal error"),
        _ => ("bad_request", "bad request"),
    };
    let mut shaped = error_response(status, code, message.to_owned());
    if let Some(allow) = response.headers().get(header::ALLOW) {
        shaped.headers_mut().insert(header::ALLOW, allow.clone());
    }
    shaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_is_found_only_where_a_string_holds_it() {
        assert!(super::has_nul(br#"{"a": "x\u0000y"}"#));
        assert!(super::has_nul(br#"{"a": "\\\u0000"}"#));
        assert!(!super::has_nul(br#"{"a": "\\u0000"}"#));
        assert!(!super::has_nul(br#"{"a": "u0000", "b": "\u0001"}"#));
    }
}
