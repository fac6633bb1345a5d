//! `agentd serve`: one long-lived process holding the runtime and the control plane, answering
//! the HTTP API v1 ([`api`]), streaming run events ([`events`]) and serving the reviewer page
//! ([`web`]).
//!
//! Life cycle: open the state and load the packages; one recovery pass (runs a crashed process
//! left behind); listen; recover periodically; on SIGTERM or SIGINT stop accepting, end the
//! event streams, let in-flight requests (and the steps they run) finish within the grace
//! period, then exit. A step still running when the grace period ends is cut off with the
//! process; its run's lease lapses and the next recovery pass (here or on another node)
//! dispatches it again under the same idempotency key, so its journaled effects are not
//! repeated.
//!
//! Slow clients: a request's head must arrive within `header_timeout` (hyper's header read
//! timeout) and its body within `body_timeout` (408); bodies are bounded before they are read.

pub mod api;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod problem;
pub mod web;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler as _;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::app::{App, Paths};
use metrics::Metrics;
use problem::Problem;

/// How `agentd serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace: Duration,
    /// Requests per second each tenant may make (burst: as many at once).
    pub rate_per_second: NonZeroU32,
    /// Time for a request's head to arrive.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive.
    pub body_timeout: Duration,
    /// Interval between recovery passes.
    pub recovery_period: Duration,
}

/// Everything a request handler reaches.
pub struct Server {
    pub app: App,
    pub metrics: Metrics,
    pub limiter: DefaultKeyedRateLimiter<String>,
    pub rate_per_second: NonZeroU32,
    /// Where packages installed over HTTP are kept (`<state dir>/packages`).
    pub packages_dir: std::path::PathBuf,
    /// Becomes `true` when shutdown begins.
    pub shutdown: watch::Receiver<bool>,
    /// Routes run events and progress to the run event streams.
    pub hub: Arc<events::Hub>,
}

/// The handlers' state.
pub type Shared = Arc<Server>;

impl Server {
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The Content-Security-Policy of every response: scripts and styles only from this server's
/// own files (no inline script or style, no `eval`), requests only to this origin, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The router over `server`: the API, the page, and the layers every request passes.
pub fn router(server: Shared, body_timeout: Duration) -> Router {
    Router::new()
        .route("/v1/runs", post(api::create_run).get(api::list_runs))
        .route("/v1/runs/{id}", get(api::get_run))
        .route("/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/v1/runs/{id}/provenance", get(api::run_provenance))
        .route("/v1/runs/{id}/events", get(events::run_events))
        .route("/v1/approvals", get(api::list_approvals))
        .route("/v1/approvals/events", get(events::approval_events))
        .route("/v1/approvals/{id}", get(api::get_approval))
        .route("/v1/approvals/{id}/votes", post(api::vote))
        .route(
            "/v1/skills",
            get(api::list_skills).post(api::install_skill.layer(DefaultBodyLimit::max(api::MAX_PACKAGE_BODY_BYTES))),
        )
        .route("/v1/skills/{id}/rollback", post(api::rollback_skill))
        .route("/v1/audit/verify", get(api::audit_verify))
        .route("/v1/audit/checkpoint", get(api::audit_checkpoint))
        .route("/v1/openapi.json", get(api::openapi))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/", get(web::index))
        .route("/assets/{file}", get(web::asset))
        .route_layer(middleware::from_fn_with_state(server.clone(), observe))
        .fallback(api::fallback)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(server)
}

/// Counts and times every routed request, and turns the router's own bare errors (405, a
/// path that does not parse) into problem details.
async fn observe(State(server): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let mut response = next.run(request).await;
    let status = response.status();
    if (status.is_client_error() || status.is_server_error()) && !api::is_problem(response.headers()) {
        let detail = format!("{method} {route}: {}", status.canonical_reason().unwrap_or("error"));
        response = Problem::new(
            status,
            &format!("http-{}", status.as_u16()),
            status.canonical_reason().unwrap_or("Error"),
            detail,
        )
        .into_response();
    }
    server
        .metrics
        .request(&method, &route, status.as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Runs the server until SIGTERM or SIGINT (see the module docs).
///
/// # Errors
///
/// When the state cannot be opened, the first recovery pass cannot read the store, or the
/// address cannot be bound.
#[expect(clippy::print_stdout, reason = "the bound address is the command's output")]
pub async fn run(paths: &Paths, options: ServeOptions) -> Result<()> {
    let app = App::open(paths).await?;
    let installed = paths.state_dir.join("packages");
    if installed.is_dir() {
        // Packages installed over HTTP before a restart; a bad one is reported and skipped.
        let report = app
            .runtime
            .load_dir(&installed)
            .await
            .with_context(|| format!("cannot read the installed packages in {}", installed.display()))?;
        for error in &report.refused {
            tracing::warn!(%error, "an installed package was refused");
        }
        tracing::info!(loaded = report.loaded.len(), "installed packages loaded");
    }
    let recovered = agent_runtime::recover(&app.runtime, &app.control_plane, agent_runtime::recovery::PASS_LIMIT)
        .await
        .context("the recovery pass at start failed")?;
    if !recovered.is_empty() {
        tracing::info!(runs = recovered.len(), "recovered runs at start");
    }
    let (stop, shutdown) = watch::channel(false);
    let hub = events::Hub::start(
        app.control_plane.subscribe_run_events(),
        app.control_plane.subscribe_run_event_gaps(),
        app.runtime.subscribe_progress(),
    );
    let server = Arc::new(Server {
        hub,
        app,
        metrics: Metrics::new(),
        limiter: RateLimiter::keyed(Quota::per_second(options.rate_per_second)),
        rate_per_second: options.rate_per_second,
        packages_dir: paths.state_dir.join("packages"),
        shutdown,
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr().context("the listening socket has no address")?;
    println!("agentd listening on http://{address}");
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }

    let recovery = {
        let server = server.clone();
        let period = options.recovery_period;
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            agent_runtime::recover_every(&server.app.runtime, &server.app.control_plane, period).await;
        })
    };

    let service = router(server.clone(), options.body_timeout);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let builder = builder.http1_only();
    let graceful = GracefulShutdown::new();
    let mut signals = Signals::new()?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service.clone()))
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            signal = signals.next() => {
                tracing::info!(signal, "shutting down: no new connections; in-flight requests finish");
                break;
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    recovery.abort();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every connection closed"),
        () = tokio::time::sleep(options.grace) => {
            tracing::warn!(grace_secs = options.grace.as_secs(), "grace period over: in-flight steps are cut off; their leases lapse and recovery resumes them");
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
