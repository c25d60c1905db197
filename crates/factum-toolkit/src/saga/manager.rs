//! The saga manager: claims the saga's name, reads what a start must (the index), sends what
//! was stored and not sent, then follows `$all` in batches and fires deadlines.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use factum_core::IntoStore;
use factum_core::backend::{claim_unless_stopped, until_stopped_or_lost};
use factum_core::{
    AppendOptions, Checkpoint, Claim, EventStore, ExpectedState, NewEvent, RecordedEvent,
    StoreError, StreamName, SubscriptionFilter,
};
use futures::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::deadlines::Deadlines;
use super::index::IndexWrites;
use super::records::{
    Cause, Instance, Outcome, Pending, REJECTED, SENT, STEPPED, StoredDeadline, deadlines_after,
};
use super::{Saga, SagaDispatch, SagaError, SagaStatus, SagaStep, now_ms};
use crate::CommandContext;
use crate::bus::BusError;

/// Runs a [`Saga`] over a store: follows `$all` from its checkpoint, stores each step in the
/// instance's stream, sends the commands and fires the deadlines.
///
/// Every replica of a service may run the saga's manager: a manager claims the saga's name
/// ([`EventStore::claim`]) before it works, so one works while the others wait
/// ([`SagaStatus::standby`]) and one of them takes over when it stops, crashes, or loses its
/// claim (its PostgreSQL connection failed). Should two ever work at once (a claim lost while
/// its holder was still writing), the instance's expected revisions keep them from doing an
/// instance's work twice (a command both sent carries one id and is executed once), and a
/// manager that finds an instance's work done by the other sends what that left unsent and
/// keeps its deadlines; an index written meanwhile may still miss a deadline the other set in a
/// step this one has not come to yet.
///
///
/// The whole story, with an example, is on [`Saga`].
pub struct SagaManager<G: Saga> {
    pub(super) saga: G,
    pub(super) store: Arc<dyn EventStore>,
    pub(super) dispatch: SagaDispatch<G::Command>,
    pub(super) retry: Duration,
    pub(super) status: watch::Sender<SagaStatus>,
    /// Set when the manager stops in the middle of work: the work ends at its next step (a
    /// command not yet sent stays stored, to be sent by the next start).
    pub(super) stopping: watch::Sender<bool>,
    /// An index larger than this is not written (the one before stays in force).
    pub(super) index_bytes_max: usize,
}

/// Positions passed without a step before the checkpoint is saved on its own.
const SAVE_EVERY_POSITIONS: u64 = 1024;
/// Instance streams a starting manager reads at once.
const START_READS_STREAMS_MAX: usize = 32;
/// The most events of `$all` taken as one batch.
const BATCH_EVENTS_MAX: usize = 1024;
/// Instances of a batch taken at the same time.
const CONCURRENT_INSTANCES_MAX: usize = 64;
/// How many times an instance's work is tried again after its append met a revision it did
/// not expect (see [`retrying`]).
const CONFLICTS_MAX: u32 = 8;

impl<G: Saga> SagaManager<G> {
    /// A manager of `saga` over `store`, sending commands with `dispatch`.
    pub fn new<F, Fut>(saga: G, store: impl IntoStore, dispatch: F) -> Self
    where
        F: Fn(G::Command, CommandContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BusError>> + Send + 'static,
    {
        let (status, _) = watch::channel(SagaStatus::default());
        SagaManager {
            saga,
            store: store.into_store(),
            dispatch: Arc::new(move |command, context| Box::pin(dispatch(command, context))),
            retry: Duration::from_millis(200),
            status,
            stopping: watch::channel(false).0,
            index_bytes_max: factum_core::limits::EVENT_PAYLOAD_BYTES_MAX,
        }
    }

    /// For tests: the largest index written (by default the largest event, 16 MiB).
    #[doc(hidden)]
    pub fn with_index_bytes_max(mut self, bytes: usize) -> Self {
        self.index_bytes_max = bytes;
        self
    }

    /// The checkpoint's name: `saga-{NAME}`.
    pub fn checkpoint_name() -> String {
        format!("saga-{}", G::NAME)
    }

    /// The stream of instance `id`: `$saga-{NAME}-{id}`.
    pub fn instance_stream(id: &str) -> Result<StreamName, StoreError> {
        crate::toolkit_stream("saga", &format!("{}-{id}", G::NAME))
    }

    /// The stream of the saga's index: `$sagas-{NAME}`.
    pub fn index_stream() -> Result<StreamName, StoreError> {
        crate::toolkit_stream("sagas", G::NAME)
    }

    /// Follows what the manager does.
    pub fn status(&self) -> watch::Receiver<SagaStatus> {
        self.status.subscribe()
    }

    /// The state of instance `id` as stored (`None`: no such instance).
    pub async fn state(&self, id: &str) -> Result<Option<G::State>, SagaError> {
        let instance = self.load(id).await?;
        Ok(instance.revision.map(|_| instance.state))
    }

    fn expected(instance: &Instance<G::State>) -> ExpectedState {
        match instance.revision {
            None => ExpectedState::NoStream,
            Some(revision) => ExpectedState::Exact(revision),
        }
    }

    fn failed(&self, error: &str) {
        tracing::warn!(saga = G::NAME, %error, "saga failure; trying again");
        self.status.send_modify(|s| {
            s.failures += 1;
            s.last_error = Some(error.to_owned());
        });
    }

    /// Runs until `shutdown` completes: sends what earlier runs stored but did not send, then
    /// follows `$all` from the checkpoint and fires deadlines as they come due.
    ///
    /// Work under way when `shutdown` completes winds down (a command not sent yet stays
    /// stored, for the next start) and is waited for, so that nothing it started is written
    /// after `run` returns; the same holds when `run` returns an error. Stop a manager this way
    /// rather than by dropping or aborting its task when another may start in the same process.
    ///
    /// Before it works, the manager claims the saga's name; while another manager holds it,
    /// this one waits ([`SagaStatus::standby`]). If the claim is lost, the work under way winds
    /// down as at a stop, and the manager waits to claim the name again.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), SagaError> {
        tokio::pin!(shutdown);
        let name = Self::checkpoint_name();
        loop {
            let waiting = || {
                tracing::info!(
                    saga = G::NAME,
                    "another manager of this saga runs; waiting to take over"
                );
                self.status.send_modify(|s| s.standby = true);
            };
            let store = self.store.as_ref();
            let Some(claim) =
                claim_unless_stopped(store, &name, shutdown.as_mut(), waiting).await?
            else {
                return Ok(());
            };
            self.status.send_modify(|s| s.standby = false);
            let mut stopped = false;
            let stop = until_stopped_or_lost(shutdown.as_mut(), &claim, &mut stopped);
            self.run_claimed(stop, &claim).await?;
            if stopped || !claim.is_lost() {
                return Ok(());
            }
            tracing::warn!(
                saga = G::NAME,
                "the saga's claim was lost; waiting to take it again"
            );
            self.status.send_modify(|s| {
                s.standby = true;
                s.claims_lost += 1;
            });
        }
    }

    async fn run_claimed(
        &self,
        shutdown: impl Future<Output = ()>,
        claim: &Claim,
    ) -> Result<(), SagaError> {
        tokio::pin!(shutdown);
        self.stopping.send_replace(false);
        let mut deadlines = Deadlines::default();
        // The instances with commands stored but not sent, and those commands.
        let mut unsent: Vec<(String, Vec<Work>)> = Vec::new();
        // Instances are read many at a time (a store over the network answers each read in a
        // round trip), in name order.
        let (ids, index_as_of) = self.instances_to_load().await?;
        self.status.send_modify(|s| s.loaded_at_start = ids.len());
        let mut loading = futures::stream::iter(ids)
            .map(|id| async move {
                let instance = self.load(&id).await;
                (id, instance)
            })
            .buffered(START_READS_STREAMS_MAX);
        while let Some((id, instance)) = loading.next().await {
            let instance = instance?;
            if !instance.pending.is_empty() {
                let sends = instance.pending.into_iter().map(Work::Send).collect();
                unsent.push((id.clone(), sends));
            }
            deadlines.set(id, instance.deadlines);
        }
        drop(loading);
        let consumer = Self::checkpoint_name();
        let mut saved = self.store.read_checkpoint(&consumer).await?;
        self.status.send_modify(|s| s.checkpoint = saved);
        let start = saved.map_or(0, |p| p + 1);
        let mut subscription = self
            .store
            .subscribe_all(start, SubscriptionFilter::default());
        let mut last = saved;
        // When this start had to read instances written after the index, the first quiet point
        // after it writes a newer one (at the latest the stop), so that the next start need not
        // read them again.
        let mut index = IndexWrites {
            from: index_as_of,
            at: tokio::time::Instant::now(),
        };
        // The head of `$all` the last time no work was under way (no command stored and not
        // sent): every step stored since has a position at or after it.
        let mut quiet = None;
        loop {
            if !unsent.is_empty() {
                let round = self.work(std::mem::take(&mut unsent), None);
                match self.settle(round, shutdown.as_mut()).await? {
                    Some(worked) => deadlines.apply(worked.deadlines),
                    None => break,
                }
            }
            // No work is under way here.
            let head = self.store.head();
            quiet = Some(head);
            if index.due(head) {
                self.write_index(&deadlines, head, &mut index).await?;
            }
            let pending = deadlines.pending();
            self.status.send_modify(|s| s.deadlines_pending = pending);
            let wait = deadlines
                .next_due()
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms())));
            let sleep = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = sleep => {
                    // Every deadline due now, instances at the same time.
                    let due = by_instance(
                        deadlines
                            .pop_due(now_ms())
                            .into_iter()
                            .map(|(id, deadline)| (id, Work::Deadline(deadline))),
                    );
                    match self.settle(self.work(due, None), shutdown.as_mut()).await? {
                        Some(worked) => deadlines.apply(worked.deadlines),
                        None => break,
                    }
                }
                event = subscription.next() => {
                    let mut batch = vec![event?];
                    while batch.len() < BATCH_EVENTS_MAX {
                        match subscription.next_buffered() {
                            Some(event) => batch.push(event),
                            None => break,
                        }
                    }
                    let Some(position) = batch.last().map(|e| e.position) else {
                        continue;
                    };
                    let round = self.take_batch(batch, &consumer);
                    let Some(taken) = self.settle(round, shutdown.as_mut()).await? else {
                        break;
                    };
                    deadlines.apply(taken.worked.deadlines);
                    if taken.worked.stepped {
                        if !taken.saved {
                            self.save(&consumer, position).await?;
                        }
                        saved = Some(position);
                    } else if saved.is_none_or(|s| position >= s + SAVE_EVERY_POSITIONS) {
                        self.save(&consumer, position).await?;
                        saved = Some(position);
                    }
                    last = Some(position);
                    self.status.send_modify(|s| s.checkpoint = Some(position));
                }
            }
        }
        // Another manager may hold the claim now: what follows is its to write.
        if claim.is_lost() {
            return Ok(());
        }
        // What was passed over since the last save is not taken again.
        if let Some(position) = last
            && saved.is_none_or(|s| position > s)
        {
            self.save(&consumer, position).await?;
        }
        // Work cut short by the stop (and waited for) left `deadlines` as they were when it
        // began, and its steps come after `quiet`, where a start finds them.
        if let Some(from) = quiet
            && from > index.from
        {
            self.write_index(&deadlines, from, &mut index).await?;
        }
        Ok(())
    }

    /// Runs a round of work to its end. If `shutdown` comes first, the round is told to wind
    /// down and still waited for, so that nothing it started lands after the manager stopped
    /// (where the next start might not see it); then `None`.
    async fn settle<T>(
        &self,
        round: impl Future<Output = Result<T, SagaError>>,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<T>, SagaError> {
        tokio::pin!(round);
        tokio::select! {
            () = shutdown => {
                self.stopping.send_replace(true);
                if let Err(e) = round.await {
                    tracing::warn!(saga = G::NAME, error = %e, "work cut short by the stop failed");
                }
                Ok(None)
            }
            done = &mut round => done.map(Some),
        }
    }

    /// Saves the checkpoint on its own; one already further (a step stored with it) stays.
    async fn save(&self, consumer: &str, position: u64) -> Result<(), SagaError> {
        match self.store.save_checkpoint(consumer, position).await {
            Ok(_) | Err(StoreError::CheckpointBehind { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `step` of `instance` (with `options`, and `first` before it); returns what is
    /// left to do.
    async fn store_step(
        &self,
        id: &str,
        instance: &Instance<G::State>,
        cause: Cause,
        step: SagaStep<G::State, G::Command>,
        first: Option<NewEvent>,
        options: AppendOptions,
    ) -> Result<After, SagaError> {
        let stepped = self.stepped(id, cause, step)?;
        let deadlines = deadlines_after(&instance.deadlines, &stepped);
        let mut records: Vec<NewEvent> = first.into_iter().collect();
        records.push(NewEvent::json(STEPPED, &stepped)?);
        self.store
            .append_with(&instance.stream, Self::expected(instance), records, options)
            .await?;
        self.status.send_modify(|s| s.steps += 1);
        Ok(After {
            pending: stepped.pending(id).collect(),
            deadlines: Some((id.to_owned(), deadlines)),
        })
    }

    /// Takes a batch of `$all`'s events: the events of each instance in order, different
    /// instances at the same time. A batch with one event to take stores it with the
    /// checkpoint (the batch's last position); otherwise the caller saves the checkpoint once
    /// the whole batch is taken, and a restart in between skips what was taken by the position
    /// each step records.
    async fn take_batch(
        &self,
        batch: Vec<RecordedEvent>,
        consumer: &str,
    ) -> Result<BatchTaken, SagaError> {
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok(BatchTaken::default());
        };
        let instances = by_instance(batch.into_iter().filter_map(|event| {
            if event.stream.is_system() {
                return None;
            }
            let id = self.saga.correlate(&event)?;
            Some((id, Work::Event(event)))
        }));
        let alone = matches!(&instances[..], [(_, work)] if work.len() == 1);
        let checkpoint = alone.then(|| Checkpoint {
            consumer: consumer.to_owned(),
            position: last,
        });
        let worked = self.work(instances, checkpoint).await?;
        Ok(BatchTaken {
            saved: alone && worked.stepped,
            worked,
        })
    }

    /// Does the work of each instance, in order, up to [`CONCURRENT_INSTANCES_MAX`] instances at
    /// once; `checkpoint`, if given, is stored with an event's step.
    async fn work(
        &self,
        instances: Vec<(String, Vec<Work>)>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Worked, SagaError> {
        let mut working = futures::stream::iter(instances)
            .map(|(id, work)| self.work_instance(id, work, checkpoint.clone()))
            .buffer_unordered(CONCURRENT_INSTANCES_MAX);
        let mut worked = Worked::default();
        let mut failed = None;
        // On a failure the other instances wind down, and are waited for: nothing this round
        // started lands after the manager has stopped.
        while let Some(done) = working.next().await {
            match done {
                Ok(done) => {
                    worked.stepped |= done.stepped;
                    worked.deadlines.extend(done.deadlines);
                }
                Err(e) => {
                    self.stopping.send_replace(true);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(worked),
        }
    }

    /// Does the work of one instance `id`, in order; after each step, sends its commands (and
    /// those of any compensation they lead to). Returns whether an event caused a step, and
    /// the instance's deadlines after the last step.
    async fn work_instance(
        &self,
        id: String,
        work: Vec<Work>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Worked, SagaError> {
        let mut worked = Worked::default();
        let mut deadlines = None;
        for item in work {
            if *self.stopping.borrow() {
                break;
            }
            let after = match item {
                Work::Event(event) => {
                    let (id, event) = (&id, &event);
                    let taken = retrying(|| self.take(id, event, checkpoint.clone())).await?;
                    worked.stepped |= taken.stepped;
                    taken.after
                }
                Work::Deadline(deadline) => retrying(|| self.fire(&id, deadline)).await?,
                Work::Send(pending) => self.send(pending).await?,
            };
            let mut outbox: VecDeque<Pending> = after.pending.into();
            deadlines = after.deadlines.or(deadlines);
            while let Some(pending) = outbox.pop_front() {
                let after = self.send(pending).await?;
                outbox.extend(after.pending);
                deadlines = after.deadlines.or(deadlines);
            }
        }
        worked.deadlines.extend(deadlines);
        Ok(worked)
    }

    /// Takes one event of instance `id`: its step, stored with `checkpoint` if given. An event
    /// at or before the last one the instance took (stored by an earlier run whose checkpoint
    /// was not saved yet, or by another manager) is not taken again; what that left to do is
    /// (see [`adopted`]).
    async fn take(
        &self,
        id: &str,
        event: &RecordedEvent,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Taken, SagaError> {
        let instance = self.load(id).await?;
        if instance.done || instance.taken.is_some_and(|t| t >= event.position) {
            return Ok(Taken::not(adopted(id, instance)));
        }
        let Some(step) = self.saga.on_event(&instance.state, event) else {
            return Ok(Taken::not(After::nothing()));
        };
        let metadata = event.metadata_json();
        let text = |key: &str| metadata.get(key).and_then(|v| v.as_str());
        let cause = Cause {
            text: event.id.to_string(),
            correlation_id: text("$correlationId")
                .map_or_else(|| event.id.to_string(), str::to_owned),
            fired: None,
            position: Some(event.position),
            traceparent: text(crate::TRACEPARENT_KEY).map(str::to_owned),
        };
        let options = AppendOptions { checkpoint };
        match self
            .store_step(id, &instance, cause, step, None, options)
            .await
        {
            Ok(after) => Ok(Taken {
                after,
                stepped: true,
            }),
            // Taken before, by a run whose checkpoint was not read back.
            Err(SagaError::Store(StoreError::CheckpointBehind { .. })) => {
                Ok(Taken::not(After::nothing()))
            }
            Err(e) => Err(e),
        }
    }

    /// Fires deadline `deadline` of instance `id`, if it is still pending (if not, what the
    /// store holds is what waits, see [`adopted`]).
    async fn fire(&self, id: &str, deadline: Uuid) -> Result<After, SagaError> {
        let instance = self.load(id).await?;
        let Some(found) = instance.deadlines.iter().find(|d| d.id == deadline) else {
            return Ok(adopted(id, instance));
        };
        let step = self
            .saga
            .on_deadline(&instance.state, &found.name, id)
            .unwrap_or_else(|| SagaStep::to(instance.state.clone()));
        let cause = Cause {
            text: format!("deadline:{deadline}"),
            correlation_id: instance.correlation_id.clone(),
            fired: Some(deadline),
            position: None,
            traceparent: None,
        };
        let after = self
            .store_step(id, &instance, cause, step, None, AppendOptions::default())
            .await?;
        self.status.send_modify(|s| s.deadlines_fired += 1);
        Ok(after)
    }

    /// Sends one stored command until the bus accepts or refuses it; records which. A refusal
    /// is handed to [`Saga::on_rejected`], whose step is stored with the record of it.
    async fn send(&self, pending: Pending) -> Result<After, SagaError> {
        let command: G::Command =
            serde_json::from_value(pending.command.clone()).map_err(Self::decode_error)?;
        let context = CommandContext {
            command_id: pending.id,
            correlation_id: pending.correlation_id.clone(),
            causation_id: pending.cause.clone(),
            user: None,
            traceparent: pending.traceparent.clone(),
            idempotent: true,
        };
        if *self.stopping.borrow() {
            return Ok(After::nothing());
        }
        let mut stopping = self.stopping.subscribe();
        let mut delay = self.retry;
        let refused = loop {
            match (self.dispatch)(command.clone(), context.clone()).await {
                Ok(()) => break None,
                Err(BusError::Failed(reason)) => {
                    self.failed(&format!("sending {command:?}: {reason}"));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stopping.wait_for(|stop| *stop) => return Ok(After::nothing()),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(refused) => break Some(refused.to_string()),
            }
        };
        retrying(|| self.record(&pending, &command, refused.clone())).await
    }

    /// Records what became of a sent command: sent, or refused (with the compensation
    /// [`Saga::on_rejected`] asks for) — unless the instance no longer waits for it.
    async fn record(
        &self,
        pending: &Pending,
        command: &G::Command,
        refused: Option<String>,
    ) -> Result<After, SagaError> {
        let instance = self.load(&pending.instance).await?;
        if !instance.pending.iter().any(|p| p.id == pending.id) {
            return Ok(adopted(&pending.instance, instance));
        }
        let outcome = Outcome {
            command_id: pending.id,
            reason: refused.clone(),
        };
        let Some(reason) = refused else {
            let record = NewEvent::json(SENT, &outcome)?;
            self.store
                .append(&instance.stream, Self::expected(&instance), vec![record])
                .await?;
            self.status.send_modify(|s| s.commands_sent += 1);
            return Ok(After::nothing());
        };
        tracing::info!(saga = G::NAME, instance = %pending.instance, ?command, %reason, "command refused; compensating");
        let record = NewEvent::json(REJECTED, &outcome)?;
        let after = match self.saga.on_rejected(&instance.state, command, &reason) {
            Some(step) => {
                let cause = Cause {
                    text: format!("rejected:{}", pending.id),
                    correlation_id: instance.correlation_id.clone(),
                    fired: None,
                    position: None,
                    traceparent: pending.traceparent.clone(),
                };
                self.store_step(
                    &pending.instance,
                    &instance,
                    cause,
                    step,
                    Some(record),
                    AppendOptions::default(),
                )
                .await?
            }
            None => {
                self.store
                    .append(&instance.stream, Self::expected(&instance), vec![record])
                    .await?;
                After::nothing()
            }
        };
        // Counted once the refusal is stored, like every other figure here.
        self.status.send_modify(|s| s.commands_rejected += 1);
        Ok(after)
    }
}

/// `work` grouped by instance: each instance's in the order given, instances in the order they
/// first appear.
fn by_instance(work: impl IntoIterator<Item = (String, Work)>) -> Vec<(String, Vec<Work>)> {
    let mut order: HashMap<String, usize> = HashMap::new();
    let mut instances: Vec<(String, Vec<Work>)> = Vec::new();
    for (id, item) in work {
        match order.get(&id) {
            Some(&at) => instances[at].1.push(item),
            None => {
                order.insert(id.clone(), instances.len());
                instances.push((id, vec![item]));
            }
        }
    }
    instances
}

/// Runs `attempt` again when an instance's append met a revision it did not expect — an append
/// of an earlier run of the manager, cut short by its stop, that landed later, or one of another
/// manager — each attempt reading the instance again, at most [`CONFLICTS_MAX`] times more.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, SagaError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SagaError>>,
{
    let mut conflicts = 0;
    loop {
        match attempt().await {
            Err(SagaError::Store(StoreError::WrongExpectedRevision { .. }))
                if conflicts < CONFLICTS_MAX =>
            {
                conflicts += 1;
            }
            other => return other,
        }
    }
}

/// What is left to do on an instance whose work was done already — by another manager (found
/// after a conflict, or ahead of this one), or by an earlier run of this one: the commands
/// stored and not recorded as sent, which this manager sends too (their ids make a command sent
/// twice execute once, and only one record of it is stored), and the deadlines the instance
/// has now. So nothing another writer stored is missed by this manager, or by the index it
/// writes, should that writer stop before sending.
fn adopted<S>(id: &str, instance: Instance<S>) -> After {
    After {
        pending: instance.pending,
        deadlines: Some((id.to_owned(), instance.deadlines)),
    }
}

/// What taking a batch of events did.
#[derive(Default)]
struct BatchTaken {
    worked: Worked,
    /// The checkpoint was stored with the batch's step.
    saved: bool,
}

/// One thing an instance does, in its order.
enum Work {
    /// Take an event of `$all`.
    Event(RecordedEvent),
    /// Fire a deadline that came.
    Deadline(Uuid),
    /// Send a command stored but not sent.
    Send(Pending),
}

/// What the instances of a [`SagaManager::work`] did.
#[derive(Default)]
struct Worked {
    /// An event caused a step.
    stepped: bool,
    /// The deadlines of the instances worked on, as they are now.
    deadlines: Vec<(String, Vec<StoredDeadline>)>,
}

/// What taking an event did: whether it stored a step (with the checkpoint, when one was
/// given), and what is left to do.
struct Taken {
    after: After,
    stepped: bool,
}

impl Taken {
    /// No step stored; `after` is what is left to do anyway.
    fn not(after: After) -> Self {
        Taken {
            after,
            stepped: false,
        }
    }
}

/// What storing a step left to do: commands to send, and the instance's deadlines now.
struct After {
    pending: Vec<Pending>,
    deadlines: Option<(String, Vec<StoredDeadline>)>,
}

impl After {
    fn nothing() -> Self {
        After {
            pending: Vec::new(),
            deadlines: None,
        }
    }
}
