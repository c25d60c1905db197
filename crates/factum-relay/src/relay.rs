//! The relay: follows `$all` from a durable checkpoint and publishes what the translator lets
//! out, moving the checkpoint only after the broker has confirmed.

use factum_core::IntoStore;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use factum_core::backend::{claim_unless_stopped, until_stopped_or_lost};
use factum_core::{EventStore, RecordedEvent, StoreError, StreamName, SubscriptionFilter};
use tokio::sync::watch;

use crate::message::{OutboundMessage, Translator};
use crate::publisher::{Confirmation, Publisher};

/// Why a relay stopped. Broker failures never stop it (it retries them); a store that is
/// closed, or that refuses its checkpoint, does.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay's name cannot name a checkpoint.
    #[error("invalid relay: {0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a relay is: what it has published and how far behind the log it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// The last position whose events are all published (or filtered out), as stored.
    pub checkpoint: Option<u64>,
    /// The store's head when the status was last updated.
    pub head: u64,
    /// Messages the broker confirmed since the relay started (duplicates sent again after a
    /// failure count again).
    pub published: u64,
    /// Whether the last publish failed; cleared by the next success.
    pub last_error: Option<String>,
    /// Failed publishes since the relay started.
    pub failures: u64,
    /// Waiting while another runner holds the relay's name (see [`Relay::run`]).
    pub standby: bool,
    /// Times the relay lost its claim while it worked (its PostgreSQL connection failed).
    pub claims_lost: u64,
}

impl RelayStatus {
    /// Events in the log after the checkpoint.
    pub fn behind(&self) -> u64 {
        self.head
            .saturating_sub(self.checkpoint.map_or(0, |c| c + 1))
    }
}

/// How long a relay waits after a failed publish: doubling from `first` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after one of `delay`: twice as long, from `first` up to `max`.
    pub(crate) fn next(self, delay: Duration) -> Duration {
        (delay * 2).clamp(self.first, self.max)
    }
}

impl Default for Backoff {
    /// 100 ms, doubling up to 5 s.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// Builds a [`Relay`].
pub struct RelayBuilder {
    name: String,
    store: Arc<dyn EventStore>,
    translator: Option<Arc<dyn Translator>>,
    filter: SubscriptionFilter,
    batch: usize,
    in_flight: usize,
    backoff: Backoff,
}

impl RelayBuilder {
    /// What leaves, and in what form (required: nothing leaves without a translator).
    pub fn translator(mut self, translator: impl Translator + 'static) -> Self {
        self.translator = Some(Arc::new(translator));
        self
    }

    /// Only events of streams starting with one of these prefixes.
    pub fn stream_prefixes(
        mut self,
        prefixes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.filter.stream_prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Only events of these types (besides what the translator lets out).
    pub fn event_types(mut self, types: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.filter.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// At most this many messages per publish (default 1024).
    pub fn batch(mut self, messages: usize) -> Self {
        self.batch = messages.max(1);
        self
    }

    /// At most this many sends awaiting the broker's confirmation at once (default 8), for
    /// publishers that confirm after they return (RabbitMQ).
    pub fn in_flight(mut self, sends: usize) -> Self {
        self.in_flight = sends.max(1);
        self
    }

    /// The wait after a failed publish.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The relay.
    pub fn build(self) -> Result<Relay, RelayError> {
        StreamName::checkpoint_stream(&self.name)
            .map_err(|e| RelayError::Invalid(format!("name {:?}: {e}", self.name)))?;
        let translator = self.translator.ok_or_else(|| {
            RelayError::Invalid(format!("relay {:?} has no translator", self.name))
        })?;
        let mut filter = self.filter;
        filter.exclude_system = true;
        if filter.event_types.is_empty()
            && let Some(types) = translator.event_types()
        {
            filter.event_types = types;
        }
        let (status, _) = watch::channel(RelayStatus::default());
        Ok(Relay {
            name: self.name,
            store: self.store,
            translator,
            filter,
            batch: self.batch,
            in_flight: self.in_flight,
            backoff: self.backoff,
            status: Arc::new(status),
        })
    }
}

/// Follows `$all` from its checkpoint and publishes each event the translator lets out; see
/// the crate documentation for what it guarantees.
pub struct Relay {
    name: String,
    store: Arc<dyn EventStore>,
    translator: Arc<dyn Translator>,
    filter: SubscriptionFilter,
    batch: usize,
    in_flight: usize,
    backoff: Backoff,
    status: Arc<watch::Sender<RelayStatus>>,
}

/// How long the relay waits for an event before it records how far its filter has read.
const IDLE: Duration = Duration::from_secs(1);
/// ...and how many filtered-out events make that worth a write.
const IDLE_SAVE_GAP_POSITIONS: u64 = 1024;

impl Relay {
    /// A builder for the relay `name`. Its checkpoint is stored under that name, so
    /// `factum serve`'s `/processors`, `/metrics` and web UI show its lag beside the processors'.
    /// The name is thus shared with event processors and sagas' checkpoints: give a relay a name
    /// no processor in the same store has (while one of them runs, the other waits for the
    /// name, see [`Relay::run`]).
    pub fn builder(name: impl Into<String>, store: impl IntoStore) -> RelayBuilder {
        let store = store.into_store();
        RelayBuilder {
            name: name.into(),
            store,
            translator: None,
            filter: SubscriptionFilter::default(),
            batch: 1024,
            in_flight: 8,
            backoff: Backoff::default(),
        }
    }

    /// The relay's name (and its checkpoint's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Follows its status as it runs.
    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    /// Publishes from the checkpoint, then new events as they are committed, until `shutdown`
    /// completes. A failed publish is retried, from the checkpoint, after a backoff that
    /// doubles; the relay returns an error only when the store fails for good.
    ///
    /// The relay first claims its name ([`EventStore::claim`]): where several replicas of a
    /// service run it, one publishes while the others wait ([`RelayStatus::standby`]), and one
    /// of them takes over, from the checkpoint, when it stops, crashes or loses its claim (its
    /// PostgreSQL connection failed). Per-stream order holds across the change: the next
    /// holder starts after the last confirmed checkpoint.
    pub async fn run(
        &self,
        publisher: &mut dyn Publisher,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RelayError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let waiting = || {
                tracing::info!(relay = %self.name,
                    "another runner holds this relay's name; waiting to take over");
                self.status.send_modify(|s| s.standby = true);
            };
            let store = self.store.as_ref();
            let Some(claim) =
                claim_unless_stopped(store, &self.name, shutdown.as_mut(), waiting).await?
            else {
                return Ok(());
            };
            self.status.send_modify(|s| s.standby = false);
            let mut stopped = false;
            let stop = until_stopped_or_lost(shutdown.as_mut(), &claim, &mut stopped);
            self.run_claimed(publisher, stop).await?;
            if stopped || !claim.is_lost() {
                return Ok(());
            }
            tracing::warn!(relay = %self.name, "the relay's claim was lost; waiting to take it again");
            self.status.send_modify(|s| {
                s.standby = true;
                s.claims_lost += 1;
            });
        }
    }

    async fn run_claimed(
        &self,
        publisher: &mut dyn Publisher,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RelayError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut delay = Duration::ZERO;
        loop {
            match self.follow(publisher, shutdown.as_mut()).await? {
                Outcome::Stopped => return Ok(()),
                Outcome::Failed { error, progressed } => {
                    if progressed {
                        delay = Duration::ZERO;
                    }
                    delay = self.backoff.next(delay);
                    tracing::warn!(relay = %self.name, broker = publisher.broker(), %error,
                        "publish failed; again from the checkpoint in {delay:?}");
                    self.status.send_modify(|s| {
                        s.last_error = Some(error);
                        s.failures += 1;
                    });
                    tokio::select! {
                        () = shutdown.as_mut() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Follows the log from the checkpoint until shutdown or a failed publish.
    async fn follow(
        &self,
        publisher: &mut dyn Publisher,
        mut shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<Outcome, RelayError> {
        let mut checkpoint = retry_unavailable(|| self.store.read_checkpoint(&self.name)).await?;
        self.status.send_modify(|s| {
            s.checkpoint = checkpoint;
            s.head = self.store.head();
        });
        let mut subscription = self
            .store
            .subscribe_all(checkpoint.map_or(0, |c| c + 1), self.filter.clone())
            .with_batch_size(self.batch);
        // Sends whose confirmation is awaited, oldest first, with the position each covers.
        let mut in_flight: VecDeque<(Confirmation, u64, u64)> = VecDeque::new();
        let mut progressed = false;
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.as_mut() => return Ok(Outcome::Stopped),
                confirmed = async { (&mut in_flight.front_mut().expect("guarded").0).await },
                    if !in_flight.is_empty() =>
                {
                    let (_, position, count) = in_flight.pop_front().expect("guarded");
                    if let Err(e) = confirmed {
                        return Ok(Outcome::Failed { error: e.to_string(), progressed });
                    }
                    self.save(position).await?;
                    checkpoint = Some(position);
                    progressed = true;
                    self.status.send_modify(|s| {
                        s.checkpoint = checkpoint;
                        s.head = self.store.head();
                        s.published += count;
                        s.last_error = None;
                    });
                    continue;
                }
                event = subscription.next(), if in_flight.len() < self.in_flight => event?,
                () = tokio::time::sleep(IDLE), if in_flight.is_empty() => {
                    // Nothing passed the filter for a while: record how far it has read, if
                    // that saves a restart much reading. (Not for less: the checkpoint is
                    // itself an event the next wait would find.)
                    let read_to = subscription.position().and_then(|p| p.checked_sub(1));
                    if let Some(position) = read_to
                        && position > checkpoint.map_or(0, |c| c + IDLE_SAVE_GAP_POSITIONS)
                    {
                        self.save(position).await?;
                        checkpoint = Some(position);
                    }
                    continue;
                }
            };
            let mut events: Vec<RecordedEvent> = vec![first];
            while events.len() < self.batch {
                match subscription.next_buffered() {
                    Some(event) => events.push(event),
                    None => break,
                }
            }
            let messages: Vec<OutboundMessage> = events
                .iter()
                .filter_map(|event| {
                    self.translator
                        .translate(event)
                        .map(|external| OutboundMessage::new(event, external))
                })
                .collect();
            // Everything before the subscription's next position is sent or filtered out.
            let position = subscription
                .position()
                .and_then(|p| p.checked_sub(1))
                .unwrap_or_else(|| events.last().map_or(0, |e| e.position));
            let confirmation: Confirmation = if messages.is_empty() {
                Box::pin(std::future::ready(Ok(())))
            } else {
                let sent = tokio::select! {
                    biased;
                    () = shutdown.as_mut() => return Ok(Outcome::Stopped),
                    sent = publisher.send(&messages) => sent,
                };
                match sent {
                    Ok(confirmation) => confirmation,
                    Err(e) => {
                        return Ok(Outcome::Failed {
                            error: e.to_string(),
                            progressed,
                        });
                    }
                }
            };
            in_flight.push_back((confirmation, position, messages.len() as u64));
        }
    }

    async fn save(&self, position: u64) -> Result<(), RelayError> {
        retry_unavailable(|| self.store.save_checkpoint(&self.name, position)).await?;
        Ok(())
    }
}

enum Outcome {
    Stopped,
    /// A publish failed; `progressed` when earlier ones of this round succeeded (the backoff
    /// starts again from its first wait).
    Failed {
        error: String,
        progressed: bool,
    },
}

/// Runs `op` until it gives anything but [`StoreError::Unavailable`], waiting longer each time.
async fn retry_unavailable<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "store unavailable; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factum_core::MemoryStore;

    #[test]
    fn a_relay_needs_a_translator_and_a_name_that_can_name_a_checkpoint() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
        let no_translator = Relay::builder("out", store.clone()).build();
        assert!(
            matches!(&no_translator, Err(RelayError::Invalid(m)) if m.contains("no translator")),
            "{:?}",
            no_translator.err()
        );
        let bad_name = Relay::builder("", store.clone())
            .translator(crate::ZeroPayload)
            .build();
        assert!(matches!(bad_name, Err(RelayError::Invalid(_))));
        assert_eq!(store.head(), 0, "building a relay writes nothing");
    }
}
