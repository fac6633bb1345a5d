//! Durable runs and audit evidence (issue 11), as a bench binary that prints its figures:
//!
//! 1. Inclusion and consistency proofs at 1,000,000 entries: time to compute and to verify,
//!    and their size (RFC 9162 tree over SHA-256 leaf hashes, `control_plane::audit::merkle`).
//! 2. What the Merkle tree adds to an audit append, against the append itself measured in the
//!    same run: the frontier update and its (de)serialisation per append, next to an audited
//!    `govern` (one durable transaction).
//! 3. Recovery of 10,000 interrupted runs: their owner's leases lapse, then recovery passes
//!    (`recovery_candidates`, at most 1,000 per pass) find each one and take it over (an
//!    audited `run-control` entry and a new fencing token per run).
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::time::{Duration, Instant};

use control_plane::audit::merkle::{self, Frontier, Hash};
use control_plane::{
    ControlPlane, ManualClock, PolicyEngine, Principal, Role, StepContext, StepSpec, Store, TokenAuthority,
    TokenConfig, TraceContext,
};
use plugin_abi::{SideEffect, SkillSummary};
use sha2::{Digest, Sha256};

const ENTRIES: usize = 1_000_000;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The chain hash of entry `i` (its stand-in: 32 bytes, as the log's entries have).
fn entry_hash(i: u64) -> Hash {
    Sha256::digest(i.to_le_bytes()).into()
}

/// The RFC 9162 leaf hashes of entries `0..n`.
fn leaves(n: usize) -> Vec<Hash> {
    (0..n as u64).map(|i| merkle::leaf_hash(&entry_hash(i))).collect()
}

fn proofs() {
    println!("proofs at {ENTRIES} entries (RFC 9162, SHA-256):");
    let leaves = leaves(ENTRIES);
    let started = Instant::now();
    let root = merkle::root_of(&leaves);
    println!(
        "  tree root from the leaves: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut compute = Vec::new();
    let mut verify = Vec::new();
    let mut sizes = Vec::new();
    for index in [0, 1, 333_333, 777_777, ENTRIES - 1] {
        let started = Instant::now();
        let path = merkle::inclusion_path(&leaves, index);
        compute.push(started.elapsed());
        sizes.push(path.len());
        let started = Instant::now();
        merkle::verify_inclusion(&entry_hash(index as u64), index as u64, ENTRIES as u64, &path, &root).unwrap();
        verify.push(started.elapsed());
    }
    println!(
        "  inclusion proof (of entries 0; 1; 333,333; 777,777; 999,999): compute {:.0} ms (median, from all leaves), verify {:.1} µs, {sizes:?} hashes (at most {} bytes)",
        median(compute).as_secs_f64() * 1e3,
        median(verify).as_secs_f64() * 1e6,
        sizes.iter().max().unwrap() * 32
    );
    let mut compute = Vec::new();
    let mut verify = Vec::new();
    let mut sizes = Vec::new();
    for old in [1, 1_000, 500_000, 999_999] {
        let started = Instant::now();
        let proof = merkle::consistency_proof(&leaves, old);
        compute.push(started.elapsed());
        let old_root = merkle::root_of(&leaves[..old]);
        let started = Instant::now();
        merkle::verify_consistency(old as u64, &old_root, ENTRIES as u64, &root, &proof).unwrap();
        verify.push(started.elapsed());
        sizes.push(proof.len());
    }
    println!(
        "  consistency proof (from 1; 1,000; 500,000; 999,999): compute {:.0} ms (median), verify {:.1} µs, {:?} hashes (at most {} bytes)",
        median(compute).as_secs_f64() * 1e3,
        median(verify).as_secs_f64() * 1e6,
        sizes,
        sizes.iter().max().unwrap() * 32
    );
}

fn principal(subject: &str, roles: &[Role]) -> Principal {
    Principal {
        subject: subject.into(),
        tenant: "acme".into(),
        roles: roles.iter().copied().collect(),
    }
}

fn main() {
    proofs();

    // The tree's own work per append: push the new leaf onto the frontier, compute the root
    // (for the anchor) and serialise the frontier (it is stored with the anchor), at a log of
    // 1,000,000 entries.
    let mut frontier = Frontier::new();
    for leaf in leaves(ENTRIES) {
        frontier.push(leaf);
    }
    let extra = leaves(10_000);
    let started = Instant::now();
    for leaf in &extra {
        let stored = frontier.to_bytes();
        let mut restored = Frontier::from_bytes(&stored).unwrap();
        restored.push(*leaf);
        std::hint::black_box(restored.root());
        frontier = restored;
    }
    let tree_per_append = started.elapsed() / 10_000;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let store = Store::open(&dir.path().join("state.db")).await.unwrap();
        // A manual clock: the dead owner's leases lapse at once, the new owner's never do here.
        let clock = std::sync::Arc::new(ManualClock::new(control_plane::now_ms()));
        let control = ControlPlane::new(
            TokenAuthority::from_secret(&[9; 32], TokenConfig::default()).unwrap(),
            PolicyEngine::from_text(include_str!("../../policies/default.cedar"), "default").unwrap(),
            store,
        )
        .with_clock(clock.clone());
        let agent = principal("alice", &[Role::Agent]);
        let skill = SkillSummary {
            id: "skill-3".into(),
            version: semver::Version::new(1, 0, 0),
            side_effect: SideEffect::ReadOnly,
            capabilities: vec![],
            digest: "sha256:00".into(),
            cpu_metering: plugin_abi::CpuMetering::Fuel,
        };
        let n = 1_000u32;
        let started = Instant::now();
        for i in 0..n {
            let step = StepContext {
                run_id: format!("append-{i}"),
                step_id: "step-1".into(),
                traceparent: TraceContext::new_root().to_string(),
            };
            control
                .govern(&agent, &step, &skill.id, Some(&skill), "sha256:input")
                .await
                .unwrap();
        }
        let append = started.elapsed() / n;
        println!(
            "\naudit append with the Merkle tree: {:.2} ms each ({:.0} appends/s, `govern`, one durable transaction); \
             the tree's own work per append at {ENTRIES} entries: {:.2} µs = {:.2}% of an append",
            append.as_secs_f64() * 1e3,
            1.0 / append.as_secs_f64(),
            tree_per_append.as_secs_f64() * 1e6,
            100.0 * tree_per_append.as_secs_f64() / append.as_secs_f64()
        );

        let runs = 10_000;
        let started = Instant::now();
        for i in 0..runs {
            let steps = vec![StepSpec {
                step_id: "step-1".into(),
                skill: "pii-redact".into(),
                input: serde_json::json!({ "text": "x" }),
            }];
            control
                .create_run(
                    &format!("run-{i:05}"),
                    &agent,
                    steps,
                    &TraceContext::new_root().to_string(),
                    "node-that-dies",
                )
                .await
                .unwrap();
        }
        let created = started.elapsed();
        clock.advance(control.lease_ttl_ms() + 1);
        let started = Instant::now();
        let (mut passes, mut taken, mut finding) = (0, 0, Duration::ZERO);
        loop {
            let found_at = Instant::now();
            let candidates = control.recovery_candidates(1_000).await.unwrap();
            finding += found_at.elapsed();
            if candidates.is_empty() {
                break;
            }
            passes += 1;
            for candidate in candidates {
                if control
                    .claim_run(&candidate.record.run_id, "recovering-node")
                    .await
                    .unwrap()
                    .is_some()
                {
                    taken += 1;
                }
            }
        }
        let recovery = started.elapsed();
        assert!(taken >= runs, "only {taken} of {runs} runs were taken over");
        println!(
            "\nrecovery of {runs} interrupted runs (created in {:.1} s): {passes} passes took {taken} over in {:.1} s \
             ({:.0} runs/s; finding candidates {:.1} s of it, the rest one audited takeover transaction per run)",
            created.as_secs_f64(),
            recovery.as_secs_f64(),
            f64::from(taken) / recovery.as_secs_f64(),
            finding.as_secs_f64()
        );

        // End to end through the store: proofs are computed from the whole log, after a full
        // verification of it (chain, anchor, tree), so they cost O(n) at the log's size.
        let old = control.checkpoint().await.unwrap();
        for i in 0..100 {
            let step = StepContext {
                run_id: format!("later-{i}"),
                step_id: "step-1".into(),
                traceparent: TraceContext::new_root().to_string(),
            };
            control
                .govern(&agent, &step, &skill.id, Some(&skill), "sha256:input")
                .await
                .unwrap();
        }
        let started = Instant::now();
        let verified = control.verify_audit().await.unwrap();
        let verify = started.elapsed();
        assert!(
            matches!(verified, control_plane::ChainVerification::Intact { .. }),
            "{verified:?}"
        );
        let started = Instant::now();
        let inclusion = control.prove_inclusion(1).await.unwrap();
        let prove = started.elapsed();
        let started = Instant::now();
        let consistency = control.prove_consistency(&old.note).await.unwrap();
        let consistent = started.elapsed();
        let verifier = control.checkpoint_verifier().await.unwrap();
        let started = Instant::now();
        inclusion.check(&verifier).unwrap();
        consistency.check(&verifier).unwrap();
        let checked = started.elapsed();
        println!(
            "\nthrough the store, at {} entries: verify {:.0} ms; prove inclusion {:.0} ms, {} bytes as JSON; \
             prove consistency from {} entries {:.0} ms, {} bytes as JSON; both proofs checked offline in {:.2} ms",
            control.checkpoint().await.unwrap().checkpoint.size,
            verify.as_secs_f64() * 1e3,
            prove.as_secs_f64() * 1e3,
            serde_json::to_string(&inclusion).unwrap().len(),
            old.checkpoint.size,
            consistent.as_secs_f64() * 1e3,
            serde_json::to_string(&consistency).unwrap().len(),
            checked.as_secs_f64() * 1e3
        );
    });
}
