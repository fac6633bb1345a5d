//! The per-invocation host state (`Store<HostState>`) and the host functions a skill imports.
//!
//! Host functions are capabilities: each effectful one (`workspace-read`, `workspace-write`,
//! `kv-get`, `kv-set`, `http-fetch`) checks the grant at call time and answers
//! `capability-error::denied` instead of trapping, and counts the denial so the dispatcher can
//! classify the outcome.
//!
//! Effects are remembered by the invocation's idempotency key ([`crate::kv`]'s effects
//! journal), so a step dispatched again under the same key (a retry, a recovery after a crash)
//! does not repeat them:
//!
//! - `kv-set`: **exactly once** per key: the value and its journal row commit together.
//! - `workspace-write`: **exactly once** per key: a journaled write is skipped; a crash between
//!   the (fsynced) rename and the journal row repeats the same bytes to the same path, which
//!   leaves the same file.
//! - `http-fetch` with POST, PUT, PATCH or DELETE: **at least once, deduplicated by the server**:
//!   every request carries `Idempotency-Key: <idempotency key>/<seq>` (IETF
//!   draft-ietf-httpapi-idempotency-key-header); a response that was journaled is replayed
//!   without a request; a crash between the response and its journal row sends the request
//!   again with the same header, which a server honouring it applies once.
//! - `http-fetch` with GET or HEAD, `workspace-read`, `kv-get`: no effect; repeated freely.
//!
//! Effects are numbered within an invocation in call order (`seq`), and a journal row matches
//! only when the request is the same (SHA-256 of skill, target and content): a guest that asks
//! for something else the second time gets it done.
//!
//! Bytes are bounded twice: per call (the `MAX_*` constants below) and per invocation
//! ([`MAX_HOST_IO_BYTES`] across every call), so a guest cannot make the host buffer or move
//! more than that however it splits its calls.

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use plugin_abi::{Capability, Effect, Origin, WorkspacePath};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::agentd::skill::host::{CapabilityError, Host, HttpRequest, HttpResponse, LogLevel};
use crate::guest_output::GuestStreams;
use crate::kv::{EffectId, KvStore, MAX_KV_VALUE_BYTES};

/// Largest single `workspace-write`, bytes.
pub const MAX_WRITE_BYTES: usize = 16 * 1024 * 1024;

/// Largest single `workspace-read`, bytes; a guest's `max-bytes` is capped at this.
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Largest `http-fetch` request body, bytes.
pub const MAX_HTTP_REQUEST_BYTES: usize = 1024 * 1024;

/// Largest `http-fetch` response body, bytes; a longer one is refused as `invalid`.
pub const MAX_HTTP_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Bytes one invocation may move through host calls in all (reads, writes, key-value, HTTP
/// bodies in both directions).
pub const MAX_HOST_IO_BYTES: u64 = 64 * 1024 * 1024;

/// Largest log message or event kept, bytes; longer ones are truncated.
pub const MAX_LOG_BYTES: usize = 4096;

/// Log lines one invocation may write; further lines are dropped and counted, and one line at
/// the end of the invocation says how many (a 4 KiB log loop once wrote 1.93 GB of stderr).
pub const MAX_LOG_LINES: u32 = 1_000;

/// Log bytes one invocation may write (after truncation of each line to [`MAX_LOG_BYTES`]).
pub const MAX_LOG_TOTAL_BYTES: u64 = 256 * 1024;

/// `emit` events one invocation may send; further ones are dropped and counted.
pub const MAX_EVENTS: usize = 1_000;

/// Denied host calls remembered per invocation (the first ones, which name what the skill
/// needed); further denials are only counted, so a guest hammering a denied call costs no
/// memory (74,658 denials once held 142 MB). Only the first [`MAX_DENIALS_LOGGED`] are logged.
pub const MAX_DENIALS_KEPT: usize = 64;

/// Denied host calls logged per invocation.
pub const MAX_DENIALS_LOGGED: u64 = 8;

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
    /// The tails of the guest's stdout and stderr (the same buffers the WASI context writes).
    pub(crate) streams: GuestStreams,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) grants: Vec<Capability>,
    /// The tenant's workspace directory; `None` when the invocation has no workspace.
    pub(crate) workspace: Option<PathBuf>,
    pub(crate) tenant: String,
    pub(crate) kv: Option<KvStore>,
    pub(crate) http: Option<reqwest::Client>,
    /// When the invocation's wall-clock deadline passes; bounds outgoing HTTP requests.
    pub(crate) deadline: Instant,
    /// When guest code must stop (the manifest's `deadline_ms` after the store was armed);
    /// checked at every epoch tick.
    pub(crate) guest_deadline: Instant,
    /// Bytes moved through host calls so far, against [`MAX_HOST_IO_BYTES`].
    pub(crate) io_bytes: u64,
    pub(crate) skill_id: String,
    pub(crate) traceparent: String,
    /// The step's idempotency key; effects are journaled under it.
    pub(crate) idempotency_key: String,
    /// Where `emit` events are published live.
    pub(crate) progress: Option<ProgressSink>,
    /// Effectful calls made so far in this invocation (the next one's `seq`).
    pub(crate) effect_seq: u32,
    pub(crate) host_calls: u64,
    /// The narrowest capability each denied call would have needed, in order: the first
    /// [`MAX_DENIALS_KEPT`].
    pub(crate) denials: Vec<Capability>,
    /// Denied host calls in all.
    pub(crate) denied_calls: u64,
    pub(crate) events: Vec<(String, String)>,
    /// Log lines and bytes written so far, against [`MAX_LOG_LINES`] and [`MAX_LOG_TOTAL_BYTES`].
    pub(crate) log_lines: u32,
    pub(crate) log_bytes: u64,
    /// Log lines and events dropped over their budgets.
    pub(crate) dropped_output: u64,
}

/// A guest's `emit` event, published live while the invocation runs (`agentd serve` streams
/// them as a run's progress). Not a record: progress is lost when nobody listens, and a
/// re-dispatch emits again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// The skill that emitted it.
    pub skill_id: String,
    /// Its position among the invocation's events, from 0.
    pub seq: u32,
    /// Event name (at most [`MAX_LOG_BYTES`] bytes).
    pub name: String,
    /// Its attributes as the guest gave them (JSON text by convention, at most
    /// [`MAX_LOG_BYTES`] bytes).
    pub attributes: String,
}

/// Where an invocation's progress goes: the runtime's progress channel, tagged with the run
/// and step.
#[derive(Debug, Clone)]
pub(crate) struct ProgressSink {
    pub(crate) sender: tokio::sync::broadcast::Sender<Progress>,
    pub(crate) run_id: String,
    pub(crate) step_id: String,
}

/// What a [`HostState`] gives the guest beyond its grants: where effects land.
#[derive(Debug, Clone, Default)]
pub(crate) struct Effects {
    /// The tenant's workspace directory; `None` when the invocation has no workspace.
    pub(crate) workspace: Option<PathBuf>,
    /// The tenant whose key-value namespace the skill uses.
    pub(crate) tenant: String,
    /// The key-value store; `None` disables `kv-*`.
    pub(crate) kv: Option<KvStore>,
    /// The HTTP client; `None` disables `http-fetch`.
    pub(crate) http: Option<reqwest::Client>,
    /// The step's idempotency key: effects are journaled under it.
    pub(crate) idempotency_key: String,
    /// Where `emit` events are published live; `None` keeps them in the report only.
    pub(crate) progress: Option<ProgressSink>,
}

impl HostState {
    pub(crate) fn new(
        skill_id: &str,
        traceparent: &str,
        memory_limit_bytes: u64,
        grants: Vec<Capability>,
        effects: Effects,
        guest_deadline: Instant,
        deadline: Instant,
    ) -> Self {
        let streams = GuestStreams::default();
        HostState {
            // Nothing is granted through WASI: no preopened directories, no environment, no
            // arguments, no network; stdin is empty. Of stdout and stderr only a bounded tail is
            // kept, for the outcome of a trap.
            wasi: WasiCtx::builder()
                .stdout(streams.stdout.clone())
                .stderr(streams.stderr.clone())
                .build(),
            streams,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit_bytes: memory_limit_bytes,
                peak_bytes: 0,
                limit_hit: false,
            },
            grants,
            workspace: effects.workspace,
            tenant: effects.tenant,
            kv: effects.kv,
            http: effects.http,
            deadline,
            guest_deadline,
            io_bytes: 0,
            skill_id: skill_id.to_owned(),
            traceparent: traceparent.to_owned(),
            idempotency_key: effects.idempotency_key,
            progress: effects.progress,
            effect_seq: 0,
            host_calls: 0,
            denials: Vec::new(),
            denied_calls: 0,
            events: Vec::new(),
            log_lines: 0,
            log_bytes: 0,
            dropped_output: 0,
        }
    }
}

impl HostState {
    /// Readies a parked (warm-mode) store for its next call: new grants, effects, trace context
    /// and deadline; per-call counters back to zero. The memory peak is the instance's.
    pub(crate) fn rearm(
        &mut self,
        traceparent: &str,
        grants: Vec<Capability>,
        effects: Effects,
        guest_deadline: Instant,
        deadline: Instant,
    ) {
        self.guest_deadline = guest_deadline;
        self.grants = grants;
        self.workspace = effects.workspace;
        self.tenant = effects.tenant;
        self.kv = effects.kv;
        self.http = effects.http;
        self.idempotency_key = effects.idempotency_key;
        self.progress = effects.progress;
        self.effect_seq = 0;
        self.deadline = deadline;
        self.io_bytes = 0;
        traceparent.clone_into(&mut self.traceparent);
        self.host_calls = 0;
        self.denials.clear();
        self.denied_calls = 0;
        self.events.clear();
        self.log_lines = 0;
        self.log_bytes = 0;
        self.dropped_output = 0;
        self.streams.clear();
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
    if crate::outcome::cut_to(&mut text, MAX_LOG_BYTES) > 0 {
        text.push('…');
    }
    text
}

impl crate::bindings::agentd::skill::types::Host for HostState {}

impl Host for HostState {
    async fn log(&mut self, level: LogLevel, message: String) {
        self.host_calls += 1;
        let message = truncate(message);
        if self.log_lines >= MAX_LOG_LINES || self.log_bytes + message.len() as u64 > MAX_LOG_TOTAL_BYTES {
            self.dropped_output += 1;
            return;
        }
        self.log_lines += 1;
        self.log_bytes += message.len() as u64;
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
        if self.events.len() >= MAX_EVENTS {
            self.dropped_output += 1;
            return;
        }
        let (name, attributes) = (truncate(name), truncate(attributes));
        tracing::debug!(skill = %self.skill_id, traceparent = %self.traceparent, event = %name, %attributes, "guest event");
        if let Some(sink) = self.progress.as_ref().filter(|sink| sink.sender.receiver_count() > 0) {
            // An error only means every listener left meanwhile.
            let _ = sink.sender.send(Progress {
                run_id: sink.run_id.clone(),
                step_id: sink.step_id.clone(),
                skill_id: self.skill_id.clone(),
                seq: u32::try_from(self.events.len()).unwrap_or(u32::MAX),
                name: name.clone(),
                attributes: attributes.clone(),
            });
        }
        self.events.push((name, attributes));
    }

    async fn workspace_write(&mut self, path: String, contents: Vec<u8>) -> Result<(), CapabilityError> {
        self.host_calls += 1;
        let path = workspace_path(&path, "path")?;
        self.check(&Effect::FsWrite(&path))?;
        if contents.len() > MAX_WRITE_BYTES {
            return Err(CapabilityError::Invalid(format!(
                "{} bytes exceed the {MAX_WRITE_BYTES}-byte write limit",
                contents.len()
            )));
        }
        self.spend(contents.len())?;
        let root = self.workspace_root()?;
        let (key, seq, digest) = self.next_effect("workspace-write", &[path.as_str().as_bytes(), &contents]);
        let effect = EffectId {
            idempotency_key: &key,
            seq,
            kind: "workspace-write",
            request_digest: digest,
        };
        if self.already_done(&effect).await.is_some() {
            return Ok(());
        }
        // Through directory handles, links refused, via a random O_EXCL temporary file that
        // is fsynced and renamed: a reader never sees half a file, and the journal never
        // records a write a power loss could undo (see `crate::workspace`).
        let target = path.clone();
        tokio::task::spawn_blocking(move || crate::workspace::write(&root, &target, &contents))
            .await
            .map_err(|error| CapabilityError::Io(format!("writing `{path}`: {error}")))??;
        self.journal(&effect, None).await;
        Ok(())
    }

    async fn workspace_read(&mut self, path: String, max_bytes: u64) -> Result<Vec<u8>, CapabilityError> {
        self.host_calls += 1;
        let path = workspace_path(&path, "path")?;
        self.check(&Effect::FsRead(&path))?;
        let max_bytes = max_bytes.min(MAX_READ_BYTES);
        let root = self.workspace_root()?;
        // One directory handle per segment, no link followed, only a regular file opened
        // without blocking, at most `max_bytes + 1` bytes read (see `crate::workspace`).
        let source = path.clone();
        let contents = tokio::task::spawn_blocking(move || crate::workspace::read(&root, &source, max_bytes))
            .await
            .map_err(|error| CapabilityError::Io(format!("reading `{path}`: {error}")))??;
        self.spend(contents.len())?;
        Ok(contents)
    }

    async fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>, CapabilityError> {
        self.host_calls += 1;
        let key = workspace_path(&key, "key")?;
        self.check(&Effect::KvRead(&key))?;
        let Some(kv) = self.kv.clone() else {
            return Err(CapabilityError::Io("this runtime has no key-value store".to_owned()));
        };
        let value = kv
            .get(&self.tenant, &self.skill_id, key.as_str())
            .await
            .map_err(|error| CapabilityError::Io(error.to_string()))?;
        if let Some(value) = &value {
            self.spend(value.len())?;
        }
        Ok(value)
    }

    async fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<(), CapabilityError> {
        self.host_calls += 1;
        let key = workspace_path(&key, "key")?;
        self.check(&Effect::KvWrite(&key))?;
        if value.len() > MAX_KV_VALUE_BYTES {
            return Err(CapabilityError::Invalid(format!(
                "{} bytes exceed the {MAX_KV_VALUE_BYTES}-byte value limit",
                value.len()
            )));
        }
        self.spend(value.len())?;
        let Some(kv) = self.kv.clone() else {
            return Err(CapabilityError::Io("this runtime has no key-value store".to_owned()));
        };
        let (idempotency_key, seq, digest) = self.next_effect("kv-set", &[key.as_str().as_bytes(), &value]);
        let effect = EffectId {
            idempotency_key: &idempotency_key,
            seq,
            kind: "kv-set",
            request_digest: digest,
        };
        kv.set_journaled(&self.tenant, &self.skill_id, key.as_str(), &value, Some(&effect))
            .await
            .map(drop)
            .map_err(kv_error)
    }

    async fn kv_delete(&mut self, key: String) -> Result<bool, CapabilityError> {
        self.host_calls += 1;
        let key = workspace_path(&key, "key")?;
        self.check(&Effect::KvWrite(&key))?;
        let Some(kv) = self.kv.clone() else {
            return Err(CapabilityError::Io("this runtime has no key-value store".to_owned()));
        };
        let (idempotency_key, seq, digest) = self.next_effect("kv-delete", &[key.as_str().as_bytes()]);
        let effect = EffectId {
            idempotency_key: &idempotency_key,
            seq,
            kind: "kv-delete",
            request_digest: digest,
        };
        kv.delete_journaled(&self.tenant, &self.skill_id, key.as_str(), Some(&effect))
            .await
            .map_err(kv_error)
    }

    async fn http_fetch(&mut self, request: HttpRequest) -> Result<HttpResponse, CapabilityError> {
        self.host_calls += 1;
        let url = reqwest::Url::parse(&request.url)
            .map_err(|error| CapabilityError::Invalid(format!("url `{}`: {error}", request.url)))?;
        let origin = match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => Origin::parse(&format!("{}://{host}:{port}", url.scheme()))
                .map_err(|error| CapabilityError::Invalid(format!("url `{}`: {error}", request.url)))?,
            _ => {
                return Err(CapabilityError::Invalid(format!(
                    "url `{}` has no host or port",
                    request.url
                )));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CapabilityError::Invalid(format!(
                "url `{}` carries credentials; send them in a header",
                request.url
            )));
        }
        self.check(&Effect::Http(&origin))?;
        let method = match request.method.as_str() {
            "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "PATCH" => {
                reqwest::Method::from_bytes(request.method.as_bytes())
                    .map_err(|error| CapabilityError::Invalid(format!("method `{}`: {error}", request.method)))?
            }
            other => {
                return Err(CapabilityError::Invalid(format!(
                    "method `{other}` is not one of GET, POST, PUT, DELETE, HEAD, PATCH"
                )));
            }
        };
        if request.body.len() > MAX_HTTP_REQUEST_BYTES {
            return Err(CapabilityError::Invalid(format!(
                "the request body is {} bytes; the limit is {MAX_HTTP_REQUEST_BYTES}",
                request.body.len()
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &request.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|error| CapabilityError::Invalid(format!("header name `{name}`: {error}")))?;
            if matches!(
                name.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                return Err(CapabilityError::Invalid(format!("header `{name}` is set by the host")));
            }
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|error| CapabilityError::Invalid(format!("header `{name}` value: {error}")))?;
            headers.append(name, value);
        }
        // The invocation's trace context travels on with the request (W3C Trace Context).
        if let Ok(traceparent) = reqwest::header::HeaderValue::from_str(&self.traceparent) {
            headers.insert("traceparent", traceparent);
        }
        self.spend(request.body.len())?;
        let Some(client) = self.http.clone() else {
            return Err(CapabilityError::Io("this runtime has no HTTP client".to_owned()));
        };
        // Unsafe methods are effects: numbered, journaled and sent with an Idempotency-Key.
        let effect_parts = (!matches!(request.method.as_str(), "GET" | "HEAD")).then(|| {
            let mut parts: Vec<Vec<u8>> = vec![request.method.clone().into_bytes(), request.url.clone().into_bytes()];
            for (name, value) in &request.headers {
                parts.push(format!("{name}: {value}").into_bytes());
            }
            parts.push(request.body.clone());
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            self.next_effect("http-fetch", &parts)
        });
        let effect = effect_parts.as_ref().map(|(key, seq, digest)| EffectId {
            idempotency_key: key,
            seq: *seq,
            kind: "http-fetch",
            request_digest: digest.clone(),
        });
        if let Some(effect) = &effect {
            if let Some(Some(stored)) = self.already_done(effect).await
                && let Some(response) = decode_response(&stored)
            {
                self.spend(response.body.len())?;
                return Ok(response);
            }
            if !headers.contains_key("idempotency-key")
                && let Ok(value) =
                    reqwest::header::HeaderValue::from_str(&format!("{}/{}", effect.idempotency_key, effect.seq))
            {
                headers.insert("idempotency-key", value);
            }
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        // With the whole chain of causes: a refused address is said in the resolver's error.
        let failed = |error: reqwest::Error| {
            let mut message = format!("{} {}: {error}", request.method, request.url);
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            CapabilityError::Io(message)
        };
        let mut response = client
            .request(method, url)
            .headers(headers)
            .body(request.body)
            .timeout(remaining)
            .send()
            .await
            .map_err(failed)?;
        if let Some(length) = response.content_length()
            && length > MAX_HTTP_RESPONSE_BYTES as u64
        {
            return Err(CapabilityError::Invalid(format!(
                "the response body is {length} bytes; the limit is {MAX_HTTP_RESPONSE_BYTES}"
            )));
        }
        let status = response.status().as_u16();
        let response_headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_HTTP_RESPONSE_BYTES {
                return Err(CapabilityError::Invalid(format!(
                    "the response body exceeds the {MAX_HTTP_RESPONSE_BYTES}-byte limit"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        self.spend(body.len())?;
        let response = HttpResponse {
            status,
            headers: response_headers,
            body,
        };
        if let Some(effect) = &effect {
            let encoded = encode_response(&response);
            self.journal(effect, Some(&encoded)).await;
        }
        Ok(response)
    }
}

impl HostState {
    /// The next effectful call's `(idempotency key, seq, request digest)`; `parts` are what it
    /// asks for, hashed length-prefixed with its kind and the skill.
    fn next_effect(&mut self, kind: &str, parts: &[&[u8]]) -> (String, u32, String) {
        use sha2::Digest as _;
        let seq = self.effect_seq;
        self.effect_seq += 1;
        let mut hasher = sha2::Sha256::new();
        for part in [kind.as_bytes(), self.skill_id.as_bytes()]
            .into_iter()
            .chain(parts.iter().copied())
        {
            hasher.update(part.len().to_be_bytes());
            hasher.update(part);
        }
        (
            self.idempotency_key.clone(),
            seq,
            format!("sha256:{}", hex::encode(hasher.finalize())),
        )
    }

    /// `Some(response)` when the journal holds `effect` with the same request: it happened.
    /// A journal that cannot be read counts as not done (the effect happens again).
    fn already_done<'a>(&self, effect: &'a EffectId<'a>) -> impl Future<Output = Option<Option<Vec<u8>>>> + Send + 'a {
        let kv = self.kv.clone();
        async move {
            let kv = kv?;
            match kv.journaled(effect).await {
                Ok(Some((digest, response))) if digest == effect.request_digest => Some(response),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, key = effect.idempotency_key, "the effects journal cannot be read; the effect happens again");
                    None
                }
            }
        }
    }

    /// Records that `effect` happened; a failure is logged (the effect may then repeat after a
    /// crash).
    fn journal<'a>(
        &self,
        effect: &'a EffectId<'a>,
        response: Option<&'a [u8]>,
    ) -> impl Future<Output = ()> + Send + 'a {
        let kv = self.kv.clone();
        async move {
            if let Some(kv) = kv
                && let Err(error) = kv.record_effect(effect, response).await
            {
                tracing::warn!(%error, key = effect.idempotency_key, "an effect could not be journaled; a re-dispatch may repeat it");
            }
        }
    }
}

/// A journaled HTTP response: JSON `{status, headers, body}` with the body in base64.
fn encode_response(response: &HttpResponse) -> Vec<u8> {
    use base64::Engine as _;
    serde_json::json!({
        "status": response.status,
        "headers": response.headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&response.body),
    })
    .to_string()
    .into_bytes()
}

fn decode_response(stored: &[u8]) -> Option<HttpResponse> {
    use base64::Engine as _;
    let value: serde_json::Value = serde_json::from_slice(stored).ok()?;
    Some(HttpResponse {
        status: u16::try_from(value["status"].as_u64()?).ok()?,
        headers: serde_json::from_value(value["headers"].clone()).ok()?,
        body: base64::engine::general_purpose::STANDARD
            .decode(value["body"].as_str()?)
            .ok()?,
    })
}

impl HostState {
    /// Checks `effect` against the grants; a denial is counted, logged and returned as
    /// `capability-error::denied` naming the capability that would have permitted it.
    fn check(&mut self, effect: &Effect<'_>) -> Result<(), CapabilityError> {
        if self.grants.iter().any(|grant| grant.permits(effect)) {
            return Ok(());
        }
        let needed = effect.needed();
        self.denied_calls += 1;
        if self.denials.len() < MAX_DENIALS_KEPT {
            self.denials.push(effect.capability());
        }
        if self.denied_calls <= MAX_DENIALS_LOGGED {
            tracing::warn!(skill = %self.skill_id, traceparent = %self.traceparent, capability = %needed, "capability denied");
        }
        Err(CapabilityError::Denied(format!(
            "{needed} (granted: {})",
            describe_grants(&self.grants)
        )))
    }

    /// Counts `bytes` against the invocation's host I/O budget.
    fn spend(&mut self, bytes: usize) -> Result<(), CapabilityError> {
        let total = self.io_bytes.saturating_add(bytes as u64);
        if total > MAX_HOST_IO_BYTES {
            return Err(CapabilityError::Invalid(format!(
                "this invocation has moved {} bytes through host calls; {bytes} more would exceed its {MAX_HOST_IO_BYTES}-byte budget",
                self.io_bytes
            )));
        }
        self.io_bytes = total;
        Ok(())
    }

    /// Refuses a path any existing component of which is a symbolic link, so a link placed in a
    /// granted directory cannot lead out of the grant (or out of the workspace). Components that
    /// do not exist yet hold no link.
    fn workspace_root(&self) -> Result<PathBuf, CapabilityError> {
        self.workspace
            .clone()
            .ok_or_else(|| CapabilityError::Io("this invocation has no workspace".to_owned()))
    }
}

/// A full namespace or quota is the guest's doing (`invalid`); a database failure is `io`.
fn kv_error(error: crate::kv::KvError) -> CapabilityError {
    match error {
        crate::kv::KvError::Full { .. } | crate::kv::KvError::Quota { .. } => {
            CapabilityError::Invalid(error.to_string())
        }
        crate::kv::KvError::Database { .. } | crate::kv::KvError::NotMigrated { .. } => {
            CapabilityError::Io(error.to_string())
        }
    }
}

fn workspace_path(text: &str, what: &str) -> Result<WorkspacePath, CapabilityError> {
    WorkspacePath::parse(text).map_err(|error| CapabilityError::Invalid(format!("{what} `{text}`: {error}")))
}

fn describe_grants(grants: &[Capability]) -> String {
    if grants.is_empty() {
        return "none".to_owned();
    }
    grants.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> HostState {
        let later = Instant::now() + std::time::Duration::from_secs(60);
        HostState::new(
            "hostile",
            "00-0-0-01",
            1 << 20,
            Vec::new(),
            Effects::default(),
            later,
            later,
        )
    }

    #[tokio::test]
    async fn a_log_loop_is_cut_at_the_invocation_budget() {
        let mut state = state();
        for _ in 0..100_000 {
            state.log(LogLevel::Error, "x".repeat(8192)).await;
        }
        assert_eq!(state.host_calls, 100_000);
        assert!(state.log_bytes <= MAX_LOG_TOTAL_BYTES);
        assert!(u64::from(state.log_lines) * (MAX_LOG_BYTES as u64) <= MAX_LOG_TOTAL_BYTES + MAX_LOG_BYTES as u64);
        assert_eq!(state.dropped_output, 100_000 - u64::from(state.log_lines));
        let mut short = self::state();
        for _ in 0..5_000 {
            short.log(LogLevel::Info, "tick".into()).await;
        }
        assert_eq!(short.log_lines, MAX_LOG_LINES);
        assert_eq!(short.dropped_output, 5_000 - u64::from(MAX_LOG_LINES));
    }

    #[tokio::test]
    async fn kv_delete_needs_a_write_grant_and_a_full_quota_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open_lazy(&dir.path().join("kv.db")).unwrap();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let effects = Effects {
            tenant: "acme".into(),
            kv: Some(kv.clone()),
            idempotency_key: "acme/run-1/step-1".into(),
            ..Effects::default()
        };
        let grants = vec!["kv.write:notes/".parse().unwrap(), "kv.read:notes/".parse().unwrap()];
        let mut state = HostState::new("notes", "00-0-0-01", 1 << 20, grants, effects, later, later);
        state.kv_set("notes/a".into(), b"x".to_vec()).await.unwrap();
        assert!(matches!(state.kv_delete("notes/a".into()).await, Ok(true)));
        assert!(matches!(state.kv_get("notes/a".into()).await, Ok(None)));
        assert!(matches!(state.kv_delete("notes/a".into()).await, Ok(false)));
        assert!(matches!(
            state.kv_delete("other/a".into()).await,
            Err(CapabilityError::Denied(_))
        ));
        assert!(matches!(
            state.kv_delete("../a".into()).await,
            Err(CapabilityError::Invalid(_))
        ));
        let quota = crate::kv::KvError::Quota {
            tenant: "acme".into(),
            skill: "notes".into(),
            used: 1,
            after: 2,
        };
        assert!(matches!(kv_error(quota), CapabilityError::Invalid(message) if message.contains("quota")));
    }

    #[tokio::test]
    async fn emits_beyond_the_budget_are_dropped_and_counted() {
        let mut state = state();
        for i in 0..3_000 {
            state.emit(format!("progress-{i}"), "{}".into()).await;
        }
        assert_eq!(state.events.len(), MAX_EVENTS);
        assert_eq!(state.dropped_output, 2_000);
    }

    #[tokio::test]
    async fn hammering_a_denied_call_keeps_memory_bounded() {
        let mut state = state();
        for _ in 0..100_000 {
            let denied = state.kv_get("secret".into()).await;
            assert!(matches!(denied, Err(CapabilityError::Denied(_))));
        }
        assert_eq!(state.denied_calls, 100_000);
        assert_eq!(state.denials.len(), MAX_DENIALS_KEPT);
        // Rearming for the next call starts the budgets afresh.
        let later = Instant::now() + std::time::Duration::from_secs(60);
        state.rearm("00-0-0-02", Vec::new(), Effects::default(), later, later);
        assert_eq!(
            (state.denied_calls, state.denials.len(), state.dropped_output),
            (0, 0, 0)
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn reading_a_fifo_or_a_device_link_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        let fifo = dir.path().join("inbox/pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        std::fs::create_dir(dir.path().join("inbox/sub")).unwrap();
        std::fs::write(dir.path().join("inbox/ok.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("inbox/zero")).unwrap();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let grants = vec![Capability::FsRead {
            prefix: WorkspacePath::parse("inbox").unwrap(),
        }];
        let effects = Effects {
            workspace: Some(dir.path().to_owned()),
            ..Effects::default()
        };
        let mut state = HostState::new("reader", "00-0-0-01", 1 << 20, grants, effects, later, later);
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            state.workspace_read("inbox/pipe".into(), 1024),
        )
        .await
        .expect("reading a FIFO hung");
        assert!(
            matches!(&read, Err(CapabilityError::Invalid(m)) if m.contains("not a regular file")),
            "{read:?}"
        );
        let read = state.workspace_read("inbox/sub".into(), 1024).await;
        assert!(
            matches!(&read, Err(CapabilityError::Invalid(m)) if m.contains("not a regular file")),
            "{read:?}"
        );
        let read = state.workspace_read("inbox/zero".into(), 1024).await;
        assert!(
            matches!(&read, Err(CapabilityError::Invalid(m)) if m.contains("symbolic link")),
            "{read:?}"
        );
        assert_eq!(
            state.workspace_read("inbox/ok.txt".into(), 1024).await.unwrap(),
            b"hello"
        );
        let read = state.workspace_read("inbox/ok.txt".into(), 4).await;
        assert!(
            matches!(&read, Err(CapabilityError::Invalid(m)) if m.contains("at most 4")),
            "{read:?}"
        );
    }
}
