//! Server-sent events, with one reader for every follower of `$all`.
//!
//! Followers of `$all` share one fan-out: a single task reads each new event once, writes its
//! SSE frame once, and broadcasts the frame's bytes. A follower first catches up alone from the
//! store, then takes frames from the broadcast, skipping those it already sent. Every frame
//! says from which position on the fan-out saw nothing but its event (`after`), so a follower
//! that finds a gap before a frame — it lagged and the broadcast dropped frames, or the
//! fan-out skipped events while nobody listened — reads the gap from the store first. Nothing
//! is lost and nothing is sent twice; the common case costs one copy of bytes per follower.
//!
//! A frame is `id: <position>\ndata: <event JSON>\n\n`. Frames ready together go out as one
//! chunk (of at most [`CHUNK_BYTES_MAX`]); a comment line every 15 seconds keeps idle
//! connections open.
//!
//! What one subscriber holds is bounded: at most [`QUEUED_CHUNKS`] chunks wait for its
//! connection, and a follower whose client stops reading waits there — it reads from the store
//! again when the client goes on, as followers that fall behind do. One that cannot send for
//! [`Config::stall_timeout`](crate::Config::stall_timeout) is dropped, its connection closed.
//! The number of subscriptions is capped overall and per token (503 and 429 with
//! `Retry-After` beyond).

use std::sync::{Arc, Once};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use factum_core::{Direction, EventStore, RecordedEvent, StoreError, Subscription};
use tokio::sync::{broadcast, mpsc, watch};

use crate::json::recorded;
use crate::metrics::Subscribed;
use crate::stats::Stats;
use crate::{ApiError, AppState};

/// How many events one read of the store takes (the fan-out's).
const PAGE_EVENTS: usize = 512;
/// How many events a follower reads from the store at a time while it catches up: it holds
/// them while its client is slow, so few.
const GAP_PAGE_EVENTS: usize = 64;
/// The most bytes of frames one chunk takes (a single larger frame goes alone).
pub(crate) const CHUNK_BYTES_MAX: usize = 4 * 1024;
/// How many chunks wait for one subscriber's connection, at most.
pub(crate) const QUEUED_CHUNKS: usize = 2;
/// How long a client refused a subscription is asked to wait before it tries again.
pub(crate) const RETRY_AFTER_SECONDS: u64 = 5;
/// How often an idle connection gets a comment line.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event's SSE frame, written once for all followers.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The fan-out saw no event in `after..position`.
    after: u64,
    position: u64,
    bytes: Bytes,
}

/// The shared reader of `$all`.
pub(crate) struct Fanout {
    frames: broadcast::Sender<Arc<Frame>>,
    started: Once,
    /// Becomes `true` when the fan-out has stopped (the store closed or failed).
    ended: watch::Sender<bool>,
}

impl Fanout {
    /// A fan-out that keeps `buffer` frames for followers that fall behind.
    pub(crate) fn new(buffer: usize) -> Self {
        Fanout {
            frames: broadcast::channel(buffer).0,
            started: Once::new(),
            ended: watch::channel(false).0,
        }
    }

    /// Frames from now on; the fan-out starts with its first follower.
    /// The first follower starts it from a head read before it subscribed, so that the
    /// follower's own catch-up reaches at least where the fan-out begins.
    fn follow(&self, state: &AppState) -> (broadcast::Receiver<Arc<Frame>>, watch::Receiver<bool>) {
        let start = state.store.head();
        let receiver = self.frames.subscribe();
        self.started.call_once(|| {
            let frames = self.frames.clone();
            let ended = self.ended.clone();
            let (store, closing) = (state.store.clone(), state.closing.clone());
            tokio::spawn(async move {
                fan_out(store, start, frames, closing).await;
                ended.send_replace(true);
            });
        });
        (receiver, self.ended.subscribe())
    }
}

/// Reads every event once and broadcasts its frame, while anyone follows.
async fn fan_out(
    store: Arc<dyn EventStore>,
    start: u64,
    frames: broadcast::Sender<Arc<Frame>>,
    mut closing: watch::Receiver<bool>,
) {
    let mut head = store.watch_head();
    let mut cursor = start;
    loop {
        // The head is read before the followers are counted: a follower that comes later
        // catches up to at least this head from the store itself.
        let target = *head.borrow_and_update();
        if frames.receiver_count() == 0 {
            cursor = target;
        }
        while cursor < target {
            let events = match store
                .read_all(cursor, Direction::Forwards, PAGE_EVENTS)
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "SSE fan-out stopped: reading $all failed");
                    return;
                }
            };
            if events.is_empty() {
                break;
            }
            for event in &events {
                let frame = match encode(event) {
                    Ok(bytes) => Frame {
                        after: cursor,
                        position: event.position,
                        bytes,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e.json(), "SSE fan-out stopped");
                        return;
                    }
                };
                cursor = event.position + 1;
                // No receiver is not an error: the next follower catches up from the store.
                let _ = frames.send(Arc::new(frame));
            }
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            _ = set(&mut closing) => return,
        }
    }
}

/// Waits until a switch is on (or its sender is gone).
async fn set(switch: &mut watch::Receiver<bool>) {
    let _ = switch.wait_for(|on| *on).await.map(|_| ());
}

/// `id: <position>\ndata: <event JSON>\n\n`.
fn encode(event: &RecordedEvent) -> Result<Bytes, ApiError> {
    let line = recorded(event)?;
    let mut json = serde_json::to_vec(&line)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    // Stored JSON may hold line breaks between tokens (never inside strings); one SSE data
    // line must not.
    json.retain(|&b| b != b'\n' && b != b'\r');
    let mut out = format!("id: {}\ndata: ", event.position).into_bytes();
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Ok(Bytes::from(out))
}

/// An `error` event with the API error's JSON; the stream ends after it.
fn error_frame(error: &ApiError) -> Bytes {
    Bytes::from(format!("event: error\ndata: {}\n\n", error.json()))
}

/// Why a follower stopped early: the client went away (`None`), or a failure to report.
type Stop = Option<ApiError>;

/// Where a follower sends its chunks.
struct Out {
    chunks: mpsc::Sender<Bytes>,
    /// How long a chunk may wait for room before the client counts as stalled.
    stall_timeout: Duration,
    /// Set when the client stalled: its connection is then closed, not ended cleanly.
    stalled: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Out {
    /// Sends a chunk (nothing if it is empty); `Err(None)` when the client has gone or has not
    /// taken anything for the stall timeout.
    async fn send(&self, chunk: impl Into<Bytes>) -> Result<(), Stop> {
        let chunk = chunk.into();
        if chunk.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.stall_timeout, self.chunks.send(chunk)).await {
            Ok(sent) => sent.map_err(|_| None),
            Err(_) => {
                self.stalled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.metrics.stalled.inc();
                tracing::info!(
                    seconds = self.stall_timeout.as_secs(),
                    "a subscriber took nothing for the stall timeout; its connection is closed"
                );
                Err(None)
            }
        }
    }

    /// Sends `chunk` once it holds [`CHUNK_BYTES_MAX`] bytes, leaving it empty.
    async fn flush_full(&self, chunk: &mut Vec<u8>) -> Result<(), Stop> {
        if chunk.len() >= CHUNK_BYTES_MAX {
            self.send(std::mem::take(chunk)).await?;
        }
        Ok(())
    }
}

/// A subscription counted against the server's caps while it lives.
pub(crate) struct Admitted {
    _overall: tokio::sync::OwnedSemaphorePermit,
    token: Option<(Arc<crate::Limits>, String)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((limits, name)) = self.token.take() {
            limits.leave(&name);
        }
    }
}

/// Counts a new subscription against the caps: 503 when the server holds its most, 429 when
/// the caller's token holds its most; either with `Retry-After`.
pub(crate) fn admit(state: &AppState, caller: &crate::auth::Caller) -> Result<Admitted, ApiError> {
    let limits = &state.limits;
    let refuse = |status: StatusCode, message: String| {
        state.metrics.refused.inc();
        ApiError::new(status, message).retry_after(RETRY_AFTER_SECONDS)
    };
    let Ok(overall) = limits.subscriptions.clone().try_acquire_owned() else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server holds its most subscriptions ({}); try again later",
                state.config.max_subscriptions
            ),
        ));
    };
    let token = match caller.name() {
        None => None,
        Some(name) => {
            if !limits.enter(name, state.config.max_subscriptions_per_token) {
                return Err(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "token '{name}' holds its most subscriptions ({}); try again later",
                        state.config.max_subscriptions_per_token
                    ),
                ));
            }
            Some((limits.clone(), name.to_owned()))
        }
    };
    Ok(Admitted {
        _overall: overall,
        token,
    })
}

/// Sends the frames of the events in `*next..until`, read from the store; moves `*next`.
async fn read_gap(
    stats: &Stats,
    store: &Arc<dyn EventStore>,
    next: &mut u64,
    until: u64,
    out: &Out,
) -> Result<(), Stop> {
    while *next < until {
        let events = store
            .read_all(*next, Direction::Forwards, GAP_PAGE_EVENTS)
            .await
            .map_err(|e| Some(ApiError::from(e)))?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        let mut chunk = Vec::new();
        let mut sent = 0;
        for event in events.iter().take_while(|e| e.position < until) {
            chunk.extend_from_slice(&encode(event)?);
            sent += 1;
            out.flush_full(&mut chunk).await?;
        }
        stats.delivered(sent);
        *next = until.min(last + 1);
        out.send(chunk).await?;
    }
    Ok(())
}

/// A keep-alive timer whose first tick is one period from now.
fn keep_alive() -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE)
}

/// Follows `$all` from `from` for one client.
async fn follow_all(state: &AppState, from: u64, out: &Out) -> Result<(), Stop> {
    let (mut frames, mut ended) = state.fanout.follow(state);
    let mut closing = state.closing.clone();
    let mut next = from;
    let store = &state.store;
    let stats = &state.stats;
    read_gap(stats, store, &mut next, store.head(), out).await?;
    let mut keep_alive = keep_alive();
    loop {
        let first = tokio::select! {
            frame = frames.recv() => frame,
            _ = keep_alive.tick() => {
                out.send(&b":\n\n"[..]).await?;
                continue;
            }
            _ = set(&mut closing) => return Ok(()),
            // The client went away: its place is given up at once.
            () = out.chunks.closed() => return Err(None),
            _ = set(&mut ended) => {
                // Send what the store still serves, then say why the stream ends.
                read_gap(stats, store, &mut next, u64::MAX, out).await?;
                return Err(Some(ApiError::from(StoreError::Closed)));
            }
        };
        let mut ready = Vec::new();
        match first {
            Ok(frame) => ready.push(frame),
            // Frames were dropped: the next frame's `after` shows the gap, read from the store.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => {
                return Err(Some(ApiError::from(StoreError::Closed)));
            }
        }
        while let Ok(frame) = frames.try_recv() {
            ready.push(frame);
        }
        let mut chunk = Vec::new();
        for frame in ready {
            if frame.position < next {
                continue;
            }
            if next < frame.after {
                out.send(std::mem::take(&mut chunk)).await?;
                read_gap(stats, store, &mut next, frame.after, out).await?;
            }
            chunk.extend_from_slice(&frame.bytes);
            stats.delivered(1);
            next = frame.position + 1;
            out.flush_full(&mut chunk).await?;
        }
        out.send(chunk).await?;
    }
}

/// Follows a subscription of its own: one stream, or `$all` filtered.
async fn follow_own(
    state: &AppState,
    mut subscription: Subscription,
    out: &Out,
) -> Result<(), Stop> {
    let mut closing = state.closing.clone();
    let mut keep_alive = keep_alive();
    loop {
        let chunk = tokio::select! {
            event = subscription.next() => {
                state.stats.delivered(1);
                encode(&event.map_err(ApiError::from)?)?
            }
            _ = keep_alive.tick() => Bytes::from_static(b":\n\n"),
            _ = set(&mut closing) => return Ok(()),
            () = out.chunks.closed() => return Err(None),
        };
        out.send(chunk).await?;
    }
}

/// Sends a group consumer's messages: `id:` is the message id to acknowledge. When the
/// client goes away the connection is dropped, and what it held goes to the others.
async fn follow_group(
    state: &AppState,
    mut connection: factum_toolkit::GroupConnection,
    out: &Out,
) -> Result<(), Stop> {
    let mut closing = state.closing.clone();
    let mut keep_alive = keep_alive();
    loop {
        let first = tokio::select! {
            message = connection.next() => match message {
                Some(message) => message,
                // The group stopped (updated, deleted, restarted): the client connects again.
                None => return Err(Some(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("group '{}' stopped; connect again", connection.key()),
                ))),
            },
            _ = keep_alive.tick() => {
                out.send(&b":\n\n"[..]).await?;
                continue;
            }
            _ = set(&mut closing) => return Ok(()),
            // The client went away: what it held goes to the others now.
            () = out.chunks.closed() => return Err(None),
        };
        let mut chunk = group_frame(&first)?;
        let mut sent = 1;
        while let Some(more) = connection.try_next() {
            chunk.extend_from_slice(&group_frame(&more)?);
            sent += 1;
            out.flush_full(&mut chunk).await?;
        }
        state.stats.delivered(sent);
        out.send(chunk).await?;
    }
}

/// One group message's frame.
fn group_frame(message: &factum_toolkit::GroupMessage) -> Result<Vec<u8>, Stop> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        id: uuid::Uuid,
        retry_count: u32,
        event: &'a crate::json::RecordedLine,
    }
    let event = recorded(&message.event).map_err(|e| Some(ApiError::from(e)))?;
    let line = Line {
        id: message.id,
        retry_count: message.retry_count,
        event: &event,
    };
    let data = serde_json::to_string(&line)
        .map_err(|e| Some(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)))?;
    Ok(format!("id: {}\ndata: {data}\n\n", message.id).into_bytes())
}

/// What a subscription endpoint answers: all of `$all` from a position (through the shared
/// fan-out), or a subscription of its own (one stream, or `$all` filtered).
pub(crate) enum Follow {
    All {
        from: u64,
    },
    Own(Subscription),
    /// A consumer of a persistent subscription group: its messages as they are sent to it.
    Group(factum_toolkit::GroupConnection),
}

/// Starts a follower and answers with its events as `text/event-stream`.
pub(crate) fn respond(state: &AppState, admitted: Admitted, follow: Follow) -> Response {
    let (chunks, mut rx) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out = Out {
        chunks,
        stall_timeout: state.config.stall_timeout,
        stalled: stalled.clone(),
        metrics: state.metrics.clone(),
    };
    let subscribed = Subscribed::new(state.metrics.clone());
    let state = state.clone();
    tokio::spawn(async move {
        let _counted = (subscribed, admitted);
        let stopped = match follow {
            Follow::All { from } => follow_all(&state, from, &out).await,
            Follow::Own(subscription) => follow_own(&state, subscription, &out).await,
            Follow::Group(connection) => follow_group(&state, connection, &out).await,
        };
        // A failure is sent as an `error` event, and the stream ends.
        if let Err(Some(error)) = stopped {
            let _ = out.chunks.send(error_frame(&error)).await;
        }
    });
    // A stalled client's connection is closed (the body fails) rather than ended cleanly,
    // which would wait to flush to a client that does not read.
    let mut failed = false;
    let body = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| match chunk {
            Some(chunk) => Some(Ok(chunk)),
            None if !failed && stalled.load(std::sync::atomic::Ordering::Relaxed) => {
                failed = true;
                Some(Err(std::io::Error::other("the subscriber stalled")))
            }
            None => None,
        })
    });
    event_stream(Body::from_stream(body))
}

/// `body` as a `text/event-stream` answer that is not cached.
pub(crate) fn event_stream(body: Body) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
