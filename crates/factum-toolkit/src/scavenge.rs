//! Scavenging as an application runs it: bounded by default by what every consumer stored in
//! the store still has to read.

use factum_core::{EventStore, ScavengeOptions, ScavengeReport, StoreError, checkpoint_bound};

use crate::GroupError;

/// Where a scavenge stops by default: the lowest checkpoint stored in `store` — of relays,
/// event processors, sagas and consumers (`$checkpoint-…`), and of persistent subscription
/// groups (their first unsettled message). `None` when nothing in the store has a checkpoint.
/// Read models keep their checkpoints in their own database, out of the store's sight: a
/// projection that has fallen behind is not protected (a rebuild reads what is left, which
/// is every event its streams still show).
pub async fn scavenge_bound(store: &dyn EventStore) -> Result<Option<u64>, StoreError> {
    let checkpoints = checkpoint_bound(store).await?;
    let groups = crate::persistent::groups_scavenge_bound(store)
        .await
        .map_err(|e| match e {
            GroupError::Store(e) => e,
            other => StoreError::invalid(other.to_string()),
        })?;
    Ok(match (checkpoints, groups) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Scavenges `store` (see [`EventStore::scavenge`]) up to [`scavenge_bound`], or, with
/// `past_checkpoints`, as far as it can.
pub async fn scavenge(
    store: &dyn EventStore,
    past_checkpoints: bool,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<ScavengeReport, StoreError> {
    let below = if past_checkpoints {
        None
    } else {
        scavenge_bound(store).await?
    };
    store.scavenge(ScavengeOptions { below }, progress).await
}
