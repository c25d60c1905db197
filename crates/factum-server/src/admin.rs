//! Administrative operations on the whole store (admin right on every stream).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{path, query};
use crate::auth::{Caller, Right};
use crate::error::ErrorBody;
use crate::{ApiError, AppState};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScavengeParams {
    /// `true`: go past the lowest stored checkpoint, removing hidden events that a relay,
    /// processor, saga or consumer group has not read yet. Default `false`.
    past_checkpoints: Option<bool>,
}

/// What a scavenge did.
#[derive(Serialize, ToSchema)]
pub(crate) struct ScavengeAnswer {
    /// The position it stopped at (`null`: none, it went as far as it could).
    below: Option<u64>,
    /// Events looked at.
    events_examined: u64,
    /// Events removed; their positions and revisions stay taken.
    events_removed: u64,
    /// Segment files rewritten (the embedded store) or batches deleted (PostgreSQL).
    segments_rewritten: u64,
    /// Bytes the log took before.
    bytes_before: u64,
    /// Bytes it takes after.
    bytes_after: u64,
    /// Bytes given back.
    bytes_reclaimed: u64,
}

impl From<factum_core::ScavengeReport> for ScavengeAnswer {
    fn from(report: factum_core::ScavengeReport) -> Self {
        ScavengeAnswer {
            below: report.below,
            events_examined: report.events_examined,
            events_removed: report.events_removed,
            segments_rewritten: report.segments_rewritten,
            bytes_before: report.bytes_before,
            bytes_after: report.bytes_after,
            bytes_reclaimed: report.bytes_reclaimed(),
        }
    }
}

#[utoipa::path(post, path = "/admin/scavenge", tag = "server",
    summary = "Reclaim the space of events that their streams' metadata hides for good (admin right on every stream)",
    description = "Removes the events hidden for good by their stream's metadata (below a soft delete, of a tombstoned stream, below truncate-before, beyond max-count, past max-age), never a stream's newest record nor metadata, and by default nothing at or past the lowest stored checkpoint. Reads and appends go on meanwhile; the answer comes when it is done.",
    params(ScavengeParams),
    responses(
        (status = 200, description = "Done", body = ScavengeAnswer),
        (status = 400, description = "A parameter that is not understood", body = ErrorBody),
        (status = 403, description = "The token has no admin right on every stream", body = ErrorBody),
        (status = 409, description = "A scavenge or a verification is running already", body = ErrorBody),
        (status = 501, description = "This store cannot be scavenged", body = ErrorBody)))]
pub(crate) async fn scavenge(
    State(state): State<AppState>,
    caller: Caller,
    params: std::result::Result<Query<ScavengeParams>, QueryRejection>,
) -> std::result::Result<Json<ScavengeAnswer>, ApiError> {
    caller.require(Right::Admin, "")?;
    let params = query(params)?;
    let progress = |done: u64, total: u64| {
        tracing::debug!(done, total, "scavenging");
    };
    tracing::info!("scavenge started");
    let report = factum_toolkit::scavenge(
        state.store.as_ref(),
        params.past_checkpoints.unwrap_or(false),
        &progress,
    )
    .await?;
    tracing::info!(
        removed = report.events_removed,
        reclaimed = report.bytes_reclaimed(),
        "scavenge done"
    );
    Ok(Json(report.into()))
}

/// A subject forgotten.
#[derive(Serialize, ToSchema)]
pub(crate) struct Forgotten {
    /// The subject whose key was deleted.
    forgotten: String,
}

#[utoipa::path(delete, path = "/admin/subjects/{subject}", tag = "server",
    summary = "Forget a subject: delete its key, so its personal data reads as forgotten everywhere (admin right on every stream)",
    description = "Deletes the key the personal fields of the subject's events are encrypted with. From then on those fields decode as forgotten in every read, export, relayed message and rebuilt read model; the rest of each event stays. It cannot be undone.",
    params(("subject" = String, Path, description = "The subject's id: 1 to 100 characters, none a control character.", min_length = 1, max_length = 100, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")),
    responses(
        (status = 200, description = "Forgotten", body = Forgotten),
        (status = 400, description = "Not a subject id", body = ErrorBody),
        (status = 403, description = "The token has no admin right on every stream", body = ErrorBody),
        (status = 404, description = "No key for this subject: unknown, or forgotten before", body = ErrorBody),
        (status = 501, description = "This store keeps no keys", body = ErrorBody)))]
pub(crate) async fn forget(
    State(state): State<AppState>,
    caller: Caller,
    subject: std::result::Result<Path<String>, PathRejection>,
) -> std::result::Result<Json<Forgotten>, ApiError> {
    caller.require(Right::Admin, "")?;
    let subject = path(subject)?;
    factum_toolkit::forget_subject(state.store.as_ref(), &subject).await?;
    tracing::info!(subject, "subject forgotten");
    Ok(Json(Forgotten { forgotten: subject }))
}
