//! [`Runtime`]: the skill host that platform teams embed. It ties together the engine
//! ([`crate::engine`]), the registry of loaded skills ([`crate::registry`]), the compiled-code
//! cache, the key-value store, the HTTP client and the circuit breakers. Loading lives in
//! [`crate::loader`], invocation in [`crate::dispatch`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::CircuitBreakers;
use crate::cache::CodeCache;
use crate::engine::{EngineError, WasmEngine};
use crate::kv::KvStore;
use crate::package::LimitCeilings;
use crate::registry::{LoadedSkill, Registry, Rollback, RollbackError};

/// Limits and paths of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Ceilings no manifest may exceed.
    pub ceilings: LimitCeilings,
    /// Root of the tenants' workspaces (`<root>/<tenant>/...`); `None` disables the workspace
    /// host calls.
    pub workspace_root: Option<PathBuf>,
    /// Concurrent instances the pooling allocator reserves slots for.
    pub max_instances: u32,
    /// Directory of the compiled-code cache; `None` compiles every package at every load.
    pub code_cache: Option<PathBuf>,
    /// SQLite file of the durable key-value store behind `kv-get`/`kv-set` and the effects
    /// journal; `None` (with no `kv_database_url` either) makes those calls fail with
    /// `capability-error::io`.
    pub kv_path: Option<PathBuf>,
    /// The PostgreSQL database (`postgres://...`) holding the key-value store and the effects
    /// journal instead of `kv_path`: the database the control plane's nodes share, so a run
    /// taken over by a node on another host finds its effects journaled (ADR 0016). Setting
    /// both is refused by [`Runtime::new`].
    pub kv_database_url: Option<String>,
    /// PEM files of certificate authorities `http-fetch` trusts for `https://` besides the
    /// Mozilla root store compiled in (webpki-roots): an organisation's internal CA. Each file
    /// may hold several certificates.
    pub extra_root_certificates: Vec<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ceilings: LimitCeilings::default(),
            workspace_root: None,
            max_instances: 64,
            code_cache: None,
            kv_path: None,
            kv_database_url: None,
            extra_root_certificates: Vec::new(),
        }
    }
}

/// The skill host. `Send + Sync`; share it behind an `Arc`.
pub struct Runtime {
    pub(crate) engine: WasmEngine,
    pub(crate) config: RuntimeConfig,
    pub(crate) registry: Registry,
    pub(crate) cache: Option<CodeCache>,
    pub(crate) kv: Option<KvStore>,
    pub(crate) http: reqwest::Client,
    /// Guests' `emit` events as they happen ([`Runtime::subscribe_progress`]).
    pub(crate) progress: tokio::sync::broadcast::Sender<crate::host::Progress>,
    breakers: CircuitBreakers,
}

/// Progress events buffered for slow listeners ([`Runtime::subscribe_progress`]).
pub const PROGRESS_CAPACITY: usize = 4096;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("skills", &self.registry.ids())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Creates the engine (pooling allocator sized by `config`, fuel, epoch interruption), links
    /// WASI p2 and the `agentd:skill/host` interface, starts the epoch ticker, and opens the
    /// code cache and the key-value store when configured.
    ///
    /// # Errors
    ///
    /// [`EngineError`] when wasmtime refuses the configuration (e.g. the pool cannot be
    /// reserved), or the cache or key-value store cannot be opened.
    pub fn new(config: RuntimeConfig) -> Result<Self, EngineError> {
        let engine = WasmEngine::new(config.max_instances, &config.ceilings)?;
        let cache =
            match &config.code_cache {
                Some(dir) => Some(CodeCache::open(dir).map_err(|error| {
                    EngineError(format!("cannot open the code cache at {}: {error}", dir.display()))
                })?),
                None => None,
            };
        let kv = match (&config.kv_path, &config.kv_database_url) {
            (Some(path), Some(_)) => {
                return Err(EngineError(format!(
                    "the key-value store is configured twice: the file {} and a PostgreSQL database; give one",
                    path.display()
                )));
            }
            (Some(path), None) => Some(KvStore::open_lazy(path).map_err(|error| EngineError(error.to_string()))?),
            (None, Some(url)) => Some(KvStore::connect_postgres(url).map_err(|error| EngineError(error.to_string()))?),
            (None, None) => None,
        };
        // Redirects are not followed: a redirect could lead to an origin that was not granted.
        // No proxy from the environment either: the grant names the origin actually contacted.
        // https through rustls (ring provider, TLS 1.2 and 1.3, ADR 0013), certificates checked
        // against the Mozilla roots and `extra_root_certificates`, for the host name of the URL
        // while the connection goes to the vetted address.
        let mut http = reqwest::Client::builder().use_rustls_tls();
        for path in &config.extra_root_certificates {
            let pem = std::fs::read(path)
                .map_err(|error| EngineError(format!("cannot read the CA file {}: {error}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| EngineError(format!("{} holds no usable PEM certificate: {error}", path.display())))?;
            if certificates.is_empty() {
                return Err(EngineError(format!("{} holds no PEM certificate", path.display())));
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // Host names reach public addresses only, pinned for the connection (`net`).
            .dns_resolver(Arc::new(crate::net::VettedResolver))
            .user_agent(concat!("agentd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| EngineError(format!("cannot build the HTTP client: {error}")))?;
        Ok(Runtime {
            engine,
            config,
            registry: Registry::default(),
            cache,
            kv,
            http,
            progress: tokio::sync::broadcast::channel(PROGRESS_CAPACITY).0,
            breakers: CircuitBreakers::new(5, Duration::from_secs(30)),
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Rolls skill `id` back: the version installed most recently among the active ones is
    /// withdrawn from selection, so new invocations get the highest remaining one. In-flight
    /// invocations of the withdrawn version finish on it. One call, atomic like an install.
    ///
    /// # Errors
    ///
    /// [`RollbackError`] when the skill is unknown or has no other active version.
    pub async fn rollback(&self, id: &str) -> Result<Rollback, RollbackError> {
        self.registry.rollback(id).await
    }

    /// The highest active (loaded and not rolled back) version of skill `id`.
    pub fn lookup(&self, id: &str) -> Option<Arc<LoadedSkill>> {
        self.registry.lookup(id)
    }

    /// The loaded skill `id` whose component has `digest`, withdrawn versions included.
    pub fn lookup_digest(&self, id: &str, digest: &str) -> Option<Arc<LoadedSkill>> {
        self.registry.lookup_digest(id, digest)
    }

    /// Guests' `emit` events of every run, live, from now on (filter by run). A listener that
    /// falls more than [`PROGRESS_CAPACITY`] events behind gets `RecvError::Lagged` and has
    /// lost those: progress is advisory, never a record (run events are).
    pub fn subscribe_progress(&self) -> tokio::sync::broadcast::Receiver<crate::host::Progress> {
        self.progress.subscribe()
    }

    /// The circuit breakers, one per (skill version, tenant): open after 5 consecutive failures,
    /// one probe after 30 s.
    pub fn breakers(&self) -> &CircuitBreakers {
        &self.breakers
    }

    /// Every active version of `id` (loaded and not rolled back), lowest first.
    pub fn versions(&self, id: &str) -> Vec<Arc<LoadedSkill>> {
        self.registry.versions(id)
    }

    /// Every active skill version, by id then version.
    pub fn skills(&self) -> Vec<Arc<LoadedSkill>> {
        self.registry.skills()
    }
}
