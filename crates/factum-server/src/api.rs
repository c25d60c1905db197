//! The handlers of the JSON API. Every rejection — of the path, the query, a header or the
//! body — answers with [`ApiError`]'s JSON, and nothing is written.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use factum_core::{AppendResult, StreamInfo};
use factum_core::{
    Direction, ExpectedState, RecordedEvent, StoreError, StreamMetadata, StreamName, Subscription,
    SubscriptionFilter,
};
use factum_projections::ProjectionStatus;
use factum_toolkit::ProcessorStatus;
use factum_toolkit::processor_statuses;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Right};
use crate::consumers;
use crate::error::ErrorBody;
use crate::json::{EventLine, Object, RecordedLine, recorded};
use crate::sse::{self, Follow};
use crate::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

pub(crate) fn path(path: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
}

pub(crate) fn query<T>(query: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

pub(crate) fn body(
    state: &AppState,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Bytes> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body: too large; the limit is {} bytes",
                state.config.max_body_bytes
            ),
        ),
        status => ApiError::new(status, format!("body: {}", e.body_text())),
    })
}

/// A header's value as text, if it is there.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("header {name} is not text")))
        })
        .transpose()
}

/// A revision or position written in a header: 1 to 18 digits, nothing else.
fn digits(text: &str) -> Option<u64> {
    let ok = (1..=18).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| text.parse().ok()).flatten()
}

fn expected(headers: &HeaderMap) -> Result<ExpectedState> {
    let Some(text) = header_text(headers, "expected-revision")? else {
        return Ok(ExpectedState::Any);
    };
    match text.trim() {
        "any" => Ok(ExpectedState::Any),
        "no-stream" => Ok(ExpectedState::NoStream),
        "exists" => Ok(ExpectedState::StreamExists),
        other => digits(other).map(ExpectedState::Exact).ok_or_else(|| {
            ApiError::bad_request(format!(
                "header Expected-Revision: '{other}' is not any, no-stream, exists or a \
                 revision (1 to 18 digits)"
            ))
        }),
    }
}

/// A position or revision in a query: at most `i64::MAX`, as the description says.
pub(crate) fn int64<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        Some(n) if n > i64::MAX as u64 => Err(serde::de::Error::custom(format!(
            "{n} is beyond the largest position, {}",
            i64::MAX
        ))),
        n => Ok(n),
    }
}

pub(crate) fn limit(limit: Option<usize>, state: &AppState) -> Result<usize> {
    let max = state.config.max_page;
    match limit {
        None => Ok(100.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range 1..={max}"
        ))),
    }
}

pub(crate) fn lines(events: &[RecordedEvent]) -> Result<Vec<RecordedLine>> {
    events
        .iter()
        .map(|e| recorded(e).map_err(ApiError::from))
        .collect()
}

/// A page of events. Data and metadata are sent as the JSON text stored, byte for byte.
#[derive(Serialize, ToSchema)]
pub(crate) struct Page {
    /// The events, in the order asked for.
    events: Vec<RecordedLine>,
    /// What to pass as `from` for the next page: a revision (streams) or a position (`$all`);
    /// `null` when reading a stream backwards has reached its start.
    next: Option<u64>,
    /// `$all` only: the store's head when the page was read (the position the next event
    /// will take).
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<u64>,
}

/// The body of an append: its events in order, at least one.
#[derive(Deserialize)]
pub(crate) struct NewEvents(Vec<Object<EventLine>>);

impl utoipa::PartialSchema for NewEvents {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::Ref::from_schema_name(EventLine::name()))
            .min_items(Some(1))
            .into()
    }
}

impl ToSchema for NewEvents {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            EventLine::name().into(),
            <EventLine as utoipa::PartialSchema>::schema(),
        ));
        EventLine::schemas(schemas);
    }
}

/// Query parameters of an endpoint that takes none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

/// The answer to a request that wrote a marker event (delete, tombstone, metadata).
#[derive(Serialize, ToSchema)]
pub(crate) struct Written {
    /// Its position in `$all`.
    position: u64,
}

/// Liveness and readiness.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` when the store takes writes; `refusing-writes` while it does not (it recovers by
    /// itself once the fault is gone; reads are served meanwhile).
    status: &'static str,
    /// The store's head: the position the next event will take.
    head: u64,
    /// Why the store refuses writes (only while it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A page of streams.
#[derive(Serialize, ToSchema)]
pub(crate) struct StreamList {
    /// The streams, in name order (only those the caller's token may read).
    streams: Vec<StreamInfo>,
    /// What to pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

/// Event processors, found by their checkpoints and dead letters in the store.
#[derive(Serialize, ToSchema)]
pub(crate) struct Processors {
    /// Each processor, by name.
    processors: Vec<ProcessorStatus>,
    /// The store's head the lag is measured against.
    head: u64,
}

/// Projections of the read model the server was given.
#[derive(Serialize, ToSchema)]
pub(crate) struct Projections {
    /// `sqlite` or `postgres`; `null` when the server runs without a read model.
    read_model: Option<&'static str>,
    /// Each projection with its lag.
    projections: Vec<ProjectionStatus>,
}

/// The web UI, one page shipped inside the binary.
const UI: &str = include_str!("../ui/index.html");

/// The server's address: the web UI for a browser (`Accept: text/html`), the list of
/// endpoints as JSON for any other client.
#[utoipa::path(get, path = "/", tag = "server", security(()),
    summary = "The web UI (Accept: text/html), or this API's endpoints as JSON",
    responses((status = 200, description = "The web UI for a browser; for other clients a JSON object naming each endpoint and where this description is",
        content((String = "text/html"), (Object = "application/json")))))]
pub(crate) async fn index(
    State(state): State<AppState>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    query(params)?;
    let browser = header_text(&headers, "accept")?.is_some_and(|a| a.contains("text/html"));
    if browser {
        return Ok((
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            UI,
        )
            .into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        state.docs.index.clone(),
    )
        .into_response())
}

/// This API described in OpenAPI 3.1, generated from the handlers and their types.
#[utoipa::path(get, path = "/openapi.json", tag = "server", security(()),
    summary = "This API, described in OpenAPI 3.1",
    responses((status = 200, description = "The OpenAPI description", body = Object)))]
pub(crate) async fn openapi(
    State(state): State<AppState>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Response> {
    query(params)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        state.docs.openapi.clone(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/health", tag = "server", security(()),
    summary = "Whether the server is up and its store takes writes, and the store's head",
    responses(
        (status = 200, description = "Up, and the store takes writes", body = Health),
        (status = 503, description = "Up, but the store refuses writes (a full or failing disk, a database it cannot reach): the reason; reads are served, and it recovers by itself once the fault is gone", body = Health)))]
pub(crate) async fn health(
    State(state): State<AppState>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<(StatusCode, Json<Health>)> {
    query(params)?;
    let head = state.store.head();
    Ok(match state.store.write_refusal() {
        None => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                head,
                reason: None,
            }),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "refusing-writes",
                head,
                reason: Some(reason),
            }),
        ),
    })
}

#[utoipa::path(get, path = "/metrics", tag = "server",
    summary = "Prometheus metrics (any valid token)",
    responses(
        (status = 200, description = "Appends, events, bytes, latency histograms, subscribers, processor and projection lag, in the OpenMetrics text format",
            body = String, content_type = "application/openmetrics-text"),
        (status = 503, description = "The read model given with --read-model does not answer", body = ErrorBody)))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Response> {
    query(params)?;
    let processors = processor_statuses(&*state.store).await?;
    let projections = consumers::projections(&state).await?.unwrap_or_default();
    let groups = crate::groups::groups(&state).await?.list(None).await?;
    let text = state.metrics.render(
        state.store.head(),
        state.store.write_refusal().is_none(),
        &processors,
        &projections,
        &groups,
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

pub(crate) async fn no_such_endpoint() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

#[utoipa::path(post, path = "/streams/{stream}", tag = "streams",
    summary = "Append events to a stream, all or none (write right)",
    params(("stream" = String, Path, description = "The stream's name: 1 to 512 characters without NUL, not starting with `$` (reserved for the system).", min_length = 1, max_length = 512, pattern = r"^[^\$\x00][^\x00]*$"), ("Expected-Revision" = Option<String>, Header, nullable = false, description = "What the stream must be for the request to go ahead: `any` (default), `no-stream`, `exists`, or the revision of its last event.", pattern = r"^(any|no-stream|exists|[0-9]{1,18})$")),
    request_body(content = NewEvents, description = "The events, at least one, in order"),
    responses(
        (status = 201, description = "Appended, durably", body = AppendResult),
        (status = 403, description = "The token may not write to this stream", body = ErrorBody),
        (status = 409, description = "The stream is not at the expected revision; nothing was written", body = ErrorBody),
        (status = 410, description = "The stream is deleted or tombstoned", body = ErrorBody),
        (status = 413, description = "The body is larger than the server takes", body = ErrorBody)))]
pub(crate) async fn append(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
    headers: HeaderMap,
    events: std::result::Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<factum_core::AppendResult>)> {
    let stream = StreamName::user(path(stream)?)?;
    caller.require(Right::Write, stream.as_str())?;
    query(params)?;
    let expected = expected(&headers)?;
    let events = body(&state, events)?;
    let NewEvents(parsed) =
        serde_json::from_slice(&events).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if parsed.is_empty() {
        return Err(ApiError::bad_request(
            "body: the array holds no event; append at least one",
        ));
    }
    let events = parsed
        .into_iter()
        .enumerate()
        .map(|(i, Object(line))| {
            line.into_event()
                .map_err(|e| ApiError::bad_request(format!("event {i}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let (count, bytes) = (
        events.len() as u64,
        events.iter().map(|e| e.size_bytes() as u64).sum::<u64>(),
    );
    let started = std::time::Instant::now();
    let result = state.store.append(&stream, expected, events).await?;
    state.appended(count, bytes, started.elapsed());
    Ok((StatusCode::CREATED, Json(result)))
}

/// The direction and first revision or position of a page: by default the first (forwards)
/// or the last (backwards).
fn start(way: Option<Way>, from: Option<u64>) -> (Direction, u64) {
    match way.unwrap_or(Way::Forwards) {
        Way::Forwards => (Direction::Forwards, from.unwrap_or(0)),
        Way::Backwards => (Direction::Backwards, from.unwrap_or(u64::MAX)),
    }
}

/// Where the page after `events` starts, by the revision or position `key` gives: forwards
/// always (the same `from` when nothing came, for a client that waits for more); backwards
/// while a full page did not reach the first.
fn next_from(
    direction: Direction,
    from: u64,
    limit: usize,
    events: &[RecordedEvent],
    key: impl Fn(&RecordedEvent) -> u64,
) -> Option<u64> {
    let last = events.last().map(key);
    match direction {
        Direction::Forwards => Some(last.map_or(from, |last| last + 1)),
        Direction::Backwards => last
            .filter(|&l| events.len() == limit && l > 0)
            .map(|l| l - 1),
    }
}

/// Which way to read a stream or `$all`.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Way {
    Forwards,
    Backwards,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadParams {
    /// The revision to start at, included; default the first (forwards) or the last
    /// (backwards).
    #[serde(default, deserialize_with = "int64")]
    from: Option<u64>,
    /// `forwards` (default) or `backwards`.
    #[param(inline)]
    direction: Option<Way>,
    /// How many events at most (default 100).
    #[param(minimum = 1)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/streams/{stream}", tag = "streams",
    summary = "A page of a stream's events (read right)",
    params(("stream" = String, Path, description = "The stream's name: 1 to 512 characters without NUL, not `$all`.", min_length = 1, max_length = 512, pattern = r"^[^\x00]+$"), ReadParams),
    responses(
        (status = 200, description = "The page", body = Page),
        (status = 403, description = "The token may not read this stream", body = ErrorBody),
        (status = 404, description = "The stream does not exist", body = ErrorBody),
        (status = 410, description = "The stream is tombstoned", body = ErrorBody)))]
pub(crate) async fn read_stream(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Json<Page>> {
    let stream = StreamName::new(path(stream)?)?;
    caller.require(Right::Read, stream.as_str())?;
    let params = query(params)?;
    let limit = limit(params.limit, &state)?;
    let (direction, from) = start(params.direction, params.from);
    let events = state
        .store
        .read_stream(&stream, from, direction, limit)
        .await?;
    let next = next_from(direction, from, limit, &events, |e| e.revision);
    Ok(Json(Page {
        events: lines(&events)?,
        next,
        head: None,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllParams {
    /// The position to start at, included: the `next` of the previous page; default the
    /// first (forwards) or the last (backwards).
    #[serde(default, deserialize_with = "int64")]
    from: Option<u64>,
    /// `forwards` (default) or `backwards` (newest first).
    #[param(inline)]
    direction: Option<Way>,
    /// How many events at most (default 100).
    #[param(minimum = 1)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/all", tag = "all",
    summary = "A page of $all, the log of every event in commit order (read right on every stream)",
    params(AllParams),
    responses(
        (status = 200, description = "The page, with the position to ask for next (backwards: none after the first event)", body = Page),
        (status = 403, description = "The token may not read every stream", body = ErrorBody)))]
pub(crate) async fn read_all(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<AllParams>, QueryRejection>,
) -> Result<Json<Page>> {
    let params = query(params)?;
    caller.require_all()?;
    let limit = limit(params.limit, &state)?;
    let head = state.store.head();
    let (direction, from) = start(params.direction, params.from);
    let events = state.store.read_all(from, direction, limit).await?;
    let next = next_from(direction, from, limit, &events, |e| e.position);
    Ok(Json(Page {
        events: lines(&events)?,
        next,
        head: Some(head),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteParams {
    /// `true`: tombstone the stream, for good; default `false`: a soft delete, after which
    /// an append starts the stream again.
    tombstone: Option<bool>,
}

#[utoipa::path(delete, path = "/streams/{stream}", tag = "streams",
    summary = "Delete a stream softly, or tombstone it (admin right)",
    params(("stream" = String, Path, description = "The stream's name: 1 to 512 characters without NUL, not starting with `$` (reserved for the system).", min_length = 1, max_length = 512, pattern = r"^[^\$\x00][^\x00]*$"), DeleteParams, ("Expected-Revision" = Option<String>, Header, nullable = false, description = "What the stream must be for the request to go ahead: `any` (default), `no-stream`, `exists`, or the revision of its last event.", pattern = r"^(any|no-stream|exists|[0-9]{1,18})$")),
    responses(
        (status = 200, description = "Deleted; the marker's position", body = Written),
        (status = 403, description = "The token may not delete this stream", body = ErrorBody),
        (status = 404, description = "The stream does not exist", body = ErrorBody),
        (status = 409, description = "The stream is not at the expected revision", body = ErrorBody),
        (status = 410, description = "The stream is already tombstoned", body = ErrorBody)))]
pub(crate) async fn delete_stream(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<DeleteParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Written>> {
    let stream = StreamName::user(path(stream)?)?;
    caller.require(Right::Admin, stream.as_str())?;
    let params = query(params)?;
    let expected = expected(&headers)?;
    let position = if params.tombstone.unwrap_or(false) {
        state.store.tombstone_stream(&stream, expected).await?
    } else {
        state.store.delete_stream(&stream, expected).await?
    };
    Ok(Json(Written { position }))
}

#[utoipa::path(get, path = "/streams/{stream}/metadata", tag = "streams",
    summary = "A stream's metadata (read right)",
    params(("stream" = String, Path, description = "The stream's name: 1 to 512 characters without NUL, not `$all`.", min_length = 1, max_length = 512, pattern = r"^[^\x00]+$")),
    responses(
        (status = 200, description = "The metadata; empty when none was set. Metadata outlives a soft delete of its stream.", body = StreamMetadata),
        (status = 403, description = "The token may not read this stream", body = ErrorBody),
        (status = 410, description = "The stream is tombstoned", body = ErrorBody)))]
pub(crate) async fn get_metadata(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<StreamMetadata>> {
    let stream = StreamName::new(path(stream)?)?;
    caller.require(Right::Read, stream.as_str())?;
    query(params)?;
    Ok(Json(
        state.store.get_metadata(&stream).await?.unwrap_or_default(),
    ))
}

#[utoipa::path(put, path = "/streams/{stream}/metadata", tag = "streams",
    summary = "Set a stream's metadata (admin right)",
    params(("stream" = String, Path, description = "The stream's name: 1 to 512 characters without NUL, not starting with `$` (reserved for the system).", min_length = 1, max_length = 512, pattern = r"^[^\$\x00][^\x00]*$")),
    request_body(content = StreamMetadata, description = "The metadata; it replaces what was set before"),
    responses(
        (status = 200, description = "Set; the metadata event's position", body = Written),
        (status = 403, description = "The token may not change this stream", body = ErrorBody),
        (status = 410, description = "The stream is tombstoned", body = ErrorBody),
        (status = 413, description = "The body is larger than the server takes", body = ErrorBody)))]
pub(crate) async fn put_metadata(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
    metadata: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Written>> {
    let stream = StreamName::user(path(stream)?)?;
    caller.require(Right::Admin, stream.as_str())?;
    query(params)?;
    let Object(metadata) =
        serde_json::from_slice::<Object<StreamMetadata>>(&body(&state, metadata)?)
            .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let position = state.store.set_metadata(&stream, metadata).await?;
    Ok(Json(Written { position }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only streams whose names start with this (default: every stream).
    prefix: Option<String>,
    /// Only streams after this name: the `next` of the previous page.
    #[param(min_length = 1, pattern = r"^[^\x00]+$")]
    after: Option<String>,
    /// How many streams at most (default 100).
    #[param(minimum = 1)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/streams", tag = "streams",
    summary = "Streams by name (those the token may read)",
    params(ListParams),
    responses((status = 200, description = "A page of streams", body = StreamList)))]
pub(crate) async fn list_streams(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<StreamList>> {
    let params = query(params)?;
    let limit = limit(params.limit, &state)?;
    let after = params.after.map(StreamName::new).transpose()?;
    let streams = state
        .store
        .list_streams(
            params.prefix.as_deref().unwrap_or(""),
            after.as_ref(),
            limit,
        )
        .await?;
    let next = (streams.len() == limit)
        .then(|| streams.last().map(|s| s.name.to_string()))
        .flatten();
    // A token sees only the streams it may read; `next` still pages past the others.
    let streams: Vec<_> = streams
        .into_iter()
        .filter(|s| caller.can_read(s.name.as_str()))
        .collect();
    Ok(Json(StreamList { streams, next }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeParams {
    /// Where to start, included: a revision; default 0.
    #[serde(default, deserialize_with = "int64")]
    from: Option<u64>,
}

/// The query of `/all/subscribe`, as the OpenAPI document describes it. It is read as a list of
/// pairs ([`follow_all_query`]), since the filters may repeat.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct SubscribeAllParams {
    /// Where to start, included: a position; default 0.
    #[serde(default, deserialize_with = "int64")]
    from: Option<u64>,
    /// Only events of streams whose names start with this; repeat it for several (an event
    /// of any of them is sent).
    stream_prefix: Option<Vec<String>>,
    /// Only events of this type; repeat it for several.
    #[serde(rename = "type")]
    event_type: Option<Vec<String>>,
}

/// Where to start and what to send, from the query of `/all/subscribe`.
fn follow_all_query(pairs: Vec<(String, String)>) -> Result<(Option<u64>, SubscriptionFilter)> {
    let mut from = None;
    let mut filter = SubscriptionFilter::default();
    for (key, value) in pairs {
        match key.as_str() {
            "from" if from.is_some() => {
                return Err(ApiError::bad_request("query: from is given twice"));
            }
            "from" => {
                let position = value.parse::<u64>().ok().filter(|&p| p <= i64::MAX as u64);
                from = Some(position.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "query: from '{value}' is not a position (0 to {})",
                        i64::MAX
                    ))
                })?);
            }
            "stream_prefix" => filter.stream_prefixes.push(value),
            "type" => filter.event_types.push(value),
            other => {
                return Err(ApiError::bad_request(format!(
                    "query: unknown parameter '{other}' (from, stream_prefix, type)"
                )));
            }
        }
    }
    Ok((from, filter))
}

/// The position in a `Last-Event-ID` header: the last event the client received.
pub(crate) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>> {
    header_text(headers, "last-event-id")?
        .map(|text| {
            digits(text.trim()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "header Last-Event-ID '{text}' is not a position (1 to 18 digits)"
                ))
            })
        })
        .transpose()
}

#[utoipa::path(get, path = "/all/subscribe", tag = "all",
    summary = "Follow $all live, as server-sent events (read right on every stream, or on each stream_prefix given)",
    params(SubscribeAllParams, ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^[0-9]{1,18}$", description = "The position of the last event the client received (the `id:` of its SSE frame): the subscription resumes after it; it overrides `from`.")),
    responses(
        (status = 200, description = "Server-sent events: `id:` is the position, `data:` the event as in a page; a keep-alive comment every 15 s; an `error` event before the stream ends on a failure",
            body = String, content_type = "text/event-stream"),
        (status = 403, description = "The token may not read every stream (or, with stream_prefix, every stream of one of them)", body = ErrorBody)))]
pub(crate) async fn subscribe_all(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let (from, filter) = follow_all_query(query(params)?)?;
    // Filtered to stream prefixes, it asks for read rights on those; otherwise on every stream.
    if filter.stream_prefixes.is_empty() {
        caller.require_all()?;
    }
    for prefix in &filter.stream_prefixes {
        caller.require(Right::Read, prefix)?;
    }
    let from = match last_event_id(&headers)? {
        Some(last) => last + 1,
        None => from.unwrap_or(0),
    };
    let admitted = sse::admit(&state, &caller)?;
    // Every follower of all of `$all` shares one reader; a filtered one reads for itself.
    if filter.stream_prefixes.is_empty() && filter.event_types.is_empty() {
        Ok(sse::respond(&state, admitted, Follow::All { from }))
    } else {
        let subscription = state.store.subscribe_all(from, filter);
        Ok(sse::respond(&state, admitted, Follow::Own(subscription)))
    }
}

#[utoipa::path(get, path = "/streams/{stream}/subscribe", tag = "streams",
    summary = "Follow a stream live, as server-sent events (read right)",
    params(("stream" = String, Path, description = "The stream's name: 1 to 512 characters without NUL, not `$all`.", min_length = 1, max_length = 512, pattern = r"^[^\x00]+$"), SubscribeParams, ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "The position of the last event the client received (the `id:` of its SSE frame): the subscription resumes after it; it overrides `from`.")),
    responses(
        (status = 200, description = "Server-sent events: `id:` is the position, `data:` the event as in a page. A stream that does not exist yet is waited for.",
            body = String, content_type = "text/event-stream"),
        (status = 403, description = "The token may not read this stream", body = ErrorBody),
        (status = 410, description = "The stream is tombstoned", body = ErrorBody)))]
pub(crate) async fn subscribe_stream(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<SubscribeParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let stream = StreamName::new(path(stream)?)?;
    caller.require(Right::Read, stream.as_str())?;
    let params = query(params)?;
    // A tombstoned stream answers 410 at once; one that does not exist yet is waited for.
    match state
        .store
        .read_stream(&stream, 0, Direction::Forwards, 1)
        .await
    {
        Ok(_) | Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let from = match last_event_id(&headers)? {
        // Ids are positions; the event at that position tells the revision to go on from.
        Some(last) => {
            let event = state
                .store
                .read_all(last, Direction::Forwards, 1)
                .await?
                .into_iter()
                .next()
                .filter(|e| e.position == last && e.stream == stream)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "header Last-Event-ID {last} is not the position of an event of '{stream}'"
                    ))
                })?;
            event.revision + 1
        }
        None => params.from.unwrap_or(0),
    };
    let admitted = sse::admit(&state, &caller)?;
    let subscription = Subscription::stream(state.store.clone(), stream, from);
    Ok(sse::respond(&state, admitted, Follow::Own(subscription)))
}

#[utoipa::path(get, path = "/processors", tag = "consumers",
    summary = "Event processors: checkpoint, events behind, dead letters (read right on every stream)",
    responses(
        (status = 200, description = "The processors", body = Processors),
        (status = 403, description = "The token may not read every stream", body = ErrorBody)))]
pub(crate) async fn processors(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<Processors>> {
    caller.require_all()?;
    query(params)?;
    let processors = processor_statuses(&*state.store).await?;
    Ok(Json(Processors {
        processors,
        head: state.store.head(),
    }))
}

#[utoipa::path(get, path = "/projections", tag = "consumers",
    summary = "Projections of the server's read model, with their lag (read right on every stream)",
    responses(
        (status = 200, description = "The projections (none without --read-model)", body = Projections),
        (status = 403, description = "The token may not read every stream", body = ErrorBody),
        (status = 503, description = "The read model does not answer", body = ErrorBody)))]
pub(crate) async fn projections(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<Projections>> {
    caller.require_all()?;
    query(params)?;
    let projections = consumers::projections(&state).await?;
    Ok(Json(Projections {
        read_model: state.config.read_model.as_ref().map(|m| m.kind()),
        projections: projections.unwrap_or_default(),
    }))
}
