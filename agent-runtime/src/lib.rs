//! agentd's runtime: it decides *how to run* a skill.
//!
//! - [`package`]: skill packages (`skill.toml` + component), verified by SHA-256.
//! - [`runtime`]: the wasmtime host: one engine, one `SkillPre` per component, one store per
//!   invocation under memory, fuel and epoch-deadline limits; typed [`Outcome`]s.
//! - [`host`]: the host functions a skill imports, each a capability checked at call time.
//! - [`orchestrate`]: one governed step: the control plane's verdict, then dispatch, then record.
//!
//! **Architecture invariant:** agent-runtime never writes the audit log itself; it goes through
//! [`control_plane::ControlPlane`].

pub mod cache;
pub mod host;
pub mod kv;
pub mod orchestrate;
pub mod package;
pub mod resilience;
pub mod runtime;

pub use orchestrate::{StepError, StepOutcome, close_unapproved, node_id, resume_approved, run_plan, run_step};
pub use package::{LimitCeilings, Limits, Manifest, PackageError};
pub use runtime::{
    DispatchReport, DispatchRequest, EngineError, LoadedSkill, Metrics, Outcome, Rollback, RollbackError, Runtime,
    RuntimeConfig, RuntimeFailure, SkillFailure,
};

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
