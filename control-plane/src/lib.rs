//! agentd's control plane: it decides *what is allowed* and alone writes the audit trail.
//!
//! [`ControlPlane`] is the one door: authenticate, govern (decide and audit), request, review,
//! cancel, expire and consume approvals, record run events and dispatch outcomes, change
//! enforcement (admin only, audited), verify and export the audit log. Behind it:
//!
//! - values and pure rules, which read no clock and no store:
//!   [`identity`] (principals, roles, the [`TokenAuthority`] for JWTs), [`governance`] (the
//!   policy decision point: Cedar policies to a [`Verdict`]), [`risk`], [`autonomy`] (levels
//!   L1-L5, certificates, the demotion rule), [`hitl`] (approval requests and the rules that
//!   decide them), [`run`] (run events and `reduce`), [`audit`] (the typed audit vocabulary,
//!   the hash chain and its anchor, the PROV-O export), [`records`] (kernel records and the
//!   idempotency rule), [`trace`] (W3C trace context), [`clock`], [`keys`], [`error`];
//! - the storage interface (`storage`, crate-private): units of work over the tables, with a
//!   SQLite backend; the [`Store`] handle that [`ControlPlane::new`] takes;
//! - the control plane itself (`plane`), which applies the rules and stores their results with
//!   their audit entries in one unit of work.
//!
//! **Architecture invariant:** control-plane never depends on agent-runtime and never on
//! wasmtime; it knows skills only as [`plugin_abi::SkillSummary`] values.

pub mod audit;
pub mod autonomy;
pub mod clock;
pub mod error;
pub mod governance;
pub mod hitl;
pub mod identity;
pub mod keys;
mod migrate;
mod plane;
pub mod postgres_pool;
pub mod records;
pub mod risk;
pub mod run;
mod storage;
mod store;
pub mod trace;

pub use audit::{
    AuditEntry, AuditEvent, ChainVerification, DispatchDetail, DispatchMetrics, DispatchRecord, OutcomeKind,
    RejectedCandidate, SelectionRecord,
};
pub use autonomy::{
    AutonomyAssessment, AutonomyCertificate, AutonomyLevel, AutonomyLimits, Budgets, ErrorBudget, StepResult,
};
pub use clock::{Clock, ManualClock, SystemClock, now_ms};
pub use error::{MigrateError, StoreError};
pub use governance::{
    Decision, DenyKind, Obligation, PolicyEngine, PolicyError, Quorum, ReviewDecisionKind, RiskTier, Verdict,
};
pub use hitl::{ApprovalBinding, ApprovalError, ApprovalRequest, ApprovalStatus, NewApproval, Vote};
pub use identity::{IdentityError, Principal, Role, TokenAuthority, TokenConfig};
pub use migrate::{MigrationReport, migrate_sqlite_to_postgres};
pub use plane::{CancelError, ControlPlane, KernelEmitter, RECOVERY_JOB, RecoveryCandidate, StepStart};
pub use records::{ConnectorCall, Cost, CostStatus, EmitError, LlmCall, Record, Recorded};
pub use run::{
    Lease, RecoveryAction, RequestKey, RunCreation, RunError, RunEvent, RunEventDraft, RunEventPayload, RunRecord,
    RunState, RunStoreError, RunView, StepContext, StepSpec,
};
pub use store::{CommitStats, Durability, SCHEMA_VERSION, Store};
pub use trace::TraceContext;

pub use plane::AdminError;
