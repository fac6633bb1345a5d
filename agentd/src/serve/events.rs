//! Server-Sent Events (WHATWG HTML §9.2): a run's events (`GET /v1/runs/{id}/events`) and a
//! tenant's pending approvals (`GET /v1/approvals/events`).
//!
//! Run streams:
//! - Each committed run event is one SSE event: `id` its Lamport clock, `event` its name
//!   (`run-created`, `step-succeeded`, ...), `data` the event as JSON. A client reconnecting with
//!   `Last-Event-ID: N` gets every event after N from the store, then live ones: nothing
//!   committed is missed or repeated.
//! - A guest's `emit` is an `event: progress` without an `id` (so `Last-Event-ID` stays the last
//!   committed event): progress is live only, never replayed. `event: progress-lost` says how
//!   many a slow client missed.
//! - The stream ends after the run's terminal event, or when the server shuts down.
//!
//! One [`Hub`] task listens to the control plane's run-event feed (published after each commit)
//! and to the runtime's progress, and hands each event, serialised once into an SSE frame, to the
//! streams following its run; a stream sends every frame waiting for it in one write. With a
//! thousand subscribers that is one serde pass per event instead of a thousand, and fewer
//! writes the later a stream is served. A stream that fell behind its run's channel reads the
//! store again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use control_plane::{ApprovalStatus, RunEvent};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};

use super::Shared;
use super::extract::Caller;
use super::problem::Problem;

/// How often an idle stream sends an SSE comment, so proxies keep the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Frames buffered per followed run for a slow stream (beyond that it reads the store again).
const RUN_CHANNEL_CAPACITY: usize = 256;

/// How often an approvals stream looks again without a run event (expiries happen by time).
const APPROVALS_RECHECK: Duration = Duration::from_secs(5);

/// One SSE event, serialised once for every stream that sends it.
#[derive(Debug)]
enum Frame {
    /// A committed run event.
    Committed { event: Box<RunEvent>, bytes: Bytes },
    /// A guest's `emit`, or a `progress-lost` notice.
    Progress(Bytes),
    /// The hub fell behind the control plane's feed: committed events may be missing.
    FeedLagged,
}

/// Routes committed run events and guest progress to the streams following each run.
#[derive(Debug, Default)]
pub struct Hub {
    /// Followed runs, by run id.
    runs: Mutex<HashMap<String, broadcast::Sender<Arc<Frame>>>>,
}

impl Hub {
    /// Starts routing `feed` (committed run events) and `progress` (guests' `emit`); the task
    /// ends when either closes. A move of `gaps` (the feed may have missed events: another
    /// node's, on PostgreSQL, while this node's listener reconnected) makes every stream read
    /// its run from the store again, as a lagging feed does.
    pub fn start(
        mut feed: broadcast::Receiver<RunEvent>,
        mut gaps: watch::Receiver<u64>,
        mut progress: broadcast::Receiver<agent_runtime::Progress>,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub::default());
        let routing = hub.clone();
        tokio::spawn(async move {
            let mut watching_gaps = true;
            loop {
                tokio::select! {
                    changed = gaps.changed(), if watching_gaps => match changed {
                        Ok(()) => routing.send_all(|| Frame::FeedLagged),
                        // The store is gone; the feed closes too.
                        Err(_) => watching_gaps = false,
                    },
                    received = feed.recv() => match received {
                        Ok(event) => {
                            let run_id = event.run_id.clone();
                            routing.send(&run_id, || Frame::Committed { bytes: committed_frame(&event), event: Box::new(event) });
                        }
                        Err(RecvError::Lagged(_)) => routing.send_all(|| Frame::FeedLagged),
                        Err(RecvError::Closed) => break,
                    },
                    received = progress.recv() => match received {
                        Ok(progress) => {
                            let run_id = progress.run_id.clone();
                            routing.send(&run_id, || Frame::Progress(frame("progress", None, &progress)));
                        }
                        Err(RecvError::Lagged(missed)) => routing.send_all(|| Frame::Progress(progress_lost(missed))),
                        // The runtime is gone: so is the server (and a closed receiver would
                        // answer at once, for ever).
                        Err(RecvError::Closed) => break,
                    },
                }
            }
        });
        hub
    }

    /// A receiver of `run_id`'s frames from now on.
    fn follow(&self, run_id: &str) -> broadcast::Receiver<Arc<Frame>> {
        let mut runs = self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        runs.retain(|_, sender| sender.receiver_count() > 0);
        runs.entry(run_id.to_owned())
            .or_insert_with(|| broadcast::channel(RUN_CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Sends the frame `make` builds (only when someone follows `run_id`).
    fn send(&self, run_id: &str, make: impl FnOnce() -> Frame) {
        let mut runs = self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = runs.get(run_id)
            && sender.send(Arc::new(make())).is_err()
        {
            runs.remove(run_id);
        }
    }

    /// Sends the frame `make` builds to every followed run.
    fn send_all(&self, make: impl Fn() -> Frame) {
        let runs = self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for sender in runs.values() {
            let _ = sender.send(Arc::new(make()));
        }
    }
}

/// `event: <name>`, an optional `id`, and `data` the JSON of `value`, as one SSE event.
fn frame(name: &str, id: Option<u64>, value: &impl serde::Serialize) -> Bytes {
    // Compact JSON holds no line break, so one `data:` line carries it.
    let data = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
    let mut text = String::with_capacity(data.len() + name.len() + 32);
    if let Some(id) = id {
        text.push_str("id: ");
        text.push_str(&id.to_string());
        text.push('\n');
    }
    text.push_str("event: ");
    text.push_str(name);
    text.push_str("\ndata: ");
    text.push_str(&data);
    text.push_str("\n\n");
    Bytes::from(text)
}

fn committed_frame(event: &RunEvent) -> Bytes {
    frame(event.payload.name(), Some(event.lamport), event)
}

/// `event: progress-lost` with how many progress events a stream missed.
fn progress_lost(missed: u64) -> Bytes {
    Bytes::from(format!("event: progress-lost\ndata: {missed}\n\n"))
}

/// An SSE response whose body is `chunks`.
fn event_stream(chunks: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures_util::StreamExt as _;
    let mut response = Body::from_stream(chunks.map(Ok::<_, Infallible>)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

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
) -> Result<Response, Problem> {
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| Problem::bad_request("bad-last-event-id", "Last-Event-ID is not an event id (a number)"))?,
    };
    let tenant = caller.0.tenant;
    // Follow before reading the store, so nothing committed in between is missed: an event the
    // hub routed before this follow was committed before the read below.
    let frames = server.hub.follow(&run_id);
    let events = server.app.control_plane.run_events(&tenant, &run_id).await?;
    if events.is_empty() {
        return Err(Problem::not_found(format!(
            "run `{run_id}` does not exist in your tenant"
        )));
    }
    let mut follower = Follower {
        _open: server.metrics.stream_opened(),
        shutdown: server.shutdown.clone(),
        server: server.clone(),
        tenant,
        run_id,
        sent: after,
        log: events,
        out: Vec::new(),
        done: false,
        frames,
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE),
    };
    follower.queue_unsent();
    follower.done = follower.finished();
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        loop {
            if !follower.out.is_empty() {
                let chunk = Bytes::from(std::mem::take(&mut follower.out));
                return Some((chunk, follower));
            }
            if follower.done {
                return None;
            }
            follower.next().await;
        }
    });
    Ok(event_stream(stream))
}

/// One run's events for one stream.
struct Follower {
    _open: super::metrics::StreamGuard,
    shutdown: watch::Receiver<bool>,
    server: Shared,
    tenant: String,
    run_id: String,
    /// The last Lamport clock written to `out` (or the client's `Last-Event-ID`).
    sent: u64,
    /// Every event of the run known so far, in order (to tell when it finished).
    log: Vec<RunEvent>,
    /// SSE text ready for the client.
    out: Vec<u8>,
    /// No event will follow what is in `out`.
    done: bool,
    frames: broadcast::Receiver<Arc<Frame>>,
    keep_alive: tokio::time::Interval,
}

impl Follower {
    /// Waits for the next frame, then takes every frame already waiting (one write for all);
    /// or writes a keep-alive comment when none came for [`KEEP_ALIVE`]. Only the waiting is
    /// raced (`recv` is cancel-safe): what follows runs to its end, so no frame taken is lost.
    async fn next(&mut self) {
        let first = tokio::select! {
            _ = self.shutdown.changed() => {
                self.done = true;
                return;
            }
            _ = self.keep_alive.tick() => {
                self.out.extend_from_slice(b": keep-alive\n\n");
                return;
            }
            received = self.frames.recv() => received,
        };
        self.keep_alive.reset();
        let mut reread = false;
        let mut received = first.map_err(|error| match error {
            RecvError::Lagged(missed) => TryRecvError::Lagged(missed),
            RecvError::Closed => TryRecvError::Closed,
        });
        loop {
            match received {
                Ok(frame) => match &*frame {
                    Frame::Committed { event, bytes } => {
                        let last = self.log.last().map_or(0, |last| last.lamport);
                        if event.lamport == last + 1 && !reread {
                            self.log.push(RunEvent::clone(event));
                            if event.lamport > self.sent {
                                self.out.extend_from_slice(bytes);
                                self.sent = event.lamport;
                            }
                        } else if event.lamport > last {
                            reread = true;
                        }
                    }
                    Frame::Progress(bytes) => self.out.extend_from_slice(bytes),
                    Frame::FeedLagged => reread = true,
                },
                Err(TryRecvError::Lagged(missed)) => {
                    // Committed events are read again below; lost progress is only counted.
                    self.out.extend_from_slice(&progress_lost(missed));
                    reread = true;
                }
                Err(TryRecvError::Closed) => {
                    self.done = true;
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
            received = self.frames.try_recv();
        }
        if reread {
            self.reread().await;
            self.queue_unsent();
        }
        self.done |= self.finished();
    }

    /// Writes the known events after the last one written.
    fn queue_unsent(&mut self) {
        let after = self.sent;
        for event in self.log.iter().filter(|event| event.lamport > after) {
            self.out.extend_from_slice(&committed_frame(event));
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

#[utoipa::path(
    get, path = "/v1/approvals/events", tag = "approvals",
    responses((status = 200, description = "Server-Sent Events: `event: approvals` with the tenant's pending approval requests (as `GET /v1/approvals?status=pending`), first at once, then whenever the list changes", body = String, content_type = "text/event-stream")),
    security(("bearer" = []))
)]
pub async fn approval_events(State(server): State<Shared>, caller: Caller) -> Result<Response, Problem> {
    let tenant = caller.0.tenant;
    // Subscribe before the first read, so a change in between wakes the stream.
    let feed = server.app.control_plane.subscribe_run_events();
    let pending = server
        .app
        .control_plane
        .list_approvals(&tenant, Some(ApprovalStatus::Pending))
        .await?;
    let watcher = ApprovalWatcher {
        _open: server.metrics.stream_opened(),
        shutdown: server.shutdown.clone(),
        server: server.clone(),
        tenant,
        feed,
        last: String::new(),
        quiet: 0,
    };
    let first = watcher_frame(&pending);
    let stream = futures_util::stream::unfold((watcher, Some(first)), |(mut watcher, first)| async move {
        if let Some(first) = first {
            watcher.last = first.clone();
            return Some((
                Bytes::from(format!("event: approvals\ndata: {first}\n\n")),
                (watcher, None),
            ));
        }
        let chunk = watcher.next().await?;
        Some((chunk, (watcher, None)))
    });
    Ok(event_stream(stream))
}

fn watcher_frame(pending: &impl serde::Serialize) -> String {
    serde_json::to_string(pending).unwrap_or_else(|_| "[]".to_owned())
}

/// One tenant's pending approvals for one stream.
///
/// Any committed run event may change them (a step asking for review, a vote, a cancel), and
/// the feed does not say whose run it was: the stream reads its own tenant's list again, at
/// most every [`APPROVALS_DEBOUNCE`], and sends it only when it changed. Other tenants' work
/// shows only as a re-read, never in what is sent.
struct ApprovalWatcher {
    _open: super::metrics::StreamGuard,
    shutdown: watch::Receiver<bool>,
    server: Shared,
    tenant: String,
    feed: broadcast::Receiver<RunEvent>,
    /// The JSON last sent.
    last: String,
    /// Re-checks in a row that found nothing new (a keep-alive goes out every third).
    quiet: u32,
}

/// The shortest time between two reads of an approvals stream's list.
const APPROVALS_DEBOUNCE: Duration = Duration::from_millis(200);

impl ApprovalWatcher {
    /// The next chunk to send, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let woken = tokio::select! {
                _ = self.shutdown.changed() => return None,
                () = tokio::time::sleep(APPROVALS_RECHECK) => false,
                received = self.feed.recv() => match received {
                    Ok(_) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return None,
                },
            };
            if woken {
                // Let a burst of commits land, then read once for all of them.
                tokio::time::sleep(APPROVALS_DEBOUNCE).await;
                while self.feed.try_recv().is_ok() {}
            }
            let pending = match self
                .server
                .app
                .control_plane
                .list_approvals(&self.tenant, Some(ApprovalStatus::Pending))
                .await
            {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::warn!(%error, "an approvals stream cannot read the approvals");
                    return None;
                }
            };
            let json = watcher_frame(&pending);
            if json != self.last {
                self.quiet = 0;
                let chunk = Bytes::from(format!("event: approvals\ndata: {json}\n\n"));
                self.last = json;
                return Some(chunk);
            }
            self.quiet += 1;
            if self.quiet.is_multiple_of(3) {
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
        }
    }
}
