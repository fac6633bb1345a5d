//! `cargo bench -p pii-redact --features reference --bench scan`: the one-pass scan against the
//! five-pattern reference on this machine's Debian changelogs, natively (the in-wasm figures
//! come from `cargo xtask demo`, see BENCHMARKS.md).
//!
//! Prints MiB/s for each over three interleaved rounds and checks that both find the same
//! matches on every file.

#![allow(clippy::print_stdout)]

use std::io::Read as _;
use std::time::{Duration, Instant};

fn changelogs() -> Vec<String> {
    let mut paths: Vec<_> = std::fs::read_dir("/usr/share/doc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("changelog.Debian.gz"))
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter_map(|path| {
            let mut bytes = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(path).ok()?)
                .read_to_end(&mut bytes)
                .ok()?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect()
}

fn time(documents: &[String], scan: fn(&str) -> Vec<(usize, usize, pii_redact::Kind)>) -> (Duration, usize) {
    let started = Instant::now();
    let found = documents.iter().map(|text| scan(text).len()).sum();
    (started.elapsed(), found)
}

fn main() {
    let documents = changelogs();
    let bytes: usize = documents.iter().map(String::len).sum();
    if documents.is_empty() {
        println!("no changelogs under /usr/share/doc: nothing to measure");
        return;
    }
    for text in &documents {
        assert_eq!(pii_redact::find(text), pii_redact::find_reference(text));
    }
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!("{} changelogs, {mib:.1} MiB", documents.len());
    let started = Instant::now();
    let windows: usize = documents
        .iter()
        .map(|text| pii_redact::windows(text.as_bytes()).len())
        .sum();
    println!(
        "windows alone: {:.1} MiB/s, {windows} windows",
        mib / started.elapsed().as_secs_f64()
    );
    for round in 1..=3 {
        let (reference, found_reference) = time(&documents, pii_redact::find_reference);
        let (one_pass, found) = time(&documents, pii_redact::find);
        assert_eq!(found, found_reference);
        let rate = |elapsed: Duration| mib / elapsed.as_secs_f64();
        println!(
            "round {round}: reference {:.1} MiB/s, one pass {:.1} MiB/s: {:.2}x ({found} matches)",
            rate(reference),
            rate(one_pass),
            reference.as_secs_f64() / one_pass.as_secs_f64()
        );
    }
}
