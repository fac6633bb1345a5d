//! The per-invocation host state (`Store<HostState>`) and the host functions a skill imports.
//!
//! Host functions are capabilities: `workspace-write` checks the grant at call time and answers
//! `capability-error::denied` instead of trapping, and counts the denial so the dispatcher can
//! classify the outcome.

use std::path::PathBuf;

use plugin_abi::{Capability, WorkspacePath};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::agentd::skill::host::{CapabilityError, Host, LogLevel};

/// Largest single `workspace-write`, bytes.
pub const MAX_WRITE_BYTES: usize = 16 * 1024 * 1024;

/// Largest log message or event kept, bytes; longer ones are truncated.
pub const MAX_LOG_BYTES: usize = 4096;

/// Memory accounting for one store: refuses growth beyond `limit_bytes` and remembers that it did.
#[derive(Debug)]
pub struct MemoryLimiter {
    /// Ceiling per linear memory, bytes.
    pub limit_bytes: u64,
    /// Largest size any memory reached, bytes.
    pub peak_bytes: u64,
    /// Whether a growth was refused.
    pub limit_hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit_bytes {
            self.limit_hit = true;
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired as u64);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Everything one invocation's store holds.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) grants: Vec<Capability>,
    /// The tenant's workspace directory; `None` when the invocation has no workspace.
    pub(crate) workspace: Option<PathBuf>,
    pub(crate) skill_id: String,
    pub(crate) traceparent: String,
    pub(crate) host_calls: u64,
    pub(crate) denials: Vec<String>,
    pub(crate) events: Vec<(String, String)>,
}

impl HostState {
    pub(crate) fn new(
        skill_id: &str,
        traceparent: &str,
        memory_limit_bytes: u64,
        grants: Vec<Capability>,
        workspace: Option<PathBuf>,
    ) -> Self {
        HostState {
            // Nothing is granted through WASI: no preopened directories, no environment, no
            // arguments, no network; stdin is empty and stdout/stderr are discarded.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit_bytes: memory_limit_bytes,
                peak_bytes: 0,
                limit_hit: false,
            },
            grants,
            workspace,
            skill_id: skill_id.to_owned(),
            traceparent: traceparent.to_owned(),
            host_calls: 0,
            denials: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_LOG_BYTES {
        let mut cut = MAX_LOG_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl crate::bindings::agentd::skill::types::Host for HostState {}

impl Host for HostState {
    async fn log(&mut self, level: LogLevel, message: String) {
        self.host_calls += 1;
        let message = truncate(message);
        let (skill, traceparent) = (&self.skill_id, &self.traceparent);
        match level {
            LogLevel::Trace => tracing::trace!(skill, traceparent, "{message}"),
            LogLevel::Debug => tracing::debug!(skill, traceparent, "{message}"),
            LogLevel::Info => tracing::info!(skill, traceparent, "{message}"),
            LogLevel::Warn => tracing::warn!(skill, traceparent, "{message}"),
            LogLevel::Error => tracing::error!(skill, traceparent, "{message}"),
        }
    }

    async fn emit(&mut self, name: String, attributes: String) {
        self.host_calls += 1;
        let (name, attributes) = (truncate(name), truncate(attributes));
        tracing::debug!(skill = %self.skill_id, traceparent = %self.traceparent, event = %name, %attributes, "guest event");
        if self.events.len() < 1000 {
            self.events.push((name, attributes));
        }
    }

    async fn workspace_write(&mut self, path: String, contents: Vec<u8>) -> Result<(), CapabilityError> {
        self.host_calls += 1;
        let path =
            WorkspacePath::parse(&path).map_err(|error| CapabilityError::Invalid(format!("path `{path}`: {error}")))?;
        if !self.grants.iter().any(|grant| grant.permits_write(&path)) {
            let needed = format!("fs.write:{path}");
            self.denials.push(needed.clone());
            tracing::warn!(skill = %self.skill_id, traceparent = %self.traceparent, capability = %needed, "capability denied");
            return Err(CapabilityError::Denied(format!(
                "{needed} (granted: {})",
                describe_grants(&self.grants)
            )));
        }
        if contents.len() > MAX_WRITE_BYTES {
            return Err(CapabilityError::Invalid(format!(
                "{} bytes exceed the {MAX_WRITE_BYTES}-byte write limit",
                contents.len()
            )));
        }
        let Some(root) = &self.workspace else {
            return Err(CapabilityError::Io("this invocation has no workspace".to_owned()));
        };
        let target = path.segments().fold(root.clone(), |dir, segment| dir.join(segment));
        let result = async {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            // Write to a sibling temp file and rename, so a reader never sees half a file.
            let temporary = target.with_extension("agentd-partial");
            tokio::fs::write(&temporary, &contents).await?;
            tokio::fs::rename(&temporary, &target).await
        }
        .await;
        result.map_err(|error| CapabilityError::Io(format!("writing `{path}`: {error}")))
    }
}

fn describe_grants(grants: &[Capability]) -> String {
    if grants.is_empty() {
        return "none".to_owned();
    }
    grants.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
