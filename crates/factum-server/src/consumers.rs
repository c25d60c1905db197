//! What consumes the log, and how far behind it is: event processors (their checkpoints and
//! dead letters are streams of the store) and, when the server is given the read model,
//! projections.

use std::collections::BTreeSet;

use factum::processor::unresolved_dead_letters;
use factum_core::{EventStore, StoreError, StreamName};
use factum_projections::{ProjectionStatus, head_of};
use serde::Serialize;

use crate::{ApiError, AppState};

const CHECKPOINT: &str = "$checkpoint-";
const DEAD_LETTER: &str = "$deadletter-";

/// An event processor (or any consumer with a checkpoint in the store).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProcessorStatus {
    pub(crate) name: String,
    /// The last position it has finished with; `None` before its first checkpoint.
    pub(crate) checkpoint: Option<u64>,
    /// Events in the log after its checkpoint.
    pub(crate) behind: u64,
    /// Dead letters no replay has resolved.
    pub(crate) dead_letters: usize,
}

/// The names after `prefix` of the streams that start with it.
async fn names(store: &dyn EventStore, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    let mut after: Option<StreamName> = None;
    loop {
        let page = store.list_streams(prefix, after.as_ref(), 1000).await?;
        names.extend(
            page.iter()
                .filter_map(|s| s.name.as_str().strip_prefix(prefix))
                .map(str::to_owned),
        );
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.name.clone()),
            _ => return Ok(names),
        }
    }
}

/// Every processor with a checkpoint or dead letters, by name.
pub(crate) async fn processors(store: &dyn EventStore) -> Result<Vec<ProcessorStatus>, StoreError> {
    let mut all: BTreeSet<String> = names(store, CHECKPOINT).await?.into_iter().collect();
    all.extend(names(store, DEAD_LETTER).await?);
    let head = store.head();
    let mut out = Vec::with_capacity(all.len());
    for name in all {
        let checkpoint = store.read_checkpoint(&name).await?;
        let dead_letters = match unresolved_dead_letters(store, &name).await {
            Ok(letters) => letters.len(),
            Err(StoreError::NotFound(_)) => 0,
            Err(e) => return Err(e),
        };
        out.push(ProcessorStatus {
            behind: head.saturating_sub(checkpoint.map_or(0, |c| c + 1)),
            name,
            checkpoint,
            dead_letters,
        });
    }
    Ok(out)
}

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
    let (head, recorded_at_us) = head_of(&*state.store)
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Some(
        states
            .iter()
            .map(|s| s.status(head, recorded_at_us))
            .collect(),
    ))
}
