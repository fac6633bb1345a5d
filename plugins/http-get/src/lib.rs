//! `http-get`: a read-only skill that fetches one URL through the host's `http-fetch` and
//! returns the status, content type and body text.
//!
//! The host decides whether the URL's origin is granted (`net.http:<scheme>://<host>:<port>`);
//! a denial is reported as a permanent error naming the capability.

use plugin_abi::guest::{CapabilityError, Context, HttpRequest, SkillError};

/// What to fetch.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Absolute `http://` URL.
    pub url: String,
}

/// What came back.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// HTTP status code.
    pub status: u16,
    /// The `content-type` header, if any.
    pub content_type: Option<String>,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
}

/// Fetches `input.url`.
///
/// # Errors
///
/// `permanent` when the origin is not granted or the request is malformed, `transient` when
/// the connection failed, `invalid-input` for a 4xx answer, `transient` for a 5xx answer.
pub fn get(context: &Context, input: Input) -> Result<Output, SkillError> {
    let response = context
        .http_fetch(&HttpRequest {
            method: "GET".to_owned(),
            url: input.url.clone(),
            headers: vec![("accept".to_owned(), "*/*".to_owned())],
            body: Vec::new(),
        })
        .map_err(|error| match error {
            CapabilityError::Denied(capability) => SkillError::Permanent(format!("capability denied: {capability}")),
            CapabilityError::Invalid(message) => SkillError::Permanent(message),
            CapabilityError::Io(message) => SkillError::Transient(message),
        })?;
    match response.status {
        400..=499 => Err(SkillError::InvalidInput(format!(
            "{} answered {}",
            input.url, response.status
        ))),
        500..=599 => Err(SkillError::Transient(format!(
            "{} answered {}",
            input.url, response.status
        ))),
        status => Ok(Output {
            status,
            content_type: response
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                .map(|(_, value)| value.clone()),
            body: String::from_utf8_lossy(&response.body).into_owned(),
        }),
    }
}

plugin_abi::skill!(
    id: "http-get",
    side_effect: ReadOnly,
    capabilities: ["net.http:http://127.0.0.1:8080"],
    handler: get,
);
