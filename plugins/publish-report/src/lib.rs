//! `publish-report`: an effectful skill that writes a Markdown report into the tenant's
//! workspace through the capability-gated `workspace-write` host call.
//!
//! It needs `fs.write:reports/`; without that grant the host answers `capability-denied` and the
//! skill fails with a permanent error naming the capability.

use plugin_abi::guest::{CapabilityError, Context, LogLevel, SkillError};

/// The report to publish.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Report title, one line.
    pub title: String,
    /// Markdown body.
    pub body: String,
    /// Where to write it, relative to the workspace, e.g. `reports/pii.md`.
    pub path: String,
}

/// What was written.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// The workspace path written.
    pub path: String,
    /// Bytes written.
    pub bytes: usize,
}

/// Renders the report and writes it.
///
/// # Errors
///
/// `invalid-input` for an empty title or a malformed path, `permanent` when the capability was
/// not granted, `transient` when the host failed to write.
pub fn publish(context: &Context, input: Input) -> Result<Output, SkillError> {
    if input.title.trim().is_empty() || input.title.contains('\n') {
        return Err(SkillError::InvalidInput("`title` must be one non-empty line".into()));
    }
    let report = format!(
        "# {}\n\n{}\n\n---\nrun `{}`, step `{}`, idempotency key `{}`\n",
        input.title.trim(),
        input.body.trim_end(),
        context.run_id,
        context.step_id,
        context.idempotency_key
    );
    context
        .workspace_write(&input.path, report.as_bytes())
        .map_err(|error| match error {
            CapabilityError::Denied(capability) => SkillError::Permanent(format!("capability denied: {capability}")),
            CapabilityError::Invalid(message) => SkillError::InvalidInput(message),
            CapabilityError::Io(message) => SkillError::Transient(message),
        })?;
    context.log(
        LogLevel::Info,
        &format!("wrote {} bytes to {}", report.len(), input.path),
    );
    // Progress for whoever watches the run (`GET /v1/runs/{id}/events`).
    context.emit(
        "report-written",
        &serde_json::json!({ "path": input.path, "bytes": report.len() }),
    );
    Ok(Output {
        path: input.path,
        bytes: report.len(),
    })
}

plugin_abi::skill!(
    id: "publish-report",
    side_effect: Effectful,
    capabilities: ["fs.write:reports/"],
    handler: publish,
);
