//! `GET /v1/runs/{id}/events`: a run's events as Server-Sent Events (WHATWG HTML §9.2).
//!
//! - Each committed run event is one SSE event: `id` its Lamport clock, `event` its name
//!   (`run-created`, `step-succeeded`, ...), `data` the event as JSON. A client reconnecting with
//!   `Last-Event-ID: N` gets every event after N from the store, then live ones: nothing
//!   committed is missed or repeated.
//! - A guest's `emit` is an `event: progress` without an `id` (so `Last-Event-ID` stays the last
//!   committed event): progress is live only, never replayed. `event: progress-lost` says how
//!   many a slow client missed.
//! - The stream ends after the run's terminal event, or when the server shuts down.
//!
//! The stream is told of commits by the control plane's run-event feed (published after each
//! commit), so an event reaches subscribers without polling; a subscriber that fell behind the
//! feed reads the store again.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use control_plane::RunEvent;
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::extract::Caller;
use super::problem::Problem;

#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path, description = "Run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (a Lamport clock)")),
    responses((status = 200, description = "Server-Sent Events: committed run events (with ids) and live `progress` events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "Malformed Last-Event-ID", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn run_events(
    State(server): State<Shared>,
    caller: Caller,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| Problem::bad_request("bad-last-event-id", "Last-Event-ID is not an event id (a number)"))?,
    };
    let tenant = caller.0.tenant;
    let control_plane = &server.app.control_plane;
    // Subscribe before reading the store, so nothing committed in between is missed.
    let feed = control_plane.subscribe_run_events();
    let progress = server.app.runtime.subscribe_progress();
    let events = control_plane.run_events(&tenant, &run_id).await?;
    if events.is_empty() {
        return Err(Problem::not_found(format!(
            "run `{run_id}` does not exist in your tenant"
        )));
    }
    let follower = Follower {
        _open: server.metrics.stream_opened(),
        shutdown: server.shutdown.clone(),
        server: server.clone(),
        tenant,
        run_id,
        sent: after,
        log: events,
        queue: VecDeque::new(),
        started: false,
        done: false,
        feed,
        progress,
    };
    // The connection polls the stream itself: no task or channel per subscriber, and a slow
    // client holds at most one batch.
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        loop {
            if let Some(event) = follower.queue.pop_front() {
                return Some((Ok(event), follower));
            }
            if follower.done {
                return None;
            }
            follower.next().await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One run's events for one stream.
struct Follower {
    _open: super::metrics::StreamGuard,
    shutdown: tokio::sync::watch::Receiver<bool>,
    server: Shared,
    tenant: String,
    run_id: String,
    /// The last Lamport clock queued (or the client's `Last-Event-ID`).
    sent: u64,
    /// Every event of the run known so far, in order (to tell when it finished).
    log: Vec<RunEvent>,
    /// Events ready for the client.
    queue: VecDeque<Event>,
    /// Whether the stored events were queued.
    started: bool,
    /// No event will follow the queued ones.
    done: bool,
    feed: broadcast::Receiver<RunEvent>,
    progress: broadcast::Receiver<agent_runtime::Progress>,
}

impl Follower {
    /// Waits for what happens next and queues it (or marks the stream done).
    async fn next(&mut self) {
        if !self.started {
            self.started = true;
            self.queue_unsent();
            self.done = self.finished();
            return;
        }
        tokio::select! {
            _ = self.shutdown.changed() => self.done = true,
            received = self.feed.recv() => match received {
                Ok(event) if event.run_id == self.run_id => {
                    if event.lamport == self.log.last().map_or(1, |last| last.lamport + 1) {
                        self.log.push(event);
                    } else {
                        self.reread().await;
                    }
                    self.queue_unsent();
                    self.done |= self.finished();
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    self.reread().await;
                    self.queue_unsent();
                    self.done |= self.finished();
                }
                Err(RecvError::Closed) => self.done = true,
            },
            received = self.progress.recv() => match received {
                Ok(progress) if progress.run_id == self.run_id => {
                    if let Ok(event) = Event::default().event("progress").json_data(&progress) {
                        self.queue.push_back(event);
                    }
                }
                Ok(_) | Err(RecvError::Closed) => {}
                Err(RecvError::Lagged(missed)) => {
                    self.queue.push_back(Event::default().event("progress-lost").data(missed.to_string()));
                }
            },
        }
    }

    /// Queues the known events after the last one queued.
    fn queue_unsent(&mut self) {
        let after = self.sent;
        for event in self.log.iter().filter(|event| event.lamport > after) {
            if let Ok(sse) = Event::default()
                .id(event.lamport.to_string())
                .event(event.payload.name())
                .json_data(event)
            {
                self.queue.push_back(sse);
            }
            self.sent = event.lamport;
        }
    }

    /// Reads the run's events from the store again (after a gap or a lag); when that fails
    /// the stream ends and the client reconnects with its `Last-Event-ID`.
    async fn reread(&mut self) {
        match self
            .server
            .app
            .control_plane
            .run_events(&self.tenant, &self.run_id)
            .await
        {
            Ok(events) => self.log = events,
            Err(error) => {
                tracing::warn!(%error, run_id = %self.run_id, "an event stream cannot read its run");
                self.done = true;
            }
        }
    }

    fn finished(&self) -> bool {
        control_plane::run::reduce(&self.log).is_ok_and(|view| view.state.is_terminal())
    }
}
