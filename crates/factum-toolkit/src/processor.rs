//! Event processors: handlers of committed events with retries and dead letters.

use factum_core::IntoStore;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::backend::{claim_unless_stopped, until_stopped_or_lost};
use factum_core::{
    Claim, Direction, EventStore, NewEvent, RecordedEvent, StoreError, StreamName,
    SubscriptionFilter,
};
use tokio::sync::watch;

use uuid::Uuid;

use crate::dead_letters::{
    DEAD_LETTERED, DeadLetter, DeadLetters, ReplayReport, dead_letter_stream,
};

/// What a handler returns when it fails.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Reacts to events. Handlers only ever see committed events.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    /// A stable name: dead letters name the handler that failed, and replay finds it by name.
    fn name(&self) -> &str;
    /// Handles one event.
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError>;
}

struct FnHandler<F> {
    name: String,
    f: F,
}

#[async_trait::async_trait]
impl<F, Fut> EventHandler for FnHandler<F>
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn name(&self) -> &str {
        &self.name
    }
    async fn handle(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        (self.f)(event.clone()).await
    }
}

/// A handler from a name and an async function of the event.
pub fn handler_fn<F, Fut>(name: impl Into<String>, f: F) -> Arc<dyn EventHandler>
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(FnHandler {
        name: name.into(),
        f,
    })
}

/// How failures are retried before an event is parked.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay after the first failure.
    pub initial_delay: Duration,
    /// Each further delay is this many times the previous one...
    pub multiplier: f64,
    /// ...up to this.
    pub max_delay: Duration,
    /// Waits a random time between half the delay and the delay, so that many failing
    /// handlers do not retry in step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// Three attempts, 100 ms then 200 ms apart (with jitter).
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `failed` (1-based).
    pub fn delay(&self, failed: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1.0)
            .powi(failed.saturating_sub(1) as i32);
        let base = self.initial_delay.mul_f64(factor).min(self.max_delay);
        if self.jitter {
            base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
        } else {
            base
        }
    }
}

/// Counts of what a processor did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessorStats {
    /// Events taken from the log (after the filter).
    pub events: u64,
    /// Handler calls that failed (each retry counts).
    pub failures: u64,
    /// Events parked in the dead-letter stream (one per failing handler).
    pub dead_lettered: u64,
    /// The last position processed.
    pub position: Option<u64>,
}

/// Builds an [`EventProcessor`].
pub struct EventProcessorBuilder {
    name: String,
    store: Arc<dyn EventStore>,
    filter: SubscriptionFilter,
    handlers: Vec<(Option<String>, Arc<dyn EventHandler>)>,
    retry: RetryPolicy,
    checkpoint_every_events: u64,
    checkpoint_interval: Duration,
}

impl EventProcessorBuilder {
    /// Calls `handler` for every event of type `event_type`.
    pub fn on(mut self, event_type: impl Into<String>, handler: Arc<dyn EventHandler>) -> Self {
        self.handlers.push((Some(event_type.into()), handler));
        self
    }

    /// Calls `handler` for every event that passes the filter.
    pub fn on_any(mut self, handler: Arc<dyn EventHandler>) -> Self {
        self.handlers.push((None, handler));
        self
    }

    /// Takes only events of streams starting with one of these prefixes.
    pub fn stream_prefixes(
        mut self,
        prefixes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.filter.stream_prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// How failures are retried.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Saves the checkpoint after this many events or this much time, whichever comes first
    /// (and when the processor stops). After a crash, events since the last checkpoint are
    /// handled again: make effects idempotent (see [`crate::Inbox`]).
    pub fn checkpoint_every(mut self, events: u64, interval: Duration) -> Self {
        self.checkpoint_every_events = events.max(1);
        self.checkpoint_interval = interval;
        self
    }

    /// The processor.
    pub fn build(self) -> Result<EventProcessor, StoreError> {
        dead_letter_stream(&self.name)?;
        StreamName::checkpoint_stream(&self.name)?;
        let mut filter = self.filter;
        filter.exclude_system = true;
        // Only the types some handler wants, unless one wants everything.
        if self.handlers.iter().all(|(t, _)| t.is_some()) {
            filter.event_types = self
                .handlers
                .iter()
                .filter_map(|(t, _)| t.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
        }
        Ok(EventProcessor {
            inner: Arc::new(Inner {
                name: self.name,
                store: self.store,
                filter,
                handlers: self.handlers,
                retry: self.retry,
                checkpoint_every_events: self.checkpoint_every_events,
                checkpoint_interval: self.checkpoint_interval,
                standby: watch::channel(false).0,
            }),
        })
    }
}

struct Inner {
    name: String,
    store: Arc<dyn EventStore>,
    filter: SubscriptionFilter,
    handlers: Vec<(Option<String>, Arc<dyn EventHandler>)>,
    retry: RetryPolicy,
    checkpoint_every_events: u64,
    checkpoint_interval: Duration,
    /// Whether `run` waits while another runner holds the processor's name.
    standby: watch::Sender<bool>,
}

/// Follows `$all` and hands events to its handlers (see the module documentation).
///
/// Event processors: follow `$all` from a durable checkpoint and hand each committed event to
/// the handlers registered for its type. Handlers of one event run side by side, so one that
/// fails (and is retried with exponential backoff and jitter) holds up none of the others;
/// events are taken in log order, so each stream's order is kept. An event a handler still
/// fails after its last attempt is parked in the dead-letter stream `$deadletter-{processor}`
/// with the error and its position, where it can be listed and replayed.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use factum::{EventProcessor, EventStore, ExpectedState, MemoryStore, NewEvent, RetryPolicy,
///              StreamName, handler_fn};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
/// let cancelled = NewEvent::json("OrderCancelled", &serde_json::json!({"amount": 10})).unwrap();
/// store.append(&StreamName::user("order-1").unwrap(), ExpectedState::Any, vec![cancelled])
///     .await.unwrap();
///
/// let calls = Arc::new(AtomicU32::new(0));
/// let refund_calls = calls.clone();
/// let processor = EventProcessor::builder("cancellations", store.clone())
///     // Fails twice, then succeeds: retried with backoff.
///     .on("OrderCancelled", handler_fn("refund", move |_event| {
///         let n = refund_calls.fetch_add(1, Ordering::SeqCst);
///         async move { if n < 2 { Err("gateway down".into()) } else { Ok(()) } }
///     }))
///     // Always fails: parked as a dead letter, without holding up the refund.
///     .on("OrderCancelled", handler_fn("notify", |_event| async {
///         Err("mail server down".into())
///     }))
///     .retry(RetryPolicy { attempts: 3, initial_delay: Duration::from_millis(1),
///                          ..RetryPolicy::default() })
///     .build()
///     .unwrap();
///
/// let stats = processor.run_until(store.head()).await.unwrap();
/// assert_eq!((stats.events, stats.dead_lettered), (1, 1));
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// let parked = processor.dead_letters().await.unwrap();
/// assert_eq!(parked[0].handler, "notify");
/// assert_eq!(store.read_checkpoint("cancellations").await.unwrap(), Some(0));
/// # });
/// ```
#[derive(Clone)]
pub struct EventProcessor {
    inner: Arc<Inner>,
}

type Shutdown<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl EventProcessor {
    /// A builder for a processor named `name` (its checkpoint and dead letters are kept
    /// under this name).
    pub fn builder(name: impl Into<String>, store: impl IntoStore) -> EventProcessorBuilder {
        EventProcessorBuilder {
            name: name.into(),
            store: store.into_store(),
            filter: SubscriptionFilter::default(),
            handlers: Vec::new(),
            retry: RetryPolicy::default(),
            checkpoint_every_events: 10_000,
            checkpoint_interval: Duration::from_secs(1),
        }
    }

    /// The processor's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether [`EventProcessor::run`] waits while another runner (another replica of the
    /// service) holds the processor's name: `false` while this copy works, or is not running.
    pub fn standby(&self) -> watch::Receiver<bool> {
        self.inner.standby.subscribe()
    }

    /// Processes the log from the checkpoint, then new events as they are committed, until
    /// `shutdown` completes; saves the checkpoint before returning. Replays the dead letters
    /// first when `factum deadletters replay` asked for it.
    ///
    /// The processor first claims its name ([`EventStore::claim`]): where several replicas of
    /// a service run it, one processes while the others wait, and one of them takes over when
    /// it stops, crashes or loses its claim (its PostgreSQL connection failed). A processor
    /// that loses its claim stops handling events, leaves the checkpoint to the next holder
    /// and waits to claim the name again.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<ProcessorStats, StoreError> {
        let mut shutdown: Shutdown<'_> = Box::pin(shutdown);
        let mut stats = ProcessorStats::default();
        loop {
            let name = &self.inner.name;
            let waiting = || {
                tracing::info!(processor = %name,
                    "another runner holds this processor's name; waiting to take over");
                self.inner.standby.send_replace(true);
            };
            let store = self.inner.store.as_ref();
            let claimed = claim_unless_stopped(store, name, shutdown.as_mut(), waiting).await;
            self.inner.standby.send_replace(false);
            let Some(claim) = claimed? else {
                return Ok(stats);
            };
            let mut stopped = false;
            let stop = until_stopped_or_lost(shutdown.as_mut(), &claim, &mut stopped);
            self.replay_if_requested().await?;
            let run = self.process(None, Some(Box::pin(stop)), &claim).await?;
            stats.events += run.events;
            stats.failures += run.failures;
            stats.dead_lettered += run.dead_lettered;
            stats.position = run.position.or(stats.position);
            if stopped || !claim.is_lost() {
                return Ok(stats);
            }
            tracing::warn!(processor = %self.inner.name,
                "the processor's claim was lost; waiting to take it again");
        }
    }

    /// Processes every event below `end` (for instance the head when called), saves the
    /// checkpoint, and returns. Fails with [`StoreError::Claimed`] while another runner holds
    /// the processor's name (see [`EventProcessor::run`]).
    pub async fn run_until(&self, end: u64) -> Result<ProcessorStats, StoreError> {
        let claim = self.claim_now().await?;
        self.process(Some(end), None, &claim).await
    }

    /// The processor's claim, or [`StoreError::Claimed`] while another runner holds it.
    async fn claim_now(&self) -> Result<Claim, StoreError> {
        self.inner
            .store
            .claim(&self.inner.name)
            .await?
            .ok_or_else(|| StoreError::Claimed(self.inner.name.clone()))
    }

    async fn process(
        &self,
        end: Option<u64>,
        mut shutdown: Option<Shutdown<'_>>,
        claim: &Claim,
    ) -> Result<ProcessorStats, StoreError> {
        let inner = &self.inner;
        let mut saved = inner.store.read_checkpoint(&inner.name).await?;
        let start = saved.map_or(0, |p| p + 1);
        let mut stats = ProcessorStats::default();
        let mut subscription = inner.store.subscribe_all(start, inner.filter.clone());
        let mut since_checkpoint = 0u64;
        let mut last_checkpoint = Instant::now();
        loop {
            let event = if let Some(signal) = shutdown.as_mut() {
                tokio::select! {
                    event = subscription.next() => event?,
                    _ = signal => break,
                }
            } else {
                let end = end.unwrap_or(u64::MAX);
                if subscription.position().is_some_and(|p| p >= end) {
                    break;
                }
                // The filter may skip everything left below `end`; look again shortly.
                // `next` is safe to cancel: nothing is lost when the timer wins.
                tokio::select! {
                    event = subscription.next() => event?,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                }
            };
            if end.is_some_and(|end| event.position >= end) {
                break;
            }
            self.handle(&event, &mut stats).await?;
            stats.events += 1;
            stats.position = Some(event.position);
            since_checkpoint += 1;
            if since_checkpoint >= inner.checkpoint_every_events
                || last_checkpoint.elapsed() >= inner.checkpoint_interval
            {
                self.checkpoint(&mut saved, event.position).await?;
                since_checkpoint = 0;
                last_checkpoint = Instant::now();
            }
        }
        // Another runner may hold the claim now: the checkpoint is its to move.
        if claim.is_lost() {
            return Ok(stats);
        }
        // Everything looked at is done, handled or filtered out.
        let looked_at = subscription
            .position()
            .map(|p| end.map_or(p, |end| p.min(end)))
            .and_then(|p| p.checked_sub(1));
        if let Some(position) = looked_at.max(stats.position) {
            self.checkpoint(&mut saved, position).await?;
        }
        Ok(stats)
    }

    async fn checkpoint(&self, saved: &mut Option<u64>, position: u64) -> Result<(), StoreError> {
        if saved.is_none_or(|saved| position > saved) {
            self.inner
                .store
                .save_checkpoint(&self.inner.name, position)
                .await?;
            *saved = Some(position);
        }
        Ok(())
    }

    fn handlers_for<'a>(
        &'a self,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a Arc<dyn EventHandler>> {
        self.inner
            .handlers
            .iter()
            .filter(move |(t, _)| t.as_deref().is_none_or(|t| t == event_type))
            .map(|(_, handler)| handler)
    }

    /// Runs every handler of the event side by side, each with its retries; parks the event
    /// for each handler that still fails.
    async fn handle(
        &self,
        event: &RecordedEvent,
        stats: &mut ProcessorStats,
    ) -> Result<(), StoreError> {
        let runs = self
            .handlers_for(&event.event_type)
            .map(|handler| async move {
                let (outcome, failures) = self.attempt(handler.as_ref(), event).await;
                (handler, outcome, failures)
            });
        for (handler, outcome, failures) in futures::future::join_all(runs).await {
            stats.failures += failures;
            if let Err((error, attempts)) = outcome {
                self.park(event, handler.name(), &error, attempts).await?;
                stats.dead_lettered += 1;
            }
        }
        Ok(())
    }

    /// Calls a handler until it succeeds or the attempts are used up; returns the outcome
    /// and how many calls failed.
    async fn attempt(
        &self,
        handler: &dyn EventHandler,
        event: &RecordedEvent,
    ) -> (Result<(), (String, u32)>, u64) {
        use tracing::Instrument as _;
        let policy = &self.inner.retry;
        let mut failed = 0u32;
        // The handling is a span in the trace the event was recorded in.
        let span = tracing::info_span!(
            "event",
            processor = %self.inner.name,
            handler = handler.name(),
            position = event.position,
        );
        crate::trace::enter_trace(&span, crate::trace::recorded_in(event).as_deref());
        loop {
            match handler.handle(event).instrument(span.clone()).await {
                Ok(()) => return (Ok(()), u64::from(failed)),
                Err(error) => {
                    failed += 1;
                    tracing::warn!(
                        processor = %self.inner.name,
                        handler = handler.name(),
                        position = event.position,
                        attempt = failed,
                        %error,
                        "handler failed"
                    );
                    if failed >= policy.attempts.max(1) {
                        return (Err((error.to_string(), failed)), u64::from(failed));
                    }
                    tokio::time::sleep(policy.delay(failed)).await;
                }
            }
        }
    }

    async fn park(
        &self,
        event: &RecordedEvent,
        handler: &str,
        error: &str,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let letter = DeadLetter {
            id: Uuid::nil(),
            processor: self.inner.name.clone(),
            handler: handler.to_owned(),
            error: error.to_owned(),
            attempts,
            position: event.position,
            stream: event.stream.to_string(),
            revision: event.revision,
            event_id: event.id,
            event_type: event.event_type.clone(),
        };
        let record =
            NewEvent::json(DEAD_LETTERED, &letter)?.with_metadata(&event.metadata_json())?;
        self.letters()?.park(record).await
    }

    fn letters(&self) -> Result<DeadLetters<'_>, StoreError> {
        DeadLetters::of(self.inner.store.as_ref(), &self.inner.name)
    }

    /// The dead letters no replay has resolved yet.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.letters()?.processor_letters().await
    }

    /// Hands every unresolved dead letter to its handler again (with the retry policy). Those
    /// that succeed are marked resolved; the others stay parked.
    ///
    /// Claims the processor's name for the replay, as [`EventProcessor::run_until`] does: fails
    /// with [`StoreError::Claimed`] while a runner (here or in another replica) holds it, so a
    /// letter is never handed to its handler by two at once. A running processor replays when
    /// asked through [`DeadLetters::request_replay`] (`factum deadletters replay`).
    pub async fn replay_dead_letters(&self) -> Result<ReplayReport, StoreError> {
        let _claim = self.claim_now().await?;
        self.replay().await
    }

    /// [`EventProcessor::replay_dead_letters`] by the holder of the processor's claim.
    async fn replay(&self) -> Result<ReplayReport, StoreError> {
        let mut report = ReplayReport::default();
        for letter in self.dead_letters().await? {
            let Some(event) = self
                .inner
                .store
                .read_all(letter.position, Direction::Forwards, 1)
                .await?
                .into_iter()
                .next()
                .filter(|e| e.id == letter.event_id)
            else {
                report.failed += 1;
                continue;
            };
            let Some(handler) = self
                .inner
                .handlers
                .iter()
                .map(|(_, h)| h)
                .find(|h| h.name() == letter.handler)
            else {
                report.failed += 1;
                continue;
            };
            match self.attempt(handler.as_ref(), &event).await.0 {
                Ok(()) => {
                    self.letters()?
                        .resolve(
                            letter.id,
                            serde_json::json!({"position": letter.position, "handler": letter.handler}),
                        )
                        .await?;
                    report.resolved += 1;
                }
                Err(_) => report.failed += 1,
            }
        }
        Ok(report)
    }

    /// Replays dead letters if the last replay request has not been answered yet.
    async fn replay_if_requested(&self) -> Result<(), StoreError> {
        let letters = self.letters()?;
        if letters.replay_requested().await? {
            let report = self.replay().await?;
            letters.answer_replay(&report).await?;
        }
        Ok(())
    }
}
