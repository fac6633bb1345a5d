//! agentd's runtime: it decides *how to run* a skill. The code is cut along the pipeline a step
//! travels:
//!
//! - loading: [`package`] (`skill.toml`, SHA-256, limits), [`loader`] (the checks, in order),
//!   [`cache`] (verified compiled code), [`registry`] (versions, hot swap, rollback),
//!   [`preinit`] (pre-initialisation at packaging time), [`schema`] (the skill's JSON Schemas,
//!   enforced);
//! - running: [`engine`] (one wasmtime engine, one store per invocation), [`dispatch`]
//!   (admission, limits, warm instances), [`host`] and [`kv`] (the host functions, each a
//!   capability checked at call time), [`outcome`] (typed outcomes);
//! - resilience: [`retry`], [`breaker`], [`selector`];
//! - governing: [`step`] (the typed step value), [`plan`] (runs of steps), `pep` (the policy
//!   enforcement point: ask the control plane before every dispatch), `ladder` (retries,
//!   fallbacks, escalation to a human), [`resume`] (the approval flow after a human decides),
//!   [`recovery`] (driving on runs whose owner vanished).
//!
//! [`Runtime`] is the embeddable host; [`run_step`], [`run_plan`], [`answer_approval`] and
//! [`resume_approved`] drive it under a [`control_plane::ControlPlane`].
//!
//! **Architecture invariant:** agent-runtime never writes the audit log itself; it goes through
//! [`control_plane::ControlPlane`], the only door into the control plane.

pub mod breaker;
pub mod cache;
pub mod dispatch;
pub mod engine;
pub mod guest_output;
pub mod host;
pub mod kv;
mod ladder;
pub mod loader;
pub mod net;
pub mod outcome;
pub mod package;
mod pep;
pub mod plan;
pub mod preinit;
pub mod recovery;
pub mod registry;
pub mod resume;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod selector;
pub mod step;
mod workspace;

pub use dispatch::{DispatchRequest, MAX_INPUT_BYTES, MAX_OUTPUT_BYTES};
pub use engine::{EPOCH_TICK_MS, EngineError};
pub use host::Progress;
pub use ladder::SUPPORTED_OBLIGATIONS;
pub use loader::{DirLoad, DirWarning};
pub use outcome::{DispatchReport, Metrics, Outcome, RuntimeFailure, SkillFailure};
pub use package::{LimitCeilings, Limits, Manifest, PackageError};
pub use plan::{Started, run_plan, run_step, start_plan};
pub use recovery::{Recovered, recover, recover_every};
pub use registry::{LoadedSkill, Rollback, RollbackError};
pub use resume::{Answered, answer_approval, cancel_approval, close_unapproved, resume_approved};
pub use runtime::{PROGRESS_CAPACITY, Runtime, RuntimeConfig};
pub use schema::{SchemaError, SchemaRole, SchemaViolation, SkillSchema};
pub use step::{Begin, Step, StepError, StepOutcome, node_id};

/// Host-side bindings of the `agentd:skill` world, generated from `plugin-abi/wit`.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "skill",
        path: "../plugin-abi/wit",
        imports: { default: async },
        exports: { default: async },
    });
}
