//! The handlers of the JSON API. Every rejection — of the path, the query, a header or the
//! body — answers with [`ApiError`]'s JSON, and nothing is written.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use factum::processor::processor_statuses;
use factum_core::{
    Direction, ExpectedState, RecordedEvent, StoreError, StreamMetadata, StreamName, Subscription,
};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Caller, Right};
use crate::consumers;
use crate::json::{EventLine, RecordedLine, recorded};
use crate::sse::{self, Follow};
use crate::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

fn path(path: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
}

fn query<T>(query: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn body(state: &AppState, body: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
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

fn expected(headers: &HeaderMap) -> Result<ExpectedState> {
    match header_text(headers, "expected-revision")? {
        None => Ok(ExpectedState::Any),
        Some(text) => text.trim().parse().map_err(|e: StoreError| {
            ApiError::bad_request(format!("header Expected-Revision: {e}"))
        }),
    }
}

fn limit(limit: Option<usize>, state: &AppState) -> Result<usize> {
    let max = state.config.max_page;
    match limit {
        None => Ok(100.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range 1..={max}"
        ))),
    }
}

fn lines(events: &[RecordedEvent]) -> Result<Vec<RecordedLine>> {
    events
        .iter()
        .map(|e| recorded(e).map_err(ApiError::from))
        .collect()
}

/// A page of events. Data and metadata are sent as the JSON text stored, byte for byte.
#[derive(serde::Serialize)]
pub(crate) struct Page {
    events: Vec<RecordedLine>,
    next: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<u64>,
}

/// Query parameters of an endpoint that takes none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

/// The web UI, one page shipped inside the binary.
const UI: &str = include_str!("../ui/index.html");

/// The server's address: the web UI for a browser (`Accept: text/html`), the list of
/// endpoints as JSON for any other client.
pub(crate) async fn index(
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
    Ok(Json(json!({
        "name": "factum",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": {
            "POST /streams/{stream}": "append a JSON array of events ({type, data, metadata?, id?}); header Expected-Revision: any|no-stream|exists|N",
            "GET /streams/{stream}?from=&direction=forwards|backwards&limit=": "a page of a stream's events",
            "DELETE /streams/{stream}?tombstone=": "soft delete, or tombstone",
            "GET|PUT /streams/{stream}/metadata": "the stream's metadata",
            "GET /streams/{stream}/subscribe?from=": "the stream live (server-sent events; id = position, resume with Last-Event-ID)",
            "GET /streams?prefix=&after=&limit=": "streams by name",
            "GET /all?from=&limit=": "a page of $all, with the position to ask for next",
            "GET /all/subscribe?from=": "$all live (server-sent events)",
            "GET /processors": "event processors: checkpoint, events behind, dead letters",
            "GET /projections": "projections of the read model (--read-model), with their lag",
            "GET /health": "liveness and the store's head",
            "GET /metrics": "Prometheus metrics",
        }
    }))
    .into_response())
}

pub(crate) async fn health(
    State(state): State<AppState>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>> {
    query(params)?;
    Ok(Json(json!({ "status": "ok", "head": state.store.head() })))
}

pub(crate) async fn metrics(
    State(state): State<AppState>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Response> {
    query(params)?;
    let processors = processor_statuses(&*state.store).await?;
    let projections = consumers::projections(&state).await?.unwrap_or_default();
    let text = state
        .metrics
        .render(state.store.head(), &processors, &projections);
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
    let parsed: Vec<EventLine> =
        serde_json::from_slice(&events).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if parsed.is_empty() {
        return Err(ApiError::bad_request(
            "body: the array holds no event; append at least one",
        ));
    }
    let events = parsed
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            line.into_event()
                .map_err(|e| ApiError::bad_request(format!("event {i}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let (count, bytes) = (
        events.len() as u64,
        events.iter().map(|e| e.size_bytes() as u64).sum::<u64>(),
    );
    let result = state.store.append(&stream, expected, events).await?;
    state.metrics.appends.inc();
    state.metrics.events.inc_by(count);
    state.metrics.bytes.inc_by(bytes);
    Ok((StatusCode::CREATED, Json(result)))
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Way {
    Forwards,
    Backwards,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadParams {
    from: Option<u64>,
    direction: Option<Way>,
    limit: Option<usize>,
}

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
    let (direction, from) = match params.direction.unwrap_or(Way::Forwards) {
        Way::Forwards => (Direction::Forwards, params.from.unwrap_or(0)),
        Way::Backwards => (Direction::Backwards, params.from.unwrap_or(u64::MAX)),
    };
    let events = state
        .store
        .read_stream(&stream, from, direction, limit)
        .await?;
    let next = match (direction, events.last()) {
        (Direction::Forwards, Some(last)) => Some(last.revision + 1),
        (Direction::Forwards, None) => Some(from),
        (Direction::Backwards, Some(last)) if events.len() == limit && last.revision > 0 => {
            Some(last.revision - 1)
        }
        (Direction::Backwards, _) => None,
    };
    Ok(Json(Page {
        events: lines(&events)?,
        next,
        head: None,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllParams {
    from: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn read_all(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<AllParams>, QueryRejection>,
) -> Result<Json<Page>> {
    let params = query(params)?;
    caller.require_all()?;
    let limit = limit(params.limit, &state)?;
    let from = params.from.unwrap_or(0);
    let head = state.store.head();
    let events = state
        .store
        .read_all(from, Direction::Forwards, limit)
        .await?;
    let next = events.last().map_or(from, |e| e.position + 1);
    Ok(Json(Page {
        events: lines(&events)?,
        next: Some(next),
        head: Some(head),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteParams {
    tombstone: Option<bool>,
}

pub(crate) async fn delete_stream(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<DeleteParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    let stream = StreamName::user(path(stream)?)?;
    caller.require(Right::Admin, stream.as_str())?;
    let params = query(params)?;
    let expected = expected(&headers)?;
    let position = if params.tombstone.unwrap_or(false) {
        state.store.tombstone_stream(&stream, expected).await?
    } else {
        state.store.delete_stream(&stream, expected).await?
    };
    Ok(Json(json!({ "position": position })))
}

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

pub(crate) async fn put_metadata(
    State(state): State<AppState>,
    caller: Caller,
    stream: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
    metadata: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>> {
    let stream = StreamName::user(path(stream)?)?;
    caller.require(Right::Admin, stream.as_str())?;
    query(params)?;
    let metadata: StreamMetadata = serde_json::from_slice(&body(&state, metadata)?)
        .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let position = state.store.set_metadata(&stream, metadata).await?;
    Ok(Json(json!({ "position": position })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list_streams(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>> {
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
    Ok(Json(json!({ "streams": streams, "next": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeParams {
    from: Option<u64>,
}

/// The position in a `Last-Event-ID` header: the last event the client received.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>> {
    header_text(headers, "last-event-id")?
        .map(|text| {
            text.trim().parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("header Last-Event-ID '{text}' is not a position"))
            })
        })
        .transpose()
}

pub(crate) async fn subscribe_all(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<SubscribeParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let params = query(params)?;
    caller.require_all()?;
    let from = match last_event_id(&headers)? {
        Some(last) => last + 1,
        None => params.from.unwrap_or(0),
    };
    Ok(sse::respond(&state, Follow::All { from }))
}

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
    let subscription = Subscription::stream(state.store.clone(), stream, from);
    Ok(sse::respond(&state, Follow::Stream(subscription)))
}

pub(crate) async fn processors(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>> {
    caller.require_all()?;
    query(params)?;
    let processors = processor_statuses(&*state.store).await?;
    Ok(Json(
        json!({ "processors": processors, "head": state.store.head() }),
    ))
}

pub(crate) async fn projections(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>> {
    caller.require_all()?;
    query(params)?;
    let projections = consumers::projections(&state).await?;
    Ok(Json(json!({
        "read_model": state.config.read_model.as_ref().map(|m| m.kind()),
        "projections": projections.unwrap_or_default(),
    })))
}
