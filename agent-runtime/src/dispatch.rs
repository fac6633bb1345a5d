//! Dispatch: one invocation of a loaded skill, from admission to a typed [`Outcome`].
//!
//! Admission bounds the input and takes a concurrency slot of the skill version (waiting in a
//! bounded queue; a full queue refuses at once, retryably). The invocation then runs in a fresh
//! store (or, for a pure skill in warm mode, a parked instance of the same tenant) under the
//! manifest's memory, fuel and epoch-deadline limits plus a wall-clock backstop, with the
//! verdict's grants as its only capabilities. Every way it can end is an [`Outcome`].

use std::time::{Duration, Instant};

use plugin_abi::{Capability, CpuMetering, OutputEnvelope, WorkspacePath};
use wasmtime::Trap;

use crate::bindings::agentd::skill::types::Invocation;
use crate::engine::wall_clock_limit;
use crate::host::{Effects, HostState};
use crate::outcome::{DispatchReport, Metrics, Outcome, RuntimeFailure, SkillFailure};
use crate::registry::{LoadedSkill, WarmInstance};
use crate::runtime::Runtime;

/// The largest input JSON a guest is given, bytes; larger input is refused as invalid input.
pub const MAX_INPUT_BYTES: usize = 8 * 1024 * 1024;

/// The largest output JSON accepted from a guest, bytes; larger output is an invalid output.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

/// The invocation to dispatch.
#[derive(Debug, Clone)]
pub struct DispatchRequest {
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// Idempotency key, stable across retries of this step.
    pub idempotency_key: String,
    /// The input object as JSON text.
    pub input_json: String,
    /// Tenant whose workspace the skill may touch.
    pub tenant: String,
    /// Capabilities the control plane granted.
    pub grants: Vec<Capability>,
}

impl Runtime {
    /// Runs one invocation of `skill` in a fresh store under the manifest's limits, with
    /// `request.grants` as the only capabilities.
    ///
    /// Never fails: every way an invocation can end is an [`Outcome`].
    pub async fn dispatch(&self, skill: &LoadedSkill, request: &DispatchRequest) -> DispatchReport {
        let span = tracing::info_span!(
            "skill.invoke",
            skill = %skill.summary.id,
            version = %skill.summary.version,
            digest = %skill.summary.digest,
            traceparent = %request.traceparent,
            instantiate_us = tracing::field::Empty,
            execute_us = tracing::field::Empty,
            fuel = tracing::field::Empty,
            peak_memory_bytes = tracing::field::Empty,
            host_calls = tracing::field::Empty,
            denials = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let report = tracing::Instrument::instrument(self.dispatch_admitted(skill, request), span.clone()).await;
        let metrics = &report.metrics;
        span.record("instantiate_us", metrics.instantiate_us);
        span.record("execute_us", metrics.execute_us);
        span.record("fuel", metrics.fuel_consumed);
        span.record("peak_memory_bytes", metrics.peak_memory_bytes);
        span.record("host_calls", metrics.host_calls);
        span.record("denials", metrics.denials);
        span.record("outcome", report.outcome.name());
        report
    }

    /// Admission: bounded input, then a concurrency slot of this skill version, waiting in a
    /// bounded queue (backpressure: a full queue refuses at once, retryably).
    async fn dispatch_admitted(&self, skill: &LoadedSkill, request: &DispatchRequest) -> DispatchReport {
        let refuse = |outcome: Outcome| DispatchReport::not_dispatched(&skill.summary, outcome);
        if request.input_json.len() > MAX_INPUT_BYTES {
            return refuse(Outcome::SkillFailed {
                error: SkillFailure::InvalidInput(format!(
                    "the input is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    request.input_json.len()
                )),
            });
        }
        let permit = match skill.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let queued = skill.queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                if queued >= skill.manifest.limits.max_queue {
                    skill.queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    return refuse(Outcome::Failed {
                        failure: RuntimeFailure::Overloaded {
                            in_flight: skill.manifest.limits.max_concurrency,
                            queued,
                        },
                    });
                }
                let permit = skill.slots.acquire().await;
                skill.queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                match permit {
                    Ok(permit) => permit,
                    Err(_) => {
                        return refuse(Outcome::Failed {
                            failure: RuntimeFailure::Host {
                                message: "the skill's slots were closed".into(),
                            },
                        });
                    }
                }
            }
        };
        let report = self.dispatch_now(skill, request).await;
        drop(permit);
        report
    }

    async fn dispatch_now(&self, skill: &LoadedSkill, request: &DispatchRequest) -> DispatchReport {
        let limits = skill.manifest.limits;
        let workspace = match (&self.config.workspace_root, WorkspacePath::parse(&request.tenant)) {
            (Some(root), Ok(tenant)) if tenant.segments().count() == 1 => Some(root.join(tenant.as_str())),
            _ => None,
        };
        let effects = Effects {
            workspace,
            tenant: request.tenant.clone(),
            kv: self.kv.clone(),
            http: Some(self.http.clone()),
            idempotency_key: request.idempotency_key.clone(),
            progress: Some(crate::host::ProgressSink {
                sender: self.progress.clone(),
                run_id: request.run_id.clone(),
                step_id: request.step_id.clone(),
            }),
        };
        let invocation = Invocation {
            schema_version: plugin_abi::INVOKE_SCHEMA_V1.to_owned(),
            run_id: request.run_id.clone(),
            step_id: request.step_id.clone(),
            traceparent: request.traceparent.clone(),
            idempotency_key: request.idempotency_key.clone(),
            input: request.input_json.clone(),
        };
        let mut metrics = Metrics::default();
        let parked = if limits.max_reuse > 0 {
            skill.take_warm(&request.tenant)
        } else {
            None
        };
        let (mut store, warm_instance, calls) = match parked {
            Some(parked) => {
                let mut store = parked.store;
                let now = Instant::now();
                store.data_mut().rearm(
                    &request.traceparent,
                    request.grants.clone(),
                    effects,
                    now + Duration::from_millis(limits.deadline_ms),
                    now + wall_clock_limit(limits.deadline_ms),
                );
                if limits.cpu == CpuMetering::Fuel {
                    // Cannot fail: fuel consumption is enabled on this engine.
                    let _ = store.set_fuel(limits.fuel);
                }
                store.set_epoch_deadline(1);
                (store, Some(parked.instance), parked.calls)
            }
            None => (
                self.engine.new_store(
                    &skill.manifest.id,
                    &limits,
                    &request.traceparent,
                    request.grants.clone(),
                    effects,
                ),
                None,
                0,
            ),
        };

        // The epoch deadline stops guest code; this wall-clock backstop, a little later, also
        // covers time spent in host calls.
        let wall_clock = wall_clock_limit(limits.deadline_ms);
        let started = Instant::now();
        let result = tokio::time::timeout(wall_clock, async {
            let instance = match warm_instance {
                Some(instance) => instance,
                None => {
                    let instance = skill.pre.instantiate_async(&mut store).await;
                    metrics.instantiate_us = micros(started.elapsed());
                    instance.map_err(|error| (error, true))?
                }
            };
            let executing = Instant::now();
            let result = instance.call_invoke(&mut store, &invocation).await;
            metrics.execute_us = micros(executing.elapsed());
            result.map(|result| (instance, result)).map_err(|error| (error, false))
        })
        .await;
        let (result, instance) = match result {
            Ok(Ok((instance, result))) => (Ok(Ok(result)), Some(instance)),
            Ok(Err(error)) => (Ok(Err(error)), None),
            Err(elapsed) => (Err(elapsed), None),
        };

        // Epoch-only skills burn no fuel: there is nothing to count.
        metrics.fuel_consumed = match store.get_fuel() {
            Ok(left) => limits.fuel.saturating_sub(left),
            Err(_) => 0,
        };
        let state = store.data();
        metrics.peak_memory_bytes = state.limiter.peak_bytes;
        metrics.host_calls = state.host_calls;
        metrics.denials = state.denied_calls;
        if state.dropped_output > 0 || state.denied_calls > crate::host::MAX_DENIALS_LOGGED {
            tracing::warn!(
                skill = %skill.summary.id,
                dropped_output = state.dropped_output,
                denied_calls = state.denied_calls,
                "the guest exceeded its per-invocation budgets: log lines or events dropped, denials not logged"
            );
        }

        let outcome = match result {
            Err(_elapsed) => Outcome::Failed {
                failure: RuntimeFailure::Timeout {
                    deadline_ms: limits.deadline_ms,
                    in_guest: false,
                },
            },
            Ok(Err((error, during_instantiation))) => Outcome::Failed {
                failure: classify_trap(&error, state, &limits, during_instantiation),
            },
            Ok(Ok(Ok(output))) if output.output.len() > MAX_OUTPUT_BYTES => Outcome::Failed {
                failure: RuntimeFailure::InvalidOutput {
                    message: format!(
                        "the output is {} bytes; the limit is {MAX_OUTPUT_BYTES}",
                        output.output.len()
                    ),
                },
            },
            Ok(Ok(Ok(output))) => match OutputEnvelope::parse(&output.schema_version, &output.output) {
                // The output must also match the skill's own output schema: a caller is never
                // handed an object the skill's contract does not describe.
                Ok(output) => {
                    let output = serde_json::Value::Object(output);
                    match (skill.output_schema().check(&output), output) {
                        (Ok(()), serde_json::Value::Object(output)) => Outcome::Completed { output },
                        (Err(violation), _) => Outcome::Failed {
                            failure: RuntimeFailure::InvalidOutput {
                                message: violation.to_string(),
                            },
                        },
                        (Ok(()), _) => unreachable!("the output was made an object above"),
                    }
                }
                Err(error) => Outcome::Failed {
                    failure: RuntimeFailure::InvalidOutput {
                        message: error.to_string(),
                    },
                },
            },
            Ok(Ok(Err(skill_error))) => match state.denials.first() {
                Some(capability) => Outcome::Failed {
                    failure: RuntimeFailure::CapabilityDenied {
                        capability: capability.clone(),
                        message: SkillFailure::from(skill_error.clone()).message().to_owned(),
                    },
                },
                None => Outcome::SkillFailed {
                    error: skill_error.into(),
                },
            },
        };
        tracing::info!(outcome = outcome.name(), "skill invocation");
        skill.observe_latency(metrics.instantiate_us + metrics.execute_us);
        // Warm mode: park the instance again only after a call that returned normally, within
        // its limits and its reuse bound.
        if let Some(instance) = instance
            && limits.max_reuse > 0
            && calls + 1 < limits.max_reuse
            && matches!(outcome, Outcome::Completed { .. } | Outcome::SkillFailed { .. })
            && !store.data().limiter.limit_hit
        {
            skill.park_warm(WarmInstance {
                store,
                instance,
                tenant: request.tenant.clone(),
                calls: calls + 1,
            });
        }
        DispatchReport {
            skill_id: skill.summary.id.clone(),
            skill_version: skill.summary.version.to_string(),
            digest: skill.summary.digest.clone(),
            outcome,
            metrics,
        }
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

fn classify_trap(
    error: &wasmtime::Error,
    state: &HostState,
    limits: &crate::package::Limits,
    during_instantiation: bool,
) -> RuntimeFailure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => RuntimeFailure::FuelExhausted { fuel: limits.fuel },
        Some(Trap::Interrupt) => RuntimeFailure::Timeout {
            deadline_ms: limits.deadline_ms,
            in_guest: true,
        },
        _ if state.limiter.limit_hit => RuntimeFailure::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        },
        Some(_) => RuntimeFailure::Trap {
            message: format!("{error:#}"),
            output: state.streams.output(),
        },
        None if during_instantiation => RuntimeFailure::Host {
            message: format!("instantiation failed: {error:#}"),
        },
        None => RuntimeFailure::Trap {
            message: format!("{error:#}"),
            output: state.streams.output(),
        },
    }
}
