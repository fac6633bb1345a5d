//! Request extractors that answer with problem details: the caller (bearer JWT, then the
//! tenant's rate limit) and a bounded JSON body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use control_plane::Principal;
use serde::de::DeserializeOwned;

use super::Shared;
use super::problem::Problem;

/// The authenticated caller of a request: `Authorization: Bearer <JWT>` verified by the control
/// plane, then admitted by the caller's tenant's rate limit.
pub struct Caller(pub Principal);

impl FromRequestParts<Shared> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, server: &Shared) -> Result<Self, Problem> {
        let refused = |problem: Problem| {
            server.metrics.failed_authentication();
            problem
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(refused(Problem::unauthorized(
                "missing-token",
                "no `Authorization: Bearer <token>` header",
            )));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| text.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                refused(Problem::unauthorized(
                    "missing-token",
                    "the `Authorization` header is not `Bearer <token>`",
                ))
            })?;
        let principal = server
            .app
            .control_plane
            .authenticate(token)
            .map_err(|error| refused(error.into()))?;
        if let Err(not_until) = server.limiter.check_key(&principal.tenant) {
            server.metrics.rate_limited();
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests for this tenant",
                format!(
                    "tenant `{}` is over its rate limit of {} requests/s; retry in {} ms",
                    principal.tenant,
                    server.rate_per_second,
                    wait.as_millis()
                ),
            )
            .retry_after(wait.as_secs().max(1)));
        }
        Ok(Caller(principal))
    }
}

impl Caller {
    /// The caller, if they hold `role`.
    ///
    /// # Errors
    ///
    /// A 403 problem naming the role.
    pub fn require(&self, role: control_plane::Role) -> Result<&Principal, Problem> {
        if self.0.has_role(role) {
            Ok(&self.0)
        } else {
            Err(Problem::forbidden(
                "role-required",
                format!("this needs the `{role}` role; `{}` does not have it", self.0.subject),
            ))
        }
    }
}

/// A JSON request body of at most `MAX` bytes (by default [`MAX_BODY_BYTES`]; the route's
/// `DefaultBodyLimit` must allow as much), `Content-Type: application/json`, parsed
/// strictly (unknown fields refused by the target types). Refused before anything is stored:
/// 415 for another media type, 413 for a larger body (from `Content-Length` before reading,
/// or while reading a chunked one), 408 for a body that stops arriving, 400 for malformed
/// JSON, 422 for JSON of the wrong shape.
pub struct JsonBody<T, const MAX: usize = MAX_BODY_BYTES>(pub T);

/// Largest JSON body read, bytes: a skill's largest input and the envelope around it.
pub const MAX_BODY_BYTES: usize = crate::app::MAX_INPUT_FILE_BYTES as usize;

impl<T: DeserializeOwned, S: Send + Sync, const MAX: usize> FromRequest<S> for JsonBody<T, MAX> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let media_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|text| text.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        match media_type.as_deref() {
            Some("application/json") => {}
            Some(other) if other.ends_with("+json") => {}
            other => {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "The body must be JSON",
                    format!(
                        "the body is `{}`; send `Content-Type: application/json`",
                        other.unwrap_or("(no Content-Type)")
                    ),
                ));
            }
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        if let Some(length) = declared.filter(|length| *length > MAX as u64) {
            return Err(too_large(&format!("{length} bytes"), MAX));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => too_large("more bytes", MAX),
                StatusCode::REQUEST_TIMEOUT => Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "The body did not arrive in time",
                    rejection.body_text(),
                ),
                _ => Problem::bad_request("unreadable-body", rejection.body_text()),
            })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|error| {
            if error.is_data() {
                Problem::unprocessable("invalid-body", format!("the body has the wrong shape: {error}"))
            } else {
                Problem::bad_request("malformed-json", format!("the body is not valid JSON: {error}"))
            }
        })
    }
}

fn too_large(size: &str, max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "The body is too large",
        format!("the body holds {size}; at most {max} bytes are accepted here; nothing was stored"),
    )
}
