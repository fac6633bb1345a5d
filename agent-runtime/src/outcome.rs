//! How an invocation ended: an [`Outcome`] (a value, never an error) with its [`Metrics`], in a
//! [`DispatchReport`]. Every runtime failure and skill error says whether a retry can help.

use control_plane::{DispatchMetrics, OutcomeKind};
use plugin_abi::{Capability, SkillSummary};

use crate::bindings::agentd::skill::types::SkillError;
use crate::guest_output::GuestOutput;

/// A runtime failure: the skill did not produce a result of its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "failure", rename_all = "kebab-case")]
pub enum RuntimeFailure {
    /// The deadline passed. Retryable.
    Timeout {
        /// The deadline, ms.
        deadline_ms: u64,
        /// `true` when the epoch deadline interrupted guest code; `false` when the wall-clock
        /// backstop fired (the guest was waiting on the host).
        in_guest: bool,
    },
    /// The fuel budget ran out. Not retryable: the same input burns the same fuel.
    FuelExhausted {
        /// The budget.
        fuel: u64,
    },
    /// Linear memory would have grown past the limit. Not retryable.
    MemoryLimit {
        /// The limit, bytes.
        limit_bytes: u64,
    },
    /// The guest trapped: a panic, an uncaught exception, an `unreachable`. Not retryable.
    Trap {
        /// The trap and its backtrace.
        message: String,
        /// The end of what the guest wrote to stdout and stderr before it trapped (a Python
        /// traceback, a JavaScript exception, a Rust panic message); absent when it wrote
        /// nothing.
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<GuestOutput>,
    },
    /// The guest needed a capability that was not granted. Not retryable.
    CapabilityDenied {
        /// The narrowest capability that would have allowed the call.
        capability: Capability,
        /// What the skill reported.
        message: String,
    },
    /// The guest's output is not a valid envelope. Not retryable.
    InvalidOutput {
        /// What is wrong.
        message: String,
    },
    /// The host failed around the guest (instantiation, I/O). Retryable.
    Host {
        /// What failed.
        message: String,
    },
    /// Every slot of this skill version is busy and its queue is full (backpressure). Retryable.
    Overloaded {
        /// Invocations running.
        in_flight: u32,
        /// Invocations waiting.
        queued: u32,
    },
}

impl RuntimeFailure {
    /// What a skill author can change about it, whatever the skill's language; `None` when
    /// nothing in the skill or its manifest would help (an overloaded or failing host).
    pub fn advice(&self) -> Option<String> {
        Some(match self {
            RuntimeFailure::Timeout { deadline_ms, .. } => format!(
                "the skill ran past `limits.deadline_ms` ({deadline_ms} ms): raise it in skill.toml, or do \
                 less per call"
            ),
            RuntimeFailure::FuelExhausted { fuel } => format!(
                "the skill burnt its `limits.fuel` ({fuel}): raise it in skill.toml. Counting words, \
                 compiled Rust burns about 230 fuel per input byte, a componentize-py component about \
                 1,000 and a componentize-js one about 5,500 (BENCHMARKS.md)"
            ),
            RuntimeFailure::MemoryLimit { limit_bytes } => format!(
                "the skill needed more linear memory than `limits.memory_bytes` ({limit_bytes} bytes, \
                 {} MiB): raise it in skill.toml; componentize-py and jco components need at least 16 MiB",
                limit_bytes / (1024 * 1024)
            ),
            RuntimeFailure::Trap { output, .. } => format!(
                "the guest trapped: a Rust panic, an uncaught Python or JavaScript exception, or an \
                 `unreachable`{}",
                if output.is_some() {
                    "; the end of what it wrote to stdout and stderr is in `output`"
                } else {
                    " (it wrote nothing to stdout or stderr)"
                }
            ),
            RuntimeFailure::CapabilityDenied { capability, .. } => format!(
                "declare `{capability}` (or a wider capability) in skill.toml's `capabilities`, and have \
                 the policy grant it"
            ),
            RuntimeFailure::InvalidOutput { .. } => "the output must be an `agentd.output.v1` envelope \
                 holding a JSON object that matches the skill's output schema (`agentd skill check DIR` \
                 prints the schema)"
                .to_owned(),
            RuntimeFailure::Host { .. } | RuntimeFailure::Overloaded { .. } => return None,
        })
    }

    /// Whether a retry can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RuntimeFailure::Timeout { .. } | RuntimeFailure::Host { .. } | RuntimeFailure::Overloaded { .. }
        )
    }
}

/// A skill's own error, as classified by the skill.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum SkillFailure {
    /// Bad input; not retryable.
    InvalidInput(String),
    /// Passing fault; retryable.
    Transient(String),
    /// Will fail again; not retryable.
    Permanent(String),
    /// A human must decide; not retryable.
    NeedsHuman(String),
}

impl SkillFailure {
    /// Whether a retry can help: only `transient`.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SkillFailure::Transient(_))
    }
}

/// Longest skill error message kept, bytes: the message goes into the run log and the
/// append-only audit log, so a guest must not be able to grow them at will (a 50 MB error
/// once became a 50 MB audit row). Longer messages are cut at a character boundary and say so.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// Cuts `text` to at most `max` bytes at a character boundary; returns the bytes dropped.
pub(crate) fn cut_to(text: &mut String, max: usize) -> usize {
    if text.len() <= max {
        return 0;
    }
    let total = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    total - cut
}

/// `message` cut to [`MAX_ERROR_MESSAGE_BYTES`], naming how many bytes were dropped.
fn bounded(mut message: String) -> String {
    let total = message.len();
    let dropped = cut_to(&mut message, MAX_ERROR_MESSAGE_BYTES);
    if dropped > 0 {
        message.push_str(&format!("… ({dropped} of {total} bytes cut)"));
    }
    message
}

impl From<SkillError> for SkillFailure {
    fn from(error: SkillError) -> Self {
        match error {
            SkillError::InvalidInput(message) => SkillFailure::InvalidInput(bounded(message)),
            SkillError::Transient(message) => SkillFailure::Transient(bounded(message)),
            SkillError::Permanent(message) => SkillFailure::Permanent(bounded(message)),
            SkillError::NeedsHuman(message) => SkillFailure::NeedsHuman(bounded(message)),
        }
    }
}

/// How an invocation ended. A value, never an error.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The skill returned an output object.
    Completed {
        /// The output object.
        output: serde_json::Map<String, serde_json::Value>,
    },
    /// The skill returned its own error.
    SkillFailed {
        /// The classified error.
        error: SkillFailure,
    },
    /// The runtime stopped or rejected the invocation.
    Failed {
        /// The classified failure.
        failure: RuntimeFailure,
    },
}

impl Outcome {
    /// Whether a retry of the same invocation can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Completed { .. } => false,
            Outcome::SkillFailed { error } => error.is_retryable(),
            Outcome::Failed { failure } => failure.is_retryable(),
        }
    }

    /// The outcome's kind, as the audit log names it.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Completed { .. } => OutcomeKind::Completed,
            Outcome::SkillFailed { error } => match error {
                SkillFailure::InvalidInput(_) => OutcomeKind::InvalidInput,
                SkillFailure::Transient(_) => OutcomeKind::Transient,
                SkillFailure::Permanent(_) => OutcomeKind::Permanent,
                SkillFailure::NeedsHuman(_) => OutcomeKind::NeedsHuman,
            },
            Outcome::Failed { failure } => match failure {
                RuntimeFailure::Timeout { .. } => OutcomeKind::Timeout,
                RuntimeFailure::FuelExhausted { .. } => OutcomeKind::FuelExhausted,
                RuntimeFailure::MemoryLimit { .. } => OutcomeKind::MemoryLimit,
                RuntimeFailure::Trap { .. } => OutcomeKind::Trap,
                RuntimeFailure::CapabilityDenied { .. } => OutcomeKind::CapabilityDenied,
                RuntimeFailure::InvalidOutput { .. } => OutcomeKind::InvalidOutput,
                RuntimeFailure::Host { .. } => OutcomeKind::HostError,
                RuntimeFailure::Overloaded { .. } => OutcomeKind::Overloaded,
            },
        }
    }

    /// The kind's kebab-case name: `completed`, `invalid-input`, `timeout`, ...
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// Measurements of one invocation: the audit vocabulary's [`DispatchMetrics`], so what the
/// runtime measures is exactly what the audit log records.
pub type Metrics = DispatchMetrics;

/// The result of [`Runtime::dispatch`](crate::Runtime::dispatch).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DispatchReport {
    /// Skill id.
    pub skill_id: String,
    /// Skill version.
    pub skill_version: String,
    /// Component digest.
    pub digest: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it cost.
    pub metrics: Metrics,
}

impl DispatchReport {
    /// The report of an invocation refused before any instance existed: `outcome` says why, and
    /// the metrics are all zero.
    pub fn not_dispatched(skill: &SkillSummary, outcome: Outcome) -> Self {
        DispatchReport {
            skill_id: skill.id.clone(),
            skill_version: skill.version.to_string(),
            digest: skill.digest.clone(),
            outcome,
            metrics: Metrics::default(),
        }
    }
}

impl SkillFailure {
    /// The skill's message.
    pub fn message(&self) -> &str {
        match self {
            SkillFailure::InvalidInput(message)
            | SkillFailure::Transient(message)
            | SkillFailure::Permanent(message)
            | SkillFailure::NeedsHuman(message) => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_skill_error_message_is_cut_before_it_is_stored() {
        let failure = SkillFailure::from(SkillError::Permanent("é".repeat(25_000_000)));
        let message = failure.message();
        assert!(message.len() <= MAX_ERROR_MESSAGE_BYTES + 64, "{}", message.len());
        assert!(
            message.ends_with("of 50000000 bytes cut)"),
            "{}",
            &message[message.len() - 40..]
        );
        let small = SkillFailure::from(SkillError::Transient("busy".into()));
        assert_eq!(small.message(), "busy");
    }
}
