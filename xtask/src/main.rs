//! Project automation (the cargo-xtask pattern): `cargo xtask <command>`.
//!
//! - `build-plugins`: installs the `wasm32-wasip2` target if missing, builds every plugin in
//!   `plugins/` as a component and packages it into `<target dir>/plugins/<id>/` with
//!   `agentd skill pack` (pre-initialised, with its manifest and the component's SHA-256);
//!   `demo` and `test` pass that directory on as `AGENTD_PLUGINS`.
//! - `demo [ARGS..]`: `build-plugins`, then `agentd demo ARGS..`.
//! - `test`: `build-plugins`, then the whole test suite (the default members).
//! - `bench-extism`: `build-plugins`, builds `bench/extism/plugin` for `wasm32-unknown-unknown`
//!   (installing the target if missing), then runs the agentd-vs-Extism benchmark.
//! - `skill-templates [--bench]`: every `agentd skill new` template (Rust, Python, JavaScript)
//!   built with its pinned toolchain (installed into the target directory when missing),
//!   checked and run; `--bench` then runs the per-language benchmark on them.
//! - `ci`: formatting, clippy with `-D warnings`, then `test`.

#![allow(clippy::print_stderr, reason = "xtask reports progress on stderr")]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod templates;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root()?;
    match command.as_str() {
        "build-plugins" => build_plugins(&root).map(drop),
        "demo" => {
            let packages = build_plugins(&root)?;
            let mut demo = cargo(&root);
            demo.env("AGENTD_PLUGINS", &packages);
            demo.args(["run", "--quiet", "--package", "agentd", "--", "demo"])
                .args(&rest);
            run(demo)
        }
        "test" => {
            let packages = build_plugins(&root)?;
            let mut test = cargo(&root);
            test.env("AGENTD_PLUGINS", &packages);
            // The default members: everything but the Extism comparison bench.
            test.args(["test"]).args(&rest);
            run(test)?;
            postgres_pass(&root, &rest)
        }
        "bench-extism" => {
            let packages = build_plugins(&root)?;
            let plugin = build_extism_plugin(&root)?;
            let mut bench = cargo(&root);
            bench
                .env("AGENTD_PLUGINS", &packages)
                .env("EXTISM_SKILLS_WASM", &plugin);
            bench
                .args(["bench", "--package", "extism-compare", "--bench", "compare"])
                .args(&rest);
            run(bench)
        }
        "ci" => {
            let mut fmt = cargo(&root);
            fmt.args(["fmt", "--all", "--check"]);
            run(fmt)?;
            let packages = build_plugins(&root)?;
            let mut clippy = cargo(&root);
            clippy.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
            run(clippy)?;
            let mut test = cargo(&root);
            test.env("AGENTD_PLUGINS", &packages);
            test.args(["test"]);
            run(test)
        }
        "fuzz" => fuzz(&root, &rest),
        "skill-templates" => templates::skill_templates(&root, &rest),
        _ => bail!(
            "usage: cargo xtask <build-plugins | demo [ARGS..] | test [ARGS..] | bench-extism [ARGS..] | ci | fuzz [SECONDS [TARGET..]] | skill-templates [--bench]>"
        ),
    }
}

/// With `AGENTD_TEST_DATABASE_URL` set (as `.ci/run` sets it), the control plane's store
/// suite runs a second time with every control plane on PostgreSQL (`AGENTD_TEST_STORE`),
/// each test in a schema of its own. Skipped when arguments narrowed the first pass.
fn postgres_pass(root: &Path, rest: &[String]) -> Result<()> {
    if std::env::var_os("AGENTD_TEST_DATABASE_URL").is_none() {
        eprintln!("xtask: AGENTD_TEST_DATABASE_URL is not set: the store suite ran on SQLite only");
        return Ok(());
    }
    if !rest.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: the control plane's store suite again, on PostgreSQL");
    // The binary the first pass built, run again: `cargo test -p control-plane` alone would
    // unify features over that one package and rebuild sqlx, cedar-policy and the rest with
    // another feature set (minutes on a cold machine). Asking cargo for the test executables of
    // the default members rebuilds nothing.
    let mut list = cargo(root);
    list.args(["test", "--no-run", "--message-format=json", "--quiet"]);
    let output = list.output().context("could not start cargo test --no-run")?;
    if !output.status.success() {
        bail!(
            "cargo test --no-run failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let executable = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "it"
                && message["manifest_path"]
                    .as_str()
                    .is_some_and(|path| Path::new(path) == root.join("control-plane").join("Cargo.toml"))
        })
        .and_then(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `it` test binary for control-plane")?;
    let mut test = Command::new(&executable);
    test.current_dir(root.join("control-plane"))
        .env("CARGO_MANIFEST_DIR", root.join("control-plane"))
        .env("AGENTD_TEST_STORE", "postgres");
    run(test)
}

/// The libFuzzer targets of `fuzz/` (FUZZING.md).
const FUZZ_TARGETS: [&str; 7] = [
    "invoke_envelope",
    "skill_manifest",
    "jwt_verify",
    "cedar_annotations",
    "capability",
    "workspace_path",
    "guest_values",
];

/// `cargo xtask fuzz [SECONDS [TARGET..]]`: runs each target (all by default) for `SECONDS`
/// (default 60) with cargo-fuzz on the nightly toolchain, starting from its checked-in seeds
/// (`fuzz/seeds/<target>`) and a working corpus kept in the target directory, and prints one
/// line per target: executions, corpus size, and whether it found a crash (saved under
/// `fuzz/artifacts/<target>/`). The instrumented build goes to `$AGENTD_FUZZ_TARGET_DIR`, by
/// default `<target>/fuzz`.
fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let seconds: u64 = match args.first() {
        Some(text) => text
            .parse()
            .with_context(|| format!("SECONDS must be a number, not `{text}`"))?,
        None => 60,
    };
    let targets: Vec<&str> = if args.len() > 1 {
        args[1..].iter().map(String::as_str).collect()
    } else {
        FUZZ_TARGETS.to_vec()
    };
    if let Some(unknown) = targets.iter().find(|target| !FUZZ_TARGETS.contains(target)) {
        bail!(
            "no fuzz target `{unknown}`; the targets are {}",
            FUZZ_TARGETS.join(", ")
        );
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !nightly {
        bail!(
            "cargo xtask fuzz needs a nightly toolchain for libFuzzer's coverage instrumentation (`rustup toolchain install nightly`)"
        );
    }
    let has_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_cargo_fuzz {
        eprintln!("xtask: installing cargo-fuzz");
        let mut install = Command::new("cargo");
        install.args(["install", "cargo-fuzz", "--locked", "--version", "0.13.2"]);
        run(install)?;
    }
    // Its own target directory: instrumented builds share nothing with the workspace's.
    let fuzz_target_dir =
        std::env::var_os("AGENTD_FUZZ_TARGET_DIR").map_or_else(|| target_dir(root).join("fuzz"), PathBuf::from);
    let mut failed = Vec::new();
    for target in targets {
        let corpus = fuzz_target_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut command = Command::new("rustup");
        command
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &fuzz_target_dir)
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=4096",
                "-print_final_stats=1",
            ]);
        let output = command
            .output()
            .with_context(|| format!("could not start {command:?}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|line| line.strip_prefix(&format!("stat::{name}:")))
                .map_or("?".to_owned(), |value| value.trim().to_owned())
        };
        let corpus_size = std::fs::read_dir(&corpus).map_or(0, Iterator::count);
        let verdict = if output.status.success() { "clean" } else { "FAILED" };
        eprintln!(
            "{target}: {verdict}, {} executions in {seconds} s, corpus {corpus_size} inputs, peak RSS {} MB",
            stat("number_of_executed_units"),
            stat("peak_rss_mb")
        );
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs under fuzz/artifacts/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The workspace root, asked of cargo at run time (not baked in at compile time, so an xtask
/// binary shared through a common target directory still acts on the checkout it runs in).
fn workspace_root() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .context("could not run `cargo locate-project`")?;
    if !output.status.success() {
        bail!(
            "`cargo locate-project` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let manifest = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    manifest
        .parent()
        .map(Path::to_owned)
        .context("the workspace manifest has no parent directory")
}

/// Builds the `agentd` binary (debug profile); returns its path.
fn build_agentd(root: &Path) -> Result<PathBuf> {
    let mut build = cargo(root);
    build.args(["build", "--quiet", "--package", "agentd"]);
    run(build)?;
    Ok(target_dir(root)
        .join("debug")
        .join(format!("agentd{}", std::env::consts::EXE_SUFFIX)))
}

/// The cargo target directory: `$CARGO_TARGET_DIR` or `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(root);
    command
}

fn run(mut command: Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Installs the wasm target through rustup when the toolchain lacks it.
fn ensure_wasm_target() -> Result<()> {
    ensure_target(WASM_TARGET)
}

/// Builds the Extism flavour of the benchmark skills (`bench/extism/plugin`, a core module for
/// `wasm32-unknown-unknown`, the target extism-pdk documents); returns the `.wasm` path.
fn build_extism_plugin(root: &Path) -> Result<PathBuf> {
    const EXTISM_TARGET: &str = "wasm32-unknown-unknown";
    ensure_target(EXTISM_TARGET)?;
    let mut build = cargo(root);
    build.args([
        "build",
        "--quiet",
        "--release",
        "--target",
        EXTISM_TARGET,
        "--package",
        "extism-skills",
    ]);
    run(build)?;
    Ok(target_dir(root)
        .join(EXTISM_TARGET)
        .join("release")
        .join("extism_skills.wasm"))
}

/// Installs `target` through rustup when the toolchain lacks it.
fn ensure_target(target: &str) -> Result<()> {
    let output = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .context("could not run rustc")?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if output.status.success() && libdir.is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing the {target} target with rustup");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", target]);
    run(rustup).with_context(|| format!("the {target} target is missing and rustup could not install it"))
}

/// The plugin crates: every directory under `plugins/` holding a `skill.toml`.
fn plugin_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("plugins"))
        .context("cannot list plugins/")?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("skill.toml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Removes packages whose plugin directory is gone, so the packages directory holds exactly
/// the plugins of this checkout. The target directory is shared between checkouts (CI keeps it
/// across clones), and a package left by another branch would otherwise be loaded by the tests.
fn remove_stale_packages(packages: &Path, dirs: &[PathBuf]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(packages) else {
        return Ok(());
    };
    let current: Vec<_> = dirs.iter().filter_map(|dir| dir.file_name()).collect();
    for entry in entries.filter_map(Result::ok) {
        if !current.contains(&entry.file_name().as_os_str()) && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing stale package {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The file marking a plugin whose package every load must refuse.
const REFUSED_MARKER: &str = "refused-at-load";

/// Builds and packages every plugin; returns the packages directory.
fn build_plugins(root: &Path) -> Result<PathBuf> {
    ensure_wasm_target()?;
    let dirs = plugin_dirs(root)?;
    let mut build = cargo(root);
    build.args(["build", "--quiet", "--release", "--target", WASM_TARGET]);
    let mut crates = Vec::new();
    for dir in &dirs {
        let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml"))?)?;
        let name = manifest["package"]["name"]
            .as_str()
            .context("plugin Cargo.toml lacks package.name")?
            .to_owned();
        build.args(["--package", &name]);
        crates.push((dir.clone(), name));
    }
    run(build)?;

    let target = target_dir(root);
    let packages = target.join("plugins");
    // Hostile plugins that no load may accept (a `refused-at-load` file in the plugin's
    // directory) go to their own directory, so every test and the CLI that load `plugins/` keep
    // loading exactly the packages meant to load.
    let refused = target.join("plugins-refused");
    let (refused_dirs, loaded_dirs): (Vec<PathBuf>, Vec<PathBuf>) =
        dirs.iter().cloned().partition(|dir| dir.join(REFUSED_MARKER).is_file());
    remove_stale_packages(&packages, &loaded_dirs)?;
    remove_stale_packages(&refused, &refused_dirs)?;
    // Packaging is `agentd skill pack` (pre-initialisation, digest, manifest), the tool skill
    // authors use: built once here, run per plugin.
    let agentd = build_agentd(root)?;
    for (dir, crate_name) in crates {
        let packages = if dir.join(REFUSED_MARKER).is_file() {
            &refused
        } else {
            &packages
        };
        let wasm = target
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", crate_name.replace('-', "_")));
        // Named after the plugin's directory, not its skill id: two versions of one skill
        // (plugins/noop and plugins/noop-v2) are two packages.
        let package = packages.join(dir.file_name().context("a plugin directory has no name")?);
        let mut pack = Command::new(&agentd);
        pack.arg("skill")
            .arg("pack")
            .arg(&dir)
            .arg("--component")
            .arg(&wasm)
            .arg("--out")
            .arg(&package);
        let output = pack
            .output()
            .with_context(|| format!("could not start {}", agentd.display()))?;
        if !output.status.success() {
            bail!(
                "packaging plugins/{} failed:\n{}",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(packages)
}
