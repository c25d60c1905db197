//! Persistent subscription groups over HTTP: manage them (admin on the source), receive their
//! messages as server-sent events and acknowledge them in batches (read on the source).
//!
//! A group's source is a stream's name or `$all` in the path (`/subscriptions/{source}/{group}`).
//! For `$all`, reading the group takes read on every stream its filter lets through (every
//! stream without a prefix filter), and managing it admin on them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use factum_toolkit::{
    FilterSpec, GroupError, GroupInfo, GroupKey, GroupSettings, GroupSource, Groups, NackAction,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Caller, Right};
use crate::error::ErrorBody;
use crate::sse::{self, Follow};
use crate::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> Self {
        let status = match &error {
            GroupError::Store(_) => {
                let GroupError::Store(e) = error else {
                    unreachable!()
                };
                return ApiError::from(e);
            }
            GroupError::NotFound(_) => StatusCode::NOT_FOUND,
            GroupError::Exists(_) | GroupError::Replaying(_) => StatusCode::CONFLICT,
            // Well-formed, and not a group's settings or name: each field may be right while
            // they do not go together (a batch larger than the buffer, say).
            GroupError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // Settled already, timed out and sent again, or never sent.
            GroupError::UnknownMessage { .. } => StatusCode::CONFLICT,
            GroupError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
            GroupError::ServedElsewhere(_) | GroupError::Stopped(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, error)
    }
}

/// The server's groups, opened on first use.
pub(crate) async fn groups(state: &AppState) -> Result<&Groups> {
    state
        .groups
        .get_or_try_init(|| Groups::open(state.store.clone()))
        .await
        .map_err(ApiError::from)
}

fn key(path: std::result::Result<Path<(String, String)>, PathRejection>) -> Result<GroupKey> {
    let Path((source, group)) =
        path.map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))?;
    Ok(GroupKey::new(source, group))
}

fn body<T: serde::de::DeserializeOwned>(
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<T> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), format!("body: {}", e.body_text())))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "body: a JSON object is needed (`{}` for every default)",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// The streams a group's messages come from, for the rights it takes (over HTTP and gRPC).
pub(crate) fn require(
    caller: &Caller,
    right: Right,
    source: &str,
    filter: Option<&FilterSpec>,
) -> Result<()> {
    if source != "$all" {
        return caller.require(right, source);
    }
    match filter.map(|f| f.stream_prefixes.as_slice()) {
        Some(prefixes) if !prefixes.is_empty() => {
            prefixes.iter().try_for_each(|p| caller.require(right, p))
        }
        _ => caller.require(right, ""),
    }
}

/// The rights a request on an existing group takes: by its source and filter. Without the
/// right on a stream, whether a group on it exists is not told either.
pub(crate) async fn require_on(
    groups: &Groups,
    caller: &Caller,
    right: Right,
    key: &GroupKey,
) -> std::result::Result<(), RightsError> {
    if key.source != "$all" {
        caller
            .require(right, &key.source)
            .map_err(RightsError::Denied)?;
    }
    let filter = match groups.source(key).await.map_err(RightsError::Group)? {
        GroupSource::All(filter) => Some(filter),
        GroupSource::Stream(_) => None,
    };
    require(caller, right, &key.source, filter.as_ref()).map_err(RightsError::Denied)
}

/// Why [`require_on`] refused: the caller's right, or the group (not found, …).
pub(crate) enum RightsError {
    Denied(ApiError),
    Group(GroupError),
}

impl From<RightsError> for ApiError {
    fn from(error: RightsError) -> Self {
        match error {
            RightsError::Denied(e) => e,
            RightsError::Group(e) => e.into(),
        }
    }
}

/// The group a path names.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // for the description; handlers take the path as a pair
pub(crate) struct GroupPath {
    /// A stream's name (1 to 512 characters without NUL), or `$all`.
    #[param(min_length = 1, max_length = 512, pattern = r"^[^\x00]+$")]
    source: String,
    /// The group's name: 1 to 256 characters without NUL (and without `::`).
    #[param(min_length = 1, max_length = 256, pattern = r"^[^\x00]+$")]
    group: String,
}

/// A group to create: its settings, and for `$all` its filter.
#[derive(Deserialize, ToSchema, Default)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NewGroup {
    /// The group's settings; those left out take their defaults.
    settings: GroupSettings,
    /// For a group on `$all`: which events it delivers.
    filter: Option<FilterSpec>,
}

#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions",
    summary = "List the persistent subscription groups the token may read",
    responses((status = 200, description = "The groups, by source and name", body = Vec<GroupInfo>)))]
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response> {
    let all = groups(&state).await?.list(None).await?;
    let visible: Vec<GroupInfo> = all
        .into_iter()
        .filter(|g| require(&caller, Right::Read, &g.source, g.filter.as_ref()).is_ok())
        .collect();
    Ok(Json(visible).into_response())
}

#[utoipa::path(post, path = "/subscriptions/{source}/{group}", tag = "subscriptions",
    summary = "Create a persistent subscription group (admin right on its source)",
    params(GroupPath),
    request_body(content = NewGroup, description = "Settings (defaults for those left out) and, on `$all`, a filter"),
    responses(
        (status = 201, description = "Created", body = GroupInfo),
        (status = 403, description = "The token has no admin right on the source", body = ErrorBody),
        (status = 409, description = "A group of that name exists on the source", body = ErrorBody),
        (status = 422, description = "Settings that do not go together, a filter on a stream's group, a regular expression that does not compile, or a name with `::`", body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    request: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let new: NewGroup = body(request)?;
    require(&caller, Right::Admin, &key.source, new.filter.as_ref())?;
    let source = if key.source == "$all" {
        GroupSource::All(new.filter.unwrap_or_default())
    } else if new.filter.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body: a filter is for a group on $all; a stream's group takes every event of it",
        ));
    } else {
        GroupSource::stream(&key.source)?
    };
    let groups = groups(&state).await?;
    groups.create(source, &key.group, new.settings).await?;
    let info = groups.info(&key).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[utoipa::path(put, path = "/subscriptions/{source}/{group}", tag = "subscriptions",
    summary = "Give a group new settings (admin right on its source); its consumers reconnect",
    params(GroupPath),
    request_body(content = GroupSettings, description = "The new settings (defaults for those left out); the start stays as created"),
    responses(
        (status = 200, description = "Updated", body = GroupInfo),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 422, description = "Settings that do not go together", body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    request: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let settings: GroupSettings = body(request)?;
    require_on(groups(&state).await?, &caller, Right::Admin, &key).await?;
    let groups = groups(&state).await?;
    groups.update(&key, settings).await?;
    Ok(Json(groups.info(&key).await?).into_response())
}

#[utoipa::path(delete, path = "/subscriptions/{source}/{group}", tag = "subscriptions",
    summary = "Delete a group (admin right on its source); its parked stream stays readable",
    params(GroupPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
) -> Result<Response> {
    let key = key(path)?;
    require_on(groups(&state).await?, &caller, Right::Admin, &key).await?;
    groups(&state).await?.delete(&key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/subscriptions/{source}/{group}", tag = "subscriptions",
    summary = "Describe a group: consumers, in flight, parked, checkpoint, lag (read right on its source)",
    params(GroupPath),
    responses(
        (status = 200, description = "The group", body = GroupInfo),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub(crate) async fn describe(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let groups = groups(&state).await?;
    require_on(groups, &caller, Right::Read, &key).await?;
    Ok(Json(groups.info(&key).await?).into_response())
}

/// How a consumer connects.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumeParams {
    /// The name the group lists the consumer under (default `http`).
    consumer: Option<String>,
    /// How many messages it may hold unacknowledged (1 to 10000, default 10).
    #[param(minimum = 1, maximum = 10000)]
    capacity: Option<usize>,
}

#[utoipa::path(get, path = "/subscriptions/{source}/{group}/messages", tag = "subscriptions",
    summary = "Receive a group's messages as server-sent events (read right on its source)",
    params(GroupPath, ConsumeParams),
    responses(
        (status = 200, description = "Server-sent events: `id:` is the message id to acknowledge, `data:` `{\"id\", \"retry_count\", \"event\"}` with the event as in a page. Messages not acknowledged when the connection closes go to the group's other consumers.",
            body = String, content_type = "text/event-stream"),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 429, description = "The group has its maximum number of consumers", body = ErrorBody)))]
pub(crate) async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    params: std::result::Result<Query<ConsumeParams>, QueryRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let params = params
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let capacity = params.capacity.unwrap_or(10);
    if !(1..=10_000).contains(&capacity) {
        return Err(ApiError::bad_request(format!(
            "capacity {capacity} is out of range 1..=10000"
        )));
    }
    require_on(groups(&state).await?, &caller, Right::Read, &key).await?;
    let admitted = sse::admit(&state, &caller)?;
    let name = params.consumer.unwrap_or_else(|| "http".into());
    let connection = groups(&state).await?.connect(&key, &name, capacity).await?;
    Ok(sse::respond(&state, admitted, Follow::Group(connection)))
}

/// Messages to acknowledge.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ack {
    /// The messages' ids (the `id:` of their frames).
    #[schema(min_items = 1, max_items = 10000)]
    ids: Vec<Uuid>,
}

/// Messages to nack, and what to do with them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Nack {
    /// The messages' ids.
    #[schema(min_items = 1, max_items = 10000)]
    ids: Vec<Uuid>,
    /// `park`, `retry`, `skip` or `stop` (give back untried).
    action: NackAction,
    /// Why, recorded with a parked message.
    #[serde(default)]
    reason: String,
}

/// What an ack or nack settled.
#[derive(Serialize, ToSchema)]
pub(crate) struct Settled {
    /// How many messages.
    settled: usize,
}

const ACK_IDS_MAX: usize = 10_000;

fn check_ids(ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() || ids.len() > ACK_IDS_MAX {
        return Err(ApiError::bad_request(format!(
            "ids: {} given; 1 to {ACK_IDS_MAX} per request",
            ids.len()
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/subscriptions/{source}/{group}/ack", tag = "subscriptions",
    summary = "Acknowledge messages in flight (read right on its source); all or none",
    params(GroupPath),
    request_body(content = Ack),
    responses(
        (status = 200, description = "Acknowledged", body = Settled),
        (status = 409, description = "An id not in flight: settled, or timed out and sent again (none is acknowledged)", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub(crate) async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    request: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let ack: Ack = body(request)?;
    check_ids(&ack.ids)?;
    require_on(groups(&state).await?, &caller, Right::Read, &key).await?;
    groups(&state).await?.ack(&key, &ack.ids).await?;
    Ok(Json(Settled {
        settled: ack.ids.len(),
    })
    .into_response())
}

#[utoipa::path(post, path = "/subscriptions/{source}/{group}/nack", tag = "subscriptions",
    summary = "Nack messages in flight with an action (read right on its source); all or none",
    params(GroupPath),
    request_body(content = Nack),
    responses(
        (status = 200, description = "Nacked", body = Settled),
        (status = 409, description = "An id not in flight: settled, or timed out and sent again (none is nacked)", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub(crate) async fn nack(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    request: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let nack: Nack = body(request)?;
    check_ids(&nack.ids)?;
    require_on(groups(&state).await?, &caller, Right::Read, &key).await?;
    groups(&state)
        .await?
        .nack(&key, &nack.ids, nack.action, &nack.reason)
        .await?;
    Ok(Json(Settled {
        settled: nack.ids.len(),
    })
    .into_response())
}

/// How many parked messages to replay.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayParams {
    /// Replay the first this many (all when left out).
    #[serde(default, deserialize_with = "crate::api::int64")]
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    stop_at: Option<u64>,
}

/// How many parked messages a replay delivers again.
#[derive(Serialize, ToSchema)]
pub(crate) struct Replayed {
    /// How many.
    replayed: u64,
}

#[utoipa::path(post, path = "/subscriptions/{source}/{group}/replay-parked", tag = "subscriptions",
    summary = "Deliver a group's parked messages again, before new ones (admin right on its source)",
    params(GroupPath, ReplayParams),
    responses(
        (status = 200, description = "The replay started", body = Replayed),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 409, description = "A replay is under way", body = ErrorBody)))]
pub(crate) async fn replay_parked(
    State(state): State<AppState>,
    caller: Caller,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    params: std::result::Result<Query<ReplayParams>, QueryRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let params = params
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    require_on(groups(&state).await?, &caller, Right::Admin, &key).await?;
    let replayed = groups(&state)
        .await?
        .replay_parked(&key, params.stop_at)
        .await?;
    Ok(Json(Replayed { replayed }).into_response())
}
