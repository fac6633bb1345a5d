//! `noop`: a pure skill that does nothing but answer with its version.
//!
//! Benchmarks dispatch it to measure the host's own cost per invocation (select, limits, host
//! linking, telemetry) against raw wasmtime on the same component. Hot-swap tests install its
//! `0.2.0` build (`plugins/noop-v2`, the same source) next to it; `sleep_ms` keeps an
//! invocation in flight while they do.

include!("skill.rs");
