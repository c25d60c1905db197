//! Runs a projection: catch-up, then live; rebuilds.

use factum_core::IntoStore;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::{Direction, EventStore, RecordedEvent};

use crate::{
    Commit, Projection, ProjectionError, ProjectionState, ProjectionStatus, ProjectionTarget,
    ReadModel, SwapOutcome, Tx,
};

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Events read from the log.
    pub events: u64,
    /// Events the projection's filter let through to `apply`.
    pub applied: u64,
    /// Transactions committed.
    pub batches: u64,
    /// The checkpoint at the end.
    pub position: Option<u64>,
    /// When the event at `position` was recorded (µs since the epoch, 0 if none).
    pub recorded_at_us: u64,
}

/// How far a rebuild has come, after each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events read so far.
    pub events: u64,
    /// The rebuild's checkpoint.
    pub position: Option<u64>,
    /// The head it is catching up to.
    pub target: u64,
    /// Time since it started.
    pub elapsed: Duration,
}

/// Keeps one projection's read model up to date from an event store.
///
/// Several projectors may run side by side, each with its own checkpoint. Two projectors of
/// the same projection (in one process or several) never apply an event twice: a batch
/// commits only if the checkpoint it continues from is still the stored one.
#[derive(Clone)]
pub struct Projector {
    store: Arc<dyn EventStore>,
    read_model: Arc<dyn ReadModel>,
    projection: Arc<dyn Projection>,
    batch_size: usize,
    opener: Option<Arc<dyn factum_core::EventOpener>>,
}

impl Projector {
    /// Events per transaction unless [`Projector::batch_size`] says otherwise.
    pub const BATCH_EVENTS_DEFAULT: usize = 2048;

    /// A projector of `projection` from `store` into `read_model`.
    pub fn new(
        store: impl IntoStore,
        read_model: Arc<dyn ReadModel>,
        projection: impl Projection,
    ) -> Self {
        Projector {
            store: store.into_store(),
            read_model,
            projection: Arc::new(projection),
            batch_size: Self::BATCH_EVENTS_DEFAULT,
            opener: None,
        }
    }

    /// Opens each batch with `opener` before the projection sees it: with the toolkit's
    /// `OpenPersonalData`, personal fields reach the projection decrypted (or forgotten).
    pub fn open_events(mut self, opener: Arc<dyn factum_core::EventOpener>) -> Self {
        self.opener = Some(opener);
        self
    }

    /// At most this many events per transaction (at least 1).
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        self.projection.name()
    }

    /// The read model it writes.
    pub fn read_model(&self) -> &Arc<dyn ReadModel> {
        &self.read_model
    }

    /// Creates the tables and the checkpoint row if they are missing; returns the state.
    pub async fn install(&self) -> Result<ProjectionState, ProjectionError> {
        self.read_model
            .install(
                self.projection.name(),
                self.projection.version(),
                &self.projection.tables(),
            )
            .await
    }

    /// Installs, rebuilds if the stored version differs from the projection's, then applies
    /// every event below `until` (a head) that it has not applied yet.
    pub async fn run_until(&self, until: u64) -> Result<RunStats, ProjectionError> {
        let state = self.prepare().await?;
        let mut checkpoint = state.position;
        loop {
            match self
                .project(ProjectionTarget::Live, checkpoint, until, |_| {})
                .await
            {
                Ok(stats) => return Ok(stats),
                Err(ProjectionError::CheckpointMoved { found, .. }) => checkpoint = found,
                Err(e) => return Err(e),
            }
        }
    }

    /// Catches up, then follows the log until `shutdown` completes. It also takes up rebuilds
    /// asked for with [`ReadModel::request_rebuild`] (`factum projections rebuild`), running
    /// them beside the live projection, which keeps serving until the swap.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunStats, ProjectionError> {
        let state = self.prepare().await?;
        let mut checkpoint = state.position;
        let mut total = RunStats {
            position: checkpoint,
            ..RunStats::default()
        };
        let mut head = self.store.watch_head();
        let mut rebuild: Option<tokio::task::JoinHandle<Result<RunStats, ProjectionError>>> = None;
        let mut last_look = Instant::now();
        tokio::pin!(shutdown);
        loop {
            let until = *head.borrow_and_update();
            match self
                .project(ProjectionTarget::Live, checkpoint, until, |_| {})
                .await
            {
                Ok(stats) => {
                    total.events += stats.events;
                    total.applied += stats.applied;
                    total.batches += stats.batches;
                    total.position = stats.position;
                    checkpoint = stats.position;
                }
                Err(ProjectionError::CheckpointMoved { found, .. }) => {
                    // A rebuild was swapped in, or another projector went ahead.
                    checkpoint = found;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if rebuild.as_ref().is_some_and(|task| task.is_finished())
                && let Some(task) = rebuild.take()
            {
                match task.await {
                    Ok(Ok(stats)) => tracing::info!(
                        projection = self.name(),
                        events = stats.events,
                        "rebuild swapped in"
                    ),
                    Ok(Err(e)) => {
                        tracing::error!(projection = self.name(), error = %e, "rebuild failed")
                    }
                    Err(e) => {
                        tracing::error!(projection = self.name(), error = %e, "rebuild task failed")
                    }
                }
            }
            if rebuild.is_none() && last_look.elapsed() >= Duration::from_millis(500) {
                last_look = Instant::now();
                if self.read_model.state(self.name()).await?.rebuild_requested {
                    tracing::info!(projection = self.name(), "rebuild requested");
                    let this = self.clone();
                    rebuild = Some(tokio::spawn(async move { this.rebuild(|_| {}).await }));
                }
            }
            if self.store.head() > checkpoint.map_or(0, |p| p + 1) {
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                changed = head.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        if let Some(task) = rebuild {
            task.abort();
        }
        Ok(total)
    }

    /// Runs [`Projector::run`] on a task of its own until [`RunningProjector::stop`] (or until
    /// the handle is dropped).
    pub fn spawn(&self) -> RunningProjector {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let projector = self.clone();
        let task = tokio::spawn(async move {
            projector
                .run(async {
                    stopped.await.ok();
                })
                .await
        });
        RunningProjector { stop, task }
    }

    /// Builds the read model again from position 0 into shadow tables while the live tables
    /// keep serving, then swaps them in, in one transaction. `progress` hears after every
    /// batch.
    pub async fn rebuild(
        &self,
        mut progress: impl FnMut(&RebuildProgress) + Send,
    ) -> Result<RunStats, ProjectionError> {
        self.install().await?;
        let started = Instant::now();
        self.read_model
            .begin_rebuild(self.name(), self.store.head())
            .await?;
        let mut total = RunStats::default();
        loop {
            let target = self.store.head();
            let done = total.events;
            let stats = self
                .project(ProjectionTarget::Shadow, total.position, target, |stats| {
                    progress(&RebuildProgress {
                        events: done + stats.events,
                        position: stats.position,
                        target,
                        elapsed: started.elapsed(),
                    })
                })
                .await?;
            total.events += stats.events;
            total.applied += stats.applied;
            total.batches += stats.batches;
            if stats.position.is_some() {
                total.position = stats.position;
                total.recorded_at_us = stats.recorded_at_us;
            }
            match self
                .read_model
                .swap(self.name(), self.projection.version(), total.recorded_at_us)
                .await?
            {
                SwapOutcome::Swapped => return Ok(total),
                SwapOutcome::LiveAhead { live } => {
                    tracing::debug!(projection = self.name(), live, "live is ahead; catching up")
                }
            }
        }
    }

    /// Installs, and rebuilds first when the stored version is not the projection's.
    async fn prepare(&self) -> Result<ProjectionState, ProjectionError> {
        let state = self.install().await?;
        if state.version == self.projection.version() {
            return Ok(state);
        }
        tracing::info!(
            projection = self.name(),
            stored = state.version,
            code = self.projection.version(),
            "the projection's version changed; rebuilding"
        );
        self.rebuild(|_| {}).await?;
        self.read_model.state(self.name()).await
    }

    async fn read(&self, from: u64, until: u64) -> Result<Vec<RecordedEvent>, ProjectionError> {
        if from >= until {
            return Ok(Vec::new());
        }
        let limit = usize::try_from(until - from)
            .unwrap_or(usize::MAX)
            .min(self.batch_size);
        let mut events = self
            .store
            .read_all(from, Direction::Forwards, limit)
            .await?;
        if let Some(opener) = &self.opener {
            opener.open(self.store.as_ref(), &mut events).await?;
        }
        Ok(events)
    }

    /// Applies the events after `checkpoint` and below `until`, a batch per transaction; the
    /// next batch is read while the previous one commits.
    async fn project(
        &self,
        target: ProjectionTarget,
        mut checkpoint: Option<u64>,
        until: u64,
        mut on_batch: impl FnMut(&RunStats),
    ) -> Result<RunStats, ProjectionError> {
        let filter = self.projection.filter();
        let name = self.projection.name();
        let mut stats = RunStats {
            position: checkpoint,
            ..RunStats::default()
        };
        let mut events = self.read(checkpoint.map_or(0, |p| p + 1), until).await?;
        while let Some(last) = events.last() {
            let (position, recorded_at_us) = (last.position, last.recorded_at_us);
            let mut tx = Tx::new();
            let mut applied = 0;
            for event in events.iter().filter(|e| filter.matches(e)) {
                self.projection
                    .apply(&mut tx, event)
                    .map_err(|e| ProjectionError::Apply {
                        projection: name.to_owned(),
                        position: event.position,
                        message: e.to_string(),
                    })?;
                applied += 1;
            }
            let commit = Commit {
                projection: name.to_owned(),
                target,
                expected: checkpoint,
                position,
                recorded_at_us,
                head: self.store.head(),
                changes: tx.into_changes(),
            };
            let (committed, next) = tokio::join!(
                self.read_model.commit(commit),
                self.read(position + 1, until)
            );
            committed?;
            stats.events += events.len() as u64;
            stats.applied += applied;
            stats.batches += 1;
            stats.position = Some(position);
            stats.recorded_at_us = recorded_at_us;
            checkpoint = Some(position);
            on_batch(&stats);
            events = next?;
        }
        Ok(stats)
    }
}

/// The store's head and when the newest event was recorded (µs since the epoch; 0 when the
/// store is empty): what lag is measured against.
pub async fn log_head(store: &dyn EventStore) -> Result<(u64, u64), ProjectionError> {
    let head = store.head();
    let recorded_at_us = match head.checked_sub(1) {
        Some(last) => store
            .read_all(last, Direction::Forwards, 1)
            .await?
            .first()
            .map_or(0, |e| e.recorded_at_us),
        None => 0,
    };
    Ok((head, recorded_at_us))
}

/// A projector running on its own task ([`Projector::spawn`]).
pub struct RunningProjector {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<RunStats, ProjectionError>>,
}

impl RunningProjector {
    /// Stops it after the batch in hand and returns what it did, or the error it stopped on.
    pub async fn stop(self) -> Result<RunStats, ProjectionError> {
        // The task may have ended on an error already; its result says so.
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| ProjectionError::invalid(format!("the projector's task failed: {e}")))?
    }
}

/// Every projection of a read model with its lag behind the store's head.
pub async fn projection_statuses(
    store: &dyn EventStore,
    read_model: &dyn ReadModel,
) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    let (head, head_recorded_at_us) = log_head(store).await?;
    Ok(read_model
        .states()
        .await?
        .iter()
        .map(|state| state.status(head, head_recorded_at_us))
        .collect())
}
