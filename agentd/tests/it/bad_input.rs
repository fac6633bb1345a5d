//! Bad input gets a clear, typed error naming what was wrong, and nothing stored is lost.

use control_plane::TokenConfig;
use serde_json::json;

use crate::{Env, agent_token, envelope, stderr};

/// Runs `args`, expects exit code 1 with `message` on stderr, and checks the audit chain kept
/// exactly `entries` entries.
#[track_caller]
fn check_refused(env: &Env, args: &[&str], message: &str, entries: u64) {
    let output = env.agentd(args, None);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {}", stderr(&output));
    assert!(
        stderr(&output).contains(message),
        "{args:?}: `{}` lacks `{message}`",
        stderr(&output)
    );
    assert_eq!(env.audit_entries(), entries, "{args:?} changed the audit log");
}

#[test]
fn bad_input_and_bad_tokens_are_refused_without_touching_state() {
    let env = Env::new();
    let agent = env.token("alice", "agent");
    let good = env.file("good.json", &envelope(json!({ "text": "a@b.org" })));
    let output = env.run_json("pii-redact", json!({ "text": "a@b.org" }), &agent);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(env.audit_entries(), 2);

    let not_json = env.file("bad.json", "{ \"schema_version\": ");
    check_refused(
        &env,
        &[
            "run",
            "pii-redact",
            "--input",
            not_json.to_str().unwrap(),
            "--token",
            &agent,
        ],
        "not valid JSON at line 1",
        2,
    );

    let wrong_version = env.file("v2.json", r#"{"schema_version": "agentd.invoke.v2", "input": {}}"#);
    check_refused(
        &env,
        &[
            "run",
            "pii-redact",
            "--input",
            wrong_version.to_str().unwrap(),
            "--token",
            &agent,
        ],
        "unsupported schema version `agentd.invoke.v2`; this agentd reads `agentd.invoke.v1`",
        2,
    );

    check_refused(
        &env,
        &["run", "pii-redact", "--input", "/nonexistent/x.json", "--token", &agent],
        "cannot read input file /nonexistent/x.json",
        2,
    );

    let good = good.to_str().unwrap();
    check_refused(
        &env,
        &["run", "pii-redact", "--input", good, "--token", &env.expired_token()],
        "the token has expired",
        2,
    );

    let stranger = control_plane::TokenAuthority::from_secret(&[7; 32], TokenConfig::default()).unwrap();
    let forged = agent_token(&stranger);
    check_refused(
        &env,
        &["run", "pii-redact", "--input", good, "--token", &forged],
        "signature does not verify",
        2,
    );

    let foreign = agent_token(&env.identity(TokenConfig {
        audience: "another-service".into(),
        ..TokenConfig::default()
    }));
    check_refused(
        &env,
        &["run", "pii-redact", "--input", good, "--token", &foreign],
        "the token's audience is wrong; expected `agentd`",
        2,
    );

    check_refused(
        &env,
        &["token", "issue", "--sub", "x", "--role", "root", "--tenant", "acme"],
        "unknown role `root`",
        2,
    );
}

#[test]
fn an_approval_loads_only_the_packages_of_its_run() {
    // An approval used to compile every package of the plugins directory (9.9 s the first time
    // in the chaos test); it needs the run's skills only.
    let env = Env::new();
    let agent = env.token("alice", "agent");
    let reviewer = env.token("bob", "reviewer");
    let id = env.submit_report(&agent);
    let output = env.agentd_with(
        &["hitl", "approve", &id, "--token", &reviewer],
        None,
        &[("AGENTD_LOG", "agentd=debug")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    let line = log
        .lines()
        .find(|line| line.contains("plugin packages"))
        .unwrap_or_else(|| panic!("no package line in:\n{log}"));
    let count = |key: &str| -> usize {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{key}=")))
            .and_then(|value| value.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    assert_eq!(count("loaded"), 1, "{line}");
    assert!(count("skipped") >= 10, "{line}");
    assert!(env.state_dir().join("workspace/acme/reports/t.md").exists());
    // A log written to a pipe carries no terminal colour codes.
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn outside_the_repository_without_a_policy_flag_the_built_in_policy_governs() {
    // Issue 16's note: outside a checkout `agentd` needed --policy, since its default was the
    // relative `policies/default.cedar`. Now the default policy is built in.
    let env = Env::new();
    let agent = env.token("alice", "agent");
    let elsewhere = tempfile::tempdir().unwrap();
    let input = env.file("in.json", &envelope(json!({ "text": "mail bob@example.com" })));
    // `agentd` run from a directory that is not a checkout, with no policy in its environment.
    let run_elsewhere = |before: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
            .current_dir(elsewhere.path())
            .env_remove("AGENTD_POLICY")
            .env_remove("AGENTD_TOKEN")
            .args(["--state-dir", env.state_dir().to_str().unwrap()])
            .args(["--plugins", crate::packages_dir().to_str().unwrap()])
            .args(before)
            .args([
                "run",
                "pii-redact",
                "--input",
                input.to_str().unwrap(),
                "--token",
                &agent,
            ])
            .output()
            .unwrap()
    };
    let output = run_elsewhere(&["--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(
        report["report"]["outcome"]["output"]["redacted"], "mail [EMAIL]",
        "{report}"
    );
    // A policy named explicitly that is not there is an error naming it, never the built-in one.
    let missing = elsewhere.path().join("nope.cedar");
    let output = run_elsewhere(&["--policy", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nope.cedar"), "{}", stderr(&output));
}

#[test]
fn self_approval_and_missing_requests_are_refused() {
    let env = Env::new();
    let agent_and_reviewer = env.token("alice", "agent");
    // alice also holds the reviewer role in a second token: still the requester.
    let alice_reviewer = env.token("alice", "reviewer");
    let reviewer = env.token("bob", "reviewer");
    assert_eq!(env.submit_report(&agent_and_reviewer), "1");
    assert_eq!(env.audit_entries(), 2);

    check_refused(
        &env,
        &["hitl", "approve", "1", "--token", &alice_reviewer],
        "you are its requester; another reviewer must decide it",
        2,
    );
    check_refused(
        &env,
        &["hitl", "approve", "1", "--token", &agent_and_reviewer],
        "no policy permits `alice@acme` to review `publish-report`",
        2,
    );
    check_refused(
        &env,
        &["hitl", "deny", "42", "--token", &reviewer],
        "approval request 42 does not exist in your tenant",
        2,
    );
    check_refused(
        &env,
        &["hitl", "list", "--status", "maybe", "--token", &reviewer],
        "unknown approval status `maybe`",
        2,
    );

    let output = env.agentd(
        &["hitl", "deny", "1", "--reason", "not today", "--token", &reviewer],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(env.audit_entries(), 3);
    check_refused(
        &env,
        &["hitl", "approve", "1", "--token", &reviewer],
        "was already decided (denied by `bob`)",
        3,
    );
    assert!(!env.state_dir().join("workspace/acme/reports/t.md").exists());
}

#[test]
fn a_tampered_state_file_fails_audit_verify_by_name() {
    let env = Env::new();
    let agent = env.token("alice", "agent");
    let input = env.file("in.json", &envelope(json!({ "text": "x" })));
    for _ in 0..2 {
        assert!(
            env.agentd(
                &[
                    "run",
                    "pii-redact",
                    "--input",
                    input.to_str().unwrap(),
                    "--token",
                    &agent
                ],
                None
            )
            .status
            .success()
        );
    }
    // Someone with write access to the file drops the guard trigger and rewrites entry 2's principal.
    env.tamper_sql("DROP TRIGGER audit_no_update; UPDATE audit SET principal = 'mallory@acme' WHERE seq = 2");
    let output = env.agentd(&["audit", "verify"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("audit log broken at entry 2 (1 entries before it verify)"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_tampered_package_is_refused_and_its_skill_fails_closed() {
    let env = Env::new();
    // A private copy of the packages with pii-redact's component altered after packaging.
    let plugins = env.dir.path().join("plugins");
    for id in ["pii-redact", "publish-report"] {
        let target = plugins.join(id);
        std::fs::create_dir_all(&target).unwrap();
        for file in ["skill.toml", "skill.wasm"] {
            std::fs::copy(crate::packages_dir().join(id).join(file), target.join(file)).unwrap();
        }
    }
    let wasm = plugins.join("pii-redact/skill.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&wasm, bytes).unwrap();

    let agent = env.token("alice", "agent");
    let input = env.file("in.json", &envelope(json!({ "text": "a@b.org" })));
    let output = env.agentd(
        &[
            "--plugins",
            plugins.to_str().unwrap(),
            "run",
            "pii-redact",
            "--input",
            input.to_str().unwrap(),
            "--token",
            &agent,
        ],
        None,
    );
    // Its own exit code, not governance's 3: the skill is not there to govern.
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("error: no loaded package provides skill `pii-redact` (none of the 2 packages in"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("warning: skill package refused: digest mismatch for"),
        "{}",
        stderr(&output)
    );
    assert!(crate::stdout(&output).contains("unknown skill `pii-redact`: no verified package provides it"));
    // The denial itself is audited; nothing else changed.
    assert_eq!(env.audit_entries(), 1);
    // `plugins list` shows the refusal in its JSON and fails.
    let listed = env.agentd(
        &["--plugins", plugins.to_str().unwrap(), "--json", "plugins", "list"],
        None,
    );
    assert_eq!(listed.status.code(), Some(5), "{}", stderr(&listed));
    let listed: serde_json::Value = serde_json::from_str(&crate::stdout(&listed)).unwrap();
    assert_eq!(listed["skills"].as_array().unwrap().len(), 1, "{listed}");
    // Each skill is listed with its schemas, parsed (issue 16).
    let listed_skill = &listed["skills"][0];
    assert_eq!(listed_skill["input_schema"]["type"], "object", "{listed}");
    assert!(listed_skill["output_schema"].is_object(), "{listed}");
    assert!(
        listed_skill["summary"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{listed}"
    );
    let reason = listed["refused"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("digest mismatch for"), "{reason}");
    // An empty plugin directory is a warning, not silence.
    let empty = env.dir.path().join("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let listed = env.agentd(&["--plugins", empty.to_str().unwrap(), "plugins", "list"], None);
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    assert!(
        stderr(&listed).contains("holds no skill package"),
        "{}",
        stderr(&listed)
    );
}

#[cfg(unix)]
#[test]
fn state_is_private_and_tokens_come_from_files_not_argv() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let token = env.token("alice", "agent");
    let file = env.file("token.jwt", &format!("{token}\n"));
    let input = env.file("in.json", &envelope(json!({ "text": "mail bob@example.com" })));
    let input = input.to_str().unwrap();
    // From a file, and from standard input.
    let run = env.agentd(
        &[
            "run",
            "pii-redact",
            "--input",
            input,
            "--token-file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let run = env.agentd(
        &["run", "pii-redact", "--input", input, "--token-file", "-"],
        Some(&token),
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let both = env.agentd(
        &[
            "run",
            "pii-redact",
            "--input",
            input,
            "--token",
            &token,
            "--token-file",
            "-",
        ],
        Some(&token),
    );
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    let missing = env.agentd(
        &["run", "pii-redact", "--input", input, "--token-file", "/nonexistent/t"],
        None,
    );
    assert!(
        stderr(&missing).contains("cannot read the token file /nonexistent/t"),
        "{}",
        stderr(&missing)
    );

    let mode = |name: &str| {
        std::fs::metadata(env.state_dir().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        std::fs::metadata(env.state_dir()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // (SQLite removes `-wal` at the last close; while it exists it takes state.db's mode.)
    for name in ["state.db", "jwt-hs256.key", "state.db.audit-key"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }

    // An absurd lifetime is refused with a message, not a panic (exit 101).
    let forever = env.agentd(
        &[
            "token",
            "issue",
            "--sub",
            "alice",
            "--role",
            "agent",
            "--tenant",
            "acme",
            "--ttl-secs",
            "18446744073709551615",
        ],
        None,
    );
    assert_eq!(forever.status.code(), Some(1), "{}", stderr(&forever));
    assert!(stderr(&forever).contains("maximum"), "{}", stderr(&forever));
    // A case variant of a subject cannot get a token.
    let upper = env.agentd(
        &[
            "token", "issue", "--sub", "Alice", "--role", "reviewer", "--tenant", "acme",
        ],
        None,
    );
    assert!(
        !upper.status.success() && stderr(&upper).contains("canonical"),
        "{}",
        stderr(&upper)
    );
}

#[test]
fn an_input_over_the_bound_is_refused_while_read_before_anything_is_stored() {
    let env = Env::new();
    let agent = env.token("alice", "agent");
    // One ordinary run, so the state exists and has a size to compare.
    let run = env.run_json("pii-redact", json!({ "text": "first" }), &agent);
    assert!(run.status.success(), "{}", stderr(&run));
    let entries = env.audit_entries();
    let size = |env: &Env| {
        ["state.db", "state.db-wal"]
            .iter()
            .filter_map(|name| std::fs::metadata(env.state_dir().join(name)).ok())
            .map(|metadata| metadata.len())
            .sum::<u64>()
    };
    let before = size(&env);
    let huge = env.file("huge.json", "");
    std::fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(100 * 1024 * 1024)
        .unwrap();
    let started = std::time::Instant::now();
    check_refused(
        &env,
        &[
            "run",
            "pii-redact",
            "--input",
            huge.to_str().unwrap(),
            "--token",
            &agent,
        ],
        "is larger than",
        entries,
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(size(&env) <= before + 64 * 1024, "{} -> {}", before, size(&env));
    // Over standard input too.
    let output = env.agentd(
        &["run", "pii-redact", "--input", "-", "--token", &agent],
        Some(&"x".repeat(9 * 1024 * 1024)),
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("standard input is larger than"),
        "{}",
        stderr(&output)
    );
    assert_eq!(env.audit_entries(), entries);
}

/// Review finding: the runtime held the key that mints any principal. With `--jwks` it verifies
/// an identity provider's tokens (here EdDSA, keys by openssl, set exported by jwcrypto) and
/// mints none; its own HS256 tokens and a set holding a private key are refused.
#[test]
fn with_a_jwks_the_cli_takes_provider_tokens_and_mints_none() {
    let env = Env::new();
    let fixtures = crate::repo_root().join("control-plane/tests/fixtures/jwks");
    let jwks = fixtures.join("jwks.json");
    let jwks = jwks.to_str().unwrap();
    let local = env.token("alice", "agent");

    let issue = env.agentd(
        &[
            "--jwks", jwks, "token", "issue", "--sub", "mallory", "--role", "reviewer", "--tenant", "acme",
        ],
        None,
    );
    assert_eq!(issue.status.code(), Some(1), "{}", stderr(&issue));
    assert!(stderr(&issue).contains("issues none"), "{}", stderr(&issue));

    let now = jsonwebtoken::get_current_timestamp();
    let config = TokenConfig::default();
    let claims = json!({
        "sub": "alice", "iss": config.issuer, "aud": config.audience, "iat": now, "exp": now + 600,
        "tenant": "acme", "roles": ["agent"],
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("ed-2026".into());
    let pem = std::fs::read(fixtures.join("ed25519.pem")).unwrap();
    let provider =
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap()).unwrap();
    let input = env.file("in.json", &envelope(json!({ "text": "mail bob@example.com" })));
    let input = input.to_str().unwrap();
    let run = env.agentd(
        &[
            "--jwks",
            jwks,
            "run",
            "pii-redact",
            "--input",
            input,
            "--token-file",
            "-",
        ],
        Some(&provider),
    );
    assert!(run.status.success(), "{}", stderr(&run));

    let refused = env.agentd(&["--jwks", jwks, "runs", "list", "--token-file", "-"], Some(&local));
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("names no `kid`"), "{}", stderr(&refused));

    let private = fixtures.join("private.json");
    let leaked = env.agentd(
        &["--jwks", private.to_str().unwrap(), "runs", "list", "--token-file", "-"],
        Some(&provider),
    );
    assert_eq!(leaked.status.code(), Some(1), "{}", stderr(&leaked));
    assert!(
        stderr(&leaked).contains("holds the private member `d`"),
        "{}",
        stderr(&leaked)
    );
}

/// Makes `paths` unwritable even for root: mode bits, then (as root, who ignores them) the
/// immutable attribute. `None` when the file system has no immutable attribute.
#[cfg(target_os = "linux")]
fn make_read_only(paths: &[&std::path::Path]) -> Option<()> {
    use std::os::unix::fs::PermissionsExt;
    for path in paths {
        let mode = if path.is_dir() { 0o555 } else { 0o444 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
    if root {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .args(paths)
            .status()
            .ok()?;
        status.success().then_some(())
    } else {
        Some(())
    }
}

/// Review finding: storage errors repeated SQLite's text three times, and a read-only copy of
/// the state could not be inspected. Now a write names the cause and the fix once, and the
/// listing and verifying commands open a read-only state read-only.
#[cfg(target_os = "linux")]
#[test]
#[expect(clippy::print_stderr, reason = "a skipped check says why")]
fn a_read_only_state_names_its_cause_once_and_can_still_be_inspected() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let token = env.token("alice", "agent");
    let input = env.file("in.json", &envelope(json!({ "text": "mail bob@example.com" })));
    let input = input.to_str().unwrap();
    let run = env.agentd(
        &["run", "pii-redact", "--input", input, "--token-file", "-"],
        Some(&token),
    );
    assert!(run.status.success(), "{}", stderr(&run));

    let (state, db) = (env.state_dir(), env.state_dir().join("state.db"));
    let Some(()) = make_read_only(&[&db, &state]) else {
        eprintln!("skipped: this file system has no immutable attribute, and root ignores modes");
        return;
    };
    let refused = env.agentd(
        &["run", "pii-redact", "--input", input, "--token-file", "-"],
        Some(&token),
    );
    let listed = env.agentd(&["--json", "runs", "list", "--token-file", "-"], Some(&token));
    let approvals = env.agentd(&["hitl", "list", "--token-file", "-"], Some(&token));
    let verified = env.agentd(&["audit", "verify"], None);
    // Writable again, so the temporary directory can be removed whatever the outcome.
    let _ = std::process::Command::new("chattr")
        .args(["-i"])
        .args([&db, &state])
        .status();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();

    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(message.contains("the state store is read-only ("), "{message}");
    assert!(message.contains("state.db cannot be written"), "{message}");
    assert!(
        message.trim_end().ends_with("also work on a read-only copy"),
        "{message}"
    );
    assert!(listed.status.success(), "{}", stderr(&listed));
    let runs: serde_json::Value = serde_json::from_str(&crate::stdout(&listed)).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    assert!(approvals.status.success(), "{}", stderr(&approvals));
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(
        crate::stdout(&verified).starts_with("audit log intact"),
        "{}",
        crate::stdout(&verified)
    );
}
