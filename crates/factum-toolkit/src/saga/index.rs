//! The saga's index in `$sagas-{NAME}`: which instances a start reads, and when the index is
//! written again.

use std::collections::BTreeSet;
use std::time::Duration;

use factum_core::{Direction, ExpectedState, NewEvent, StoreError};

use super::deadlines::Deadlines;
use super::records::{INDEXED, Indexed};
use super::{Saga, SagaError, SagaManager};

/// Positions of `$all` passed before the manager writes its index again: about what a start
/// reads of `$all` when the manager before it kept up (a manager held up by a command that
/// cannot be sent writes no index meanwhile).
pub(super) const INDEX_EVERY_POSITIONS: u64 = 65_536;
/// The least time between two writes of the index.
pub(super) const INDEX_PAUSE_MIN: Duration = Duration::from_secs(5);
/// Events of `$all` a start reads at once when it looks for instances written after the index.
pub(super) const INDEX_READ_PAGE_EVENTS: usize = 1000;

/// When the index was last written.
pub(super) struct IndexWrites {
    /// The `from` it was written with.
    pub(super) from: u64,
    pub(super) at: tokio::time::Instant,
}

impl IndexWrites {
    /// Whether to write it again, the head of `$all` being `head`.
    pub(super) fn due(&self, head: u64) -> bool {
        head >= self.from + INDEX_EVERY_POSITIONS && self.at.elapsed() >= INDEX_PAUSE_MIN
    }
}

impl<G: Saga> SagaManager<G> {
    /// The instances a start reads: with an index, those it names as waiting for a deadline
    /// and those with steps after it (found in `$all`); without one (or with one this code
    /// cannot read), every instance. Also where the index this start read is as of: the index's
    /// `from` when instances were written after it (or 0 without an index), else the head.
    pub(super) async fn instances_to_load(&self) -> Result<(Vec<String>, u64), SagaError> {
        let head = self.store.head();
        let prefix = format!("$saga-{}-", G::NAME);
        let newest = match self
            .store
            .read_stream(&Self::index_stream()?, u64::MAX, Direction::Backwards, 1)
            .await
        {
            Ok(mut page) => page.pop(),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let indexed = newest.and_then(|event| {
            serde_json::from_slice::<Indexed>(&event.data)
                .inspect_err(|e| {
                    tracing::warn!(saga = G::NAME, error = %e, "saga index unreadable; reading every instance");
                })
                .ok()
        });
        let Some(indexed) = indexed else {
            let every = crate::status::names_after(self.store.as_ref(), &prefix).await?;
            return Ok((every, 0));
        };
        let mut as_of = head;
        let mut ids: BTreeSet<String> = indexed.waiting.into_iter().collect();
        let mut from = indexed.from;
        while from < head {
            let page = self
                .store
                .read_all(from, Direction::Forwards, INDEX_READ_PAGE_EVENTS)
                .await?;
            let Some(next) = page.last().map(|e| e.position + 1) else {
                break;
            };
            let written = page
                .iter()
                .filter_map(|e| e.stream.as_str().strip_prefix(&prefix))
                .map(str::to_owned)
                .collect::<Vec<_>>();
            if !written.is_empty() {
                as_of = indexed.from;
            }
            ids.extend(written);
            from = next;
        }
        Ok((ids.into_iter().collect(), as_of))
    }

    /// Writes the index: the instances with deadlines pending, and `from`, the head of `$all`
    /// when they were (no command was stored and not sent then).
    pub(super) async fn write_index(
        &self,
        deadlines: &Deadlines,
        from: u64,
        index: &mut IndexWrites,
    ) -> Result<(), SagaError> {
        let indexed = Indexed {
            from,
            waiting: deadlines.live.keys().cloned().collect(),
        };
        let event = NewEvent::json(INDEXED, &indexed)?;
        *index = IndexWrites {
            from,
            at: tokio::time::Instant::now(),
        };
        if event.data.len() > self.index_bytes_max {
            tracing::warn!(
                saga = G::NAME,
                waiting = indexed.waiting.len(),
                "too many instances waiting for the saga's index: it stays as it was, and a start reads more of $all"
            );
            return Ok(());
        }
        self.store
            .append(&Self::index_stream()?, ExpectedState::Any, vec![event])
            .await?;
        Ok(())
    }
}
