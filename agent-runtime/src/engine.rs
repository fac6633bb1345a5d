//! The wasmtime engines: one [`Engine`] and one [`Linker`] per process for fuel-metered skills
//! (pooling allocator, fuel, epoch interruption driven by a drift-free ticker thread), a second
//! without fuel for skills whose manifest asks for epoch-only CPU bounding (ADR 0017), and one
//! fresh [`Store`] per invocation armed with its limits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use plugin_abi::{Capability, CpuMetering};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

use crate::bindings::Skill;
use crate::host::{Effects, HostState};
use crate::package::{LimitCeilings, Limits};

/// How often the epoch advances, ms. At every tick a running guest yields to the executor and
/// checks its deadline, so it is stopped at most one tick (plus scheduling) after it.
pub const EPOCH_TICK_MS: u64 = 2;

/// Why the runtime itself could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasmtime engine: {0}")]
pub struct EngineError(pub(crate) String);

/// Stops the epoch ticker thread when the engine is dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One wasmtime engine and its linker (WASI p2 with nothing granted, plus the
/// `agentd:skill/host` interface). Code compiled for one engine runs only on it.
pub(crate) struct Flavour {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
}

/// The engines (one with fuel metering, one without, created when a skill first asks for
/// [`CpuMetering::Epoch`]) and the epoch ticker that drives both.
pub(crate) struct WasmEngine {
    metered: Flavour,
    unmetered: OnceLock<Flavour>,
    /// The unmetered engine once it exists, for the ticker thread.
    unmetered_ticks: Arc<OnceLock<Engine>>,
    max_instances: u32,
    ceilings: LimitCeilings,
    _ticker: Ticker,
}

/// Bytes at the start of each pooled linear memory (and, divided by 16, of each table) that an
/// ending instance resets with `memset` (restoring its memory image) instead of
/// `madvise(MADV_DONTNEED)`, which wasmtime uses past it. Either way the next instance sees
/// only its own image.
///
/// `madvise` on a process running on several cores costs a TLB shootdown each time; with
/// pre-initialised instances costing tens of µs, that made two concurrent callers slower
/// than one (6,145 against 22,064 calls/s of a tiny `pii-redact` call; with this setting two
/// give 40,994, BENCHMARKS.md). 2 MiB covers a small skill's whole touched heap.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

impl Flavour {
    /// An engine (pooling allocator for `max_instances` concurrent instances, memories up to
    /// `ceilings.memory_bytes`, epoch interruption, fuel when `cpu` is [`CpuMetering::Fuel`])
    /// with the host linked.
    fn new(max_instances: u32, ceilings: &LimitCeilings, cpu: CpuMetering) -> Result<Self, EngineError> {
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(max_instances)
            .total_core_instances(max_instances * 8)
            .total_memories(max_instances * 2)
            .total_tables(max_instances * 4)
            .max_memory_size(usize::try_from(ceilings.memory_bytes).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES / 16);
        let mut wasm_config = Config::new();
        wasm_config
            .wasm_component_model(true)
            .consume_fuel(cpu == CpuMetering::Fuel)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm_config).map_err(|error| EngineError(format!("{error:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|error| EngineError(format!("{error:#}")))?;
        Skill::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|error| EngineError(format!("{error:#}")))?;
        Ok(Flavour { engine, linker })
    }
}

impl WasmEngine {
    /// Creates the fuel-metered engine, links the host, and starts the ticker.
    pub(crate) fn new(max_instances: u32, ceilings: &LimitCeilings) -> Result<Self, EngineError> {
        let metered = Flavour::new(max_instances, ceilings, CpuMetering::Fuel)?;
        let unmetered_ticks: Arc<OnceLock<Engine>> = Arc::new(OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = metered.engine.clone();
        let ticker_unmetered = Arc::clone(&unmetered_ticks);
        let ticker_stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("agentd-epoch".into())
            .spawn(move || {
                // The epoch follows the wall clock (ticks since start), not the number of
                // wake-ups: sleeping oversleeps a little each time, and counting wake-ups would
                // let deadlines drift late by that much per tick.
                let started = Instant::now();
                let mut epoch: u128 = 0;
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    let due = started.elapsed().as_millis() / u128::from(EPOCH_TICK_MS);
                    while epoch < due {
                        ticker_engine.increment_epoch();
                        if let Some(unmetered) = ticker_unmetered.get() {
                            unmetered.increment_epoch();
                        }
                        epoch += 1;
                    }
                }
            })
            .map_err(|error| EngineError(format!("cannot start the epoch thread: {error}")))?;
        Ok(WasmEngine {
            metered,
            unmetered: OnceLock::new(),
            unmetered_ticks,
            max_instances,
            ceilings: *ceilings,
            _ticker: Ticker { stop },
        })
    }

    /// The engine for skills bounded by `cpu`; the unmetered one is created on first use.
    ///
    /// # Errors
    ///
    /// [`EngineError`] when the unmetered engine cannot be created.
    pub(crate) fn flavour(&self, cpu: CpuMetering) -> Result<&Flavour, EngineError> {
        match cpu {
            CpuMetering::Fuel => Ok(&self.metered),
            CpuMetering::Epoch => {
                if let Some(flavour) = self.unmetered.get() {
                    return Ok(flavour);
                }
                let created = Flavour::new(self.max_instances, &self.ceilings, CpuMetering::Epoch)?;
                // A racing creator may have won: use whichever was stored, and tick that one.
                let flavour = self.unmetered.get_or_init(|| created);
                let _ = self.unmetered_ticks.set(flavour.engine.clone());
                Ok(flavour)
            }
        }
    }

    /// A fresh store for one invocation of `skill_id` under `limits`, with `grants` as its only
    /// capabilities.
    pub(crate) fn new_store(
        &self,
        skill_id: &str,
        limits: &Limits,
        traceparent: &str,
        grants: Vec<Capability>,
        effects: Effects,
    ) -> Store<HostState> {
        let now = Instant::now();
        let state = HostState::new(
            skill_id,
            traceparent,
            limits.memory_bytes,
            grants,
            effects,
            now + Duration::from_millis(limits.deadline_ms),
            now + wall_clock_limit(limits.deadline_ms),
        );
        let flavour = match limits.cpu {
            // Loading compiled the skill for its engine, which created it.
            CpuMetering::Epoch => self.unmetered.get().unwrap_or(&self.metered),
            CpuMetering::Fuel => &self.metered,
        };
        let mut store = Store::new(&flavour.engine, state);
        store.limiter(|state| &mut state.limiter);
        if limits.cpu == CpuMetering::Fuel {
            // Cannot fail: fuel consumption is enabled on this engine.
            let _ = store.set_fuel(limits.fuel);
        }
        // At every epoch tick the guest yields to the tokio executor (a spinning guest does not
        // hold a worker thread for its whole deadline) and is interrupted once its deadline has
        // passed: a `Trap::Interrupt`, classified as a timeout in the guest.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().guest_deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// The wall-clock backstop of an invocation with an epoch deadline of `deadline_ms`: 10% later,
/// at least 100 ms later.
pub(crate) fn wall_clock_limit(deadline_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms + (deadline_ms / 10).max(100))
}
