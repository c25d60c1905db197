//! What the store shows of the processors, relays, sagas and consumers that keep a checkpoint or
//! dead letters in it: `/processors`, `/metrics` and `factum deadletters list` read it.

use factum_core::{EventStore, StoreError, StreamName};
use serde::Serialize;

use crate::DeadLetters;

/// A processor as the store shows it: its checkpoint, how far behind the head that is, and its
/// dead letters that no replay has resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessorStatus {
    /// The processor's name.
    pub name: String,
    /// The last position it has finished with; `None` before its first checkpoint.
    pub checkpoint: Option<u64>,
    /// Events in the log after its checkpoint.
    pub behind: u64,
    /// Dead letters no replay has resolved.
    pub dead_letters: usize,
}

/// The names after `prefix` of the streams whose names start with it, in name order.
pub(crate) async fn names_after(
    store: &dyn EventStore,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    const PAGE_STREAMS: usize = 1000;
    let mut names = Vec::new();
    let mut after: Option<StreamName> = None;
    loop {
        let page = store
            .list_streams(prefix, after.as_ref(), PAGE_STREAMS)
            .await?;
        names.extend(
            page.iter()
                .filter_map(|s| s.name.as_str().strip_prefix(prefix))
                .map(str::to_owned),
        );
        match page.last() {
            Some(last) if page.len() == PAGE_STREAMS => after = Some(last.name.clone()),
            _ => return Ok(names),
        }
    }
}

/// Every processor (any consumer, in fact) with a checkpoint or dead letters in the store, in
/// name order.
pub async fn processor_statuses(
    store: &dyn EventStore,
) -> Result<Vec<ProcessorStatus>, StoreError> {
    let mut all: std::collections::BTreeSet<String> = names_after(store, "$checkpoint-")
        .await?
        .into_iter()
        .collect();
    all.extend(names_after(store, "$deadletter-").await?);
    let head = store.head();
    let mut statuses = Vec::with_capacity(all.len());
    for name in all {
        let checkpoint = store.read_checkpoint(&name).await?;
        let dead_letters = DeadLetters::of(store, &name)?.unresolved().await?.len();
        statuses.push(ProcessorStatus {
            behind: head.saturating_sub(checkpoint.map_or(0, |c| c + 1)),
            name,
            checkpoint,
            dead_letters,
        });
    }
    Ok(statuses)
}
