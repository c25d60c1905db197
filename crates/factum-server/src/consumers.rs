//! How far behind the log its projections are, when the server is given the read model. (Event
//! processors keep their checkpoints and dead letters in the store itself:
//! [`factum_toolkit::processor_statuses`].)

use factum_projections::{ProjectionStatus, log_head};

use crate::{ApiError, AppState};

/// The projections of the read model the server was given (`None` without one).
pub(crate) async fn projections(
    state: &AppState,
) -> Result<Option<Vec<ProjectionStatus>>, ApiError> {
    let Some(read_model) = &state.config.read_model else {
        return Ok(None);
    };
    let states = read_model.states().await.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("read model: {e}"),
        )
    })?;
    let (head, recorded_at_us) = log_head(&*state.store)
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Some(
        states
            .iter()
            .map(|s| s.status(head, recorded_at_us))
            .collect(),
    ))
}
