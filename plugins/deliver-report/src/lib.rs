//! `deliver-report`: an effectful skill that delivers a report three ways, one effect of each
//! kind the host journals by idempotency key:
//!
//! 1. writes it to `reports/deliveries/<name>.md` in the tenant's workspace (`workspace-write`);
//! 2. records its SHA-256 under `deliveries/<name>` in the skill's key-value namespace
//!    (`kv-set`);
//! 3. POSTs it to the delivery webhook `http://127.0.0.1:18931/deliveries` (`http-fetch`; the
//!    host adds an `Idempotency-Key` header).
//!
//! Dispatched again under the same idempotency key (a retry, a recovery after a crash), it
//! asks for the same three effects and the host does none of them twice.

use plugin_abi::guest::{CapabilityError, Context, HttpRequest, SkillError};

/// The webhook reports are delivered to.
pub const WEBHOOK: &str = "http://127.0.0.1:18931/deliveries";

/// The report to deliver.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Report title, one line.
    pub title: String,
    /// Markdown body.
    pub body: String,
    /// The delivery's name: one path segment of letters, digits, `-` and `_`.
    pub name: String,
}

/// What was delivered.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// The workspace path written.
    pub path: String,
    /// FNV-1a digest of the report (hex), as recorded in the key-value store.
    pub digest: String,
    /// The webhook's HTTP status.
    pub webhook_status: u16,
}

fn host_error(error: CapabilityError) -> SkillError {
    match error {
        CapabilityError::Denied(capability) => SkillError::Permanent(format!("capability denied: {capability}")),
        CapabilityError::Invalid(message) => SkillError::InvalidInput(message),
        CapabilityError::Io(message) => SkillError::Transient(message),
    }
}

/// FNV-1a 64-bit of `bytes`, hex: a small stable digest (the guest carries no crypto crate).
fn digest(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Writes, records and posts the report.
///
/// # Errors
///
/// `invalid-input` for an empty title or a bad name, `permanent` when a capability was not
/// granted, `transient` when the host or the webhook failed (a 5xx answer), `invalid-input`
/// for a 4xx answer.
pub fn deliver(context: &Context, input: Input) -> Result<Output, SkillError> {
    if input.title.trim().is_empty() || input.title.contains('\n') {
        return Err(SkillError::InvalidInput("`title` must be one non-empty line".into()));
    }
    if input.name.is_empty()
        || !input
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(SkillError::InvalidInput(
            "`name` must be letters, digits, `-` and `_`".into(),
        ));
    }
    let report = format!("# {}\n\n{}\n", input.title.trim(), input.body.trim_end());
    let path = format!("reports/deliveries/{}.md", input.name);
    context.workspace_write(&path, report.as_bytes()).map_err(host_error)?;
    let digest = digest(report.as_bytes());
    context
        .kv_set(&format!("deliveries/{}", input.name), digest.as_bytes())
        .map_err(host_error)?;
    let body = serde_json::json!({ "name": input.name, "digest": digest, "report": report }).to_string();
    let response = context
        .http_fetch(&HttpRequest {
            method: "POST".to_owned(),
            url: WEBHOOK.to_owned(),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.into_bytes(),
        })
        .map_err(host_error)?;
    match response.status {
        500..=599 => Err(SkillError::Transient(format!(
            "the webhook answered {}",
            response.status
        ))),
        400..=499 => Err(SkillError::InvalidInput(format!(
            "the webhook answered {}",
            response.status
        ))),
        status => Ok(Output {
            path,
            digest,
            webhook_status: status,
        }),
    }
}

plugin_abi::skill!(
    id: "deliver-report",
    side_effect: Effectful,
    capabilities: ["fs.write:reports/", "kv.write:deliveries/", "net.http:http://127.0.0.1:18931"],
    handler: deliver,
);
