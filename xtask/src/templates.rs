//! `cargo xtask skill-templates [--bench]`: every `agentd skill new` template, built with its
//! language's pinned toolchain, checked, and run through agentd (issue 16).
//!
//! The toolchains are installed, pinned, into the target directory when missing: componentize-py
//! 0.25.1 from PyPI into a virtual environment, componentize-js 0.22.0 from npm. For each
//! language, `agentd skill new` writes `word-freq-<lang>`, its `build.sh` builds and packages
//! it, `agentd skill check` runs every load check, and `agentd run` must give the same word
//! counts (computed here, independently) in all three languages; input off the schema must end
//! `invalid-input` without reaching the skill. With `--bench`, the per-language benchmark
//! (`agent-runtime`'s `languages` bench) runs on the packages built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{build_agentd, cargo, run, target_dir};

const COMPONENTIZE_PY: &str = "0.25.1";
const COMPONENTIZE_JS: &str = "0.22.0";
const LANGS: [&str; 3] = ["rust", "python", "js"];

pub(crate) fn skill_templates(root: &Path, args: &[String]) -> Result<()> {
    let bench = match args {
        [] => false,
        [flag] if flag == "--bench" => true,
        _ => bail!("usage: cargo xtask skill-templates [--bench]"),
    };
    let target = target_dir(root);
    let tools = target.join("tools");
    let componentize_py = ensure_componentize_py(&tools)?;
    let componentize_js = ensure_componentize_js(&tools)?;
    let agentd = build_agentd(root)?;
    let out = target.join("skill-templates");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    let packages = out.join("packages");
    std::fs::create_dir_all(&packages)?;
    let state = out.join("state");
    let text = std::fs::read_to_string(root.join("README.md")).context("cannot read README.md")?;
    let expected = word_frequencies(&text, 5);

    for lang in LANGS {
        let id = format!("word-freq-{lang}");
        let started = Instant::now();
        let created = Command::new(&agentd)
            .args(["skill", "new", &id, "--lang", lang, "--dir"])
            .arg(&out)
            .output()?;
        ensure(&created, &format!("agentd skill new --lang {lang}"))?;
        let dir = out.join(&id);
        let mut build = Command::new("sh");
        build
            .arg(dir.join("build.sh"))
            .env("AGENTD", &agentd)
            .env("COMPONENTIZE_PY", &componentize_py)
            .env("COMPONENTIZE_JS", &componentize_js)
            // Rust: a target directory kept between runs, apart from the workspace's.
            .env("CARGO_TARGET_DIR", target.join("skill-templates-cargo"));
        let built = build.output()?;
        ensure(&built, &format!("{id}/build.sh"))?;
        let build_s = started.elapsed().as_secs_f64();
        let checked = Command::new(&agentd)
            .args(["skill", "check"])
            .arg(dir.join("package"))
            .output()?;
        ensure(&checked, &format!("agentd skill check {id}/package"))?;
        std::fs::rename(dir.join("package"), packages.join(lang))
            .with_context(|| format!("cannot move {id}/package into {}", packages.display()))?;
        eprintln!(
            "xtask: {id}: built and packaged in {build_s:.1} s, {} bytes; every load check passed",
            std::fs::metadata(packages.join(lang).join("skill.wasm"))?.len()
        );
    }

    // One agentd state, all three packages: the same input must give the same answer.
    let agentd_in = |args: &[&str], stdin: Option<&str>| -> Result<std::process::Output> {
        let mut command = Command::new(&agentd);
        command
            .arg("--state-dir")
            .arg(&state)
            .arg("--plugins")
            .arg(&packages)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn()?;
        if let Some(stdin) = stdin {
            use std::io::Write as _;
            child.stdin.take().context("no stdin")?.write_all(stdin.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    };
    let token = agentd_in(
        &[
            "token",
            "issue",
            "--sub",
            "templates",
            "--role",
            "agent",
            "--tenant",
            "acme",
        ],
        None,
    )?;
    ensure(&token, "agentd token issue")?;
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let invoke = |input: serde_json::Value| {
        serde_json::json!({ "schema_version": "agentd.invoke.v1", "input": input }).to_string()
    };
    for lang in LANGS {
        let id = format!("word-freq-{lang}");
        let ran = agentd_in(
            &["--json", "run", &id, "--input", "-", "--token", &token],
            Some(&invoke(serde_json::json!({ "text": text, "top": 5 }))),
        )?;
        ensure(&ran, &format!("agentd run {id}"))?;
        let report: serde_json::Value =
            serde_json::from_slice(&ran.stdout).with_context(|| format!("agentd run {id} printed no JSON"))?;
        let output = &report["report"]["outcome"]["output"];
        if *output != expected {
            bail!("{id} answered {output}, expected {expected}");
        }
        let refused = agentd_in(
            &["--json", "run", &id, "--input", "-", "--token", &token],
            Some(&invoke(serde_json::json!({ "text": 5 }))),
        )?;
        let report: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap_or_default();
        let error = report["report"]["outcome"]["error"]["message"]
            .as_str()
            .unwrap_or_default();
        if refused.status.code() != Some(5)
            || !error.starts_with("the input does not match the skill's input schema: at /text")
            || report["report"]["metrics"]["instantiate_us"] != 0
        {
            bail!(
                "{id} with input off its schema: expected exit 5 and invalid-input before dispatch, got {:?}: {}",
                refused.status.code(),
                String::from_utf8_lossy(&refused.stdout)
            );
        }
        eprintln!("xtask: {id}: same counts as the reference; input off the schema refused before dispatch");
    }

    if bench {
        let mut bench = cargo(root);
        bench.env("AGENTD_LANGUAGE_PACKAGES", &packages).args([
            "bench",
            "--package",
            "agent-runtime",
            "--bench",
            "languages",
        ]);
        run(bench)?;
    }
    Ok(())
}

/// Word frequencies as every template computes them: maximal runs of ASCII letters and digits,
/// lower-cased; the `top` most frequent, by count then word.
fn word_frequencies(text: &str, top: usize) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
    }
    let mut ranked: Vec<(&String, &u64)> = counts.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    serde_json::json!({
        "total": counts.values().sum::<u64>(),
        "distinct": counts.len(),
        "top": ranked.iter().take(top).map(|(word, count)| serde_json::json!({ "word": word, "count": count })).collect::<Vec<_>>(),
    })
}

fn ensure(output: &std::process::Output, what: &str) -> Result<()> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// componentize-py at its pinned version, in a virtual environment under `tools`.
fn ensure_componentize_py(tools: &Path) -> Result<PathBuf> {
    let venv = tools.join("python");
    let binary = venv.join("bin").join("componentize-py");
    let pinned = |binary: &Path| {
        Command::new(binary).arg("--version").output().is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout).trim() == format!("componentize-py {COMPONENTIZE_PY}")
        })
    };
    if pinned(&binary) {
        return Ok(binary);
    }
    eprintln!(
        "xtask: installing componentize-py {COMPONENTIZE_PY} from PyPI into {}",
        venv.display()
    );
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    run(create).context("python3 with the venv module is needed for the Python template")?;
    let mut install = Command::new(venv.join("bin").join("pip"));
    install.args(["install", "--quiet", &format!("componentize-py=={COMPONENTIZE_PY}")]);
    run(install)?;
    if !pinned(&binary) {
        bail!(
            "{} is not componentize-py {COMPONENTIZE_PY} after installing it",
            binary.display()
        );
    }
    Ok(binary)
}

/// componentize-js at its pinned version, installed with npm under `tools`.
fn ensure_componentize_js(tools: &Path) -> Result<PathBuf> {
    let prefix = tools.join("node");
    let binary = prefix.join("node_modules").join(".bin").join("componentize-js");
    let pinned = |binary: &Path| {
        Command::new(binary)
            .arg("--version")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == COMPONENTIZE_JS)
    };
    if pinned(&binary) {
        return Ok(binary);
    }
    eprintln!(
        "xtask: installing componentize-js {COMPONENTIZE_JS} from npm into {}",
        prefix.display()
    );
    std::fs::create_dir_all(&prefix)?;
    let mut install = Command::new("npm");
    install
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&prefix)
        .arg(format!("@bytecodealliance/componentize-js@{COMPONENTIZE_JS}"));
    run(install).context("Node.js with npm is needed for the JavaScript template")?;
    if !pinned(&binary) {
        bail!(
            "{} is not componentize-js {COMPONENTIZE_JS} after installing it",
            binary.display()
        );
    }
    Ok(binary)
}
