//! What the web UI's dashboard and operator pages ask the server: the stats stream, a search of
//! `$all` by event id or correlation id, and the operators' actions (replay a processor's dead
//! letters, rebuild a projection), which take the admin right.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use factum_core::{Direction, RecordedEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{NoParams, int64, limit, lines, path, query};
use crate::auth::{Caller, Right};
use crate::error::ErrorBody;
use crate::json::RecordedLine;
use crate::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

/// How many events one search request looks at, at most; the answer says where to go on.
const SEARCH_SCAN: u64 = 250_000;
/// Events read from the store at a time while searching.
const SEARCH_PAGE: usize = 1000;
/// The longest search text.
const SEARCH_CHARS_MAX: usize = 200;

#[utoipa::path(get, path = "/stats/subscribe", tag = "server",
    summary = "The dashboard's stats as server-sent events (any valid token)",
    description = "First a `history` event: a JSON array of the snapshots of the last five minutes. Then, once a second, a `stats` event with one snapshot: totals since the server started (appends, events, bytes, reads, subscription deliveries), open subscribers, the append latency of the last second (p50, p99, µs), the head, the store's kind and size on disk, and each checkpoint's, projection's and persistent subscription group's lag. One snapshot is made per second for every dashboard together.",
    responses(
        (status = 200, description = "The stream of snapshots", content_type = "text/event-stream", body = String)))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Response> {
    query(params)?;
    Ok(crate::stats::respond(&state))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchParams {
    /// An event id, or a correlation or causation id (`$correlationId`, `$causationId` in an
    /// event's metadata): 1 to 200 characters.
    #[param(min_length = 1, max_length = 200)]
    q: String,
    /// Look at events before this position (the `next` of the previous answer); default the
    /// head (the newest first).
    #[serde(default, deserialize_with = "int64")]
    before: Option<u64>,
    /// How many events to find at most (default 100).
    #[param(minimum = 1)]
    limit: Option<usize>,
}

/// What a search found.
#[derive(Serialize, ToSchema)]
pub(crate) struct Found {
    /// The events whose id is the search text, or whose metadata's `$correlationId` or
    /// `$causationId` is; newest first, only those in streams the token may read.
    events: Vec<RecordedLine>,
    /// Where to go on (`before` of the next request); `null` when `$all` has been searched to
    /// its first event.
    next: Option<u64>,
    /// How many events this answer looked at.
    scanned: u64,
}

/// Whether `event` is the one with id `q`, or is related to it (caused by it, or sharing its
/// correlation id).
fn matches(event: &RecordedEvent, q: &str, id: Option<uuid::Uuid>) -> bool {
    if id.is_some_and(|id| id == event.id) {
        return true;
    }
    // Most events do not mention the text at all: a byte search rules them out before any JSON
    // is parsed.
    if memchr::memmem::find(&event.metadata, q.as_bytes()).is_none() {
        return false;
    }
    let metadata = event.metadata_json();
    ["$correlationId", "$causationId"]
        .iter()
        .any(|key| metadata.get(*key).and_then(|v| v.as_str()) == Some(q))
}

#[utoipa::path(get, path = "/search", tag = "all",
    summary = "Find events by id, correlation id or causation id, newest first (any valid token; only readable streams are shown)",
    description = "Looks through `$all` backwards from `before` (default the head), at most 250,000 events per request, and answers what it found with the position to go on from. The event with the id, and the events whose `$correlationId` or `$causationId` is the text: a request's related events.",
    params(SearchParams),
    responses(
        (status = 200, description = "What was found, and where to go on", body = Found),
        (status = 400, description = "No search text, or a parameter that is not understood", body = ErrorBody)))]
pub(crate) async fn search(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<Found>> {
    let params = query(params)?;
    let q = params.q.as_str();
    if q.is_empty() || q.chars().count() > SEARCH_CHARS_MAX {
        return Err(ApiError::bad_request(format!(
            "q: the search text must be 1 to {SEARCH_CHARS_MAX} characters"
        )));
    }
    let wanted = limit(params.limit, &state)?;
    let id = uuid::Uuid::parse_str(q).ok();
    let mut found = Vec::new();
    let mut before = params.before.unwrap_or(u64::MAX).min(state.store.head());
    let mut scanned = 0;
    while before > 0 && scanned < SEARCH_SCAN && found.len() < wanted {
        let page = state
            .store
            .read_all(before - 1, Direction::Backwards, SEARCH_PAGE)
            .await?;
        if page.is_empty() {
            before = 0;
            break;
        }
        for event in &page {
            scanned += 1;
            before = event.position;
            if matches(event, q, id) && caller.can_read(event.stream.as_str()) {
                found.push(event.clone());
                if found.len() == wanted {
                    break;
                }
            }
        }
    }
    state.stats.read();
    Ok(Json(Found {
        events: lines(&found)?,
        next: (before > 0).then_some(before),
        scanned,
    }))
}

/// A replay asked for.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReplayRequested {
    /// The processor, relay or consumer.
    name: String,
    /// Its dead letters the replay will try again.
    dead_letters: usize,
    /// The position of the request in the store; the processor answers it when it runs.
    requested_at: u64,
}

#[utoipa::path(post, path = "/processors/{name}/replay", tag = "consumers",
    summary = "Ask a processor to replay its dead letters (admin right on every stream)",
    description = "Records a replay request in the processor's dead-letter stream (what `factum deadletters replay` does); the running processor, relay or consumer replays its dead letters and answers the request.",
    params(("name" = String, Path, description = "The name the processor keeps its checkpoint under: 1 to 400 characters without NUL.", min_length = 1, max_length = 400, pattern = r"^[^\x00]+$")),
    responses(
        (status = 200, description = "Requested", body = ReplayRequested),
        (status = 422, description = "Not a processor's name", body = ErrorBody),
        (status = 403, description = "The token has no admin right on every stream", body = ErrorBody),
        (status = 409, description = "It has no dead letters to replay", body = ErrorBody)))]
pub(crate) async fn replay_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    name: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<ReplayRequested>> {
    caller.require(Right::Admin, "")?;
    let name = path(name)?;
    let letters = factum_toolkit::DeadLetters::of(state.store.as_ref(), &name)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("name: {e}")))?;
    let dead_letters = letters.unresolved().await?.len();
    if dead_letters == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("'{name}' has no dead letters to replay"),
        ));
    }
    let requested_at = letters.request_replay().await?;
    tracing::info!(name, dead_letters, "dead-letter replay requested");
    Ok(Json(ReplayRequested {
        name,
        dead_letters,
        requested_at,
    }))
}

/// A rebuild asked for.
#[derive(Serialize, ToSchema)]
pub(crate) struct RebuildRequested {
    /// The projection.
    projection: String,
}

#[utoipa::path(post, path = "/projections/{name}/rebuild", tag = "consumers",
    summary = "Ask a projection's projector to rebuild it (admin right on every stream)",
    description = "The projector that runs the projection builds it again from the first event into shadow tables while the old ones answer queries, and swaps them in when it has caught up (what `factum projections rebuild` does).",
    params(("name" = String, Path, description = "The projection's name.", min_length = 1, max_length = 400)),
    responses(
        (status = 202, description = "Requested", body = RebuildRequested),
        (status = 403, description = "The token has no admin right on every stream", body = ErrorBody),
        (status = 404, description = "No projection of this name: the read model has none, or the server has no read model (--read-model)", body = ErrorBody),
        (status = 503, description = "The read model does not answer", body = ErrorBody)))]
pub(crate) async fn rebuild_projection(
    State(state): State<AppState>,
    caller: Caller,
    name: std::result::Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<RebuildRequested>)> {
    caller.require(Right::Admin, "")?;
    let name = path(name)?;
    let unavailable = |e: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e);
    let Some(read_model) = &state.config.read_model else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no projection '{name}': the server was started without a read model \
                 (factum serve --read-model …)"
            ),
        ));
    };
    let states = read_model
        .states()
        .await
        .map_err(|e| unavailable(format!("read model: {e}")))?;
    if !states.iter().any(|s| s.name == name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the read model has no projection '{name}'"),
        ));
    }
    read_model
        .request_rebuild(&name)
        .await
        .map_err(|e| unavailable(format!("read model: {e}")))?;
    tracing::info!(projection = name, "rebuild requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(RebuildRequested { projection: name }),
    ))
}
