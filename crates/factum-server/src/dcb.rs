//! Dynamic consistency boundaries over HTTP: reads by query, appends conditional on a query,
//! and subscriptions by query.
//!
//! Rights: tags carry none. A query may match events of any stream, so a DCB read, a
//! subscription and an append with a condition (whose answer tells whether a matching event
//! exists) take the read right on every stream, as `$all` does; an append also takes the
//! write right on the stream of each of its events and on each stream it names an expected
//! state for.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use factum_core::{
    AppendCondition, DcbAppend, Direction, ExpectedState, Query, StoreError, StreamName,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{NoParams, body, int64, last_event_id, limit, lines, query};
// `int64` reads the subscription's query string; bodies read numbers as JSON Schema does.
use crate::auth::{Caller, Right};
use crate::error::ErrorBody;
use crate::json::{DcbEventLine, Object, RecordedLine};
use crate::sse::{self, Follow};
use crate::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

/// The body of `POST /dcb/read`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadRequest {
    /// The events to read; no items (or none given): every event of user streams.
    #[serde(default)]
    query: Query,
    /// Only events after this position; default from the first.
    #[serde(default, deserialize_with = "factum_core::backend::json::whole_number")]
    #[schema(minimum = 0, maximum = 9223372036854775807_u64)]
    after: Option<u64>,
    /// How many events at most (default 100).
    #[serde(default, deserialize_with = "factum_core::backend::json::whole_number")]
    #[schema(value_type = Option<usize>, minimum = 1)]
    limit: Option<u64>,
    /// Newest first.
    #[serde(default)]
    backwards: bool,
}

/// The events a DCB read found, with the store's head when it read them.
#[derive(Serialize, ToSchema)]
pub(crate) struct ReadAnswer {
    /// The matching events (with their `tags`), in the direction read.
    events: Vec<RecordedLine>,
    /// The position of the store's last event when the read was made (`null`: the store was
    /// empty): the `after` of a condition for a decision made on this read.
    head: Option<u64>,
}

#[utoipa::path(post, path = "/dcb/read", tag = "dcb",
    summary = "Read the events matching a query of types and tags (read right on every stream)",
    request_body(content = ReadRequest, description = "The query, after a position, a limit, a direction"),
    responses(
        (status = 200, description = "The events and the head to condition an append on", body = ReadAnswer),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 403, description = "The token may not read every stream", body = ErrorBody)))]
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<QueryParams<NoParams>, QueryRejection>,
    request: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<ReadAnswer>> {
    caller.require_all()?;
    query(params)?;
    let request = body(&state, request)?;
    let read = parse_read(&request)?;
    let limit = limit(read.limit, &state)?;
    let found = state
        .store
        .read_query(&read.query, read.after, read.direction, limit)
        .await?;
    Ok(Json(answer(&found)?))
}

/// A DCB read as asked for in the body of `POST /dcb/read` (and by `factum dcb read`).
pub struct Read {
    /// The query.
    pub query: Query,
    /// After this position.
    pub after: Option<u64>,
    /// Oldest or newest first.
    pub direction: Direction,
    /// At most this many (none: the default).
    pub limit: Option<usize>,
}

/// Parses the body of `POST /dcb/read`.
pub fn parse_read(body: &[u8]) -> Result<Read> {
    let Object(request): Object<ReadRequest> =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    request.query.validate()?;
    Ok(Read {
        query: request.query,
        after: request.after,
        direction: if request.backwards {
            Direction::Backwards
        } else {
            Direction::Forwards
        },
        limit: request
            .limit
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    })
}

/// The JSON answer of a DCB read: `{"events": [...], "head": H}`.
pub fn read_answer(read: &factum_core::QueryRead) -> Result<serde_json::Value> {
    serde_json::to_value(answer(read)?).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn answer(read: &factum_core::QueryRead) -> Result<ReadAnswer> {
    Ok(ReadAnswer {
        events: lines(&read.events)?,
        head: read.head,
    })
}

/// Parses a query given as JSON text (`/dcb/subscribe?query=…`, `factum dcb tail`).
pub fn parse_query(text: &str) -> Result<Query> {
    let query: Query =
        serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    query.validate()?;
    Ok(query)
}

/// The body of `POST /dcb/append`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendRequest {
    /// The events, at least one, in order; each in its `stream` (`dcb` by default).
    #[schema(value_type = Vec<DcbEventLine>, min_items = 1)]
    events: Vec<Object<DcbEventLine>>,
    /// Fails the append, writing nothing, if an event matching `fail_if_events_match` was
    /// written after `after` (the `head` of the read the decision was made on).
    #[serde(default)]
    condition: Option<AppendCondition>,
    /// Streams that must be in a state for the append to go ahead.
    #[serde(default)]
    #[schema(value_type = Vec<ExpectedLine>)]
    expected: Vec<Object<ExpectedLine>>,
}

/// A stream and the state it must be in.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectedLine {
    /// The stream: 1 to 512 characters without NUL, not starting with `$`.
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\$\x00][^\x00]*$")]
    stream: String,
    /// What it must be: `"any"`, `"no-stream"`, `"exists"`, or the revision of its last
    /// event.
    #[schema(schema_with = state_schema)]
    state: StateLine,
}

fn state_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["any", "no-stream", "exists"])),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(i64::MAX)),
        )
        .build()
        .into()
}

/// `"any"`, `"no-stream"`, `"exists"`, or the revision of the stream's last event.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum StateLine {
    /// A state by name.
    Named(NamedState),
    /// The revision of the stream's last event (a JSON number: `5.0` is 5).
    Revision(serde_json::Number),
}

/// A state by name.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum NamedState {
    /// Whatever it is.
    Any,
    /// It does not exist.
    NoStream,
    /// It exists.
    Exists,
}

/// What a DCB append answers.
#[derive(Serialize, ToSchema)]
pub(crate) struct Appended {
    /// The position of its last event.
    position: u64,
}

fn expected_state(stream: &str, state: &StateLine) -> Result<ExpectedState> {
    Ok(match state {
        StateLine::Named(NamedState::Any) => ExpectedState::Any,
        StateLine::Named(NamedState::NoStream) => ExpectedState::NoStream,
        StateLine::Named(NamedState::Exists) => ExpectedState::StreamExists,
        StateLine::Revision(n) => {
            let whole =
                factum_core::backend::json::whole_number(serde_json::Value::Number(n.clone()))
                    .ok()
                    .flatten();
            match whole {
                Some(revision) => ExpectedState::Exact(revision),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "body: expected state of '{stream}': {n} is not a revision (a whole number from 0 to {})",
                        i64::MAX
                    )));
                }
            }
        }
    })
}

#[utoipa::path(post, path = "/dcb/append", tag = "dcb",
    summary = "Append events with tags, all or none, if no event matching the condition's query came after its position (write right on their streams; read on every stream with a condition)",
    request_body(content = AppendRequest, description = "The events, the condition, expected states of streams"),
    responses(
        (status = 201, description = "Appended, durably; the position of the last event", body = Appended),
        (status = 400, description = "Malformed events, tags, query or condition; nothing was written", body = ErrorBody),
        (status = 403, description = "The token may not write to a stream of the events, or (with a condition) read every stream", body = ErrorBody),
        (status = 409, description = "The condition failed (the body names it and the position of the first matching event) or a stream is not in its expected state; nothing was written", body = ErrorBody),
        (status = 410, description = "A stream of the events is tombstoned", body = ErrorBody),
        (status = 422, description = "An event says its data is binary (`application/octet-stream`) and the data is not a hex string", body = ErrorBody),
        (status = 413, description = "The body is larger than the server takes", body = ErrorBody)))]
pub(crate) async fn append(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<QueryParams<NoParams>, QueryRejection>,
    request: std::result::Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Appended>)> {
    query(params)?;
    let request = body(&state, request)?;
    let append = parse_append(&request)?;
    for event in &append.events {
        caller.require(Right::Write, event.stream.as_str())?;
    }
    for (stream, _) in &append.expected {
        caller.require(Right::Write, stream.as_str())?;
    }
    if append.condition.is_some() {
        caller.require_all()?;
    }
    let (count, bytes) = (
        append.events.len() as u64,
        append
            .events
            .iter()
            .map(|e| e.event.size_bytes() as u64)
            .sum::<u64>(),
    );
    let condition = append.condition.clone();
    let started = std::time::Instant::now();
    let position = match state.store.append_conditional(append).await {
        Ok(position) => position,
        Err(StoreError::ConditionFailed { after, position }) => {
            return Err(ApiError::condition_failed(
                condition.unwrap_or_default(),
                after,
                position,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    state.appended(count, bytes, started.elapsed());
    Ok((StatusCode::CREATED, Json(Appended { position })))
}

/// Parses the body of `POST /dcb/append` (and of `factum dcb append`) into the append:
/// 400 for what is malformed, 422 for binary data that is not hex.
pub fn parse_append(body: &[u8]) -> Result<DcbAppend> {
    let Object(request): Object<AppendRequest> =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if request.events.is_empty() {
        return Err(ApiError::bad_request(
            "body: events holds no event; append at least one",
        ));
    }
    let events = request
        .events
        .into_iter()
        .enumerate()
        .map(|(i, Object(line))| {
            if let Some(problem) = line.binary_data_problem() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("event {i}: {problem}"),
                ));
            }
            line.into_event()
                .map_err(|e| ApiError::bad_request(format!("event {i}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut expected = Vec::with_capacity(request.expected.len());
    for Object(line) in &request.expected {
        let state = expected_state(&line.stream, &line.state)?;
        expected.push((StreamName::user(line.stream.clone())?, state));
    }
    let append = DcbAppend {
        events,
        condition: request.condition,
        expected,
    };
    if let Some(condition) = &append.condition {
        condition
            .fail_if_events_match
            .validate()
            .map_err(|e| ApiError::bad_request(format!("condition: {e}")))?;
    }
    Ok(append)
}

/// The query string of `/dcb/subscribe`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeParams {
    /// The query as JSON, `{"items": [{"types": [...], "tags": [...]}]}`; none: every event
    /// of user streams.
    query: Option<String>,
    /// Only events after this position; default from the first.
    #[serde(default, deserialize_with = "int64")]
    after: Option<u64>,
}

#[utoipa::path(get, path = "/dcb/subscribe", tag = "dcb",
    summary = "Follow the events matching a query live, as server-sent events (read right on every stream)",
    params(SubscribeParams, ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^[0-9]{1,18}$", description = "The position of the last event the client received (the `id:` of its SSE frame): the subscription resumes after it; it overrides `after`.")),
    responses(
        (status = 200, description = "Server-sent events: `id:` is the position, `data:` the event as in a read, with its tags",
            body = String, content_type = "text/event-stream"),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 403, description = "The token may not read every stream", body = ErrorBody)))]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<QueryParams<SubscribeParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    caller.require_all()?;
    let params = query(params)?;
    let dcb_query = match &params.query {
        None => Query::all(),
        Some(text) => parse_query(text)?,
    };
    let after = last_event_id(&headers)?.or(params.after);
    let admitted = sse::admit(&state, &caller)?;
    let subscription = state.store.subscribe_query(dcb_query, after);
    Ok(sse::respond(&state, admitted, Follow::Own(subscription)))
}
