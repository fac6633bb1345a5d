//! End-to-end tests of the `agentd` binary: the demo's flow through the CLI, and bad input.
//! After every refused command the state file and the audit chain are intact.

#![allow(missing_docs, reason = "test helpers are not public API")]

mod authoring;
mod bad_input;
mod browser;
mod chaos;
mod evidence;
mod flow;
mod postgres;
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use control_plane::{Role, TokenAuthority, TokenConfig};

/// A scratch state directory and the paths the CLI needs.
pub struct Env {
    pub dir: tempfile::TempDir,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where `cargo xtask build-plugins` put the packages: `$AGENTD_PLUGINS` (set by
/// `cargo xtask test`), else `target/plugins`.
pub fn packages_dir() -> PathBuf {
    std::env::var_os("AGENTD_PLUGINS").map_or_else(|| repo_root().join("target/plugins"), PathBuf::from)
}

#[expect(
    clippy::new_without_default,
    reason = "creating an Env makes a temporary directory; not a default value"
)]
impl Env {
    pub fn new() -> Self {
        let plugins = packages_dir();
        assert!(
            plugins.join("pii-redact/skill.toml").is_file(),
            "plugin packages are missing at {}: run the tests with `cargo xtask test`",
            plugins.display()
        );
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `agentd ARGS` with this environment; `stdin` is fed to standard input.
    pub fn agentd(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.agentd_with(args, stdin, &[])
    }

    /// [`agentd`](Self::agentd) with extra environment variables.
    pub fn agentd_with(&self, args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentd"));
        command
            .envs(vars.iter().copied())
            .args(["--state-dir", self.state_dir().to_str().unwrap()])
            .args(["--plugins", packages_dir().to_str().unwrap()])
            .args(["--policy", repo_root().join("policies/default.cedar").to_str().unwrap()])
            .args(args)
            .env_remove("AGENTD_TOKEN")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            // agentd may stop reading early (an input over its bound): a broken pipe is its answer.
            if let Err(error) = child.stdin.take().unwrap().write_all(text.as_bytes()) {
                assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
            }
        }
        child.wait_with_output().unwrap()
    }

    /// A token issued through the CLI.
    pub fn token(&self, subject: &str, role: &str) -> String {
        let output = self.agentd(
            &["token", "issue", "--sub", subject, "--role", role, "--tenant", "acme"],
            None,
        );
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).trim().to_owned()
    }

    /// The state directory's key, for crafting tokens the CLI would not issue.
    pub fn identity(&self, config: TokenConfig) -> TokenAuthority {
        std::fs::create_dir_all(self.state_dir()).unwrap();
        TokenAuthority::load_or_create(&self.state_dir().join("jwt-hs256.key"), config).unwrap()
    }

    pub fn expired_token(&self) -> String {
        let identity = self.identity(TokenConfig::default());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        identity
            .issue_at("alice", "acme", &[Role::Agent], now - 7200, Duration::from_secs(60))
            .unwrap()
    }

    /// `agentd --json run SKILL` with `input` wrapped in an `agentd.invoke.v1` envelope.
    pub fn run_json(&self, skill: &str, input: serde_json::Value, token: &str) -> Output {
        let file = self.file(&format!("{skill}-input.json"), &envelope(input));
        self.agentd(
            &[
                "--json",
                "run",
                skill,
                "--input",
                file.to_str().unwrap(),
                "--token",
                token,
            ],
            None,
        )
    }

    /// Submits `publish-report` (writing `reports/t.md`) as `token`; asserts it waits for
    /// approval (exit code 4) and returns the approval request id.
    pub fn submit_report(&self, token: &str) -> String {
        let input = serde_json::json!({ "title": "T", "body": "B", "path": "reports/t.md" });
        let output = self.run_json("publish-report", input, token);
        assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
        let waiting: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        waiting["approval_id"].as_i64().unwrap().to_string()
    }

    /// Runs a raw SQL script against the state file, as someone with write access to it would.
    pub fn tamper_sql(&self, script: &str) {
        with_sqlite(&self.state_dir().join("state.db"), async |pool| {
            sqlx::raw_sql(script).execute(pool).await.unwrap();
        });
    }

    /// Writes `text` into a file in the scratch directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `agentd audit verify --json`: the number of entries, asserting the chain is intact.
    pub fn audit_entries(&self) -> u64 {
        let output = self.agentd(&["--json", "audit", "verify"], None);
        assert!(
            output.status.success(),
            "audit verify failed: {}{}",
            stdout(&output),
            stderr(&output)
        );
        let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(value["status"], "intact");
        value["entries"].as_u64().unwrap()
    }
}

/// Runs `work` against the SQLite file at `path` directly (not through agentd), as someone with
/// write access to it would, on a runtime of its own; the pool is closed afterwards.
pub fn with_sqlite<T>(path: &Path, work: impl AsyncFnOnce(&sqlx::SqlitePool) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let result = work(&pool).await;
        pool.close().await;
        result
    })
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A one-minute agent token for `alice@acme` signed by `identity`.
pub fn agent_token(identity: &TokenAuthority) -> String {
    identity
        .issue("alice", "acme", &[Role::Agent], Duration::from_secs(60))
        .unwrap()
}

pub fn envelope(input: serde_json::Value) -> String {
    serde_json::json!({ "schema_version": "agentd.invoke.v1", "input": input }).to_string()
}
