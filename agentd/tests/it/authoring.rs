//! Skill authoring: `agentd wit`, `agentd skill pack` (pre-initialisation, digest, manifest)
//! and `agentd skill check`.

use std::path::PathBuf;

use crate::{Env, envelope, packages_dir, repo_root, stderr, stdout};

/// The component `cargo xtask build-plugins` built for `crate_name`, before packaging.
fn built_component(crate_name: &str) -> PathBuf {
    packages_dir()
        .parent()
        .unwrap()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")))
}

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{:?}: {}", output.status, stderr(output));
    serde_json::from_str(&stdout(output)).unwrap()
}

#[test]
fn wit_prints_the_contract_both_worlds_included() {
    let env = Env::new();
    let output = env.agentd(&["wit"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("/// The contract between the agentd host"), "{text}");
    for needle in [
        "package agentd:skill@0.1.0;",
        "world skill {",
        "world skill-preinit {",
        "export invoke:",
    ] {
        assert!(text.contains(needle), "{needle} missing");
    }
}

#[test]
fn pack_preinitialises_and_the_package_loads_runs_and_checks_like_the_original() {
    let env = Env::new();
    let source = repo_root().join("plugins/pii-redact");
    let component = built_component("pii-redact");
    let raw = std::fs::read(&component).unwrap();
    let packages = env.dir.path().join("packages");
    let pack = |out: &str, extra: &[&str]| {
        let out = packages.join(out);
        let mut args = vec![
            "--json",
            "skill",
            "pack",
            source.to_str().unwrap(),
            "--component",
            component.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        (out.clone(), json(&env.agentd(&args, None)))
    };

    let (preinit_dir, preinit) = pack("preinit", &[]);
    assert_eq!(preinit["preinitialized"], true, "{preinit}");
    assert!(preinit["init_fuel"].as_u64().unwrap() > 0, "{preinit}");
    let packaged = std::fs::read(preinit_dir.join("skill.wasm")).unwrap();
    assert_ne!(packaged, raw, "the snapshot rewrites the component");
    let manifest = std::fs::read_to_string(preinit_dir.join("skill.toml")).unwrap();
    assert!(manifest.contains(preinit["sha256"].as_str().unwrap()), "{manifest}");
    // Reproducible: the same component packs to the same bytes (the seed Rust's hash maps take
    // during initialisation is derived from the component, not drawn at random).
    let (_, again) = pack("again", &[]);
    assert_eq!(again["sha256"], preinit["sha256"]);

    // Packaged as it was built: the digest is the built file's, as `sha256sum` gives it.
    let (plain_dir, plain) = pack("plain", &["--no-preinit"]);
    assert_eq!(plain["preinitialized"], false);
    assert_eq!(std::fs::read(plain_dir.join("skill.wasm")).unwrap(), raw);
    assert_eq!(
        plain["sha256"].as_str().unwrap(),
        agent_runtime::package::sha256_digest(&raw)
    );

    // Both pass every load check, report the same skill and schemas, and answer alike.
    let checked = json(&env.agentd(&["--json", "skill", "check", preinit_dir.to_str().unwrap()], None));
    let checked_plain = json(&env.agentd(&["--json", "skill", "check", plain_dir.to_str().unwrap()], None));
    assert_eq!(checked["summary"]["digest"], preinit["sha256"]);
    assert_eq!(checked["summary"]["id"], "pii-redact");
    assert_eq!(checked["input_schema"], checked_plain["input_schema"]);
    assert!(checked["input_schema"]["properties"]["text"].is_object(), "{checked}");

    let token = env.token("alice", "agent");
    let input = envelope(serde_json::json!({ "text": "mail jane@example.org, card 4111 1111 1111 1111" }));
    let run = |plugins: &PathBuf| {
        // Only this one package in the directory.
        let dir = env
            .dir
            .path()
            .join(format!("only-{}", plugins.file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("pii-redact");
        if !target.exists() {
            std::fs::rename(plugins, &target).unwrap();
        }
        let output = env.agentd(
            &[
                "--json",
                "--plugins",
                dir.to_str().unwrap(),
                "run",
                "pii-redact",
                "--input",
                "-",
                "--token",
                &token,
            ],
            Some(&input),
        );
        json(&output)["report"]["outcome"].clone()
    };
    let from_snapshot = run(&preinit_dir);
    assert_eq!(from_snapshot, run(&plain_dir));
    assert_eq!(from_snapshot["output"]["counts"]["card"], 1, "{from_snapshot}");
}

#[test]
fn pack_and_check_refuse_bad_input_by_name() {
    let env = Env::new();
    let source = repo_root().join("plugins/pii-redact");
    let out = env.dir.path().join("out");
    // The manifest is not a component.
    let output = env.agentd(
        &[
            "skill",
            "pack",
            source.to_str().unwrap(),
            "--component",
            source.join("skill.toml").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("not a WebAssembly"), "{}", stderr(&output));
    assert!(!out.exists(), "nothing is written for a refused component");

    // A package whose component changed after packaging fails `check` with exit 5.
    let copy = env.dir.path().join("tampered");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(packages_dir().join("noop/skill.toml"), copy.join("skill.toml")).unwrap();
    std::fs::copy(packages_dir().join("word-count/skill.wasm"), copy.join("skill.wasm")).unwrap();
    let output = env.agentd(&["skill", "check", copy.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(stderr(&output).contains("sha256"), "{}", stderr(&output));
}

/// Issue 16: `agentd skill new --lang` writes a skill to start from in each language: source,
/// the WIT contract, a source manifest the loader accepts with that language's limits, and an
/// executable build script with pinned tool versions. It never overwrites, and refuses an id
/// the manifest would refuse. (`cargo xtask skill-templates` builds and runs all three.)
#[test]
fn skill_new_writes_each_language_and_overwrites_nothing() {
    let env = Env::new();
    let parent = env.dir.path().join("skills");
    for (lang, source, pin) in [
        ("rust", "src/lib.rs", "wit-bindgen = { version = \"=0.61.1\""),
        ("python", "app.py", "componentize-py 0.25.1"),
        ("js", "app.js", "\"@bytecodealliance/componentize-js\": \"0.22.0\""),
    ] {
        let id = format!("hello-{lang}");
        let created = json(&env.agentd(
            &[
                "--json",
                "skill",
                "new",
                &id,
                "--lang",
                lang,
                "--dir",
                parent.to_str().unwrap(),
            ],
            None,
        ));
        let dir = parent.join(&id);
        assert_eq!(created["dir"], dir.to_str().unwrap());
        let text = |path: &str| std::fs::read_to_string(dir.join(path)).unwrap();
        assert!(text(source).contains(&id), "{lang}: the source names the skill");
        assert!(!text(source).contains("{{"), "{lang}: a placeholder was left");
        // The schemas in the source are the template's, as JSON.
        assert_eq!(text("wit/skill.wit"), plugin_abi::WIT);
        let pinned = [text("build.sh"), text("README.md")]
            .into_iter()
            .chain(
                ["Cargo.toml", "package.json"]
                    .iter()
                    .filter(|f| dir.join(f).exists())
                    .map(|f| text(f)),
            )
            .any(|text| text.contains(pin));
        assert!(pinned, "{lang}: the toolchain version is pinned ({pin})");
        let manifest = agent_runtime::Manifest::parse(
            &text("skill.toml"),
            &dir.join("skill.toml"),
            &agent_runtime::LimitCeilings::default(),
        )
        .unwrap();
        assert_eq!(manifest.id, id);
        if lang != "rust" {
            assert!(
                manifest.limits.memory_bytes >= 16 * 1024 * 1024,
                "{lang}: CPython and SpiderMonkey need 16 MiB"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("build.sh")).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{lang}: build.sh is executable");
        }
        // Again: refused, and the files are untouched.
        std::fs::write(dir.join("app.marker"), "mine").unwrap();
        let again = env.agentd(
            &["skill", "new", &id, "--lang", lang, "--dir", parent.to_str().unwrap()],
            None,
        );
        assert_eq!(again.status.code(), Some(1));
        assert!(
            stderr(&again).contains("already exists and is not empty; nothing was written"),
            "{}",
            stderr(&again)
        );
        assert_eq!(text("app.marker"), "mine");
    }
    let bad = env.agentd(
        &[
            "skill",
            "new",
            "Bad_Name",
            "--lang",
            "python",
            "--dir",
            parent.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("`Bad_Name` cannot be a skill id"),
        "{}",
        stderr(&bad)
    );
    assert!(!parent.join("Bad_Name").exists());
    let unknown = env.agentd(&["skill", "new", "x", "--lang", "cobol"], None);
    assert_eq!(unknown.status.code(), Some(2), "a usage error");
}
