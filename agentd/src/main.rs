//! `agentd`: the command line that wires the control plane and the agent runtime together.
//!
//! `main` is the one place that maps errors to exit codes: 0 success, 1 error, 2 usage,
//! 3 denied by governance, 4 waiting for approval, 5 the skill or runtime failed.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI talks on stdout and stderr"
)]

mod app;
mod client;
mod demo;
mod serve;
mod skill;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use control_plane::audit::checkpoint::VerifierKey;
use control_plane::audit::proof::{CheckpointCheck, ConsistencyProof, InclusionProof};
use control_plane::{ApprovalRequest, ApprovalStatus, ChainVerification, ReviewDecisionKind, Role};

use crate::app::{App, Paths, StepReport, print_step};

/// agentd: run AI-agent skills as WebAssembly components, governed by policy and audited.
#[derive(Debug, Parser)]
#[command(name = "agentd", version, about, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    paths: PathArgs,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to a running `agentd serve` (e.g. `http://127.0.0.1:8080`) instead of the local
    /// state directory; for the `hitl list|approve|deny|modify` and `runs list|show|cancel`
    /// commands.
    #[arg(long, global = true, env = "AGENTD_SERVER")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct PathArgs {
    /// Directory holding the state file, signing key and workspaces.
    #[arg(long, global = true, env = "AGENTD_STATE_DIR", default_value = ".agentd")]
    state_dir: PathBuf,
    /// Directory of skill packages (built by `cargo xtask build-plugins`).
    #[arg(long, global = true, env = "AGENTD_PLUGINS", default_value = "target/plugins")]
    plugins: PathBuf,
    /// Cedar policy file [default: policies/default.cedar when it exists in the current
    /// directory, else the default policy built into agentd].
    #[arg(long, global = true, env = "AGENTD_POLICY")]
    policy: Option<PathBuf>,
    /// JSON Web Key Set of an external identity provider. Access tokens are then verified
    /// against its public keys only (EdDSA, ES256, RS256, chosen by `kid`) and this runtime
    /// issues none; without it, the state directory's HS256 key issues and verifies them.
    #[arg(long, global = true, env = "AGENTD_JWKS")]
    jwks: Option<PathBuf>,
    /// PostgreSQL URL (`postgres://user@host:port/database`) to keep the control plane's state
    /// in, shared by every agentd node given it; without it, `<state-dir>/state.db` (SQLite).
    /// The audit anchor and checkpoint keys stay in the state directory: give every node a copy.
    #[arg(long, global = true, env = "AGENTD_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct TokenArg {
    /// Bearer token (JWT); `agentd token issue` makes one. Prefer `AGENTD_TOKEN` or
    /// `--token-file`: a token on the command line shows in `ps`.
    #[arg(long, env = "AGENTD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token, or `-` for standard input.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

impl TokenArg {
    /// The token, from `--token`/`AGENTD_TOKEN` or read from `--token-file`.
    fn read(&self) -> Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = self
            .token_file
            .as_deref()
            .context("no token: pass --token-file, --token or AGENTD_TOKEN")?;
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin().take(64 * 1024))
                .context("cannot read the token from standard input")?
        } else {
            let file =
                std::fs::File::open(path).with_context(|| format!("cannot read the token file {}", path.display()))?;
            std::io::read_to_string(file.take(64 * 1024))
                .with_context(|| format!("cannot read the token file {}", path.display()))?
        };
        Ok(text.trim().to_owned())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Issue local tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run a skill: governance decides, then the runtime dispatches.
    Run {
        /// Skill id, e.g. `pii-redact`.
        skill: String,
        /// File holding an `agentd.invoke.v1` envelope, or `-` for standard input.
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Run a plan of several steps in order; a step's input may use an earlier step's output
    /// (`{"$from": "<step id>", "pointer": "/json/pointer"}`).
    RunPlan {
        /// File holding `{"steps": [{"step_id", "skill", "input"}, ...]}`, or `-` for standard input.
        #[arg(long)]
        plan: PathBuf,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Human-in-the-loop approvals.
    #[command(subcommand)]
    Hitl(HitlCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Runs, derived from their event logs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Skill packages.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Tools for skill authors.
    #[command(subcommand)]
    Skill(SkillCommand),
    /// Print the WIT contract (package `agentd:skill`) that skill components implement.
    Wit,
    /// Serve the HTTP API v1 and the reviewer page until SIGTERM (see /v1/openapi.json).
    Serve {
        /// Address to listen on; port 0 picks a free port (the bound address is printed).
        #[arg(long, env = "AGENTD_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Seconds in-flight requests may take to finish after SIGTERM.
        #[arg(long, default_value_t = 30)]
        grace_secs: u64,
        /// Requests per second each tenant may make.
        #[arg(long, default_value_t = std::num::NonZeroU32::new(200).expect("non-zero"))]
        rate_limit: std::num::NonZeroU32,
        /// Seconds for a request's head to arrive.
        #[arg(long, default_value_t = 10)]
        header_timeout_secs: u64,
        /// Seconds for a request's body to arrive.
        #[arg(long, default_value_t = 30)]
        body_timeout_secs: u64,
        /// Seconds between recovery passes.
        #[arg(long, default_value_t = 10)]
        recovery_secs: u64,
    },
    /// Copy a SQLite state into an empty PostgreSQL database (ADR 0016): every table, the
    /// audit log with its anchor and tree, the skills' key-value store and effects journal
    /// (`kv.db` beside the state file), and the log's keys (to the state directory, where
    /// `--database` nodes read them). Both sides are verified; a non-empty target is refused.
    Migrate {
        /// The state to copy, `sqlite:PATH` (read only; its keys are `PATH.audit-key` and
        /// `PATH.checkpoint-key`).
        #[arg(long, value_name = "sqlite:PATH")]
        from: String,
        /// The empty database to fill, `postgres://user@host:port/database`.
        #[arg(long, value_name = "postgres://...", hide_env_values = true)]
        to: String,
    },
    /// Print the HTTP API's OpenAPI 3.1 document.
    #[command(hide = true)]
    Openapi,
    /// Run the end-to-end demo on this machine's Debian changelogs.
    Demo {
        /// A text file to use instead of (or when there are no) changelogs.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Process at most this many changelogs.
        #[arg(long)]
        max_files: Option<usize>,
        /// Files redacted at once, each still its own governed step; default: 16 per core (a
        /// step mostly waits for the store, not a core).
        #[arg(long)]
        concurrency: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a token with the state directory's key (created on first use).
    Issue {
        /// Subject (the caller's name).
        #[arg(long)]
        sub: String,
        /// Role: agent, reviewer or admin; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum HitlCommand {
    /// List approval requests in your tenant.
    List {
        /// Only requests in this status (pending, approved, denied, modified, expired, cancelled,
        /// consumed).
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Approve a request; once the quorum is reached the waiting step runs.
    Approve {
        /// Request id.
        id: i64,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Resume the step of an approved request that has not run yet (e.g. after a crash
    /// between the decision and the dispatch).
    Resume {
        /// Request id.
        id: i64,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: i64,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Answer a request with an edited input (an `agentd.invoke.v1` envelope); the edited step
    /// is governed again and may run, be denied, or wait for a new approval.
    Modify {
        /// Request id.
        id: i64,
        /// File holding the edited envelope, or `-` for standard input.
        #[arg(long)]
        input: PathBuf,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Withdraw a pending request (its requester or an admin).
    Cancel {
        /// Request id.
        id: i64,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Export a run's provenance as W3C PROV-O JSON-LD (from the audit log of your tenant).
    Provenance {
        /// Run id.
        run_id: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Check the log: the hash chain (naming the first broken entry), its anchor and its Merkle
    /// tree; with --checkpoint, also that the log still extends a checkpoint kept elsewhere.
    /// Opens the state read-only: it works on a read-only copy and writes nothing.
    Verify {
        /// A checkpoint (signed note) from `agentd audit checkpoint`, kept outside the state
        /// directory.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The verifier key to check the checkpoint with (`agentd audit verifier-key`, kept
        /// with the checkpoint); without it the key beside the state is used, which proves
        /// less (someone who can write the state directory can replace it).
        #[arg(long, requires = "checkpoint")]
        key: Option<String>,
    },
    /// Print the log's signed tree head: a C2SP checkpoint (size, RFC 9162 root, Ed25519
    /// signature) to keep outside the state directory or hand to a witness.
    Checkpoint,
    /// Print the checkpoints' verifier key (`<origin>+<key id>+<base64 key>`).
    VerifierKey,
    /// Print a proof that checks without the database (`agentd audit check-proof`): of one
    /// entry's inclusion in the current tree, or of the current tree's consistency with an
    /// older checkpoint.
    Prove {
        /// The entry (its sequence number, from 1).
        #[arg(long, conflicts_with = "from", required_unless_present = "from")]
        entry: Option<i64>,
        /// An older checkpoint file.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Check a proof from `agentd audit prove` without the database.
    CheckProof {
        /// The proof (JSON), or `-` for standard input.
        proof: PathBuf,
        /// The log's verifier key.
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// List your tenant's runs with their owner, lease and deadline.
    List {
        #[command(flatten)]
        token: TokenArg,
    },
    /// Drive on every run that needs it: runs whose owner vanished (lease lapsed), runs
    /// nobody works on, approvals decided but not resumed, expired approvals, runs past their
    /// deadline. Long-lived processes do this by themselves.
    Recover,
    /// Cancel a run (its requester or an admin): its owner is fenced out, a pending approval
    /// it waits on is cancelled, and the cancellation is audited.
    Cancel {
        /// Run id.
        run_id: String,
        /// Why.
        #[arg(long, default_value = "cancelled")]
        reason: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Show a run of your tenant: its state as reduced from its events, and the events.
    Show {
        /// Run id (as printed by `agentd run`).
        run_id: String,
        #[command(flatten)]
        token: TokenArg,
    },
}

#[derive(Debug, Subcommand)]
enum SkillCommand {
    /// Start a skill: writes DIR/NAME with a word-frequency skill in the language chosen, the
    /// WIT contract, a source `skill.toml` with that language's default limits, and `build.sh`
    /// (pinned tool versions; it ends with `agentd skill pack`).
    New {
        /// The skill id (kebab-case), also the directory's name.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: skill::Lang,
        /// Where to create the skill's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Package a built component: pre-initialise it when it exports `wizer-initialize` (its
    /// initialisation snapshotted, so fresh instances start ready), then write it with its
    /// `skill.toml` and SHA-256 into a package directory that `--plugins` can load.
    Pack {
        /// The skill's directory, holding its source `skill.toml`.
        dir: PathBuf,
        /// The built component; default: the manifest's `component`, relative to DIR.
        #[arg(long)]
        component: Option<PathBuf>,
        /// The package directory to write; default: DIR/package.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Package the component as it is, without running `wizer-initialize`.
        #[arg(long)]
        no_preinit: bool,
    },
    /// Run every load check on a package directory (manifest, digest, component world,
    /// compile, link, `describe` against the manifest) and print what `describe` reports,
    /// with the input and output JSON Schemas; exits 5 on any failure.
    Check {
        /// The package directory (holding `skill.toml` and the component).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the verified skill packages.
    List,
}

/// What a command asks `main` to exit with.
enum Exit {
    Success,
    Denied,
    AwaitingApproval,
    Failed,
    /// No loaded package provides the skill asked for (the fail-closed denial is audited).
    UnknownSkill,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AGENTD_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log piped to a file or a collector stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let result = execute(cli).await;
        app::close_stores().await;
        result
    });
    match result {
        Ok(Exit::Success) => ExitCode::SUCCESS,
        Ok(Exit::Denied) => ExitCode::from(3),
        Ok(Exit::AwaitingApproval) => ExitCode::from(4),
        Ok(Exit::Failed) => ExitCode::from(5),
        Ok(Exit::UnknownSkill) => ExitCode::from(6),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `expires in 23h 59m`, or `expired` once the stored expiry has passed.
fn expiry_text(expires_at_ms: i64, now_ms: i64) -> String {
    let seconds = (expires_at_ms - now_ms) / 1_000;
    if seconds <= 0 {
        return "expired".to_owned();
    }
    let (hours, minutes) = (seconds / 3_600, (seconds % 3_600) / 60);
    if hours > 0 {
        format!("expires in {hours}h {minutes}m")
    } else {
        format!("expires in {minutes}m {}s", seconds % 60)
    }
}

/// Prints the outcome of a review answer and, if the step resumed, the step.
fn print_review(decided: &ApprovalRequest, step: Option<&StepReport>, reviewer: &str, json: bool) -> Exit {
    match step {
        Some(step) => {
            if !json {
                println!("approval request #{} {} by {reviewer}", decided.id, decided.status);
            }
            print_step(step, json);
            step_exit(step)
        }
        None => {
            if json {
                println!("{}", serde_json::to_string_pretty(decided).unwrap_or_default());
            } else if decided.status == ApprovalStatus::Pending {
                println!(
                    "answer recorded on approval request #{}: {} of {} approvals, {} of {} denials; still pending",
                    decided.id,
                    decided.approvals(),
                    decided.quorum.required,
                    decided.denials(),
                    decided.quorum.deny_threshold
                );
            } else {
                println!(
                    "approval request #{} {} by {reviewer}; the step will not run",
                    decided.id, decided.status
                );
            }
            Exit::Success
        }
    }
}

/// A skill's capabilities as `a, b`, for listings.
fn capability_list(summary: &plugin_abi::SkillSummary) -> String {
    summary
        .capabilities
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn step_exit(report: &StepReport) -> Exit {
    match report {
        StepReport::Completed { .. } => Exit::Success,
        StepReport::Failed { .. } => Exit::Failed,
        StepReport::Denied { .. } => Exit::Denied,
        StepReport::AwaitingApproval { .. } | StepReport::Escalated { .. } => Exit::AwaitingApproval,
    }
}

async fn execute(cli: Cli) -> Result<Exit> {
    let paths = Paths {
        state_dir: cli.paths.state_dir,
        plugins: cli.paths.plugins,
        policy: cli.paths.policy,
        jwks: cli.paths.jwks,
        database: cli.paths.database,
    };
    let json = cli.json;
    if let Some(server) = &cli.server {
        return execute_remote(server, cli.command, json).await;
    }
    match cli.command {
        Command::Token(TokenCommand::Issue {
            sub,
            roles,
            tenant,
            ttl_secs,
        }) => {
            let authority = app::open_authority(&paths)?;
            let roles = roles
                .iter()
                .map(|role| role.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()
                .context("--role")?;
            let token = authority.issue(&sub, &tenant, &roles, Duration::from_secs(ttl_secs))?;
            if json {
                println!("{}", serde_json::json!({ "token": token, "expires_in_secs": ttl_secs }));
            } else {
                println!("{token}");
            }
            Ok(Exit::Success)
        }
        Command::Run { skill, input, token } => {
            let request = app::read_envelope(&input)?;
            let app = App::open_for(&paths, &[skill.as_str()]).await?;
            let principal = app.authenticate(&token.read()?)?;
            let report = app.run(&principal, &skill, &request).await?;
            print_step(&report, json);
            if matches!(report, StepReport::Denied { .. }) && app.runtime.lookup(&skill).is_none() {
                let packages = app.packages.loaded.len() + app.packages.refused.len() + app.packages.skipped.len();
                eprintln!(
                    "error: no loaded package provides skill `{skill}` (none of the {} in {} names it; {} refused, see the warnings above)",
                    match packages {
                        1 => "1 package".to_owned(),
                        n => format!("{n} packages"),
                    },
                    paths.plugins.display(),
                    app.packages.refused.len()
                );
                return Ok(Exit::UnknownSkill);
            }
            Ok(step_exit(&report))
        }
        Command::RunPlan { plan, token } => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Plan {
                steps: Vec<control_plane::StepSpec>,
            }
            let text = app::read_input(&plan)?;
            let parsed: Plan =
                serde_json::from_str(&text).with_context(|| format!("plan {} is not a valid plan", plan.display()))?;
            let skills: Vec<&str> = parsed.steps.iter().map(|step| step.skill.as_str()).collect();
            let app = App::open_for(&paths, &skills).await?;
            let principal = app.authenticate(&token.read()?)?;
            let report = app.run_plan(&principal, parsed.steps).await?;
            print_step(&report, json);
            Ok(step_exit(&report))
        }
        Command::Hitl(HitlCommand::List { status, token }) => {
            let status = status
                .map(|text| text.parse::<ApprovalStatus>())
                .transpose()
                .context("--status")?;
            let app = App::open_control_plane_to_read(&paths).await?;
            let principal = app.authenticate(&token.read()?)?;
            let requests = app.control_plane.list_approvals(&principal.tenant, status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&requests)?);
            } else if requests.is_empty() {
                println!("no approval requests in tenant `{}`", principal.tenant);
            } else {
                for request in requests {
                    println!(
                        "#{:<4} {:<9} {} {} requested by {} (run {}, input {}), needs {} of {} {}s ({} so far), {}",
                        request.id,
                        request.status,
                        request.skill.id,
                        request.skill.version,
                        request.requester,
                        request.run_id,
                        &request.input_digest[..19.min(request.input_digest.len())],
                        request.quorum.required,
                        request.quorum.required,
                        request.reviewer_role,
                        request.approvals(),
                        expiry_text(request.expires_at_ms, control_plane::now_ms()),
                    );
                }
            }
            Ok(Exit::Success)
        }
        Command::Hitl(HitlCommand::Approve { id, reason, token }) => {
            let token = token.read()?;
            let app = App::open_for_approval(&paths, &token, id).await?;
            let reviewer = app.authenticate(&token)?;
            let (decided, step) = app
                .review(&reviewer, id, ReviewDecisionKind::Approve, reason.as_deref(), None)
                .await?;
            Ok(print_review(&decided, step.as_ref(), &reviewer.subject, json))
        }
        Command::Hitl(HitlCommand::Modify {
            id,
            input,
            reason,
            token,
        }) => {
            let edited = serde_json::to_string(&app::read_envelope(&input)?)?;
            let token = token.read()?;
            let app = App::open_for_approval(&paths, &token, id).await?;
            let reviewer = app.authenticate(&token)?;
            let (decided, step) = app
                .review(
                    &reviewer,
                    id,
                    ReviewDecisionKind::Modify,
                    reason.as_deref(),
                    Some(&edited),
                )
                .await?;
            Ok(print_review(&decided, step.as_ref(), &reviewer.subject, json))
        }
        Command::Hitl(HitlCommand::Cancel { id, reason, token }) => {
            let app = App::open_control_plane(&paths).await?;
            let caller = app.authenticate(&token.read()?)?;
            let cancelled = agent_runtime::cancel_approval(&app.control_plane, &caller, id, reason.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cancelled)?);
            } else {
                println!("approval request #{id} cancelled by {}", caller.subject);
            }
            Ok(Exit::Success)
        }
        Command::Hitl(HitlCommand::Resume { id, token }) => {
            let token = token.read()?;
            let app = App::open_for_approval(&paths, &token, id).await?;
            let caller = app.authenticate(&token)?;
            let step = app.resume(&caller, id).await?;
            print_step(&step, json);
            Ok(step_exit(&step))
        }
        Command::Hitl(HitlCommand::Deny { id, reason, token }) => {
            let token = token.read()?;
            let app = App::open_for_approval(&paths, &token, id).await?;
            let reviewer = app.authenticate(&token)?;
            let (decided, step) = app
                .review(&reviewer, id, ReviewDecisionKind::Deny, reason.as_deref(), None)
                .await?;
            Ok(print_review(&decided, step.as_ref(), &reviewer.subject, json))
        }
        Command::Audit(AuditCommand::Provenance { run_id, token }) => {
            let app = App::open_control_plane(&paths).await?;
            let caller = app.authenticate(&token.read()?)?;
            let document = app.control_plane.provenance(&caller.tenant, &run_id).await?;
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(Exit::Success)
        }
        Command::Audit(AuditCommand::Verify { checkpoint, key }) => {
            let control_plane = app::open_read_only(&paths).await?;
            let (local, against) = match checkpoint {
                None => (control_plane.verify_audit().await?, None),
                Some(path) => {
                    let note = app::read_input(&path)?;
                    let verifier = match key {
                        Some(key) => key.parse().context("--key")?,
                        None => control_plane
                            .checkpoint_verifier()
                            .await
                            .context("no --key given and the local verifier key is unavailable")?,
                    };
                    let (local, against) = control_plane.verify_audit_against(&note, &verifier).await?;
                    (local, Some(against))
                }
            };
            if json {
                let mut value = serde_json::to_value(&local)?;
                if let Some(against) = &against {
                    value["checkpoint"] = serde_json::to_value(against)?;
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            let mut problems = Vec::new();
            match &local {
                ChainVerification::Intact { entries, head, root } => {
                    if !json {
                        println!("audit log intact: {entries} entries, head {head}, Merkle root {root}");
                    }
                }
                ChainVerification::Broken {
                    seq,
                    reason,
                    verified_before,
                } => problems.push(format!(
                    "audit log broken at entry {seq} ({verified_before} entries before it verify): {reason}"
                )),
            }
            match &against {
                Some(CheckpointCheck::Extends { size }) if !json => {
                    println!("the log extends the checkpoint of {size} entries unchanged");
                }
                None | Some(CheckpointCheck::Extends { .. }) => {}
                Some(CheckpointCheck::Diverged { reason }) => {
                    problems.push(format!("the log does not extend the checkpoint: {reason}"));
                }
                Some(CheckpointCheck::Refused(error)) => problems.push(format!("checkpoint refused: {error}")),
            }
            if problems.is_empty() {
                Ok(Exit::Success)
            } else {
                bail!("{}", problems.join("; "))
            }
        }
        Command::Audit(AuditCommand::Checkpoint) => {
            let control_plane = app::open_read_only(&paths).await?;
            let signed = control_plane.checkpoint().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&signed)?);
            } else {
                print!("{}", signed.note);
            }
            Ok(Exit::Success)
        }
        Command::Audit(AuditCommand::VerifierKey) => {
            let control_plane = app::open_read_only(&paths).await?;
            println!("{}", control_plane.checkpoint_verifier().await?);
            Ok(Exit::Success)
        }
        Command::Audit(AuditCommand::Prove { entry, from }) => {
            let control_plane = app::open_read_only(&paths).await?;
            let proof = match (entry, from) {
                (Some(seq), _) => serde_json::to_value(control_plane.prove_inclusion(seq).await?)?,
                (None, Some(path)) => {
                    let old = app::read_input(&path)?;
                    serde_json::to_value(control_plane.prove_consistency(&old).await?)?
                }
                (None, None) => bail!("give --entry N or --from CHECKPOINT"),
            };
            println!("{}", serde_json::to_string_pretty(&proof)?);
            Ok(Exit::Success)
        }
        Command::Audit(AuditCommand::CheckProof { proof, key }) => {
            let text = app::read_input(&proof)?;
            let verifier: VerifierKey = key.parse().context("--key")?;
            let value: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("proof {} is not JSON", proof.display()))?;
            let said = if value.get("entry").is_some() {
                let proof: InclusionProof = serde_json::from_value(value).context("not an inclusion proof")?;
                let checkpoint = proof.check(&verifier)?;
                format!(
                    "entry {} ({}) is in the log `{}` of {} entries",
                    proof.entry.seq, proof.entry.kind, checkpoint.origin, checkpoint.size
                )
            } else {
                let proof: ConsistencyProof = serde_json::from_value(value).context("not a consistency proof")?;
                let (old, new) = proof.check(&verifier)?;
                format!(
                    "the log `{}` of {} entries extends its checkpoint of {} entries unchanged",
                    new.origin, new.size, old.size
                )
            };
            if json {
                println!("{}", serde_json::json!({ "verified": true, "statement": said }));
            } else {
                println!("proof verified: {said}");
            }
            Ok(Exit::Success)
        }
        Command::Runs(RunsCommand::List { token }) => {
            let app = App::open_control_plane_to_read(&paths).await?;
            let caller = app.authenticate(&token.read()?)?;
            let records = app.control_plane.run_records(&caller.tenant).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else if records.is_empty() {
                println!("no runs in tenant `{}`", caller.tenant);
            } else {
                for record in records {
                    println!(
                        "{} {:<17} owner {} (token {}), {}",
                        record.run_id,
                        record.state,
                        record.owner.as_deref().unwrap_or("none"),
                        record.fencing_token,
                        record
                            .approval_id
                            .filter(|_| record.state.is_waiting())
                            .map_or_else(String::new, |id| format!("waits on approval #{id}")),
                    );
                }
            }
            Ok(Exit::Success)
        }
        Command::Runs(RunsCommand::Recover) => {
            let app = App::open(&paths).await?;
            let report =
                agent_runtime::recover(&app.runtime, &app.control_plane, agent_runtime::recovery::PASS_LIMIT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.is_empty() {
                println!("no run needed recovery");
            } else {
                for recovered in &report {
                    println!(
                        "{}: {} -> {}",
                        recovered.run_id,
                        serde_json::to_value(&recovered.action)?["action"]
                            .as_str()
                            .unwrap_or("?"),
                        recovered.result
                    );
                }
            }
            if report.iter().any(|recovered| recovered.result.starts_with("failed")) {
                return Ok(Exit::Failed);
            }
            Ok(Exit::Success)
        }
        Command::Runs(RunsCommand::Cancel { run_id, reason, token }) => {
            let app = App::open_control_plane(&paths).await?;
            let caller = app.authenticate(&token.read()?)?;
            let view = app
                .control_plane
                .cancel_run(&caller, &run_id, &reason)
                .await
                .with_context(|| format!("cannot cancel run `{run_id}`"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("run {run_id} cancelled by {}", caller.subject);
            }
            Ok(Exit::Success)
        }
        Command::Runs(RunsCommand::Show { run_id, token }) => {
            let app = App::open_control_plane_to_read(&paths).await?;
            let caller = app.authenticate(&token.read()?)?;
            let view = match app.control_plane.run(&caller.tenant, &run_id).await {
                Ok(view) => view,
                Err(control_plane::RunStoreError::Run(control_plane::RunError::NotFound(_))) => {
                    bail!("run `{run_id}` does not exist in tenant `{}`", caller.tenant)
                }
                Err(error) => return Err(error).context(format!("run `{run_id}`")),
            };
            let events = app.control_plane.run_events(&caller.tenant, &run_id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "run": view, "events": events }))?
                );
            } else {
                println!(
                    "run {} ({}): {}, {} events",
                    view.run_id, view.principal, view.state, view.events
                );
                for step in &view.steps {
                    println!(
                        "  step {} ({}): {}{}",
                        step.spec.step_id,
                        step.spec.skill,
                        step.state,
                        step.approval_id
                            .map(|id| format!(", approval #{id}"))
                            .unwrap_or_default()
                    );
                }
                for event in &events {
                    println!("  [{}] {} on {}", event.lamport, event.payload.name(), event.node_id);
                }
            }
            Ok(Exit::Success)
        }
        Command::Skill(SkillCommand::New { name, lang, dir }) => {
            let created = skill::new(&dir, &name, lang)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("created {} ({:?} skill):", created.dir.display(), created.lang);
                for file in &created.files {
                    println!("  {}", file.display());
                }
                println!(
                    "next: {}/build.sh, then `agentd skill check {}/package`",
                    created.dir.display(),
                    created.dir.display()
                );
            }
            Ok(Exit::Success)
        }
        Command::Skill(SkillCommand::Pack {
            dir,
            component,
            out,
            no_preinit,
        }) => {
            let packed = skill::pack(&dir, component.as_deref(), out.as_deref(), !no_preinit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&packed)?);
            } else {
                println!(
                    "packaged {} ({} bytes{}) -> {}",
                    packed.sha256,
                    packed.packaged_bytes,
                    if packed.preinitialized {
                        format!(
                            "; pre-initialised in {} ms, {} fuel, from {} bytes",
                            packed.init_ms, packed.init_fuel, packed.input_bytes
                        )
                    } else {
                        String::new()
                    },
                    packed.package.display()
                );
            }
            Ok(Exit::Success)
        }
        Command::Skill(SkillCommand::Check { dir }) => match skill::check(&dir).await {
            Ok(checked) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&checked)?);
                } else {
                    println!(
                        "ok: {} {} ({}), capabilities [{}], cpu {}, {}; compiled in {} ms",
                        checked.summary.id,
                        checked.summary.version,
                        checked.summary.side_effect,
                        capability_list(&checked.summary),
                        checked.summary.cpu_metering,
                        checked.summary.digest,
                        checked.compile_us / 1_000
                    );
                    println!(
                        "input schema:\n{}",
                        serde_json::to_string_pretty(&checked.input_schema)?
                    );
                    println!(
                        "output schema:\n{}",
                        serde_json::to_string_pretty(&checked.output_schema)?
                    );
                }
                Ok(Exit::Success)
            }
            Err(error) => {
                eprintln!("error: {} failed a load check: {error:#}", dir.display());
                Ok(Exit::Failed)
            }
        },
        Command::Wit => {
            print!("{}", plugin_abi::WIT);
            Ok(Exit::Success)
        }
        Command::Plugins(PluginsCommand::List) => {
            let app = App::open(&paths).await?;
            if json {
                let skills = app.runtime.skills();
                let skills: Vec<_> = skills
                    .iter()
                    .map(|skill| {
                        serde_json::json!({
                            "summary": &skill.summary,
                            "limits": &skill.manifest.limits,
                            "load": &skill.load,
                            "package_dir": &skill.package_dir,
                            "input_schema": skill.input_schema().value(),
                            "output_schema": skill.output_schema().value(),
                        })
                    })
                    .collect();
                let refused: Vec<_> = app
                    .packages
                    .refused
                    .iter()
                    .map(|error| serde_json::json!({ "reason": error.to_string() }))
                    .collect();
                let warnings: Vec<String> = app.packages.warnings.iter().map(ToString::to_string).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "skills": skills, "refused": refused, "warnings": warnings })
                    )?
                );
            } else {
                for skill in app.runtime.skills() {
                    println!(
                        "{:<16} {:<8} {:<10} caps [{}]  memory {} MiB, fuel {}, deadline {} ms  {}  ({}, {} µs)",
                        skill.summary.id,
                        skill.summary.version,
                        skill.summary.side_effect,
                        capability_list(&skill.summary),
                        skill.manifest.limits.memory_bytes / (1024 * 1024),
                        skill.manifest.limits.fuel,
                        skill.manifest.limits.deadline_ms,
                        skill.summary.digest,
                        match &skill.load.outcome {
                            agent_runtime::cache::CacheOutcome::Disabled => "compiled".to_owned(),
                            agent_runtime::cache::CacheOutcome::Miss => "compiled, cached".to_owned(),
                            agent_runtime::cache::CacheOutcome::Hit => "from cache".to_owned(),
                            agent_runtime::cache::CacheOutcome::Rejected { reason } =>
                                format!("cache entry rejected ({reason}), recompiled"),
                        },
                        skill.load.load_us
                    );
                }
            }
            // Refusals were printed (stderr); a listing that hides a refused package must not
            // pass a CI step.
            Ok(if app.packages.refused.is_empty() {
                Exit::Success
            } else {
                Exit::Failed
            })
        }
        Command::Serve {
            listen,
            grace_secs,
            rate_limit,
            header_timeout_secs,
            body_timeout_secs,
            recovery_secs,
        } => {
            let options = serve::ServeOptions {
                listen,
                grace: Duration::from_secs(grace_secs),
                rate_per_second: rate_limit,
                header_timeout: Duration::from_secs(header_timeout_secs),
                body_timeout: Duration::from_secs(body_timeout_secs),
                recovery_period: Duration::from_secs(recovery_secs.max(1)),
            };
            serve::run(&paths, options).await?;
            Ok(Exit::Success)
        }
        Command::Migrate { from, to } => {
            let source = from
                .strip_prefix("sqlite:")
                .filter(|path| !path.is_empty())
                .with_context(|| format!("--from `{from}` is not `sqlite:PATH`"))?;
            if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
                bail!("--to must be a PostgreSQL URL, `postgres://user@host:port/database`");
            }
            // Private (0700), as every command makes it: the keys go there.
            app::ensure_state_dir(&paths)?;
            // The skills' key-value store and effects journal live beside the state file
            // (`kv.db`, as every command lays a state directory out); a state whose skills
            // never wrote one has none.
            let skill_store = Path::new(source).with_file_name("kv.db");
            let skill_store = skill_store.is_file().then_some(skill_store);
            let report = control_plane::migrate_sqlite_to_postgres(
                Path::new(source),
                skill_store.as_deref(),
                &to,
                &paths.state_dir,
            )
            .await
            .with_context(|| format!("cannot migrate {source}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("copied {} to {}:", report.source, report.target);
                for (table, rows) in &report.tables {
                    println!("  {table:<22} {rows:>9} rows");
                }
                println!(
                    "audit log verified on both sides: {} entries, head {}, Merkle root {}",
                    report.audit_entries, report.audit_head, report.merkle_root
                );
                println!(
                    "keys: {}/postgres.audit-key and postgres.checkpoint-key; give every node a copy",
                    report.key_dir
                );
            }
            Ok(Exit::Success)
        }
        Command::Openapi => {
            print!("{}", serve::api::openapi_json());
            Ok(Exit::Success)
        }
        Command::Demo {
            input,
            max_files,
            concurrency,
        } => {
            demo::run(&paths, input.as_deref(), max_files, concurrency, json).await?;
            Ok(Exit::Success)
        }
    }
}

/// The commands that can talk to a server (`--server`), through its HTTP API.
async fn execute_remote(server: &str, command: Command, json: bool) -> Result<Exit> {
    let print = |value: &serde_json::Value| println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    let vote =
        async |id: i64, decision: &str, reason: Option<String>, input: Option<serde_json::Value>, token: TokenArg| {
            let remote = client::Remote::new(server, token.read()?)?;
            let answer = remote.vote(id, decision, reason.as_deref(), input).await?;
            let approval = &answer["approval"];
            if json {
                print(&answer);
            } else {
                println!(
                    "approval request #{id} is {}",
                    approval["status"].as_str().unwrap_or("?")
                );
            }
            Ok(match answer["step"]["status"].as_str() {
                None | Some("completed") => {
                    if !json && let Some(run_id) = answer["step"]["run_id"].as_str() {
                        println!("run {run_id}: the step completed");
                    }
                    Exit::Success
                }
                Some("denied") => Exit::Denied,
                Some("awaiting-approval" | "escalated") => Exit::AwaitingApproval,
                Some(_) => Exit::Failed,
            })
        };
    match command {
        Command::Hitl(HitlCommand::List { status, token }) => {
            let remote = client::Remote::new(server, token.read()?)?;
            let requests = remote.list_approvals(status.as_deref()).await?;
            if json {
                print(&requests);
            } else {
                for request in requests.as_array().into_iter().flatten() {
                    println!(
                        "#{:<4} {:<9} {} {} requested by {} (run {})",
                        request["id"],
                        request["status"].as_str().unwrap_or("?"),
                        request["skill"]["id"].as_str().unwrap_or("?"),
                        request["skill"]["version"].as_str().unwrap_or("?"),
                        request["requester"].as_str().unwrap_or("?"),
                        request["run_id"].as_str().unwrap_or("?"),
                    );
                }
            }
            Ok(Exit::Success)
        }
        Command::Hitl(HitlCommand::Approve { id, reason, token }) => vote(id, "approve", reason, None, token).await,
        Command::Hitl(HitlCommand::Deny { id, reason, token }) => vote(id, "deny", reason, None, token).await,
        Command::Hitl(HitlCommand::Modify {
            id,
            input,
            reason,
            token,
        }) => {
            let edited = app::read_envelope(&input)?;
            vote(
                id,
                "modify",
                reason,
                Some(serde_json::Value::Object(edited.input)),
                token,
            )
            .await
        }
        Command::Runs(RunsCommand::List { token }) => {
            let remote = client::Remote::new(server, token.read()?)?;
            let records = remote.runs().await?;
            if json {
                print(&records);
            } else {
                for record in records.as_array().into_iter().flatten() {
                    println!(
                        "{} {:<17} owner {}",
                        record["run_id"].as_str().unwrap_or("?"),
                        record["state"].as_str().unwrap_or("?"),
                        record["owner"].as_str().unwrap_or("none"),
                    );
                }
            }
            Ok(Exit::Success)
        }
        Command::Runs(RunsCommand::Show { run_id, token }) => {
            let remote = client::Remote::new(server, token.read()?)?;
            let detail = remote.run(&run_id).await?;
            if json {
                print(&detail);
            } else {
                let run = &detail["run"];
                println!(
                    "run {} ({}): {}, {} events",
                    run_id,
                    run["principal"].as_str().unwrap_or("?"),
                    run["state"].as_str().unwrap_or("?"),
                    run["events"]
                );
                for step in run["steps"].as_array().into_iter().flatten() {
                    println!(
                        "  step {} ({}): {}",
                        step["spec"]["step_id"].as_str().unwrap_or("?"),
                        step["spec"]["skill"].as_str().unwrap_or("?"),
                        step["state"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(Exit::Success)
        }
        Command::Runs(RunsCommand::Cancel { run_id, reason, token }) => {
            let remote = client::Remote::new(server, token.read()?)?;
            let view = remote.cancel_run(&run_id, &reason).await?;
            if json {
                print(&view);
            } else {
                println!("run {run_id} cancelled");
            }
            Ok(Exit::Success)
        }
        _ => bail!(
            "--server works with `hitl list|approve|deny|modify` and `runs list|show|cancel`; \
             run other commands without it"
        ),
    }
}
