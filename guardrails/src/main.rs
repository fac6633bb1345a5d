//! `guardrails check` and `guardrails selftest`.
//!
//! Exit codes: 0 clean (selftest: every mutant caught), 1 findings (selftest: a mutant
//! escaped), 2 a configuration or usage error.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI talks on stdout and stderr"
)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guardrails::output::Format;

/// Enforces one-way crate rules in a Cargo workspace (guardrails.toml).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks the workspace: exit 0 clean, 1 findings, 2 config or usage error.
    Check {
        /// The workspace root.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// The config file (default: <workspace>/guardrails.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Pass --offline to cargo metadata.
        #[arg(long)]
        offline: bool,
    },
    /// Proposes a guardrails.toml from today's dependency graph: one rule per layer (a layer
    /// never depends on the layers above it), each holding today, reasons left to write.
    Init {
        /// The workspace root.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// Write <workspace>/guardrails.toml (refused when it exists) instead of printing.
        #[arg(long)]
        write: bool,
        /// Pass --offline to cargo metadata.
        #[arg(long)]
        offline: bool,
    },
    /// Draws the members by layer with their edges; with a guardrails.toml, edges that break a
    /// rule are red and name it.
    Graph {
        /// The workspace root.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// The config file (default: <workspace>/guardrails.toml, when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = guardrails::graph::GraphFormat::Mermaid)]
        format: guardrails::graph::GraphFormat,
        /// Pass --offline to cargo metadata.
        #[arg(long)]
        offline: bool,
    },
    /// Copies the workspace to a temporary directory, injects every supported reference form
    /// for every rule, and reports how many were caught: exit 0 only at 100%.
    Selftest {
        /// The workspace root.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// Print every mutant, not only escapes.
        #[arg(long)]
        verbose: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Check {
            workspace,
            config,
            format,
            offline,
        } => {
            let options = guardrails::Options {
                offline,
                ..Default::default()
            };
            let config_path = config.unwrap_or_else(|| workspace.join(guardrails::config::CONFIG_FILE));
            let result = guardrails::Config::load(&config_path)
                .and_then(|loaded| Ok((guardrails::check_with(&workspace, &loaded, &options)?, loaded)));
            match result {
                Ok((report, loaded)) => {
                    let color = format == Format::Human && std::io::stdout().is_terminal();
                    let text = guardrails::output::render(&report, &loaded, format, color);
                    let _ = std::io::stdout().write_all(text.as_bytes());
                    if report.findings.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(error) => {
                    eprintln!("guardrails: error: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Init {
            workspace,
            write,
            offline,
        } => match guardrails::Workspace::load(&workspace, offline) {
            Ok(loaded) => {
                let proposal = guardrails::graph::init(&loaded);
                if !write {
                    print!("{proposal}");
                    return ExitCode::SUCCESS;
                }
                let path = workspace.join(guardrails::config::CONFIG_FILE);
                match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(mut file) => match file.write_all(proposal.as_bytes()) {
                        Ok(()) => {
                            eprintln!(
                                "guardrails: wrote {}; fill in each reason, then run `guardrails check`",
                                path.display()
                            );
                            ExitCode::SUCCESS
                        }
                        Err(error) => {
                            eprintln!("guardrails init: error: cannot write {}: {error}", path.display());
                            ExitCode::from(2)
                        }
                    },
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        eprintln!(
                            "guardrails init: error: {} exists; nothing written (run without --write to see the proposal)",
                            path.display()
                        );
                        ExitCode::from(2)
                    }
                    Err(error) => {
                        eprintln!("guardrails init: error: cannot create {}: {error}", path.display());
                        ExitCode::from(2)
                    }
                }
            }
            Err(error) => {
                eprintln!("guardrails init: error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Graph {
            workspace,
            config,
            format,
            offline,
        } => {
            let loaded = match guardrails::Workspace::load(&workspace, offline) {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("guardrails graph: error: {error}");
                    return ExitCode::from(2);
                }
            };
            let config_path = config
                .clone()
                .unwrap_or_else(|| workspace.join(guardrails::config::CONFIG_FILE));
            let report = if config.is_some() || config_path.exists() {
                let options = guardrails::Options {
                    offline,
                    ..Default::default()
                };
                match guardrails::Config::load(&config_path)
                    .and_then(|loaded_config| guardrails::check::run(&loaded, &loaded_config, &options))
                {
                    Ok(report) => Some(report),
                    Err(error) => {
                        eprintln!("guardrails graph: error: {error}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                None
            };
            print!("{}", guardrails::graph::render(&loaded, report.as_ref(), format));
            ExitCode::SUCCESS
        }
        Command::Selftest { workspace, verbose } => match guardrails::selftest::run(&workspace) {
            Ok(outcome) => {
                print!("{}", outcome.render(verbose));
                if outcome.all_caught() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(error) => {
                eprintln!("guardrails selftest: error: {error}");
                ExitCode::from(2)
            }
        },
    }
}
