//! `agentd demo`: the whole governed flow on real text.
//!
//! 1. `pii-redact` (pure, allowed) over this machine's Debian changelogs, decompressed in
//!    process; 2. `publish-report` (effectful) waits for approval, a reviewer approves, the report
//!    is written; 3. `spin-forever` is stopped at its deadline and a benign skill still runs;
//!    4. the audit chain verifies.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_runtime::{Outcome, RuntimeFailure};
use anyhow::{Context, Result, bail};
use control_plane::{ChainVerification, Principal, Role};
use plugin_abi::InvokeRequest;
use serde_json::json;

use crate::app::{App, Paths, StepReport};

const CHANGELOG_DIR: &str = "/usr/share/doc";
const TENANT: &str = "demo";

struct Document {
    name: String,
    text: String,
}

/// `/usr/share/doc/*/changelog.Debian.gz`, decompressed, in name order.
fn changelogs(max_files: Option<usize>) -> Result<Vec<Document>> {
    let Ok(entries) = std::fs::read_dir(CHANGELOG_DIR) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("changelog.Debian.gz"))
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    paths.truncate(max_files.unwrap_or(usize::MAX));
    let mut documents = Vec::with_capacity(paths.len());
    for path in paths {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("decompressing {}", path.display()))?;
        let name = path
            .parent()
            .and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        documents.push(Document {
            name,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(documents)
}

fn text_request(text: &str) -> InvokeRequest {
    let mut input = serde_json::Map::new();
    input.insert("text".into(), text.into());
    InvokeRequest::new(input)
}

fn token_for(app: &App, subject: &str, role: Role) -> Result<Principal> {
    let token = app
        .control_plane
        .authority()
        .issue(subject, TENANT, &[role], Duration::from_secs(600))?;
    app.authenticate(&token)
}

#[derive(Default)]
struct Totals {
    files: u64,
    bytes: u64,
    counts: [u64; 5],
    instantiate_us: u64,
    execute_us: u64,
    fuel: u64,
    failures: u64,
}

const KINDS: [&str; 5] = ["email", "iban", "card", "ipv4", "phone"];

/// Files in flight per core by default: a step spends most of its time waiting for the store
/// (its three write units queue for the one writer, ADR 0019), not on a core. On a 2-core
/// machine the rate rose up to 16 per core and was flat from there to 64 (BENCHMARKS.md,
/// issue 17 item 5); each file in flight holds its text and, while it runs, an instance.
const FILES_PER_CORE: usize = 16;

/// Runs the demo; `concurrency` files are redacted at once (default: [`FILES_PER_CORE`] per
/// core).
pub async fn run(
    paths: &Paths,
    input: Option<&Path>,
    max_files: Option<usize>,
    concurrency: Option<usize>,
    json: bool,
) -> Result<()> {
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let app = Arc::new(App::open(paths).await?);
    say(format!(
        "agentd demo: state in {}, {} skill packages verified, policy {}",
        paths.state_dir.display(),
        app.runtime.skills().len(),
        &app.control_plane.policy().version()[..19]
    ));
    let agent = token_for(&app, "demo-agent", Role::Agent)?;
    let reviewer = token_for(&app, "demo-reviewer", Role::Reviewer)?;

    // 1. pii-redact over real text.
    let mut documents = changelogs(max_files)?;
    let source = if let Some(input) = input {
        let text =
            std::fs::read_to_string(input).with_context(|| format!("cannot read --input {}", input.display()))?;
        documents = vec![Document {
            name: input.display().to_string(),
            text,
        }];
        format!("--input {}", input.display())
    } else if documents.is_empty() {
        bail!(
            "no Debian changelogs under {CHANGELOG_DIR}/*/changelog.Debian.gz on this machine; give a text file with `agentd demo --input FILE`"
        );
    } else {
        format!("{} Debian changelogs under {CHANGELOG_DIR}", documents.len())
    };
    let concurrency = concurrency
        .unwrap_or_else(|| FILES_PER_CORE * std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    say(format!(
        "\n[1/4] pii-redact (pure; policy allows agents) over {source}, {concurrency} at a time"
    ));
    let mut totals = Totals::default();
    let mut sample = None;
    let before = app.control_plane.commit_stats();
    let started = Instant::now();
    // Each file is still its own governed, durable, audited step; `concurrency` workers take
    // the next file as they finish one, and their commits share transactions and fsyncs (group commit, ADRs 0015 and 0019).
    let documents = Arc::new(documents);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (app, agent, documents, next) = (
            Arc::clone(&app),
            agent.clone(),
            Arc::clone(&documents),
            Arc::clone(&next),
        );
        workers.spawn(async move {
            let mut reports = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(document) = documents.get(index) else {
                    return Ok::<_, anyhow::Error>(reports);
                };
                let report = app.run(&agent, "pii-redact", &text_request(&document.text)).await?;
                reports.push((index, report));
            }
        });
    }
    let mut reports = Vec::with_capacity(documents.len());
    while let Some(done) = workers.join_next().await {
        reports.extend(done.context("a demo worker panicked")??);
    }
    reports.sort_by_key(|(index, _)| *index);
    for (index, report) in reports {
        let document = &documents[index];
        let StepReport::Completed { report, .. } = report else {
            totals.failures += 1;
            continue;
        };
        let Outcome::Completed { output } = &report.outcome else {
            continue;
        };
        totals.files += 1;
        totals.bytes += document.text.len() as u64;
        totals.instantiate_us += report.metrics.instantiate_us;
        totals.execute_us += report.metrics.execute_us;
        totals.fuel += report.metrics.fuel_consumed;
        for (slot, kind) in totals.counts.iter_mut().zip(KINDS) {
            *slot += output["counts"][kind].as_u64().unwrap_or(0);
        }
        if sample.is_none() {
            let redacted = output["redacted"].as_str().unwrap_or_default();
            sample = redacted
                .lines()
                .find(|line| line.contains("[EMAIL]"))
                .map(|line| format!("{}: {}", document.name, line.trim()));
        }
    }
    let wall = started.elapsed();
    let after = app.control_plane.commit_stats();
    let (commits, transactions, fsyncs) = (
        after.commits - before.commits,
        after.transactions - before.transactions,
        after.fsyncs - before.fsyncs,
    );
    let mib = totals.bytes as f64 / (1024.0 * 1024.0);
    let files = totals.files.max(1) as f64;
    say(format!(
        "  files processed   {} ({} failed)",
        totals.files, totals.failures
    ));
    say(format!("  bytes scanned     {} ({mib:.1} MiB)", totals.bytes));
    say(format!(
        "  matches           {}",
        KINDS
            .iter()
            .zip(totals.counts)
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    say(format!(
        "  wall time         {:.2} s end to end (JWT-authenticated, governed, audited per file): {:.1} MiB/s",
        wall.as_secs_f64(),
        mib / wall.as_secs_f64()
    ));
    say(format!(
        "  inside wasm       {:.1} MiB/s; mean instantiate {:.0} µs, mean execute {:.0} µs, {:.0} fuel per byte",
        mib / (totals.execute_us as f64 / 1e6).max(1e-9),
        totals.instantiate_us as f64 / files,
        totals.execute_us as f64 / files,
        totals.fuel as f64 / (totals.bytes.max(1) as f64)
    ));
    say(format!(
        "  durable commits   {commits} ({:.1} per file) in {transactions} transactions and {fsyncs} fsyncs (group commit: concurrent commits share both)",
        commits as f64 / files
    ));
    if let Some(sample) = &sample {
        say(format!("  sample            {sample}"));
    }

    // 2. publish-report: effectful, needs a reviewer.
    say("\n[2/4] publish-report (effectful; policy requires a reviewer's approval)".into());
    let body = format!(
        "Scanned {} files, {} bytes.\n\n| kind | matches |\n|---|---|\n{}",
        totals.files,
        totals.bytes,
        KINDS
            .iter()
            .zip(totals.counts)
            .map(|(kind, count)| format!("| {kind} | {count} |"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut input = serde_json::Map::new();
    input.insert("title".into(), "PII redaction summary".into());
    input.insert("body".into(), body.into());
    input.insert("path".into(), "reports/pii-summary.md".into());
    let submitted = app.run(&agent, "publish-report", &InvokeRequest::new(input)).await?;
    let StepReport::AwaitingApproval { approval_id, .. } = submitted else {
        bail!("publish-report should wait for approval under the default policy, got {submitted:?}");
    };
    say(format!(
        "  submitted by demo-agent: waiting for approval, request #{approval_id}"
    ));
    match app
        .control_plane
        .review(
            approval_id,
            &agent,
            control_plane::ReviewDecisionKind::Approve,
            None,
            None,
        )
        .await
    {
        Err(error) => say(format!("  demo-agent tries to approve it: refused ({error})")),
        Ok(_) => bail!("the requester was able to approve its own request"),
    }
    let (_, resumed) = app
        .review(
            &reviewer,
            approval_id,
            control_plane::ReviewDecisionKind::Approve,
            Some("demo: summary contains counts only"),
            None,
        )
        .await?;
    let Some(resumed) = resumed else {
        bail!("publish-report did not resume after approval");
    };
    let StepReport::Completed { report, .. } = &resumed else {
        bail!("publish-report did not complete after approval: {resumed:?}");
    };
    let report_path = paths.workspace_root().join(TENANT).join("reports/pii-summary.md");
    let written = std::fs::metadata(&report_path)
        .with_context(|| format!("the report {} was not written", report_path.display()))?;
    say(format!(
        "  approved by demo-reviewer; report written: {} ({} bytes, {} host calls)",
        report_path.display(),
        written.len(),
        report.metrics.host_calls
    ));

    // 3. spin-forever: the deadline holds and the host survives.
    say("\n[3/4] spin-forever (hostile: loops forever)".into());
    let started = Instant::now();
    let spun = app
        .run(&agent, "spin-forever", &InvokeRequest::new(serde_json::Map::new()))
        .await?;
    let elapsed = started.elapsed();
    let (report, retryable, attempts) = match &spun {
        StepReport::Failed { report, retryable, .. } => (report, *retryable, "1 attempt".to_owned()),
        StepReport::Escalated {
            report,
            history,
            approval_id,
            ..
        } => (
            report,
            report.outcome.is_retryable(),
            format!(
                "{} attempts with backoff, then escalated to a human (request #{approval_id})",
                history.len()
            ),
        ),
        _ => bail!("spin-forever should have been stopped, got {spun:?}"),
    };
    let stopped_by = match &report.outcome {
        Outcome::Failed {
            failure: RuntimeFailure::Timeout { in_guest: true, .. },
        } => "the epoch deadline interrupted guest code",
        Outcome::Failed {
            failure: RuntimeFailure::Timeout { in_guest: false, .. },
        } => "the wall-clock backstop fired",
        _ => "not by its deadline",
    };
    let deadline_ms = app
        .runtime
        .lookup("spin-forever")
        .map_or(0, |skill| skill.manifest.limits.deadline_ms);
    say(format!(
        "  stopped: {} after {} ms (deadline {deadline_ms} ms): {stopped_by}; {}, {attempts} in {} ms",
        report.outcome.name(),
        report.metrics.instantiate_us / 1_000 + report.metrics.execute_us / 1_000,
        if retryable { "retryable" } else { "not retryable" },
        elapsed.as_millis(),
    ));
    let after = app
        .run(&agent, "pii-redact", &text_request("host still fine: ops@example.org"))
        .await?;
    let StepReport::Completed { report, .. } = &after else {
        bail!("the host did not survive spin-forever: {after:?}");
    };
    let Outcome::Completed { output } = &report.outcome else {
        bail!("unexpected outcome")
    };
    say(format!(
        "  host unharmed: pii-redact right after -> {}",
        output["redacted"]
    ));

    // 4. The audit chain.
    say("\n[4/4] audit verify".into());
    let verification = app.control_plane.verify_audit().await?;
    match &verification {
        ChainVerification::Intact { entries, head, root } => say(format!(
            "  audit chain intact: {entries} entries, head {}, Merkle root {}",
            &head[..16],
            &root[..16.min(root.len())]
        )),
        ChainVerification::Broken { seq, reason, .. } => bail!("audit chain broken at entry {seq}: {reason}"),
    }
    if json {
        println!(
            "{}",
            json!({
                "files": totals.files,
                "bytes": totals.bytes,
                "matches": KINDS.iter().zip(totals.counts).map(|(k, c)| (k.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
                "wall_secs": wall.as_secs_f64(),
                "approval_id": approval_id,
                "report_path": report_path,
                "spin_forever_ms": elapsed.as_millis() as u64,
                "audit": verification,
            })
        );
    }
    Ok(())
}
