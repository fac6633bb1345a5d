//! Opening agentd's state (state directory, policy, plugin packages) and running steps.

use std::io::Read;
use std::path::{Path, PathBuf};

use agent_runtime::{Outcome, Runtime, RuntimeConfig, StepOutcome};
use anyhow::{Context, Result, bail};
use control_plane::{
    ApprovalRequest, ControlPlane, PolicyEngine, Principal, ReviewDecisionKind, Store, TokenAuthority, TokenConfig,
    Verdict,
};
use plugin_abi::InvokeRequest;

/// agentd's default policy (`policies/default.cedar` as built), for a machine without the
/// repository's files.
const BUILT_IN_POLICY: &str = include_str!("../../policies/default.cedar");

/// The governance policy: `--policy`/`AGENTD_POLICY` when given; else `policies/default.cedar`
/// in the current directory when it exists (a checkout of this repository); else the default
/// policy built into this binary.
pub fn load_policy(paths: &Paths) -> Result<PolicyEngine> {
    let default_file = Path::new("policies/default.cedar");
    match &paths.policy {
        Some(path) => PolicyEngine::from_file(path).context("cannot load the governance policy"),
        None if default_file.is_file() => {
            PolicyEngine::from_file(default_file).context("cannot load the governance policy")
        }
        None => {
            tracing::debug!("no --policy and no policies/default.cedar here: the built-in default policy");
            PolicyEngine::from_text(BUILT_IN_POLICY, "the built-in default policy")
                .context("cannot load the built-in default policy")
        }
    }
}

/// Where agentd keeps and finds things.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub plugins: PathBuf,
    /// The Cedar policy file; `None` for the default (see [`load_policy`]).
    pub policy: Option<PathBuf>,
    /// An external identity provider's JWKS: when given, access tokens are verified against it
    /// only and none is issued here.
    pub jwks: Option<PathBuf>,
    /// A PostgreSQL URL to keep the control plane's state in instead of `state.db` (several
    /// nodes may share it; ADR 0016).
    pub database: Option<String>,
}

impl Paths {
    pub fn key_file(&self) -> PathBuf {
        self.state_dir.join("jwt-hs256.key")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// The skills' key-value store and effects journal when the state is SQLite.
    pub fn kv_file(&self) -> PathBuf {
        self.state_dir.join("kv.db")
    }

    pub fn workspace_root(&self) -> PathBuf {
        self.state_dir.join("workspace")
    }

    /// Opens the control plane's store: the PostgreSQL database when one is given (its audit
    /// keys in the state directory), else `state.db`.
    async fn open_store(&self) -> Result<Store> {
        let store = match &self.database {
            Some(url) => {
                ensure_state_dir(self)?;
                Store::open_postgres(url, &self.state_dir).await?
            }
            None => Store::open(&self.state_file()).await?,
        };
        OPEN_STORES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(store.clone());
        Ok(store)
    }
}

/// Every store this process opened, closed by [`close_stores`] when the command is done.
static OPEN_STORES: std::sync::Mutex<Vec<Store>> = std::sync::Mutex::new(Vec::new());

/// Closes every store the command opened and waits for it: on SQLite the write-ahead log is
/// folded into the database file before the process exits, so a read-only copy of the state
/// made afterwards (opened immutable, without its WAL) holds every committed transaction.
/// Review finding: `agentd run` exited with its last commits only in the WAL, and a read-only
/// inspection of the state then found an empty database.
pub async fn close_stores() {
    let stores = std::mem::take(&mut *OPEN_STORES.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for store in stores {
        store.close().await;
    }
}

pub fn ensure_state_dir(paths: &Paths) -> Result<()> {
    // Private to this user (0700): it holds the keys and every tenant's state.
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&paths.state_dir)
        .with_context(|| format!("cannot create the state directory {}", paths.state_dir.display()))
}

pub fn open_authority(paths: &Paths) -> Result<TokenAuthority> {
    ensure_state_dir(paths)?;
    let authority = TokenAuthority::load_or_create(&paths.key_file(), TokenConfig::default())?;
    let Some(jwks_path) = &paths.jwks else {
        return Ok(authority);
    };
    let mut text = String::new();
    std::fs::File::open(jwks_path)
        .and_then(|file| file.take(MAX_JWKS_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read the JWKS {}", jwks_path.display()))?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        bail!("the JWKS {} is larger than {MAX_JWKS_BYTES} bytes", jwks_path.display());
    }
    let jwks = control_plane::identity::Jwks::parse(&text).with_context(|| format!("{}", jwks_path.display()))?;
    Ok(authority.with_jwks(jwks))
}

/// Largest JWKS document read, bytes (providers publish a few keys: a few KiB).
const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Reads `path`, or standard input for `-`.
///
/// At most [`MAX_INPUT_FILE_BYTES`] are read: a larger input is refused while it is read,
/// before anything is stored or parsed (a 100 MB input once took 974 MB RSS and landed in the
/// immutable run log before failing).
pub fn read_input(path: &Path) -> Result<String> {
    let (reader, what): (Box<dyn Read>, String) = if path == Path::new("-") {
        (Box::new(std::io::stdin()), "standard input".to_owned())
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read input file {}", path.display()))?;
        (Box::new(file), format!("input file {}", path.display()))
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what}"))?;
    if bytes.len() as u64 > MAX_INPUT_FILE_BYTES {
        bail!(
            "{what} is larger than {MAX_INPUT_FILE_BYTES} bytes (a skill takes at most {} bytes of input); nothing was stored",
            agent_runtime::MAX_INPUT_BYTES
        );
    }
    String::from_utf8(bytes).with_context(|| format!("{what} is not UTF-8 text"))
}

/// Reads an `agentd.invoke.v1` envelope from `path` (`-`: standard input), bounded as
/// [`read_input`] is.
pub fn read_envelope(path: &Path) -> Result<InvokeRequest> {
    let text = read_input(path)?;
    InvokeRequest::parse(&text).with_context(|| format!("input {}", path.display()))
}

/// Largest input envelope read, bytes: [`agent_runtime::MAX_INPUT_BYTES`] of input plus 64 KiB
/// for the envelope around it.
pub const MAX_INPUT_FILE_BYTES: u64 = agent_runtime::MAX_INPUT_BYTES as u64 + 64 * 1024;

/// The control plane over the state file opened read-only, for the audit commands: nothing is
/// created or written (a read-only copy works). No token is verified with it, so its token
/// authority is a throwaway one.
pub async fn open_read_only(paths: &Paths) -> Result<ControlPlane> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|error| anyhow::anyhow!("the random source failed: {error}"))?;
    let authority = TokenAuthority::from_secret(&secret, TokenConfig::default())?;
    let policy = load_policy(paths)?;
    // The error names the file and the cause once; no context repeats them. A server
    // database has no read-only mode of its own here: grant a read-only role for that.
    let store = match &paths.database {
        Some(_) => paths.open_store().await?,
        None => Store::open_read_only(&paths.state_file()).await?,
    };
    Ok(ControlPlane::new(authority, policy, store))
}

/// Whether opening the state failed only because it cannot be written.
fn is_read_only(error: &control_plane::StoreError) -> bool {
    match error {
        control_plane::StoreError::ReadOnly { .. } => true,
        control_plane::StoreError::Open { cause, .. } => is_read_only(cause),
        _ => false,
    }
}

/// The control plane's run timing from the environment: `AGENTD_LEASE_TTL_MS` (how long a
/// vanished owner's run waits before a recovery takes it over) and `AGENTD_RUN_DEADLINE_MS`.
fn with_run_timing(control_plane: ControlPlane) -> Result<ControlPlane> {
    let read = |name: &str| -> Result<Option<i64>> {
        std::env::var(name)
            .ok()
            .map(|text| {
                text.parse::<i64>()
                    .with_context(|| format!("{name}=`{text}` is not a number of ms"))
            })
            .transpose()
    };
    let mut control_plane = control_plane;
    if let Some(ttl) = read("AGENTD_LEASE_TTL_MS")? {
        control_plane = control_plane.with_lease_ttl_ms(ttl);
    }
    if let Some(deadline) = read("AGENTD_RUN_DEADLINE_MS")? {
        control_plane = control_plane.with_run_deadline_ms(deadline);
    }
    Ok(control_plane)
}

pub struct ControlPlaneApp {
    pub control_plane: ControlPlane,
}

impl ControlPlaneApp {
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        self.control_plane.authenticate(token).context("authentication failed")
    }
}

pub struct App {
    pub control_plane: ControlPlane,
    pub runtime: Runtime,
    /// What loading the plugin directory found: refusals and warnings, already printed.
    pub packages: agent_runtime::DirLoad,
}

impl App {
    /// Opens the control plane only: enough for approvals lists, denials and audit checks.
    pub async fn open_control_plane(paths: &Paths) -> Result<ControlPlaneApp> {
        let authority = open_authority(paths)?;
        let policy = load_policy(paths)?;
        let store = paths.open_store().await?;
        Ok(ControlPlaneApp {
            control_plane: with_run_timing(ControlPlane::new(authority, policy, store))?,
        })
    }

    /// Opens the control plane for commands that only read (`hitl list`, `runs list`, `runs
    /// show`): writable when it can be, else, when the state is read-only (a read-only copy,
    /// a read-only medium), read-only, so it can still be inspected.
    pub async fn open_control_plane_to_read(paths: &Paths) -> Result<ControlPlaneApp> {
        let store = match paths.open_store().await {
            Ok(store) => store,
            Err(error) if paths.database.is_none() && error.downcast_ref().is_some_and(is_read_only) => {
                Store::open_read_only(&paths.state_file()).await?
            }
            Err(error) => return Err(error),
        };
        let authority = open_authority(paths)?;
        let policy = load_policy(paths)?;
        Ok(ControlPlaneApp {
            control_plane: with_run_timing(ControlPlane::new(authority, policy, store))?,
        })
    }

    /// Opens the control plane and the runtime, loading every package under `paths.plugins`.
    pub async fn open(paths: &Paths) -> Result<Self> {
        Self::open_loading(paths, None).await
    }

    /// [`open`](Self::open), loading only the packages that can run `skills` (theirs and their
    /// fallbacks'): a command that runs one skill does not compile every other package.
    pub async fn open_for(paths: &Paths, skills: &[&str]) -> Result<Self> {
        Self::open_loading(paths, Some(skills)).await
    }

    /// [`open`](Self::open) for answering or resuming approval request `id` as `token`'s
    /// principal: loads only the packages of the skills of that request's run (and their
    /// fallbacks). When the request or its run cannot be read here, every package is loaded and
    /// the command itself reports what is wrong.
    pub async fn open_for_approval(paths: &Paths, token: &str, id: i64) -> Result<Self> {
        let ControlPlaneApp { control_plane } = Self::open_control_plane(paths).await?;
        let mut skills: Option<Vec<String>> = None;
        if let Ok(principal) = control_plane.authenticate(token)
            && let Ok(Some(request)) = control_plane.approval(&principal.tenant, id).await
            && let Ok(run) = control_plane.run(&principal.tenant, &request.run_id).await
        {
            let mut names: Vec<String> = run.steps.iter().map(|step| step.spec.skill.clone()).collect();
            names.push(request.skill.id.clone());
            names.sort();
            names.dedup();
            skills = Some(names);
        }
        let skills: Option<Vec<&str>> = skills.as_ref().map(|names| names.iter().map(String::as_str).collect());
        Self::with_runtime(paths, control_plane, skills.as_deref()).await
    }

    async fn open_loading(paths: &Paths, skills: Option<&[&str]>) -> Result<Self> {
        let ControlPlaneApp { control_plane } = Self::open_control_plane(paths).await?;
        Self::with_runtime(paths, control_plane, skills).await
    }

    async fn with_runtime(paths: &Paths, control_plane: ControlPlane, skills: Option<&[&str]>) -> Result<Self> {
        let runtime = Runtime::new(RuntimeConfig {
            workspace_root: Some(paths.workspace_root()),
            code_cache: Some(paths.state_dir.join("code-cache")),
            // With a shared database the skills' key-value store and effects journal live there
            // too, so a node on another host that takes a run over finds them (ADR 0016).
            kv_path: paths.database.is_none().then(|| paths.kv_file()),
            kv_database_url: paths.database.clone(),
            ..RuntimeConfig::default()
        })?;
        let packages = match skills {
            Some(skills) => runtime.load_dir_for(&paths.plugins, skills).await,
            None => runtime.load_dir(&paths.plugins).await,
        };
        let packages = packages.with_context(|| {
            format!(
                "no plugin packages at {}; build them with `cargo xtask build-plugins` or pass --plugins",
                paths.plugins.display()
            )
        })?;
        for error in &packages.refused {
            eprintln!("warning: skill package refused: {error}");
        }
        for warning in &packages.warnings {
            eprintln!("warning: {warning}");
        }
        tracing::debug!(
            loaded = packages.loaded.len(),
            refused = packages.refused.len(),
            skipped = packages.skipped.len(),
            "plugin packages"
        );
        Ok(App {
            control_plane,
            runtime,
            packages,
        })
    }

    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        self.control_plane.authenticate(token).context("authentication failed")
    }

    pub async fn run(&self, principal: &Principal, skill: &str, request: &InvokeRequest) -> Result<StepReport> {
        let outcome = agent_runtime::run_step(&self.runtime, &self.control_plane, principal, skill, request).await?;
        Ok(StepReport::from(outcome))
    }

    /// Runs a plan of several steps (see [`agent_runtime::run_plan`]).
    pub async fn run_plan(&self, principal: &Principal, steps: Vec<control_plane::StepSpec>) -> Result<StepReport> {
        let outcome = agent_runtime::run_plan(&self.runtime, &self.control_plane, principal, steps).await?;
        Ok(StepReport::from(outcome))
    }

    /// Resumes an approved step in the caller's tenant; governance runs again as the requester.
    pub async fn resume(&self, caller: &Principal, id: i64) -> Result<StepReport> {
        let outcome = agent_runtime::resume_approved(&self.runtime, &self.control_plane, &caller.tenant, id)
            .await
            .with_context(|| format!("cannot resume approval #{id}"))?;
        Ok(StepReport::from(outcome))
    }

    /// Records a reviewer's answer and, when it releases the step, resumes it: the library's
    /// approval flow ([`agent_runtime::answer_approval`]).
    pub async fn review(
        &self,
        reviewer: &Principal,
        id: i64,
        decision: ReviewDecisionKind,
        reason: Option<&str>,
        modified_request_json: Option<&str>,
    ) -> Result<(ApprovalRequest, Option<StepReport>)> {
        let answered = agent_runtime::answer_approval(
            &self.runtime,
            &self.control_plane,
            reviewer,
            id,
            decision,
            reason,
            modified_request_json,
        )
        .await?;
        Ok((answered.approval, answered.step.map(StepReport::from)))
    }
}

/// A step as the CLI shows it.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum StepReport {
    Completed {
        run_id: String,
        traceparent: String,
        report: agent_runtime::DispatchReport,
    },
    Failed {
        run_id: String,
        traceparent: String,
        retryable: bool,
        report: agent_runtime::DispatchReport,
    },
    Denied {
        run_id: String,
        decision: control_plane::Decision,
    },
    AwaitingApproval {
        run_id: String,
        approval_id: i64,
        reviewer_role: String,
    },
    Escalated {
        run_id: String,
        approval_id: i64,
        history: Vec<String>,
        report: agent_runtime::DispatchReport,
    },
}

impl StepReport {
    /// The `status` it serialises with: `completed`, `failed`, `denied`, `awaiting-approval`
    /// or `escalated`.
    pub fn status_name(&self) -> &'static str {
        match self {
            StepReport::Completed { .. } => "completed",
            StepReport::Failed { .. } => "failed",
            StepReport::Denied { .. } => "denied",
            StepReport::AwaitingApproval { .. } => "awaiting-approval",
            StepReport::Escalated { .. } => "escalated",
        }
    }

    /// The run the step belongs to.
    pub fn run_id(&self) -> &str {
        match self {
            StepReport::Completed { run_id, .. }
            | StepReport::Failed { run_id, .. }
            | StepReport::Denied { run_id, .. }
            | StepReport::AwaitingApproval { run_id, .. }
            | StepReport::Escalated { run_id, .. } => run_id,
        }
    }
}

impl From<StepOutcome> for StepReport {
    fn from(outcome: StepOutcome) -> Self {
        match outcome {
            StepOutcome::Dispatched { context, report, .. } => match report.outcome {
                Outcome::Completed { .. } => StepReport::Completed {
                    run_id: context.run_id,
                    traceparent: context.traceparent,
                    report,
                },
                _ => StepReport::Failed {
                    run_id: context.run_id,
                    traceparent: context.traceparent,
                    retryable: report.outcome.is_retryable(),
                    report,
                },
            },
            StepOutcome::Denied { context, decision } => StepReport::Denied {
                run_id: context.run_id,
                decision,
            },
            StepOutcome::AwaitingApproval { context, approval, .. } => StepReport::AwaitingApproval {
                run_id: context.run_id,
                approval_id: approval.id,
                reviewer_role: approval.reviewer_role.to_string(),
            },
            StepOutcome::Escalated {
                context,
                report,
                history,
                approval,
            } => StepReport::Escalated {
                run_id: context.run_id,
                approval_id: approval.id,
                history,
                report,
            },
        }
    }
}

pub fn print_step(report: &StepReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
        return;
    }
    match report {
        StepReport::Completed { run_id, report, .. } => {
            let Outcome::Completed { output } = &report.outcome else {
                return;
            };
            println!(
                "{} {} completed (run {run_id}): instantiate {} µs, execute {} µs, fuel {}, peak memory {} KiB",
                report.skill_id,
                report.skill_version,
                report.metrics.instantiate_us,
                report.metrics.execute_us,
                report.metrics.fuel_consumed,
                report.metrics.peak_memory_bytes / 1024
            );
            println!("{}", serde_json::to_string_pretty(output).unwrap_or_default());
        }
        StepReport::Failed {
            run_id,
            retryable,
            report,
            ..
        } => {
            let detail = serde_json::to_string(&report.outcome).unwrap_or_default();
            println!(
                "{} {} failed (run {run_id}): {} ({}) {detail}",
                report.skill_id,
                report.skill_version,
                report.outcome.name(),
                if *retryable { "retryable" } else { "not retryable" }
            );
            if let Outcome::Failed { failure } = &report.outcome {
                if let agent_runtime::RuntimeFailure::Trap {
                    output: Some(output), ..
                } = failure
                {
                    for (name, text, total) in [
                        ("stdout", &output.stdout, output.stdout_bytes),
                        ("stderr", &output.stderr, output.stderr_bytes),
                    ] {
                        if total > 0 {
                            println!("  guest {name} (last {} of {total} bytes):", text.len());
                            for line in text.lines() {
                                println!("    {line}");
                            }
                        }
                    }
                }
                if let Some(advice) = failure.advice() {
                    println!("  advice: {advice}");
                }
            }
        }
        StepReport::Denied { run_id, decision } => {
            if let Verdict::Deny { kind, reasons, .. } = &decision.verdict {
                println!("denied (run {run_id}, {kind:?}): {}", reasons.join("; "));
            }
        }
        StepReport::Escalated {
            run_id,
            approval_id,
            history,
            report,
        } => {
            println!(
                "{} {} kept failing (run {run_id}): {}; escalated to a human: request #{approval_id} \
                 (a reviewer's `agentd hitl approve {approval_id}` runs it again)",
                report.skill_id,
                report.skill_version,
                history.join("; ")
            );
        }
        StepReport::AwaitingApproval {
            run_id,
            approval_id,
            reviewer_role,
        } => {
            println!(
                "awaiting approval (run {run_id}): request #{approval_id} needs a {reviewer_role}; \
                 a {reviewer_role} runs `agentd hitl approve {approval_id}`"
            );
        }
    }
}
