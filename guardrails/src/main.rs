//! `guardrails check [--workspace DIR]`: exit 0 clean, 1 findings, 2 usage or config error.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI talks on stdout and stderr"
)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (workspace, ok) = match args.as_slice() {
        [command] if command == "check" => (PathBuf::from("."), true),
        [command, flag, dir] if command == "check" && flag == "--workspace" => (PathBuf::from(dir), true),
        _ => (PathBuf::new(), false),
    };
    if !ok {
        eprintln!("usage: guardrails check [--workspace DIR]");
        return ExitCode::from(2);
    }
    match guardrails::check(&workspace.join("Cargo.toml"), &guardrails::agentd_rules()) {
        Ok(findings) if findings.is_empty() => {
            println!("guardrails: {} rules, no findings", guardrails::agentd_rules().len());
            ExitCode::SUCCESS
        }
        Ok(findings) => {
            for finding in &findings {
                println!("{finding}\n");
            }
            println!("guardrails: {} findings", findings.len());
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("guardrails: {error}");
            ExitCode::from(2)
        }
    }
}
