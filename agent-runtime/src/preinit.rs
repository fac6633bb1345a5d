//! Pre-initialisation at packaging time: run a component's `wizer-initialize` export once and
//! snapshot the result into the component, so that every fresh instance starts initialised.
//!
//! The snapshot is Wizer's (`wasmtime-wizer`, the wasmtime project's pre-initialiser, which
//! took in `component-init` for components): it instruments the component so that its memories
//! and globals can be read, runs the initialisation, reads them back and writes them into the
//! component's data segments. The `wizer-initialize` export stays (see [`preinitialize`]); the
//! host never calls it. Only `wasmtime-wizer`'s component rewriting is used;
//! instantiation and the calls run on an engine configured here, under the skill's own limits.
//!
//! Initialisation runs guest code, so it is bounded like a call: the manifest's
//! `limits.memory_bytes` and `limits.fuel`, and every import (WASI, the host interface) traps
//! but `wasi:random/insecure-seed`, which Rust's hash maps need (see [`define_insecure_seed`]).
//! Whatever the initialisation computes must therefore come from the component alone.

use std::time::{Duration, Instant};

use wasmtime::component::{Component, Instance, Linker, WasmList};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::package::Limits;

/// The export a component offers for pre-initialisation (`world skill-preinit` in
/// `plugin-abi/wit/skill.wit`); Wizer's default name.
pub const INIT_EXPORT: &str = "wizer-initialize";

/// A pre-initialised component and what it cost.
#[derive(Debug)]
pub struct Preinitialized {
    /// The rewritten component: initialised memories and globals.
    pub component: Vec<u8>,
    /// Fuel the initialisation burnt.
    pub fuel: u64,
    /// Wall time of instrumenting, compiling, running and snapshotting.
    pub elapsed: Duration,
}

/// Why a component could not be pre-initialised.
#[derive(Debug, thiserror::Error)]
pub enum PreinitError {
    /// The component could not be instrumented, compiled or rewritten (it is not a valid
    /// component, or uses something Wizer cannot snapshot, such as imported memories).
    #[error("cannot pre-initialise the component: {0}")]
    Unsupported(String),
    /// `wizer-initialize` trapped: it called an import (every import traps during
    /// initialisation), ran out of fuel (`limits.fuel`), or grew memory past
    /// `limits.memory_bytes`.
    #[error(
        "`{INIT_EXPORT}` failed: {0}; initialisation may compute and allocate within the manifest's `limits.fuel` and `limits.memory_bytes`, and must not call the host"
    )]
    Trapped(String),
}

impl PreinitError {
    /// Never: the same component fails the same way again.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Whether `component` exports [`INIT_EXPORT`] at its root (read from the export section
/// only; nothing is compiled).
pub fn has_init_export(component: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentExportSection(reader)) if depth == 0 => {
                if reader
                    .into_iter()
                    .flatten()
                    .any(|export| export.name.name == INIT_EXPORT)
                {
                    return true;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Pre-initialises `component`: returns `None` when it has no [`INIT_EXPORT`], else the
/// rewritten component.
///
/// # Errors
///
/// [`PreinitError::Unsupported`] when Wizer cannot instrument, compile or rewrite it,
/// [`PreinitError::Trapped`] when initialisation traps or exceeds `limits`.
pub async fn preinitialize(component: &[u8], limits: &Limits) -> Result<Option<Preinitialized>, PreinitError> {
    if !has_init_export(component) {
        return Ok(None);
    }
    let started = Instant::now();
    let unsupported = |error: wasmtime::Error| PreinitError::Unsupported(format!("{error:#}"));
    let mut wizer = Wizer::new();
    // Keep the export: with it removed, wasmtime-wizer 48 leaves the component's alias of the
    // core `wizer-initialize` export in place and writes an invalid component whenever the
    // core export has the same name, which is how wit-bindgen names it
    // (bytecodealliance/wasmtime#13168). The host never calls it, and the guest SDK's hook
    // runs the initialiser through a `OnceLock`, so a second call does nothing.
    wizer.keep_init_func(true);
    let (context, instrumented) = wizer.instrument_component(component).map_err(unsupported)?;

    let mut config = Config::new();
    config.wasm_component_model(true).consume_fuel(true);
    let engine = Engine::new(&config).map_err(unsupported)?;
    let instrumented = Component::new(&engine, &instrumented).map_err(unsupported)?;
    let mut linker: Linker<StoreLimits> = Linker::new(&engine);
    define_insecure_seed(&mut linker, &engine, &instrumented, component).map_err(unsupported)?;
    linker
        .define_unknown_imports_as_traps(&instrumented)
        .map_err(unsupported)?;
    let memory = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
    let mut store = Store::new(&engine, StoreLimitsBuilder::new().memory_size(memory).build());
    store.limiter(|limits| limits);
    store.set_fuel(limits.fuel).map_err(unsupported)?;

    let trapped = |error: wasmtime::Error| PreinitError::Trapped(format!("{error:#}"));
    let instance = linker
        .instantiate_async(&mut store, &instrumented)
        .await
        .map_err(trapped)?;
    let init = instance
        .get_typed_func::<(), ()>(&mut store, INIT_EXPORT)
        .map_err(|error| PreinitError::Unsupported(format!("`{INIT_EXPORT}` is not a `func()`: {error:#}")))?;
    init.call_async(&mut store, ()).await.map_err(trapped)?;
    let fuel = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));

    let mut state = Snapshotting {
        store: &mut store,
        instance,
        failure: None,
    };
    let rewritten = wizer
        .snapshot_component(&context, &mut state)
        .await
        .map_err(unsupported)?;
    if let Some(failure) = state.failure {
        return Err(PreinitError::Unsupported(failure));
    }
    Ok(Some(Preinitialized {
        component: rewritten,
        fuel,
        elapsed: started.elapsed(),
    }))
}

/// The WASI interface whose one function initialisation may call (any `0.2.x`).
const INSECURE_SEED: &str = "wasi:random/insecure-seed@0.2.";

/// Links `wasi:random/insecure-seed#insecure-seed` for initialisation, answering a seed
/// derived from the component (`original`) itself: the first 16 bytes of its SHA-256.
///
/// Rust's `std` seeds every `HashMap` from it, and libraries build hash maps while they
/// initialise (regex-automata names capture groups in one), so without it nearly every Rust
/// initialiser would trap. WASI defines this seed as a value for hash-flooding resistance, not
/// a secret, and the snapshot freezes it into the package whatever its source, where whoever
/// holds the package can read it; deriving it from the component keeps packaging reproducible
/// (the same component packs to the same digest). Every other import still traps (ADR 0018).
fn define_insecure_seed(
    linker: &mut Linker<StoreLimits>,
    engine: &Engine,
    component: &Component,
    original: &[u8],
) -> wasmtime::Result<()> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(original);
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let seed = (word(0), word(8));
    let names: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with(INSECURE_SEED))
        .collect();
    for name in names {
        linker
            .instance(&name)?
            .func_wrap("insecure-seed", move |_, (): ()| Ok((seed,)))?;
    }
    Ok(())
}

/// Reads the instrumented instance's state for Wizer: each call reaches a function that
/// Wizer's instrumentation added under `wasmtime:wizer/access`.
///
/// Wizer's trait cannot return errors; a failed read is kept in `failure` (and a zero value
/// returned), and [`preinitialize`] refuses the snapshot.
struct Snapshotting<'a> {
    store: &'a mut Store<StoreLimits>,
    instance: Instance,
    failure: Option<String>,
}

impl Snapshotting<'_> {
    async fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: wasmtime::component::Lift + Send + Sync + 'static,
    {
        let found = self
            .instance
            .get_export_index(&mut *self.store, None, instance)
            .and_then(|parent| self.instance.get_export_index(&mut *self.store, Some(&parent), func));
        let result = match found {
            Some(index) => match self.instance.get_typed_func::<(), (R,)>(&mut *self.store, index) {
                Ok(typed) => typed.call_async(&mut *self.store, ()).await.map(|(value,)| value),
                Err(error) => Err(error),
            },
            None => Err(wasmtime::format_err!(
                "the instrumented component lacks `{instance}#{func}`"
            )),
        };
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.failure
                    .get_or_insert_with(|| format!("reading `{instance}#{func}`: {error:#}"));
                None
            }
        }
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or(0)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or(0)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).await.map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).await.map_or(0, f64::to_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(fuel: u64) -> Limits {
        Limits {
            memory_bytes: 1 << 20,
            fuel,
            deadline_ms: 1_000,
            max_concurrency: 1,
            max_queue: 0,
            max_reuse: 0,
            cpu: plugin_abi::CpuMetering::Fuel,
        }
    }

    /// A component whose `wizer-initialize` runs `init` (a core function body) and whose `read`
    /// returns the i32 at address 0 of its memory; it imports one function, `host-call`. The
    /// core export has the component export's name, as wit-bindgen writes it.
    fn component(init: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
                (import "host-call" (func $host))
                (core func $host_lowered (canon lower (func $host)))
                (core module $m
                    (import "" "host-call" (func $host))
                    (memory (export "memory") 1)
                    (global $calls (mut i32) (i32.const 0))
                    (func (export "wizer-initialize") {init})
                    (func (export "read") (result i32) (i32.load (i32.const 0))))
                (core instance $imports (export "host-call" (func $host_lowered)))
                (core instance $i (instantiate $m (with "" (instance $imports))))
                (func (export "wizer-initialize") (canon lift (core func $i "wizer-initialize")))
                (func (export "read") (result s32) (canon lift (core func $i "read")))
                (alias core export $i "memory" (core memory (;0;))))"#
        ))
        .unwrap()
    }

    /// Runs `read` on `component`, with `host-call` linked as a trap.
    async fn read(component: &[u8]) -> i32 {
        let engine = Engine::new(Config::new().wasm_component_model(true)).unwrap();
        let component = Component::new(&engine, component).unwrap();
        let mut linker: Linker<()> = Linker::new(&engine);
        linker.define_unknown_imports_as_traps(&component).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = linker.instantiate_async(&mut store, &component).await.unwrap();
        let read = instance.get_typed_func::<(), (i32,)>(&mut store, "read").unwrap();
        read.call_async(&mut store, ()).await.unwrap().0
    }

    #[tokio::test]
    async fn the_initialised_memory_is_in_the_rewritten_component() {
        let original = component("(i32.store (i32.const 0) (i32.const 42))");
        assert!(has_init_export(&original));
        assert_eq!(read(&original).await, 0);
        let done = preinitialize(&original, &limits(1_000_000)).await.unwrap().unwrap();
        wasmparser::Validator::new().validate_all(&done.component).unwrap();
        assert!(done.fuel > 0);
        assert_eq!(read(&done.component).await, 42);
    }

    #[tokio::test]
    async fn a_component_without_the_hook_is_left_alone() {
        let plain = wat::parse_str("(component)").unwrap();
        assert!(preinitialize(&plain, &limits(1_000)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn initialisation_that_calls_the_host_or_spins_is_refused_under_the_manifest_limits() {
        let calls_host = component("(call $host)");
        let error = preinitialize(&calls_host, &limits(1_000_000)).await.unwrap_err();
        assert!(matches!(error, PreinitError::Trapped(_)), "{error}");
        assert!(!error.is_retryable());

        let spins = component("(loop (br 0))");
        let error = preinitialize(&spins, &limits(100_000)).await.unwrap_err();
        let PreinitError::Trapped(message) = &error else {
            panic!("{error}")
        };
        assert!(message.contains("fuel"), "{message}");
        assert!(error.to_string().contains("limits.fuel"), "{error}");

        let grows = component("(drop (memory.grow (i32.const 100)))");
        // Growing past limits.memory_bytes (1 MiB = 16 pages) fails the grow, which returns -1
        // rather than trapping; the snapshot then holds the memory as it was.
        let done = preinitialize(&grows, &limits(1_000_000)).await.unwrap().unwrap();
        assert_eq!(read(&done.component).await, 0);
    }
}
