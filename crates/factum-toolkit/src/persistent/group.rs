//! One group at work: a task that owns the group's state — what was read, what is in flight
//! to which consumer, what is waiting — and is the only code that changes it. Commands
//! (connect, ack, nack, replay, info) come to it over a channel.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use factum_core::{Claim, Direction, EventStore, NewEvent, RecordedEvent, StreamName};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::settings::{
    ConsumerInfo, ConsumerStrategy, GroupError, GroupInfo, GroupKey, GroupMessage, GroupSettings,
    GroupSource, NackAction,
};

/// The event type of a parked message in a group's parked stream.
pub const MESSAGE_PARKED: &str = "MessageParked";

/// The event type of a group's state record (its checkpoint).
pub const GROUP_CHECKPOINT: &str = "PersistentGroupCheckpoint";

/// What a group stores as its checkpoint, in its state stream: every message below `below` is
/// settled, and so are those in `settled` above it; those below `delivered_to` may have been
/// sent before (a run after a crash sends them as retries, never as new).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    pub below: u64,
    /// Ranges `[first, last]` of settled keys.
    #[serde(default)]
    pub settled: Vec<(u64, u64)>,
    #[serde(default)]
    pub delivered_to: u64,
    #[serde(default)]
    pub replayed_until: u64,
    /// A replay under way: parked messages below this are delivered again, also after a
    /// restart, until each is settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaying_until: Option<u64>,
}

/// A group's last state record and its revision, if it stored one.
async fn stored_state(
    store: &dyn EventStore,
    def: &Definition,
) -> Result<Option<(StateRecord, u64)>, GroupError> {
    let last = match store
        .read_stream(&def.state_stream()?, u64::MAX, Direction::Backwards, 1)
        .await
    {
        Ok(last) => last,
        Err(factum_core::StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(record) = last.first() else {
        return Ok(None);
    };
    let state = serde_json::from_slice::<StateRecord>(&record.data).map_err(|e| {
        GroupError::Invalid(format!(
            "group '{}' has a state record that does not parse: {e}",
            def.key
        ))
    })?;
    Ok(Some((state, record.revision)))
}

/// Where a group's unsettled messages begin (a revision, or a position on `$all`): its stored
/// checkpoint, or where it starts when it has none.
pub(crate) async fn stored_below(
    store: &dyn EventStore,
    def: &Definition,
) -> Result<u64, GroupError> {
    Ok(stored_state(store, def)
        .await?
        .map_or(def.start, |(state, _)| state.below))
}

/// Sorted keys as ranges `[first, last]`.
fn ranges(keys: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for key in keys {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == key => *last = key,
            _ => out.push((key, key)),
        }
    }
    out
}

/// What a parked message records: where the event is, and why it was parked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Parked {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub reason: String,
    pub retry_count: u32,
}

/// What a group was created as: everything its task needs to start.
#[derive(Clone, Debug)]
pub(crate) struct Definition {
    pub key: GroupKey,
    pub source: GroupSource,
    pub settings: GroupSettings,
    /// The revision or position the group starts at when it has no checkpoint.
    pub start: u64,
    /// The parked stream's next revision when the group was created: what is below it
    /// belongs to an earlier group of the same name.
    pub parked_from: u64,
    /// The position of the record that created it: its checkpoints' names carry it, so a
    /// group created again under the same name starts afresh.
    pub incarnation: u64,
}

impl Definition {
    /// The name the group's runner claims.
    pub fn claim_name(&self) -> String {
        format!("persistentsubscription-{}", self.incarnation)
    }

    /// The stream of the group's state records.
    pub fn state_stream(&self) -> Result<StreamName, factum_core::StoreError> {
        StreamName::new(format!(
            "$persistentsubscription-state-{}",
            self.incarnation
        ))
    }
}

pub(crate) enum Command {
    Connect {
        name: String,
        capacity: usize,
        reply: oneshot::Sender<Result<Connected, GroupError>>,
    },
    Disconnect(u64),
    Ack {
        ids: Vec<Uuid>,
        reply: oneshot::Sender<Result<(), GroupError>>,
    },
    Nack {
        from: Option<u64>,
        ids: Vec<Uuid>,
        action: NackAction,
        reason: String,
        reply: oneshot::Sender<Result<(), GroupError>>,
    },
    ReplayParked {
        stop_at: Option<u64>,
        reply: oneshot::Sender<Result<u64, GroupError>>,
    },
    Info(oneshot::Sender<GroupInfo>),
    Stop,
}

pub(crate) struct Connected {
    pub id: u64,
    pub deliveries: mpsc::UnboundedReceiver<GroupMessage>,
}

/// Main-sequence messages sort after replayed parked ones, which go out first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Slot {
    /// A parked message replayed: the parked stream's revision.
    Replay(u64),
    /// A message of the source: its revision or position.
    Main(u64),
}

enum State {
    Waiting,
    InFlight {
        consumer: u64,
        attempt: u64,
    },
    /// Its retries are used up (or a consumer asked) and the parked record is not stored yet.
    Parking(String),
}

struct Message {
    event: Arc<RecordedEvent>,
    retry_count: u32,
    state: State,
    /// The pinning key, for the pinned strategies.
    pin: Option<u64>,
}

struct Consumer {
    id: u64,
    name: String,
    capacity: usize,
    in_flight: usize,
    sender: mpsc::UnboundedSender<GroupMessage>,
    delivered: u64,
    acked: u64,
    nacked: u64,
}

struct Replay {
    /// The parked stream's revision the replay reads up to (exclusive).
    until: u64,
    /// Replayed messages not settled yet.
    remaining: usize,
}

pub(crate) struct Group {
    store: Arc<dyn EventStore>,
    def: Definition,
    parked_stream: StreamName,
    messages: BTreeMap<Slot, Message>,
    waiting: BTreeSet<Slot>,
    /// Messages whose parked record is to be stored.
    parking: BTreeSet<Slot>,
    by_id: HashMap<Uuid, Slot>,
    /// Deadlines of deliveries, in the order sent (one timeout for all, so in time order).
    deadlines: VecDeque<(Instant, Slot, u64)>,
    attempts: u64,
    consumers: Vec<Consumer>,
    next_consumer_id: u64,
    round_robin: usize,
    /// Pinning key → the consumer holding it and how many of its messages it holds.
    pins: HashMap<u64, (u64, usize)>,
    /// The next revision or position the reader delivers.
    read_next: u64,
    main_count: usize,
    /// Keys of source messages settled by an earlier run above its checkpoint (acknowledged,
    /// skipped or parked).
    settled_before: BTreeSet<u64>,
    /// Keys of source messages settled above the first unsettled one.
    settled_above: BTreeSet<u64>,
    /// Messages of the source below this were maybe sent by an earlier run.
    sent_before: u64,
    /// Stored: messages of the source below this may have been sent.
    delivered_to: u64,
    /// Messages of the source below this were sent by this run (or maybe by an earlier one).
    sent_to: u64,
    state_stream: StreamName,
    /// A group on `$all`: the parts of its filter the store's subscription does not apply.
    matcher: Option<super::settings::Matcher>,
    /// The last state stored.
    stored: Option<StateRecord>,
    checkpoint: Option<u64>,
    settled_since: usize,
    last_checkpoint_at: Instant,
    parked_next: u64,
    replayed_until: u64,
    replay: Option<Replay>,
    failed: Option<String>,
    live: bool,
    delivered: u64,
    acked: u64,
    retried: u64,
    parked_total: u64,
    /// The claim the group runs under: when it is lost, the group stops and writes no more.
    claim: Arc<Claim>,
    /// The last revision of the state stream: each state record is appended after it, so a
    /// run that lost its claim to another cannot write over the other's state.
    state_revision: Option<u64>,
    /// The id of a state record whose append failed without an answer: found as the last
    /// record, it was stored.
    unconfirmed: Option<Uuid>,
    /// Another run wrote the group's state: this one stops without writing.
    fenced: bool,
}

/// Groups' own records (definitions, state, parked messages), never delivered by a group on
/// `$all`.
fn is_own_record(event: &RecordedEvent) -> bool {
    event
        .stream
        .as_str()
        .starts_with("$persistentsubscription-")
}

fn pin_of(strategy: ConsumerStrategy, event: &RecordedEvent) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match strategy {
        ConsumerStrategy::RoundRobin | ConsumerStrategy::DispatchToSingle => return None,
        ConsumerStrategy::Pinned => event.stream.as_str().hash(&mut hasher),
        ConsumerStrategy::PinnedByCorrelation => {
            match event.metadata_json().get("$correlationId") {
                Some(serde_json::Value::String(id)) => id.hash(&mut hasher),
                _ => event.stream.as_str().hash(&mut hasher),
            }
        }
    }
    Some(hasher.finish())
}

impl Group {
    /// Loads what the group's earlier runs stored: its checkpoint, the parked messages not
    /// replayed, and the source messages an earlier run parked above the checkpoint.
    pub async fn open(
        store: Arc<dyn EventStore>,
        def: Definition,
        claim: Claim,
    ) -> Result<Group, GroupError> {
        let parked_stream = def.key.parked_stream()?;
        let state_stream = def.state_stream()?;
        let (state, state_revision) = match stored_state(store.as_ref(), &def).await? {
            Some((state, revision)) => (Some(state), Some(revision)),
            None => (None, None),
        };
        let checkpoint = state.as_ref().map(|s| s.below);
        let replayed_until = state
            .as_ref()
            .map_or(def.parked_from, |s| s.replayed_until)
            .max(def.parked_from);
        let sent_before = state.as_ref().map_or(0, |s| s.delivered_to);
        let replaying_until = state.as_ref().and_then(|s| s.replaying_until);
        let read_next = checkpoint.unwrap_or(def.start);
        let mut parked_before: BTreeSet<u64> = state
            .as_ref()
            .map(|s| s.settled.iter().flat_map(|&(a, b)| a..=b).collect())
            .unwrap_or_default();
        let mut parked_next = def.parked_from;
        let mut from = def.parked_from;
        loop {
            let page = match store
                .read_stream(&parked_stream, from, Direction::Forwards, 512)
                .await
            {
                Ok(page) => page,
                Err(factum_core::StoreError::NotFound(_)) => break,
                Err(e) => return Err(e.into()),
            };
            let Some(last) = page.last() else { break };
            from = last.revision + 1;
            parked_next = from;
            for event in &page {
                if let Ok(parked) = serde_json::from_slice::<Parked>(&event.data) {
                    let key = match def.source {
                        GroupSource::Stream(_) => parked.revision,
                        GroupSource::All(_) => parked.position,
                    };
                    if key >= read_next {
                        parked_before.insert(key);
                    }
                }
            }
        }
        let mut group = Group {
            store,
            parked_stream,
            messages: BTreeMap::new(),
            waiting: BTreeSet::new(),
            parking: BTreeSet::new(),
            by_id: HashMap::new(),
            deadlines: VecDeque::new(),
            attempts: 0,
            consumers: Vec::new(),
            next_consumer_id: 1,
            round_robin: 0,
            pins: HashMap::new(),
            read_next,
            main_count: 0,
            settled_before: parked_before,
            settled_above: BTreeSet::new(),
            sent_before,
            delivered_to: sent_before,
            sent_to: sent_before,
            state_stream,
            matcher: match &def.source {
                GroupSource::All(filter) => Some(filter.matcher().map_err(GroupError::Invalid)?),
                GroupSource::Stream(_) => None,
            },
            stored: None,
            checkpoint,
            settled_since: 0,
            last_checkpoint_at: Instant::now(),
            parked_next,
            replayed_until,
            replay: None,
            failed: None,
            live: false,
            delivered: 0,
            acked: 0,
            retried: 0,
            parked_total: 0,
            claim: Arc::new(claim),
            state_revision,
            unconfirmed: None,
            fenced: false,
            def,
        };
        if let Some(end) = replaying_until
            && end > group.replayed_until
        {
            group.load_replay(end).await?;
        }
        Ok(group)
    }

    /// Runs until stopped: reads the source, hands out messages, settles them, stores the
    /// checkpoint; on the way out it stores the checkpoint once more.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (events, mut incoming) = mpsc::channel(self.def.settings.read_batch_size);
        let reader = tokio::spawn(read_source(
            self.store.clone(),
            self.def.source.clone(),
            self.read_next,
            self.def.settings.read_batch_size,
            events,
        ));
        let claim = self.claim.clone();
        loop {
            if self.fenced {
                break;
            }
            self.reserve().await;
            self.dispatch();
            // Read on while messages are out, but not without end past one that is stuck.
            let buffer = self.def.settings.live_buffer_size;
            let room = self.main_count < buffer && self.settled_above.len() < buffer * 100;
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Stop) => break,
                    Some(command) => self.handle(command).await,
                },
                read = incoming.recv(), if room => match read {
                    Some(Read::Event(event)) => self.add(event),
                    Some(Read::Live(live)) => self.live = live,
                    Some(Read::Failed(why)) => self.failed = Some(why),
                    None => {
                        self.failed.get_or_insert_with(|| "the source ended".into());
                        // Nothing more comes: wait for commands alone.
                        let (_, closed) = mpsc::channel(1);
                        incoming = closed;
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
                () = claim.lost() => {
                    tracing::warn!(group = %self.def.key,
                        "the group's claim was lost; it stops here (its consumers are disconnected and may connect again)");
                    break;
                }
            }
            self.expire();
            self.park_due().await;
            self.maybe_checkpoint(false).await;
        }
        reader.abort();
        // A goodbye: the mark of what may have been sent comes back to what was (not by a
        // run that may no longer be the group's only one).
        if !self.fenced && !self.claim.is_lost() {
            self.last_checkpoint_at = Instant::now();
            self.store_state(self.sent_to).await;
        }
    }

    /// When the run loop must look again without a command or an event: the next delivery
    /// deadline, the next checkpoint when one is due, a parking to try again.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(3600);
        let settings = &self.def.settings;
        let checkpoint = if self.settled_since >= settings.checkpoint_min_count.max(1) {
            self.last_checkpoint_at + settings.checkpoint_after
        } else {
            later
        };
        let retry_parking = if !self.parking.is_empty() {
            now + std::time::Duration::from_millis(200)
        } else {
            later
        };
        let deadline = self
            .deadlines
            .front()
            .map_or(checkpoint, |(deadline, ..)| *deadline);
        checkpoint.min(deadline).min(retry_parking)
    }

    fn add(&mut self, event: RecordedEvent) {
        let key = match self.def.source {
            GroupSource::Stream(_) => event.revision,
            GroupSource::All(_) => event.position,
        };
        self.read_next = key + 1;
        if matches!(self.def.source, GroupSource::All(_))
            && (is_own_record(&event) || !self.matcher.as_ref().is_none_or(|m| m.matches(&event)))
        {
            return;
        }
        if self.settled_before.remove(&key) {
            // Settled by an earlier run.
            self.settled_above.insert(key);
            return;
        }
        let slot = Slot::Main(key);
        let pin = pin_of(self.def.settings.strategy, &event);
        self.messages.insert(
            slot,
            Message {
                event: Arc::new(event),
                // Maybe sent by an earlier run that stopped without a goodbye: a retry.
                retry_count: u32::from(key < self.sent_before),
                state: State::Waiting,
                pin,
            },
        );
        self.waiting.insert(slot);
        self.main_count += 1;
    }

    /// Sends waiting messages to consumers with room, by the strategy.
    fn dispatch(&mut self) {
        if self.consumers.is_empty() || self.waiting.is_empty() {
            return;
        }
        let mut sent = Vec::new();
        let waiting = std::mem::take(&mut self.waiting);
        for &slot in &waiting {
            if !self.consumers.iter().any(|c| c.in_flight < c.capacity) {
                break;
            }
            if let Slot::Main(key) = slot
                && key >= self.delivered_to
            {
                // Not sent before the state says it may be: the run loop stores that first.
                break;
            }
            let Some((id, pin)) = self.messages.get(&slot).map(|m| (m.event.id, m.pin)) else {
                continue;
            };
            // Two messages with one id are never in flight together: acks name ids.
            if self.by_id.contains_key(&id) {
                continue;
            }
            let Some(index) = self.pick(pin) else {
                continue;
            };
            let Some(message) = self.messages.get_mut(&slot) else {
                continue;
            };
            let consumer = &mut self.consumers[index];
            let delivery = GroupMessage {
                id,
                event: RecordedEvent::clone(&message.event),
                retry_count: message.retry_count,
            };
            if consumer.sender.send(delivery).is_err() {
                // Gone: its disconnect is on its way and gives back what it held.
                continue;
            }
            consumer.in_flight += 1;
            consumer.delivered += 1;
            let consumer_id = consumer.id;
            if let Some(pin) = pin {
                self.pins.entry(pin).or_insert((consumer_id, 0)).1 += 1;
            }
            self.attempts += 1;
            let attempt = self.attempts;
            message.state = State::InFlight {
                consumer: consumer_id,
                attempt,
            };
            self.by_id.insert(id, slot);
            self.deadlines.push_back((
                Instant::now() + self.def.settings.message_timeout,
                slot,
                attempt,
            ));
            if let Slot::Main(key) = slot {
                self.sent_to = self.sent_to.max(key + 1);
            }
            sent.push(slot);
            self.delivered += 1;
        }
        self.waiting = waiting;
        for slot in sent {
            self.waiting.remove(&slot);
        }
    }

    /// The consumer that takes a message with this pin, if one has room.
    fn pick(&mut self, pin: Option<u64>) -> Option<usize> {
        let n = self.consumers.len();
        let has_room = |c: &Consumer| c.in_flight < c.capacity;
        match (self.def.settings.strategy, pin) {
            (_, Some(pin)) => {
                let index = match self.pins.get(&pin) {
                    Some((holder, _)) => self.consumers.iter().position(|c| c.id == *holder)?,
                    None => (pin % n as u64) as usize,
                };
                has_room(&self.consumers[index]).then_some(index)
            }
            (ConsumerStrategy::DispatchToSingle, None) => self.consumers.iter().position(has_room),
            _ => {
                let index = (0..n)
                    .map(|i| (self.round_robin + i) % n)
                    .find(|&i| has_room(&self.consumers[i]))?;
                self.round_robin = index + 1;
                Some(index)
            }
        }
    }

    /// Takes a message out of flight: its consumer and pin let go of it.
    fn release(&mut self, slot: Slot) -> Option<u64> {
        let message = self.messages.get_mut(&slot)?;
        let State::InFlight { consumer, .. } = message.state else {
            return None;
        };
        message.state = State::Waiting;
        self.by_id.remove(&message.event.id);
        if let Some(pin) = message.pin
            && let Some(entry) = self.pins.get_mut(&pin)
        {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.pins.remove(&pin);
            }
        }
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == consumer) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        Some(consumer)
    }

    /// A message is done with: acknowledged, skipped or parked.
    fn settle(&mut self, slot: Slot) {
        self.waiting.remove(&slot);
        self.parking.remove(&slot);
        if self.messages.remove(&slot).is_none() {
            return;
        }
        self.settled_since += 1;
        match slot {
            Slot::Main(key) => {
                self.main_count -= 1;
                self.settled_above.insert(key);
            }
            Slot::Replay(_) => {
                if let Some(replay) = &mut self.replay {
                    replay.remaining = replay.remaining.saturating_sub(1);
                }
            }
        }
    }

    /// A message failed (timeout, nack, lost consumer): tried again, or parked when its
    /// retries are used up.
    fn retry(&mut self, slot: Slot, why: &str) {
        let max = self.def.settings.max_retry_count;
        let Some(message) = self.messages.get_mut(&slot) else {
            return;
        };
        if message.retry_count >= max {
            message.state = State::Parking(format!(
                "{why}; tried {} times (max retry count {max})",
                message.retry_count + 1
            ));
            self.waiting.remove(&slot);
            self.parking.insert(slot);
        } else {
            message.retry_count += 1;
            self.retried += 1;
            self.waiting.insert(slot);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        // Deliveries settled since are dropped as they reach the front, so the queue holds
        // little more than what is in flight.
        while let Some(&(deadline, slot, attempt)) = self.deadlines.front() {
            let current = matches!(
                self.messages.get(&slot).map(|m| &m.state),
                Some(State::InFlight { attempt: a, .. }) if *a == attempt
            );
            if current && deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if current {
                self.release(slot);
                self.retry(slot, "not acknowledged within the message timeout");
            }
        }
    }

    /// Stores the parked records of the messages whose retries are used up.
    async fn park_due(&mut self) {
        let due: Vec<Slot> = self.parking.iter().copied().collect();
        for slot in due {
            let Some(message) = self.messages.get(&slot) else {
                continue;
            };
            let State::Parking(reason) = &message.state else {
                continue;
            };
            let event = &message.event;
            let record = Parked {
                stream: event.stream.as_str().to_owned(),
                revision: event.revision,
                position: event.position,
                event_id: event.id,
                event_type: event.event_type.clone(),
                reason: reason.clone(),
                retry_count: message.retry_count,
            };
            let Ok(mut parked) = NewEvent::json(MESSAGE_PARKED, &record) else {
                continue;
            };
            // One id per parking: a retried append of it is recognised, never stored twice.
            parked.id = Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("{}/{}/{:?}", self.def.incarnation, event.id, slot).as_bytes(),
            );
            match self
                .store
                .append(
                    &self.parked_stream,
                    factum_core::ExpectedState::Any,
                    vec![parked],
                )
                .await
            {
                Ok(done) => {
                    self.parked_next = self.parked_next.max(done.last_revision + 1);
                    self.parked_total += 1;
                    self.settle(slot);
                }
                Err(e) => {
                    tracing::warn!(group = %self.def.key, error = %e, "could not park a message; trying again");
                    return;
                }
            }
        }
    }

    /// The checkpoint the group may store: below the first unsettled message of the source.
    fn settled_below(&self) -> u64 {
        self.messages
            .keys()
            .find_map(|slot| match slot {
                Slot::Main(key) => Some(*key),
                Slot::Replay(_) => None,
            })
            .unwrap_or(self.read_next)
    }

    async fn maybe_checkpoint(&mut self, force: bool) {
        let settings = &self.def.settings;
        let replay_done = self.replay.as_ref().is_some_and(|r| r.remaining == 0);
        let due = force
            || replay_done
            || self.settled_since >= settings.checkpoint_max_count
            || (self.settled_since >= settings.checkpoint_min_count.max(1)
                && self.last_checkpoint_at.elapsed() >= settings.checkpoint_after);
        if due {
            self.last_checkpoint_at = Instant::now();
            if self.store_state(self.delivered_to).await && replay_done {
                self.replay = None;
            }
        }
    }

    /// Before a message of the source at or above the stored delivery mark goes out, the
    /// mark moves a buffer's length ahead, so that a run after a crash knows what it may
    /// have sent.
    async fn reserve(&mut self) {
        if !self.consumers.iter().any(|c| c.in_flight < c.capacity) {
            return;
        }
        let first = self.waiting.iter().find_map(|slot| match slot {
            Slot::Main(key) => Some(*key),
            Slot::Replay(_) => None,
        });
        if let Some(key) = first
            && key >= self.delivered_to
        {
            let ahead = key.saturating_add(self.def.settings.live_buffer_size as u64);
            if !self.store_state(ahead).await {
                // The store refused: try again shortly rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    /// Stores the group's state: its checkpoint, what is settled above it, how far it may
    /// have sent, how far parked messages were replayed. Whether it was stored.
    async fn store_state(&mut self, delivered_to: u64) -> bool {
        let below = self.settled_below();
        self.settled_above = self.settled_above.split_off(&below);
        let replayed_until = match &self.replay {
            Some(replay) if replay.remaining == 0 => replay.until.max(self.replayed_until),
            _ => self.replayed_until,
        };
        let settled = if self.settled_before.is_empty() {
            ranges(self.settled_above.iter().copied())
        } else {
            let all: BTreeSet<u64> = self
                .settled_above
                .union(&self.settled_before)
                .copied()
                .collect();
            ranges(all)
        };
        let replaying_until = self
            .replay
            .as_ref()
            .filter(|r| r.remaining > 0)
            .map(|r| r.until);
        let record = StateRecord {
            below,
            settled,
            delivered_to,
            replayed_until,
            replaying_until,
        };
        if self.stored.as_ref() == Some(&record) {
            self.settled_since = 0;
            return true;
        }
        let event = match NewEvent::json(GROUP_CHECKPOINT, &record) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(group = %self.def.key, error = %e, "the group's state does not serialise");
                return false;
            }
        };
        if self.fenced || self.claim.is_lost() {
            return false;
        }
        let id = event.id;
        let expected = self.state_revision.map_or(
            factum_core::ExpectedState::NoStream,
            factum_core::ExpectedState::Exact,
        );
        let mut appended = self
            .store
            .append(&self.state_stream, expected, vec![event.clone()])
            .await;
        if let Err(conflict @ factum_core::StoreError::WrongExpectedRevision { .. }) = appended {
            appended = self.after_conflict(event, conflict).await;
        }
        match appended {
            Ok(done) => {
                self.state_revision = Some(done.last_revision);
                self.unconfirmed = None;
                self.stored = Some(record);
                self.checkpoint = Some(below);
                self.delivered_to = delivered_to;
                self.replayed_until = replayed_until;
                self.settled_since = 0;
                true
            }
            Err(factum_core::StoreError::WrongExpectedRevision { .. }) => {
                tracing::warn!(group = %self.def.key,
                    "another run of the group stored its state; this one stops");
                self.fenced = true;
                false
            }
            Err(e) => {
                tracing::warn!(group = %self.def.key, error = %e, "could not store the group's state");
                self.unconfirmed = Some(id);
                false
            }
        }
    }

    /// The state stream moved on since this run last wrote: when its last record is one
    /// this run appended without hearing back, that append was stored and this one goes
    /// after it; otherwise another run wrote, and the conflict stands.
    async fn after_conflict(
        &mut self,
        event: NewEvent,
        conflict: factum_core::StoreError,
    ) -> Result<factum_core::AppendResult, factum_core::StoreError> {
        let last = self
            .store
            .read_stream(&self.state_stream, u64::MAX, Direction::Backwards, 1)
            .await?;
        match last.first() {
            Some(record) if Some(record.id) == self.unconfirmed => {
                self.unconfirmed = None;
                self.state_revision = Some(record.revision);
                self.store
                    .append(
                        &self.state_stream,
                        factum_core::ExpectedState::Exact(record.revision),
                        vec![event],
                    )
                    .await
            }
            _ => Err(conflict),
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Connect {
                name,
                capacity,
                reply,
            } => {
                let max = self.def.settings.max_subscriber_count;
                if max > 0 && self.consumers.len() >= max {
                    let _ = reply.send(Err(GroupError::Full(self.def.key.clone())));
                    return;
                }
                let (sender, deliveries) = mpsc::unbounded_channel();
                let id = self.next_consumer_id;
                self.next_consumer_id += 1;
                self.consumers.push(Consumer {
                    id,
                    name,
                    capacity: capacity.max(1),
                    in_flight: 0,
                    sender,
                    delivered: 0,
                    acked: 0,
                    nacked: 0,
                });
                let _ = reply.send(Ok(Connected { id, deliveries }));
            }
            Command::Disconnect(id) => self.disconnect(id),
            Command::Ack { ids, reply } => {
                let result = self.slots_in_flight(&ids).map(|slots| {
                    for slot in slots {
                        if let Some(consumer) = self.release(slot)
                            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == consumer)
                        {
                            c.acked += 1;
                        }
                        self.acked += 1;
                        self.settle(slot);
                    }
                });
                let _ = reply.send(result);
            }
            Command::Nack {
                from,
                ids,
                action,
                reason,
                reply,
            } => {
                let result = self.slots_in_flight(&ids).map(|slots| {
                    for slot in slots {
                        if let Some(consumer) = self.release(slot)
                            && let Some(c) = self.consumers.iter_mut().find(|c| c.id == consumer)
                        {
                            c.nacked += 1;
                        }
                        match action {
                            NackAction::Skip => self.settle(slot),
                            NackAction::Retry => self.retry(slot, &format!("nacked: {reason}")),
                            NackAction::Park => {
                                self.waiting.remove(&slot);
                                if let Some(m) = self.messages.get_mut(&slot) {
                                    m.state =
                                        State::Parking(format!("parked by a consumer: {reason}"));
                                    self.parking.insert(slot);
                                }
                            }
                            NackAction::Stop => {
                                self.waiting.insert(slot);
                            }
                        }
                    }
                });
                if result.is_ok()
                    && action == NackAction::Stop
                    && let Some(id) = from
                {
                    self.disconnect(id);
                }
                // A message parked by a nack is stored before the nack is answered.
                self.park_due().await;
                let _ = reply.send(result);
            }
            Command::ReplayParked { stop_at, reply } => {
                let _ = reply.send(self.replay_parked(stop_at).await);
            }
            Command::Info(reply) => {
                let _ = reply.send(self.info().await);
            }
            Command::Stop => {}
        }
    }

    /// The slots of messages in flight under these ids, or the first id that is not.
    fn slots_in_flight(&self, ids: &[Uuid]) -> Result<Vec<Slot>, GroupError> {
        let mut slots = Vec::with_capacity(ids.len());
        for id in ids {
            match self.by_id.get(id) {
                Some(slot) if !slots.contains(slot) => slots.push(*slot),
                Some(_) => {}
                None => {
                    return Err(GroupError::UnknownMessage {
                        group: self.def.key.clone(),
                        id: *id,
                    });
                }
            }
        }
        Ok(slots)
    }

    /// A consumer left: what it held is tried again (a retry — a message that makes every
    /// consumer crash is parked in the end).
    fn disconnect(&mut self, id: u64) {
        let Some(index) = self.consumers.iter().position(|c| c.id == id) else {
            return;
        };
        self.consumers.remove(index);
        let held: Vec<Slot> = self
            .messages
            .iter()
            .filter(|(_, m)| matches!(m.state, State::InFlight { consumer, .. } if consumer == id))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in held {
            self.release(slot);
            self.retry(slot, "its consumer disconnected");
        }
        self.pins.retain(|_, (holder, _)| *holder != id);
    }

    async fn replay_parked(&mut self, stop_at: Option<u64>) -> Result<u64, GroupError> {
        if self.replay.is_some() {
            return Err(GroupError::Replaying(self.def.key.clone()));
        }
        let end = match stop_at {
            Some(n) => self.replayed_until.saturating_add(n).min(self.parked_next),
            None => self.parked_next,
        };
        let replayed = self.load_replay(end).await?;
        // Stored before the answer: a replay asked for goes on after a restart.
        if !self.store_state(self.delivered_to).await {
            return Err(GroupError::Invalid(format!(
                "group '{}' could not store its replay; try again",
                self.def.key
            )));
        }
        // A replay with nothing to deliver is done at once.
        self.maybe_checkpoint(false).await;
        Ok(replayed)
    }

    /// Takes the parked messages from where the last replay ended up to `end` to deliver
    /// again; how many.
    async fn load_replay(&mut self, end: u64) -> Result<u64, GroupError> {
        let mut until = self.replayed_until;
        let mut replayed = 0u64;
        while until < end {
            let want = usize::try_from(end - until).unwrap_or(usize::MAX).min(512);
            let page = match self
                .store
                .read_stream(&self.parked_stream, until, Direction::Forwards, want)
                .await
            {
                Ok(page) => page,
                Err(factum_core::StoreError::NotFound(_)) => break,
                Err(e) => return Err(e.into()),
            };
            let Some(last) = page.last() else { break };
            let next = last.revision + 1;
            for record in page.into_iter().filter(|r| r.revision < end) {
                let Ok(parked) = serde_json::from_slice::<Parked>(&record.data) else {
                    continue;
                };
                let original = self
                    .store
                    .read_all(parked.position, Direction::Forwards, 1)
                    .await?;
                let Some(event) = original
                    .into_iter()
                    .find(|e| e.id == parked.event_id && e.position == parked.position)
                else {
                    // The event is gone (scavenged): nothing to deliver.
                    continue;
                };
                let slot = Slot::Replay(record.revision);
                let pin = pin_of(self.def.settings.strategy, &event);
                self.messages.insert(
                    slot,
                    Message {
                        event: Arc::new(event),
                        retry_count: 0,
                        state: State::Waiting,
                        pin,
                    },
                );
                self.waiting.insert(slot);
                replayed += 1;
            }
            until = next.min(end);
        }
        self.replay = Some(Replay {
            until: until.max(end),
            remaining: replayed as usize,
        });
        Ok(replayed)
    }

    async fn info(&self) -> GroupInfo {
        let source_end = match &self.def.source {
            GroupSource::Stream(stream) => match self.store.stream_revision(stream).await {
                Ok(current) => current.0.map_or(0, |r| r + 1),
                Err(_) => self.read_next,
            },
            GroupSource::All(_) => self.store.head(),
        };
        let checkpoint_base = self.checkpoint.unwrap_or(self.def.start);
        GroupInfo {
            source: self.def.key.source.clone(),
            group: self.def.key.group.clone(),
            filter: match &self.def.source {
                GroupSource::All(filter) => Some(filter.clone()),
                GroupSource::Stream(_) => None,
            },
            settings: self.def.settings.clone(),
            status: match (&self.failed, self.live) {
                (Some(why), _) => format!("failed: {why}"),
                (None, true) => "live".into(),
                (None, false) => "catching up".into(),
            },
            consumers: self
                .consumers
                .iter()
                .map(|c| ConsumerInfo {
                    id: c.id,
                    name: c.name.clone(),
                    capacity: c.capacity,
                    in_flight: c.in_flight,
                    delivered: c.delivered,
                    acked: c.acked,
                    nacked: c.nacked,
                })
                .collect(),
            checkpoint: self.checkpoint,
            read_next: self.read_next,
            source_end,
            lag: source_end.saturating_sub(checkpoint_base),
            in_flight: self.by_id.len(),
            waiting: self.waiting.len(),
            parked: self.parked_next.saturating_sub(self.replayed_until),
            delivered: self.delivered,
            acked: self.acked,
            retried: self.retried,
            parked_total: self.parked_total,
            replaying: self.replay.is_some(),
        }
    }
}

enum Read {
    Event(RecordedEvent),
    Live(bool),
    Failed(String),
}

/// Reads the source from `from` (inclusive) into the group, catch-up then live.
async fn read_source(
    store: Arc<dyn EventStore>,
    source: GroupSource,
    from: u64,
    batch: usize,
    into: mpsc::Sender<Read>,
) {
    let mut subscription = match &source {
        GroupSource::Stream(stream) => store.subscribe_stream(stream.clone(), from),
        GroupSource::All(filter) => store.subscribe_all(from, filter.filter()),
    }
    .with_batch_size(batch);
    let mut live = false;
    let mut next_revision = from;
    loop {
        let event = match subscription.next_buffered() {
            Some(event) => event,
            None => {
                let caught_up = match &source {
                    GroupSource::All(_) => subscription.position() >= Some(store.head()),
                    GroupSource::Stream(stream) => match store.stream_revision(stream).await {
                        Ok(current) => current.0.is_none_or(|last| next_revision > last),
                        Err(_) => false,
                    },
                };
                if caught_up != live {
                    live = caught_up;
                    if into.send(Read::Live(live)).await.is_err() {
                        return;
                    }
                }
                match subscription.next().await {
                    Ok(event) => event,
                    Err(e) => {
                        let _ = into.send(Read::Failed(e.to_string())).await;
                        return;
                    }
                }
            }
        };
        next_revision = event.revision + 1;
        if into.send(Read::Event(event)).await.is_err() {
            return;
        }
    }
}
