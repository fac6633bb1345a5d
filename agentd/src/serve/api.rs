//! The HTTP API v1: handlers and the OpenAPI 3.1 document generated from them.
//!
//! Every `/v1` route but the checkpoint needs a bearer JWT; every read is scoped to the
//! caller's tenant (another tenant's id answers 404, as a missing one does). Errors are RFC 9457
//! problem details ([`Problem`]).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use control_plane::{ApprovalStatus, RequestKey, ReviewDecisionKind, Role, RunState, StepSpec};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use utoipa::OpenApi;

use super::Shared;
use super::extract::{Caller, JsonBody};
use super::problem::{PROBLEM_JSON, Problem};
use crate::app::StepReport;

/// The OpenAPI document of the API (OpenAPI 3.1, generated from the handlers' annotations).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "agentd",
        description = "Governed, audited execution of WebAssembly agent skills. Errors are RFC 9457 \
                       problem details (`application/problem+json`) whose `type` is \
                       `urn:agentd:problem:<slug>`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        create_run,
        list_runs,
        get_run,
        cancel_run,
        run_provenance,
        super::events::run_events,
        super::events::approval_events,
        list_approvals,
        get_approval,
        vote,
        list_skills,
        install_skill,
        rollback_skill,
        audit_verify,
        audit_checkpoint,
        healthz,
        readyz,
        metrics,
    ),
    components(schemas(Problem, CreateRun, RunCreated, RunDetail, CancelRun, VoteRequest, Voted, ApprovalDetail, SkillInfo, InstallSkill)),
    modifiers(&BearerAuth),
    tags((name = "runs"), (name = "approvals"), (name = "skills"), (name = "audit"), (name = "operations"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as pretty JSON (what `/v1/openapi.json` serves and `agentd/openapi.json`
/// holds).
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// Start a run: one step (`skill` and `input`) or a plan (`steps`).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// One step: the skill id (with `input`).
    pub skill: Option<String>,
    /// One step: the skill's input object (the `input` of an `agentd.invoke.v1` envelope).
    #[schema(value_type = Option<Object>)]
    pub input: Option<serde_json::Map<String, serde_json::Value>>,
    /// A plan: `[{"step_id", "skill", "input"}, ...]`, run in order; a step's input may refer to
    /// an earlier step's output with `{"$from": "<step id>", "pointer": "/json/pointer"}`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub steps: Option<Vec<StepSpec>>,
}

/// A run started (201, 202) or found again by its idempotency key (200).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunCreated {
    /// The run.
    pub run_id: String,
    /// The last step attempted now (absent on a replay): `status` is `completed`, `failed`,
    /// `denied`, `awaiting-approval` or `escalated`.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepReport>,
    /// The run as reduced from its events (schema `run-event.v1.json` for the events).
    #[schema(value_type = Object)]
    pub run: control_plane::RunView,
    /// Whether this answer replays an earlier request with the same idempotency key.
    pub replayed: bool,
}

/// The request header of the IETF httpapi-idempotency-key draft.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[utoipa::path(
    post, path = "/v1/runs", tag = "runs", request_body = CreateRun,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "IETF httpapi-idempotency-key: the same key and body name the same run; the same key with another body is refused (422)")),
    responses(
        (status = 201, description = "The run ran as far as it goes now", body = RunCreated),
        (status = 202, description = "The run waits for a human (approval or escalation)", body = RunCreated),
        (status = 200, description = "Replay of an earlier request with this key", body = RunCreated),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, expired or forged token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The request with this key is still in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong shape, invalid plan, or key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Tenant over its rate limit", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_run(
    State(server): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateRun>,
) -> Result<Response, Problem> {
    let principal = &caller.0;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| Problem::bad_request("bad-idempotency-key", "the Idempotency-Key is not visible ASCII"))?;
            // The draft's value is a Structured Field string: `"..."`; a bare token is accepted too.
            let text = text.trim();
            let text = text
                .strip_prefix('"')
                .and_then(|inner| inner.strip_suffix('"'))
                .unwrap_or(text);
            let canonical = serde_json::to_vec(&body).map_err(|error| Problem::internal(error.to_string()))?;
            let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&canonical)));
            Some(
                RequestKey::new(text, digest)
                    .map_err(|message| Problem::bad_request("bad-idempotency-key", message))?,
            )
        }
    };
    let steps = match body {
        CreateRun {
            skill: Some(skill),
            input,
            steps: None,
        } => vec![StepSpec {
            step_id: "step-1".to_owned(),
            skill,
            input: serde_json::Value::Object(input.unwrap_or_default()),
        }],
        CreateRun {
            skill: None,
            input: None,
            steps: Some(steps),
        } => steps,
        _ => {
            return Err(Problem::unprocessable(
                "invalid-body",
                "give either `skill` with `input` (one step) or `steps` (a plan), not both",
            ));
        }
    };
    let control_plane = &server.app.control_plane;
    let started = agent_runtime::start_plan(&server.app.runtime, control_plane, principal, steps, key.as_ref()).await?;
    let (run_id, step) = match started {
        agent_runtime::Started::Ran(outcome) => {
            let report = StepReport::from(*outcome);
            server.metrics.outcome(report.status_name());
            (report.run_id().to_owned(), Some(report))
        }
        agent_runtime::Started::Replayed { run_id } => (run_id, None),
        agent_runtime::Started::KeyConflict { run_id } => {
            return Err(Problem::unprocessable(
                "idempotency-key-reused",
                format!("this Idempotency-Key started run `{run_id}` with another request body; use a new key"),
            ));
        }
    };
    let run = control_plane.run(&principal.tenant, &run_id).await?;
    let status = match &step {
        None if matches!(run.state, RunState::Pending | RunState::Running) => {
            return Err(Problem::conflict(
                "idempotency-key-in-flight",
                format!("the request with this Idempotency-Key is still running as run `{run_id}`; retry later"),
            )
            .retry_after(1));
        }
        None => StatusCode::OK,
        Some(StepReport::AwaitingApproval { .. } | StepReport::Escalated { .. }) => StatusCode::ACCEPTED,
        Some(_) => StatusCode::CREATED,
    };
    let replayed = step.is_none();
    let location = format!("/v1/runs/{run_id}");
    let mut response = (
        status,
        Json(RunCreated {
            run_id,
            step,
            run,
            replayed,
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    responses((status = 200, description = "The tenant's runs: owner, lease, fencing token, deadline", body = Vec<Object>),
        (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn list_runs(State(server): State<Shared>, caller: Caller) -> Result<Response, Problem> {
    let records = server.app.control_plane.run_records(&caller.0.tenant).await?;
    Ok(Json(records).into_response())
}

/// A run and its events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    /// The run as reduced from its events.
    #[schema(value_type = Object)]
    pub run: control_plane::RunView,
    /// Its events in Lamport order (schema `run-event.v1.json`).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<control_plane::RunEvent>,
}

#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunDetail),
        (status = 404, description = "No such run in your tenant", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_run(
    State(server): State<Shared>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<Json<RunDetail>, Problem> {
    let control_plane = &server.app.control_plane;
    let run = control_plane.run(&caller.0.tenant, &run_id).await?;
    let events = control_plane.run_events(&caller.0.tenant, &run_id).await?;
    Ok(Json(RunDetail { run, events }))
}

/// Why a run is cancelled.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Recorded in the run's events and the audit log.
    pub reason: Option<String>,
}

#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "runs", params(("id" = String, Path, description = "Run id")),
    request_body = CancelRun,
    responses((status = 200, description = "The cancelled run", body = Object),
        (status = 403, description = "Neither the requester nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run finished already", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn cancel_run(
    State(server): State<Shared>,
    caller: Caller,
    Path(run_id): Path<String>,
    JsonBody(body): JsonBody<CancelRun>,
) -> Result<Response, Problem> {
    let reason = body.reason.unwrap_or_else(|| "cancelled".to_owned());
    let view = server.app.control_plane.cancel_run(&caller.0, &run_id, &reason).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(
    get, path = "/v1/runs/{id}/provenance", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "W3C PROV-O JSON-LD of the run, from the audit log", body = Object, content_type = "application/ld+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn run_provenance(
    State(server): State<Shared>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<Response, Problem> {
    let control_plane = &server.app.control_plane;
    control_plane.run(&caller.0.tenant, &run_id).await?;
    let document = control_plane.provenance(&caller.0.tenant, &run_id).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/ld+json")],
        serde_json::to_string(&document).unwrap_or_default(),
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/v1/approvals", tag = "approvals",
    params(("status" = Option<String>, Query, description = "pending, approved, denied, modified, expired, cancelled or consumed")),
    responses((status = 200, description = "The tenant's approval requests, newest first", body = Vec<Object>),
        (status = 400, description = "Unknown status or query parameter", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn list_approvals(
    State(server): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let mut status = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        match pair.split_once('=') {
            Some(("status", value)) => {
                status = Some(
                    value
                        .parse::<ApprovalStatus>()
                        .map_err(|error| Problem::bad_request("bad-query", format!("status `{value}`: {error}")))?,
                );
            }
            _ => {
                return Err(Problem::bad_request(
                    "bad-query",
                    format!("unknown query parameter `{pair}`; only `status` is accepted"),
                ));
            }
        }
    }
    let requests = server
        .app
        .control_plane
        .list_approvals(&caller.0.tenant, status)
        .await?;
    Ok(Json(requests).into_response())
}

/// An approval request with its run (the steps before it, for the reviewer).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApprovalDetail {
    /// The request: skill, risk tier, requester, exact input, policy reasons and obligations,
    /// quorum and votes, expiry.
    #[schema(value_type = Object)]
    pub approval: control_plane::ApprovalRequest,
    /// Its run as reduced from its events (absent for a request without a run).
    #[schema(value_type = Option<Object>)]
    pub run: Option<control_plane::RunView>,
    /// The governance verdict that asked for the approval: risk tier, determining policies,
    /// obligations, granted capabilities (from the audit log).
    #[schema(value_type = Option<Object>)]
    pub verdict: Option<control_plane::audit::VerdictRecord>,
}

#[utoipa::path(
    get, path = "/v1/approvals/{id}", tag = "approvals", params(("id" = i64, Path, description = "Approval id")),
    responses((status = 200, body = ApprovalDetail),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_approval(
    State(server): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApprovalDetail>, Problem> {
    let id = parse_id(&id)?;
    let control_plane = &server.app.control_plane;
    let approval = control_plane
        .approval(&caller.0.tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("approval request {id} does not exist in your tenant")))?;
    let run = control_plane.run(&caller.0.tenant, &approval.run_id).await.ok();
    let verdict = control_plane
        .step_verdict(&caller.0.tenant, &approval.run_id, &approval.step_id)
        .await?;
    Ok(Json(ApprovalDetail { approval, run, verdict }))
}

fn parse_id(text: &str) -> Result<i64, Problem> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::bad_request("bad-id", format!("`{text}` is not an approval id (a positive integer)")))
}

/// A reviewer's answer.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// `approve`, `deny` or `modify`.
    #[schema(value_type = String)]
    pub decision: ReviewDecisionKind,
    /// Why (recorded with the vote and in the audit log).
    pub comment: Option<String>,
    /// For `modify`: the edited input object; the edited step is governed again.
    #[schema(value_type = Option<Object>)]
    pub input: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The request after the vote and, when the vote released the step, the step.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Voted {
    /// The request as it stands now.
    #[schema(value_type = Object)]
    pub approval: control_plane::ApprovalRequest,
    /// The step the vote released, if it did.
    #[schema(value_type = Option<Object>)]
    pub step: Option<StepReport>,
}

#[utoipa::path(
    post, path = "/v1/approvals/{id}/votes", tag = "approvals", params(("id" = i64, Path, description = "Approval id")),
    request_body = VoteRequest,
    responses((status = 200, body = Voted),
        (status = 403, description = "Not a reviewer, not permitted by policy, or the requester themself", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already decided, or already voted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Decision not allowed, or a bad modification", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn vote(
    State(server): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<VoteRequest>,
) -> Result<Json<Voted>, Problem> {
    let id = parse_id(&id)?;
    let modified = match (body.decision, body.input) {
        (ReviewDecisionKind::Modify, Some(input)) => Some(
            serde_json::to_string(&plugin_abi::InvokeRequest::new(input))
                .map_err(|error| Problem::internal(error.to_string()))?,
        ),
        (ReviewDecisionKind::Modify, None) => {
            return Err(Problem::unprocessable(
                "invalid-body",
                "a `modify` vote carries the edited `input`",
            ));
        }
        (_, Some(_)) => {
            return Err(Problem::unprocessable(
                "invalid-body",
                "only a `modify` vote carries an `input`",
            ));
        }
        (_, None) => None,
    };
    let answered = agent_runtime::answer_approval(
        &server.app.runtime,
        &server.app.control_plane,
        &caller.0,
        id,
        body.decision,
        body.comment.as_deref(),
        modified.as_deref(),
    )
    .await?;
    let step = answered.step.map(StepReport::from);
    if let Some(step) = &step {
        server.metrics.outcome(step.status_name());
    }
    Ok(Json(Voted {
        approval: answered.approval,
        step,
    }))
}

/// A loaded skill version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SkillInfo {
    /// Id, version, side effect, capabilities, component digest.
    #[schema(value_type = Object)]
    pub summary: plugin_abi::SkillSummary,
    /// The manifest's limits (memory bytes, fuel, deadline ms, concurrency).
    #[schema(value_type = Object)]
    pub limits: agent_runtime::Limits,
    /// JSON Schema of the skill's input (from its `describe`).
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
    /// JSON Schema of the skill's output.
    #[schema(value_type = Object)]
    pub output_schema: serde_json::Value,
}

#[utoipa::path(
    get, path = "/v1/skills", tag = "skills",
    responses((status = 200, description = "Skills selectable now, with their schemas", body = Vec<SkillInfo>)),
    security(("bearer" = []))
)]
pub async fn list_skills(State(server): State<Shared>, _caller: Caller) -> Json<Vec<SkillInfo>> {
    Json(
        server
            .app
            .runtime
            .skills()
            .iter()
            .map(|skill| SkillInfo {
                summary: skill.summary.clone(),
                limits: skill.manifest.limits,
                input_schema: skill.input_schema().value().clone(),
                output_schema: skill.output_schema().value().clone(),
            })
            .collect(),
    )
}

/// A skill package to install: its manifest and its component.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallSkill {
    /// The package's `skill.toml`, as text.
    pub manifest: String,
    /// The component (`wasm32-wasip2`), base64 (RFC 4648 §4, with padding); its SHA-256 must
    /// be the manifest's `digest`.
    pub component_base64: String,
}

/// Largest install request, bytes: a 24 MiB component in base64 and its manifest.
pub const MAX_PACKAGE_BODY_BYTES: usize = 33 * 1024 * 1024;

#[utoipa::path(
    post, path = "/v1/skills", tag = "skills", request_body = InstallSkill,
    responses((status = 201, description = "Verified, compiled, described and selectable now (a newer version hot-swaps in)", body = Object),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The package was refused: every problem is named", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn install_skill(
    State(server): State<Shared>,
    caller: Caller,
    JsonBody(body): JsonBody<InstallSkill, MAX_PACKAGE_BODY_BYTES>,
) -> Result<Response, Problem> {
    use base64::Engine as _;
    caller.require(Role::Admin)?;
    let refused = |detail: String| Problem::unprocessable("package-refused", detail);
    let manifest = agent_runtime::Manifest::parse(
        &body.manifest,
        std::path::Path::new(agent_runtime::package::MANIFEST_FILE),
        &agent_runtime::LimitCeilings::default(),
    )
    .map_err(|error| refused(error.to_string()))?;
    let component_name = std::path::Path::new(&manifest.component);
    if component_name.components().count() != 1 || component_name.file_name().is_none() {
        return Err(refused(format!(
            "the manifest's `component` must be a file name beside it, not `{}`",
            manifest.component
        )));
    }
    let component = base64::engine::general_purpose::STANDARD
        .decode(body.component_base64.as_bytes())
        .map_err(|error| refused(format!("`component_base64` is not base64: {error}")))?;
    let digest = agent_runtime::package::sha256_digest(&component);
    // One directory per component digest under the state directory: uploading the same
    // package twice loads the same files again.
    let directory = server.packages_dir.join(format!(
        "{}-{}",
        manifest.id,
        &digest.trim_start_matches("sha256:")[..16]
    ));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&directory)?;
        std::fs::write(directory.join(agent_runtime::package::MANIFEST_FILE), &body.manifest)?;
        std::fs::write(directory.join(&manifest.component), &component)
    };
    write().map_err(|error| Problem::internal(format!("cannot store the package: {error}")))?;
    match server.app.runtime.load_package(&directory).await {
        Ok(summary) => {
            tracing::info!(skill = %summary.id, version = %summary.version, admin = %caller.0, "skill installed over HTTP");
            Ok((StatusCode::CREATED, Json(summary)).into_response())
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&directory);
            Err(refused(error.to_string()))
        }
    }
}

#[utoipa::path(
    post, path = "/v1/skills/{id}/rollback", tag = "skills", params(("id" = String, Path, description = "Skill id")),
    responses((status = 200, description = "The withdrawn and the now selected versions", body = Object),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No other version is active", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn rollback_skill(
    State(server): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Role::Admin)?;
    match server.app.runtime.rollback(&id).await {
        Ok(rollback) => Ok(Json(rollback).into_response()),
        Err(error @ agent_runtime::RollbackError::UnknownSkill(_)) => Err(Problem::not_found(error.to_string())),
        Err(error) => Err(Problem::conflict("nothing-to-roll-back", error.to_string())),
    }
}

#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "The chain, anchor and Merkle tree checked: `intact` or `broken` (naming the first broken entry)", body = Object),
        (status = 403, description = "Neither reviewer nor admin", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn audit_verify(State(server): State<Shared>, caller: Caller) -> Result<Response, Problem> {
    if !caller.0.has_role(Role::Admin) {
        caller.require(Role::Reviewer)?;
    }
    let verification = server.app.control_plane.verify_audit().await?;
    Ok(Json(verification).into_response())
}

#[utoipa::path(
    get, path = "/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "The log's signed tree head: a C2SP tlog-checkpoint signed note (Ed25519), for witnesses", body = String, content_type = "text/plain")),
)]
pub async fn audit_checkpoint(State(server): State<Shared>) -> Result<Response, Problem> {
    let signed = server.app.control_plane.checkpoint().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], signed.note).into_response())
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Serving: the store answers and no shutdown is under way", body = String),
        (status = 503, body = Problem, content_type = "application/problem+json"))
)]
pub async fn readyz(State(server): State<Shared>) -> Result<&'static str, Problem> {
    if server.is_shutting_down() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "The server is shutting down",
            "in-flight requests finish; send new ones elsewhere",
        ));
    }
    server
        .app
        .control_plane
        .count_approvals(ApprovalStatus::Pending)
        .await?;
    Ok("ready\n")
}

#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(server): State<Shared>) -> Response {
    let pending = server
        .app
        .control_plane
        .count_approvals(ApprovalStatus::Pending)
        .await
        .unwrap_or(-1);
    let runtime = &server.app.runtime;
    let text = server.metrics.render(&super::metrics::Gauges {
        pending,
        breakers: runtime.breakers().census(),
        skills: runtime
            .skills()
            .iter()
            .map(|skill| {
                (
                    skill.summary.id.clone(),
                    skill.summary.version.to_string(),
                    skill.free_slots(),
                )
            })
            .collect(),
        commits: server.app.control_plane.commit_stats(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Any other path: a problem, not an empty 404.
pub async fn fallback() -> Problem {
    Problem::not_found("no such route; the API is described at /v1/openapi.json")
}

/// Bodies the problem mapper did not produce (a 405 from the router, say) as problems too.
pub fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes())
}
