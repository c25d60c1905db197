use factum_core::IntoStore;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use factum_core::{Direction, EventStore, ExpectedState, StoreError, StreamName};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::{BusError, Command, Envelope};
use crate::personal::Keys;
use crate::replay::StreamPages;
use crate::snapshot::{SnapshotPolicy, Snapshots};
use crate::{CodecError, CommandContext, Decider, EventCodec};

/// A command for the aggregate with this id: what the bus carries to a repository's handler
/// ([`Repository::handler`]).
pub struct ToAggregate<D: Decider> {
    /// The aggregate's id.
    pub id: String,
    /// The command.
    pub command: D::Command,
}

impl<D: Decider> ToAggregate<D> {
    /// The command `command` for aggregate `id`.
    pub fn new(id: impl Into<String>, command: D::Command) -> Self {
        ToAggregate {
            id: id.into(),
            command,
        }
    }
}

impl<D: Decider> Command for ToAggregate<D> {
    type Output = Executed<D::Event>;

    fn name() -> &'static str {
        D::CATEGORY
    }
}

/// Why a command could not be executed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The decider refused the command; nothing was written.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// Other writers kept changing the stream between load and append, every attempt.
    #[error("stream '{stream}' kept changing under the command: gave up after {attempts} attempts")]
    Conflict {
        /// The contended stream.
        stream: String,
        /// How many times the command was decided.
        attempts: usize,
    },
    /// The aggregate id does not make a valid stream name.
    #[error("invalid aggregate id: {0}")]
    InvalidId(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event did not encode or decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// An aggregate's state as loaded, and the revision it was loaded at (`None`: no events yet).
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<S> {
    /// The state.
    pub state: S,
    /// The revision of the last event folded in.
    pub revision: Option<u64>,
    /// The revision of the snapshot the load started from (`None`: replayed from the start).
    pub snapshot: Option<u64>,
    /// How many events were read and folded (after the snapshot, if one was used).
    pub replayed: u64,
}

/// What executing a command did.
#[derive(Clone, Debug, PartialEq)]
pub struct Executed<E> {
    /// The events the command produced (and that were stored).
    pub events: Vec<E>,
    /// The stream's revision afterwards (`None`: the stream still has no events).
    pub revision: Option<u64>,
    /// Position of the last stored event, for read-your-writes (`None` when nothing was stored).
    pub position: Option<u64>,
    /// How many times the command was decided (more than one after concurrency conflicts).
    pub attempts: usize,
    /// The command's id was executed on this aggregate before (an idempotent
    /// [`CommandContext`] delivered again): nothing was decided or written, and `revision`
    /// is the aggregate's current one.
    pub duplicate: bool,
}

/// A load as a command sees it.
struct LoadedStream<S> {
    loaded: Loaded<S>,
    /// The command being executed produced some of the events.
    duplicate: bool,
    /// When the snapshot the load started from was recorded, or else the first event folded
    /// (µs since the Unix epoch).
    since_us: Option<u64>,
}

/// How far back before a snapshot an idempotent command looks for its own earlier events.
pub const DUPLICATE_WINDOW_EVENTS: usize = 1000;

/// Whether `event` was produced by the command whose id is `id` (as text).
fn produced_by(event: &factum_core::RecordedEvent, id: &str) -> bool {
    // A cheap look for the id's text first; only a hit is parsed.
    if !event.metadata.windows(id.len()).any(|w| w == id.as_bytes()) {
        return false;
    }
    event
        .metadata_json()
        .get("$commandId")
        .and_then(|v| v.as_str())
        == Some(id)
}

/// Loads aggregates and executes commands against them: load, decide, append with the loaded
/// revision as the expected one; on a conflict, load again and decide again, a bounded number
/// of times.
///
/// Commands to one aggregate through one repository run one after another (the others wait),
/// so commands sent at the same time from one process — by sagas, consumers, HTTP handlers —
/// are not decided on a state another is about to change; only writers elsewhere cause
/// conflicts. Commands to different aggregates do not wait for each other.
pub struct Repository<D: Decider> {
    store: Arc<dyn EventStore>,
    decider: D,
    codec: EventCodec<D>,
    attempts_max: usize,
    snapshots: Option<Snapshots<D::State>>,
    locks: AggregateLocks,
}

/// A lock for each aggregate with a command under way.
#[derive(Default)]
struct AggregateLocks {
    held: parking_lot::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl AggregateLocks {
    /// Waits for the commands under way on `stream`, then holds it until the guard drops.
    async fn lock(&self, stream: &StreamName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut held = self.held.lock();
            match held.get(stream.as_str()).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    // Locks nobody holds any more are dropped as the map doubles.
                    if held.len() >= 1024 && held.len().is_power_of_two() {
                        held.retain(|_, lock| lock.strong_count() > 0);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    held.insert(stream.as_str().to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

impl<D: Decider> Repository<D> {
    /// A repository over a store; a conflicting command is decided at most 5 times.
    pub fn new(store: impl IntoStore, decider: D) -> Self {
        let codec = EventCodec::new(&decider);
        Repository {
            store: store.into_store(),
            decider,
            codec,
            attempts_max: 5,
            snapshots: None,
            locks: AggregateLocks::default(),
        }
    }

    /// Decides a conflicting command at most this many times.
    pub fn with_attempts_max(mut self, attempts: usize) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }

    /// Saves a snapshot of the state once `every` events were folded since the last one (or
    /// since the start), and loads from the newest snapshot plus the events after it.
    ///
    /// Snapshots live in `$snapshot-<stream>` in the same store, tagged with
    /// [`Decider::state_version`]; a snapshot of another version, or one that no longer decodes
    /// or no longer matches its stream, is ignored and the stream is replayed. Saving happens
    /// after a command's events are durable; if it fails, the command still succeeded and the
    /// failure is logged.
    ///
    /// A snapshot holds the effect of every event up to its revision, so an aggregate stream
    /// whose old events are hidden by `truncate_before`, `max_count` or `max_age` metadata is
    /// loaded from the snapshot as if they were still there.
    ///
    /// ```
    /// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
    /// use factum::{CommandContext, Decider, MemoryStore, Repository};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)]
    /// # enum Event { Incremented }
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("never")]
    /// # struct Never;
    /// struct Counter;
    /// impl Decider for Counter {
    ///     type State = u64; // serde, so that it can be snapshotted
    ///     # type Command = ();
    ///     # type Event = Event;
    ///     # type Error = Never;
    ///     # const CATEGORY: &'static str = "counter";
    ///     # fn initial_state(&self) -> u64 { 0 }
    ///     # fn decide(&self, _: &u64, _: &()) -> Result<Vec<Event>, Never> { Ok(vec![Event::Incremented]) }
    ///     # fn evolve(&self, n: u64, _: &Event) -> u64 { n + 1 }
    ///     // ...
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let counters = Repository::new(MemoryStore::new(), Counter).with_snapshots(10);
    /// for _ in 0..25 {
    ///     counters.execute("c-1", (), &CommandContext::new()).await.unwrap();
    /// }
    /// let loaded = counters.load("c-1").await.unwrap();
    /// assert_eq!(loaded.state, 25);
    /// assert_eq!(loaded.snapshot, Some(19)); // saved after the 20th event
    /// assert_eq!(loaded.replayed, 5);
    /// # });
    /// ```
    pub fn with_snapshots(self, every: u64) -> Self
    where
        D::State: Serialize + DeserializeOwned,
    {
        self.with_snapshot_policy(SnapshotPolicy::every_events(every))
    }

    /// Snapshots as [`Repository::with_snapshots`] describes, saved when `policy` says: every
    /// N events, once the newest snapshot is old enough, or both.
    ///
    /// ```
    /// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
    /// use std::time::Duration;
    /// use factum::SnapshotPolicy;
    /// use factum::{CommandContext, Decider, MemoryStore, Repository};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)]
    /// # enum Event { Incremented }
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("never")]
    /// # struct Never;
    /// # struct Counter;
    /// # impl Decider for Counter {
    /// #     type State = u64;
    /// #     type Command = ();
    /// #     type Event = Event;
    /// #     type Error = Never;
    /// #     const CATEGORY: &'static str = "counter";
    /// #     fn initial_state(&self) -> u64 { 0 }
    /// #     fn decide(&self, _: &u64, _: &()) -> Result<Vec<Event>, Never> { Ok(vec![Event::Incremented]) }
    /// #     fn evolve(&self, n: u64, _: &Event) -> u64 { n + 1 }
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let policy = SnapshotPolicy::every_events(1000).or_every(Duration::from_millis(20));
    /// let counters = Repository::new(MemoryStore::new(), Counter).with_snapshot_policy(policy);
    /// counters.execute("c-1", (), &CommandContext::new()).await.unwrap();
    /// tokio::time::sleep(Duration::from_millis(30)).await;
    /// counters.execute("c-1", (), &CommandContext::new()).await.unwrap();
    /// // The first event was over 20 ms old: the second command saved a snapshot.
    /// assert_eq!(counters.load("c-1").await.unwrap().snapshot, Some(1));
    /// # });
    /// ```
    pub fn with_snapshot_policy(mut self, policy: SnapshotPolicy) -> Self
    where
        D::State: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            policy,
            version: self.decider.state_version(),
            encode: |state| serde_json::to_vec(state),
            decode: |bytes| serde_json::from_slice(bytes),
        });
        self
    }

    /// The decider.
    pub fn decider(&self) -> &D {
        &self.decider
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The stream of aggregate `id`: `{CATEGORY}-{id}`.
    pub fn stream(&self, id: &str) -> Result<StreamName, RepositoryError<D::Error>> {
        if id.is_empty() {
            return Err(RepositoryError::InvalidId(format!(
                "an aggregate id is empty (it would name the stream '{}-')",
                D::CATEGORY
            )));
        }
        StreamName::user(format!("{}-{id}", D::CATEGORY))
            .map_err(|e| RepositoryError::InvalidId(e.to_string()))
    }

    /// The events to append: personal data sealed with its subjects' keys (made where a
    /// subject has none yet).
    async fn encode(
        &self,
        events: &[D::Event],
        context: &CommandContext,
    ) -> Result<Vec<factum_core::NewEvent>, CodecError> {
        let store_keys = self.store.keys();
        let mut keys = Keys::default();
        let mut encoded = Vec::with_capacity(events.len());
        for event in events {
            let (event_type, mut data) = EventCodec::<D>::split(event)?;
            keys.seal(store_keys.as_ref(), &mut data).await?;
            encoded.push(
                self.codec
                    .finish(&self.decider, event_type, data, context)?,
            );
        }
        Ok(encoded)
    }

    /// Loads an aggregate by replaying its events.
    pub async fn load(&self, id: &str) -> Result<Loaded<D::State>, RepositoryError<D::Error>> {
        let stream = self.stream(id)?;
        Ok(self.load_stream(&stream, None).await?.loaded)
    }

    /// Loads the stream; with `command`, also tells whether that command produced any of its
    /// events (looking up to [`DUPLICATE_WINDOW_EVENTS`] events before a snapshot).
    async fn load_stream(
        &self,
        stream: &StreamName,
        command: Option<uuid::Uuid>,
    ) -> Result<LoadedStream<D::State>, RepositoryError<D::Error>> {
        let command = command.map(|id| id.to_string());
        let produced = |event: &factum_core::RecordedEvent| {
            command.as_deref().is_some_and(|id| produced_by(event, id))
        };
        let mut seen = false;
        let found = match &self.snapshots {
            Some(snapshots) => snapshots.load(self.store.as_ref(), stream).await?,
            None => None,
        };
        let (start, snapshot, from, mut since_us) = match found {
            Some(found) => (
                found.state,
                Some(found.revision),
                found.revision + 1,
                Some(found.recorded_at_us),
            ),
            None => (self.decider.initial_state(), None, 0, None),
        };
        // `evolve` takes the state by value; the closure moves it out and back in.
        let mut state = Some(start);
        let mut revision = snapshot;
        let mut replayed = 0;
        if let (Some(_), Some(snapshot)) = (&command, snapshot) {
            let before = self
                .store
                .read_stream(
                    stream,
                    snapshot,
                    Direction::Backwards,
                    DUPLICATE_WINDOW_EVENTS,
                )
                .await?;
            seen = before.iter().any(produced);
        }
        let store_keys = self.store.keys();
        let mut keys = Keys::default();
        let mut pages = StreamPages::new(self.store.as_ref(), stream, from);
        while let Some(page) = pages.next().await? {
            // Events with personal data are decoded with their subjects' keys (fetched once
            // per load) opening the fields.
            for recorded in &page {
                seen = seen || produced(recorded);
                since_us = since_us.or(Some(recorded.recorded_at_us));
                let fields = crate::personal::personal_mentions(&recorded.data);
                let event = if fields == 0 {
                    self.codec.decode(&self.decider, recorded)?
                } else {
                    keys.decode_opened(store_keys.as_ref(), &recorded.data, fields, |opened| {
                        match opened {
                            Some(data) => self.codec.decode_data(&self.decider, recorded, data),
                            None => self.codec.decode(&self.decider, recorded),
                        }
                    })
                    .await?
                };
                state = state.take().map(|state| self.decider.evolve(state, &event));
                revision = Some(recorded.revision);
                replayed += 1;
            }
        }
        let state = state.unwrap_or_else(|| self.decider.initial_state());
        let loaded = Loaded {
            state,
            revision,
            snapshot,
            replayed,
        };
        Ok(LoadedStream {
            loaded,
            duplicate: seen,
            since_us,
        })
    }

    /// After `events` were stored (the last with `last_id` at `revision`), saves a snapshot if
    /// enough events were folded since the last one.
    async fn snapshot_after(
        &self,
        stream: &StreamName,
        loaded: LoadedStream<D::State>,
        events: &[D::Event],
        revision: u64,
        last_id: uuid::Uuid,
    ) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let folded = loaded.loaded.replayed + events.len() as u64;
        if !snapshots
            .policy
            .due(folded, loaded.since_us, factum_core::now_micros())
        {
            return;
        }
        let loaded = loaded.loaded;
        let state = events.iter().fold(loaded.state, |state, event| {
            self.decider.evolve(state, event)
        });
        if let Err(error) = snapshots
            .save(self.store.as_ref(), stream, &state, revision, last_id)
            .await
        {
            tracing::warn!(%stream, revision, %error, "snapshot not saved");
        }
    }

    /// Executes a command against aggregate `id`. Its events carry the context's correlation
    /// and causation ids. A rejection writes nothing.
    ///
    /// An idempotent context ([`CommandContext::with_id`], [`CommandContext::from_message`])
    /// is executed at most once per aggregate: when the stream already holds events of its
    /// command id, nothing is decided or written and [`Executed::duplicate`] is set. The check
    /// and the append are one step, since the append expects the revision the check saw.
    pub async fn execute(
        &self,
        id: &str,
        command: D::Command,
        context: &CommandContext,
    ) -> Result<Executed<D::Event>, RepositoryError<D::Error>> {
        let stream = self.stream(id)?;
        let _turn = self.locks.lock(&stream).await;
        for attempt in 1..=self.attempts_max {
            let command_id = context.idempotent.then_some(context.command_id);
            let load = self.load_stream(&stream, command_id).await?;
            let loaded = &load.loaded;
            if load.duplicate {
                return Ok(Executed {
                    events: Vec::new(),
                    revision: loaded.revision,
                    position: None,
                    attempts: attempt,
                    duplicate: true,
                });
            }
            let events = self
                .decider
                .decide(&loaded.state, &command)
                .map_err(RepositoryError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    events,
                    revision: loaded.revision,
                    position: None,
                    attempts: attempt,
                    duplicate: false,
                });
            }
            let encoded = self.encode(&events, context).await?;
            let expected = match loaded.revision {
                None => ExpectedState::NoStream,
                Some(revision) => ExpectedState::Exact(revision),
            };
            let last_id = encoded.last().map(|event| event.id).unwrap_or_default();
            match self.store.append(&stream, expected, encoded).await {
                Ok(result) => {
                    self.snapshot_after(&stream, load, &events, result.last_revision, last_id)
                        .await;
                    return Ok(Executed {
                        events,
                        revision: Some(result.last_revision),
                        position: Some(result.position),
                        attempts: attempt,
                        duplicate: false,
                    });
                }
                Err(StoreError::WrongExpectedRevision { .. }) => {
                    tracing::debug!(%stream, attempt, "concurrency conflict; deciding again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RepositoryError::Conflict {
            stream: stream.to_string(),
            attempts: self.attempts_max,
        })
    }
}

impl<D: Decider> Repository<D> {
    /// The repository as the command bus's handler of [`ToAggregate<D>`]: a rejection by the
    /// decider reaches the sender as [`BusError::Rejected`] with the decider's own error.
    pub fn handler(
        self: Arc<Self>,
    ) -> impl tower::Service<
        Envelope<ToAggregate<D>>,
        Response = Executed<D::Event>,
        Error = BusError,
        Future = impl std::future::Future<Output = Result<Executed<D::Event>, BusError>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        tower::service_fn(move |envelope: Envelope<ToAggregate<D>>| {
            let repository = self.clone();
            async move {
                let ToAggregate { id, command } = envelope.command;
                repository
                    .execute(&id, command, &envelope.context)
                    .await
                    .map_err(|error| match error {
                        RepositoryError::Rejected(reason) => BusError::rejected(reason),
                        other => BusError::Failed(other.to_string()),
                    })
            }
        })
    }
}
