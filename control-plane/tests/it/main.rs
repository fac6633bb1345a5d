//! control-plane integration tests, through the one door (`ControlPlane`): approvals, the audit
//! chain, runs, records, autonomy, schema migration and crash safety.

#![allow(missing_docs, reason = "test helpers are not public API")]

mod approvals;
mod audit;
mod autonomy;
mod emitter;
mod jwks;
mod migration;
mod postgres;
mod properties;
mod restart;
mod runs;
mod schemas;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use control_plane::{
    ApprovalBinding, ControlPlane, ManualClock, NewApproval, PolicyEngine, Principal, Quorum, ReviewDecisionKind, Role,
    Store, TokenAuthority, TokenConfig,
};
use plugin_abi::{SideEffect, SkillSummary};

/// The default policy.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.cedar");

/// Lets every principal review, so that the approval rules themselves (not policy) decide who
/// may answer.
pub const ANYONE_REVIEWS: &str =
    "@id(\"anyone-reviews\")\npermit(principal, action == Agentd::Action::\"review\", resource);\n";

/// The database a test's control plane keeps its state in.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A fresh schema of this PostgreSQL database (a URL).
    Postgres(String),
}

impl Backend {
    /// PostgreSQL when `AGENTD_TEST_STORE=postgres` and `AGENTD_TEST_DATABASE_URL` is set (as
    /// `cargo xtask test` does for its second pass over this suite), else SQLite.
    pub fn from_env() -> Self {
        match (
            std::env::var("AGENTD_TEST_STORE"),
            std::env::var("AGENTD_TEST_DATABASE_URL"),
        ) {
            (Ok(store), Ok(url)) if store == "postgres" => Backend::Postgres(url),
            _ => Backend::Sqlite,
        }
    }
}

/// A control plane over a fresh state, its clock set to [`NOW`].
pub struct Plane {
    /// Keeps the state directory alive (keys, and the SQLite file).
    pub dir: tempfile::TempDir,
    /// The control plane.
    pub control: Arc<ControlPlane>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// On PostgreSQL: the test's schema, dropped with the plane.
    pub schema: Option<Schema>,
}

/// A PostgreSQL schema of one test: `(database URL, schema name)`, dropped when this is.
pub struct Schema(pub String, pub String);

impl Plane {
    /// The SQLite file (planes made on [`Backend::Sqlite`] only).
    pub fn state_file(&self) -> PathBuf {
        assert!(self.schema.is_none(), "a test of the SQLite file ran on PostgreSQL");
        self.dir.path().join("state.db")
    }
}

impl Drop for Schema {
    /// Drops the schema from a thread of its own, not waited for: the test's runtime must stay
    /// free to return the plane's connections (their rollbacks are flushed by tasks on it), and
    /// the drop waits for those connections' locks.
    fn drop(&mut self) {
        let (url, schema) = (self.0.clone(), self.1.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                        let _ = sqlx::raw_sql(&format!("SET lock_timeout = '30s'; DROP SCHEMA {schema} CASCADE"))
                            .execute(&pool)
                            .await;
                    }
                });
        });
    }
}

/// The token authority of the tests.
pub fn authority() -> TokenAuthority {
    TokenAuthority::from_secret(&[9; 32], TokenConfig::default()).unwrap()
}

/// A control plane over the SQLite file at `path` under `policy`, reading `clock`.
pub async fn open_plane(path: &std::path::Path, policy: &str, clock: Arc<ManualClock>) -> ControlPlane {
    let store = Store::open(path).await.unwrap();
    on_store(store, policy, clock)
}

fn on_store(store: Store, policy: &str, clock: Arc<ManualClock>) -> ControlPlane {
    let policy = PolicyEngine::from_text(policy, "test").unwrap();
    ControlPlane::new(authority(), policy, store).with_clock(clock)
}

/// A fresh control plane under `policy`, its clock at [`NOW`].
pub async fn plane_with(policy: &str) -> Plane {
    plane_at(policy, NOW).await
}

/// A fresh control plane under `policy`, its clock at `now_ms` (tokens and certificates are
/// checked against the system clock, so tests of them start at the real time), on the backend
/// of [`Backend::from_env`].
pub async fn plane_at(policy: &str, now_ms: i64) -> Plane {
    plane_on(&Backend::from_env(), policy, now_ms).await
}

/// A fresh control plane on `backend`.
pub async fn plane_on(backend: &Backend, policy: &str, now_ms: i64) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(now_ms));
    let (store, schema) = match backend {
        Backend::Sqlite => (Store::open(&dir.path().join("state.db")).await.unwrap(), None),
        Backend::Postgres(url) => {
            let schema = fresh_schema(url).await;
            let store = Store::open_postgres(&scoped_url(url, &schema), dir.path())
                .await
                .unwrap();
            (store, Some(Schema(url.clone(), schema)))
        }
    };
    Plane {
        dir,
        control: Arc::new(on_store(store, policy, Arc::clone(&clock))),
        clock,
        schema,
    }
}

/// `url` with its connections' `search_path` set to `schema`.
pub fn scoped_url(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options[search_path]={schema}")
}

/// Creates a schema of its own for one test, so tests run in parallel on one database.
pub async fn fresh_schema(url: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!(
        "agentd_test_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let pool = sqlx::PgPool::connect(url)
        .await
        .unwrap_or_else(|error| panic!("AGENTD_TEST_DATABASE_URL {url}: {error}"));
    // Schemas of test processes that ended before their drops ran (`agentd_test_<pid>_...`).
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'agentd\\_test\\_%'")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    for leftover in existing {
        let pid = leftover.split('_').nth(2).unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {leftover} CASCADE"))
                .execute(&pool)
                .await;
        }
    }
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    schema
}

/// A fresh control plane under the default policy in which anyone may review.
pub async fn plane() -> Plane {
    plane_with(&format!("{DEFAULT_POLICY}\n{ANYONE_REVIEWS}")).await
}

/// [`plane`] on SQLite whatever the environment says: for tests of the SQLite file itself.
pub async fn sqlite_plane() -> Plane {
    plane_on(&Backend::Sqlite, &format!("{DEFAULT_POLICY}\n{ANYONE_REVIEWS}"), NOW).await
}

/// A principal of tenant `acme`.
pub fn principal(subject: &str, roles: &[Role]) -> Principal {
    Principal {
        subject: subject.into(),
        tenant: "acme".into(),
        roles: roles.iter().copied().collect::<BTreeSet<_>>(),
    }
}

/// The time tests decide at: well before [`new_approval`]'s expiry.
pub const NOW: i64 = 1_700_000_000_000;

/// `publish-report` as governed.
pub fn skill() -> SkillSummary {
    SkillSummary {
        id: "publish-report".into(),
        version: semver::Version::new(0, 1, 0),
        side_effect: SideEffect::Effectful,
        capabilities: vec!["fs.write:reports/".parse().unwrap()],
        digest: "sha256:aa".into(),
        cpu_metering: plugin_abi::CpuMetering::Fuel,
    }
}

/// An approval request by `alice` for `publish-report`: quorum 1 of 1, approve/deny/modify,
/// expiring an hour after [`NOW`].
pub fn new_approval() -> NewApproval {
    NewApproval {
        requester: principal("alice", &[Role::Agent]),
        acting_agent: "alice".into(),
        run_id: "run-1".into(),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        skill: skill(),
        input_digest: "sha256:bb".into(),
        request_json: r#"{"schema_version":"agentd.invoke.v1","input":{}}"#.into(),
        policy_version: "sha256:cc".into(),
        reviewer_role: Role::Reviewer,
        quorum: Quorum::default(),
        expires_at_ms: NOW + 3_600_000,
        allowed_decisions: vec![
            ReviewDecisionKind::Approve,
            ReviewDecisionKind::Deny,
            ReviewDecisionKind::Modify,
        ],
        parent_id: None,
    }
}

/// What a dispatch of [`new_approval`]'s step offers.
pub fn binding() -> ApprovalBinding {
    ApprovalBinding {
        tenant: "acme".into(),
        run_id: "run-1".into(),
        step_id: "step-1".into(),
        skill_id: "publish-report".into(),
        skill_digest: "sha256:aa".into(),
        input_digest: "sha256:bb".into(),
        policy_version: "sha256:cc".into(),
    }
}
