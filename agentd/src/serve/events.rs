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

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use control_plane::RunEvent;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::Shared;
use super::extract::Caller;
use super::problem::Problem;

/// Events queued per stream before the writer waits for the client.
const STREAM_BUFFER: usize = 64;

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
    let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
    let follower = Follower {
        server: server.clone(),
        tenant,
        run_id,
        sent: after,
        log: events,
        sender,
    };
    tokio::spawn(follower.follow(feed, progress));
    let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx).map(|event| event.map(Ok)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Writes one run's events to one stream.
struct Follower {
    server: Shared,
    tenant: String,
    run_id: String,
    /// The last Lamport clock sent (or the client's `Last-Event-ID`).
    sent: u64,
    /// Every event of the run known so far, in order (to tell when it finished).
    log: Vec<RunEvent>,
    sender: mpsc::Sender<Event>,
}

impl Follower {
    async fn follow(
        mut self,
        mut feed: tokio::sync::broadcast::Receiver<RunEvent>,
        mut progress: tokio::sync::broadcast::Receiver<agent_runtime::Progress>,
    ) {
        let _open = self.server.metrics.stream_opened();
        let mut shutdown = self.server.shutdown.clone();
        if !self.send_unsent().await || self.finished() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.sender.closed() => return,
                received = feed.recv() => match received {
                    Ok(event) if event.run_id == self.run_id => {
                        if event.lamport == self.log.last().map_or(1, |last| last.lamport + 1) {
                            self.log.push(event);
                        } else if !self.reread().await {
                            return;
                        }
                        if !self.send_unsent().await || self.finished() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        if !self.reread().await || !self.send_unsent().await || self.finished() {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
                received = progress.recv() => {
                    let event = match received {
                        Ok(progress) if progress.run_id == self.run_id => {
                            Event::default().event("progress").json_data(&progress).ok()
                        }
                        Ok(_) | Err(RecvError::Closed) => None,
                        Err(RecvError::Lagged(missed)) => {
                            Some(Event::default().event("progress-lost").data(missed.to_string()))
                        }
                    };
                    if let Some(event) = event
                        && self.sender.send(event).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the known events after the last one sent; `false` when the client left.
    async fn send_unsent(&mut self) -> bool {
        let after = self.sent;
        for event in self.log.iter().filter(|event| event.lamport > after) {
            let Ok(sse) = Event::default()
                .id(event.lamport.to_string())
                .event(event.payload.name())
                .json_data(event)
            else {
                continue;
            };
            if self.sender.send(sse).await.is_err() {
                return false;
            }
            self.sent = event.lamport;
        }
        true
    }

    /// Reads the run's events from the store again (after a gap or a lag); `false` when that
    /// fails (the stream ends and the client reconnects with its `Last-Event-ID`).
    async fn reread(&mut self) -> bool {
        match self
            .server
            .app
            .control_plane
            .run_events(&self.tenant, &self.run_id)
            .await
        {
            Ok(events) => {
                self.log = events;
                true
            }
            Err(error) => {
                tracing::warn!(%error, run_id = %self.run_id, "an event stream cannot read its run");
                false
            }
        }
    }

    fn finished(&self) -> bool {
        control_plane::run::reduce(&self.log).is_ok_and(|view| view.state.is_terminal())
    }
}
