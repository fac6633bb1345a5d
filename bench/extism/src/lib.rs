//! Benchmark only (see `benches/compare.rs`): agentd's dispatch against Extism, in one run, on
//! the same skill logic (a no-op and `pii-redact`), the Extism side built from `plugin/` with
//! `extism-pdk`.
//!
//! This crate is a workspace member outside `default-members`: `cargo build`, `cargo test` and
//! CI never compile it or the second wasmtime Extism brings. Run it with
//! `cargo xtask bench-extism`.
