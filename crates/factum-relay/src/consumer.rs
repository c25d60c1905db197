//! Idempotent consumers (SPEC R3.3, R2.5): a [`Consumer`] takes messages from a broker
//! ([`NatsSource`](crate::NatsSource), [`RabbitSource`](crate::RabbitSource)), turns each into a
//! command and sends it through the [`CommandBus`], and acknowledges the message only once the
//! command's outcome is durable.
//!
//! Brokers deliver at least once: a message whose acknowledgement was lost comes again. The
//! command carries a [`CommandContext::from_message`]: its id is derived from the message id,
//! and a [`Repository`](factum_toolkit::Repository) executes a command id at most once per aggregate.
//! The record that the message was handled is thus the command's own events, written in the
//! same append: the inbox is committed with the effect, and a redelivery changes nothing.

use factum_core::IntoStore;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use factum_core::{EventStore, NewEvent, StoreError};
use factum_toolkit::{
    BusError, Command, CommandBus, CommandContext, DeadLetters, Decider, MESSAGE_DEAD_LETTERED,
    ReplayReport, ToAggregate, dead_letter_stream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::message::headers;
use crate::relay::Backoff;

/// One message as a consumer receives it from a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The message id the publisher gave it (for a relay's message: the event id). Every
    /// delivery of the message carries the same one.
    pub id: String,
    /// Its type: what a route is chosen by (a relay's external event type).
    pub message_type: String,
    /// The NATS subject or the RabbitMQ routing key.
    pub subject: String,
    /// The body.
    pub data: Bytes,
    /// The message's headers, as text.
    pub headers: BTreeMap<String, String>,
    /// The broker says it delivered this message before.
    pub redelivered: bool,
}

impl IncomingMessage {
    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.data)
            .map_err(|e| format!("{} {}: {e}", self.message_type, self.id))
    }

    /// The context the message's command runs in: its id is derived from the message id (so
    /// that a redelivery is recognised), caused by the message, in the message's correlation,
    /// continuing the message's trace (its `traceparent` header) when it has one.
    pub fn context(&self) -> CommandContext {
        let context = CommandContext::from_message(
            &self.id,
            self.headers
                .get(headers::CORRELATION_ID)
                .map(String::as_str),
        );
        match self.headers.get(headers::TRACEPARENT) {
            Some(trace) => context.continuing(trace),
            None => context,
        }
    }
}

/// Why a broker gave no message: the connection is lost or refused. The next
/// [`MessageSource::next`] connects again.
#[derive(Debug, thiserror::Error)]
#[error("{broker}: {message}")]
pub struct ConsumeError {
    /// The broker (`nats`, `rabbitmq`, ...).
    pub broker: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ConsumeError {
    /// An error of `broker`.
    pub fn new(broker: &'static str, message: impl std::fmt::Display) -> Self {
        ConsumeError {
            broker,
            message: message.to_string(),
        }
    }
}

/// Tells the broker a delivery is done with.
#[async_trait::async_trait]
pub trait Acknowledge: Send {
    /// The message is handled: the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<(), ConsumeError>;
}

/// A message and the means to acknowledge it.
pub struct Delivery {
    /// The message.
    pub message: IncomingMessage,
    /// Acknowledges it.
    pub acker: Box<dyn Acknowledge>,
}

/// Where a consumer's messages come from: a broker's durable subscription (a JetStream durable
/// consumer, a RabbitMQ queue), so that what arrives while the consumer is down waits for it.
#[async_trait::async_trait]
pub trait MessageSource: Send {
    /// The broker's name, for logs and errors.
    fn broker(&self) -> &'static str;

    /// The next message, waiting for one. An error means the connection is lost: the next
    /// call connects again, and the broker delivers again what was not acknowledged.
    async fn next(&mut self) -> Result<Delivery, ConsumeError>;
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Its command was executed.
    Handled,
    /// Its command had been executed before (a redelivery): nothing was written again.
    Duplicate,
    /// No route takes its type: acknowledged without a command.
    Ignored,
    /// It could not be turned into a command, or the command was refused: parked in the
    /// consumer's dead-letter stream with the reason, and acknowledged.
    DeadLettered(String),
}

/// What a consumer has done since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStatus {
    /// Deliveries taken from the broker (redeliveries counted again).
    pub received: u64,
    /// Commands executed.
    pub handled: u64,
    /// Deliveries whose command had been executed before.
    pub duplicates: u64,
    /// Messages parked in the dead-letter stream.
    pub dead_lettered: u64,
    /// Messages of types no route takes.
    pub ignored: u64,
    /// Lost connections and failed commands, each retried.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// A parked message: what it was, and why no command came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeadLetter {
    /// The id of the dead-letter record itself.
    #[serde(default)]
    pub id: Uuid,
    /// The consumer.
    pub consumer: String,
    /// Why.
    pub error: String,
    /// The message id.
    pub message_id: String,
    /// The message type.
    pub message_type: String,
    /// The subject or routing key.
    pub subject: String,
    /// The body as text (lossy for a body that is not UTF-8).
    pub data: String,
    /// The body's bytes, when it is not UTF-8 (`data` then shows it lossily).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<Vec<u8>>,
    /// The headers.
    pub headers: BTreeMap<String, String>,
}

impl MessageDeadLetter {
    /// The message as it was delivered (marked redelivered).
    pub fn message(&self) -> IncomingMessage {
        IncomingMessage {
            id: self.message_id.clone(),
            message_type: self.message_type.clone(),
            subject: self.subject.clone(),
            data: match &self.data_bytes {
                Some(bytes) => Bytes::from(bytes.clone()),
                None => Bytes::from(self.data.clone()),
            },
            headers: self.headers.clone(),
            redelivered: true,
        }
    }
}

/// The messages consumer `consumer` parked that no replay has resolved yet, oldest first.
pub async fn unresolved_message_dead_letters(
    store: &dyn EventStore,
    consumer: &str,
) -> Result<Vec<MessageDeadLetter>, StoreError> {
    DeadLetters::of(store, consumer)?
        .unresolved_of(
            MESSAGE_DEAD_LETTERED,
            |letter: &mut MessageDeadLetter, id| letter.id = id,
        )
        .await
}

/// Why a route did not lead to an executed command.
enum Failure {
    /// Refused for good: dead-lettered.
    Refused(String),
    /// Could not run now (the store failed): tried again.
    Transient(String),
}

type RouteFuture = Pin<Box<dyn Future<Output = Result<bool, Failure>> + Send>>;
type Route = Arc<dyn Fn(&IncomingMessage, &CommandBus) -> RouteFuture + Send + Sync>;

fn from_bus(error: BusError) -> Failure {
    match error {
        BusError::Failed(reason) => Failure::Transient(reason),
        refused => Failure::Refused(refused.to_string()),
    }
}

/// Builds a [`Consumer`].
pub struct ConsumerBuilder {
    name: String,
    store: Arc<dyn EventStore>,
    bus: Option<CommandBus>,
    routes: HashMap<String, Route>,
    duplicates: Vec<String>,
    backoff: Backoff,
}

impl ConsumerBuilder {
    /// The bus the commands are sent through.
    pub fn bus(mut self, bus: CommandBus) -> Self {
        self.bus = Some(bus);
        self
    }

    fn route(mut self, message_type: String, route: Route) -> Self {
        if self.routes.insert(message_type.clone(), route).is_some() {
            self.duplicates.push(message_type);
        }
        self
    }

    /// Messages of `message_type` become the command `decode` makes of them. A message it
    /// cannot decode is dead-lettered with the reason.
    pub fn on<C, F>(self, message_type: impl Into<String>, decode: F) -> Self
    where
        C: Command,
        F: Fn(&IncomingMessage) -> Result<C, String> + Send + Sync + 'static,
    {
        let route: Route = Arc::new(move |message: &IncomingMessage, bus: &CommandBus| {
            let command = decode(message);
            let context = message.context();
            let bus = bus.clone();
            Box::pin(async move {
                let command = command.map_err(Failure::Refused)?;
                bus.send(command, context).await.map_err(from_bus)?;
                Ok(false)
            })
        });
        self.route(message_type.into(), route)
    }

    /// Messages of `message_type` become a command to the aggregate `decode` names (the bus
    /// needs a handler of [`ToAggregate<D>`], such as [`Repository::handler`]). A redelivered
    /// message's command is found among the aggregate's events and not executed again.
    ///
    /// [`Repository::handler`]: factum_toolkit::Repository::handler
    pub fn on_aggregate<D, F>(self, message_type: impl Into<String>, decode: F) -> Self
    where
        D: Decider,
        F: Fn(&IncomingMessage) -> Result<(String, D::Command), String> + Send + Sync + 'static,
    {
        let route: Route = Arc::new(move |message: &IncomingMessage, bus: &CommandBus| {
            let command = decode(message);
            let context = message.context();
            let bus = bus.clone();
            Box::pin(async move {
                let (id, command) = command.map_err(Failure::Refused)?;
                let executed = bus
                    .send(ToAggregate::<D>::new(id, command), context)
                    .await
                    .map_err(from_bus)?;
                Ok(executed.duplicate)
            })
        });
        self.route(message_type.into(), route)
    }

    /// How long to wait after a lost connection or a failed command: doubling from `first` up
    /// to `max`.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The consumer; refused without a bus, without routes, with two routes for one type, or
    /// with a name that cannot name its dead-letter stream.
    pub fn build(self) -> Result<Consumer, StoreError> {
        let bus = self
            .bus
            .ok_or_else(|| StoreError::invalid("a consumer needs a command bus"))?;
        if self.routes.is_empty() {
            return Err(StoreError::invalid("a consumer needs at least one route"));
        }
        if let Some(duplicate) = self.duplicates.first() {
            return Err(StoreError::invalid(format!(
                "more than one route for message type '{duplicate}'"
            )));
        }
        dead_letter_stream(&self.name)?;
        let (status, _) = watch::channel(ConsumerStatus::default());
        Ok(Consumer {
            name: self.name,
            store: self.store,
            bus,
            routes: self.routes,
            backoff: self.backoff,
            status,
        })
    }
}

/// Takes messages from a broker and sends each as a command through the command bus,
/// acknowledging it once the outcome is durable.
///
/// Brokers deliver at least once: a message whose acknowledgement was lost comes again. The
/// command carries a [`CommandContext::from_message`], whose id is derived from the message id,
/// and a [`Repository`](factum_toolkit::Repository) executes a command id at most once per aggregate:
/// the record that the message was handled is the command's own events, written in the same
/// append, so a redelivery changes nothing.
///
/// Messages are handled one at a time, in the order the broker delivers them. A command that
/// fails for a passing reason (the store is down) is tried again after a backoff, holding the
/// messages after it; a message that cannot become a command, or whose command is refused
/// (invalid, forbidden, rejected by the domain), is parked in `$deadletter-{name}` with the
/// reason and acknowledged.
pub struct Consumer {
    name: String,
    store: Arc<dyn EventStore>,
    bus: CommandBus,
    routes: HashMap<String, Route>,
    backoff: Backoff,
    status: watch::Sender<ConsumerStatus>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut routes: Vec<_> = self.routes.keys().collect();
        routes.sort();
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("routes", &routes)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer named `name` (its dead letters go to `$deadletter-{name}` in `store`).
    pub fn builder(name: impl Into<String>, store: impl IntoStore) -> ConsumerBuilder {
        let store = store.into_store();
        ConsumerBuilder {
            name: name.into(),
            store,
            bus: None,
            routes: HashMap::new(),
            duplicates: Vec::new(),
            backoff: Backoff::default(),
        }
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Follows what the consumer has done.
    pub fn status(&self) -> watch::Receiver<ConsumerStatus> {
        self.status.subscribe()
    }

    /// Handles messages from `source` until `shutdown` completes. A message being handled when
    /// it does is left unacknowledged, for the broker to deliver again.
    pub async fn run(
        &self,
        source: &mut dyn MessageSource,
        shutdown: impl Future<Output = ()>,
    ) -> ConsumerStatus {
        tokio::pin!(shutdown);
        if let Err(error) = self.replay_if_requested().await {
            self.failed(&format!("replaying dead letters: {error}"));
        }
        let mut delay = self.backoff.first;
        loop {
            let delivery = tokio::select! {
                () = &mut shutdown => break,
                delivery = source.next() => delivery,
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    self.failed(&error.to_string());
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = self.backoff.next(delay);
                    continue;
                }
            };
            delay = self.backoff.first;
            self.status.send_modify(|s| s.received += 1);
            let outcome = tokio::select! {
                () = &mut shutdown => break,
                outcome = self.handle(&delivery.message) => outcome,
            };
            self.status.send_modify(|s| match &outcome {
                DeliveryOutcome::Handled => s.handled += 1,
                DeliveryOutcome::Duplicate => s.duplicates += 1,
                DeliveryOutcome::Ignored => s.ignored += 1,
                DeliveryOutcome::DeadLettered(_) => s.dead_lettered += 1,
            });
            // A lost acknowledgement only means the message comes again, and is recognised.
            if let Err(error) = delivery.acker.ack().await {
                self.failed(&format!("acknowledging {}: {error}", delivery.message.id));
            }
        }
        self.status.borrow().clone()
    }

    fn failed(&self, error: &str) {
        tracing::warn!(consumer = %self.name, %error, "consumer failure; trying again");
        self.status.send_modify(|s| {
            s.failures += 1;
            s.last_error = Some(error.to_owned());
        });
    }

    /// Handles one message until its outcome is durable, trying passing failures again.
    pub async fn handle(&self, message: &IncomingMessage) -> DeliveryOutcome {
        let mut delay = self.backoff.first;
        loop {
            let Some(outcome) = self.attempt(message).await else {
                return DeliveryOutcome::Ignored;
            };
            let failure = match outcome {
                Ok(false) => return DeliveryOutcome::Handled,
                Ok(true) => return DeliveryOutcome::Duplicate,
                Err(Failure::Refused(reason)) => match self.park(message, &reason).await {
                    Ok(()) => return DeliveryOutcome::DeadLettered(reason),
                    Err(error) => format!("parking {}: {error}", message.id),
                },
                Err(Failure::Transient(reason)) => reason,
            };
            self.failed(&failure);
            tokio::time::sleep(delay).await;
            delay = self.backoff.next(delay);
        }
    }

    /// Sends `message`'s command once: whether it was a duplicate, or why not; `None` when no
    /// route takes its type.
    async fn attempt(&self, message: &IncomingMessage) -> Option<Result<bool, Failure>> {
        let route = self.routes.get(&message.message_type)?;
        if message.id.is_empty() {
            return Some(Err(Failure::Refused("the message has no id".into())));
        }
        Some(route(message, &self.bus).await)
    }

    /// Parks `message` in the dead-letter stream. The record's id is derived from the message
    /// id, so a redelivery parked right after is recognised as the same append.
    async fn park(&self, message: &IncomingMessage, reason: &str) -> Result<(), StoreError> {
        let exact = std::str::from_utf8(&message.data).is_ok();
        let letter = MessageDeadLetter {
            id: Uuid::nil(),
            consumer: self.name.clone(),
            error: reason.to_owned(),
            message_id: message.id.clone(),
            message_type: message.message_type.clone(),
            subject: message.subject.clone(),
            data: String::from_utf8_lossy(&message.data).into_owned(),
            data_bytes: (!exact).then(|| message.data.to_vec()),
            headers: message.headers.clone(),
        };
        let mut event = NewEvent::json(MESSAGE_DEAD_LETTERED, &letter)?;
        event.id = CommandContext::derived_id(&message.id, "dead-letter");
        tracing::warn!(consumer = %self.name, message = %message.id, %reason, "message parked");
        self.letters()?.park(event).await
    }

    fn letters(&self) -> Result<DeadLetters<'_>, StoreError> {
        DeadLetters::of(self.store.as_ref(), &self.name)
    }

    /// The messages this consumer has parked that no replay has resolved, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<MessageDeadLetter>, StoreError> {
        unresolved_message_dead_letters(self.store.as_ref(), &self.name).await
    }

    /// Sends the command of every parked message again, once each (after the cause was fixed:
    /// a handler, a decoder, the data the command needed). Those whose command now runs, or
    /// had run, are marked resolved; the others stay parked. The command id is the one the
    /// first delivery had, so a message is still executed at most once.
    pub async fn replay_dead_letters(&self) -> Result<ReplayReport, StoreError> {
        let mut report = ReplayReport::default();
        for letter in self.dead_letters().await? {
            let outcome = self.attempt(&letter.message()).await.unwrap_or_else(|| {
                Err(Failure::Refused(format!(
                    "no route takes message type '{}'",
                    letter.message_type
                )))
            });
            match outcome {
                Ok(duplicate) => {
                    self.letters()?
                        .resolve(
                            letter.id,
                            serde_json::json!({"message_id": letter.message_id, "duplicate": duplicate}),
                        )
                        .await?;
                    report.resolved += 1;
                }
                Err(Failure::Refused(reason) | Failure::Transient(reason)) => {
                    tracing::warn!(consumer = %self.name, message = %letter.message_id, %reason, "replayed message still fails; it stays parked");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Replays the dead letters if `factum deadletters replay` asked for it and no replay has
    /// answered yet.
    async fn replay_if_requested(&self) -> Result<(), StoreError> {
        let letters = self.letters()?;
        if letters.replay_requested().await? {
            let report = self.replay_dead_letters().await?;
            tracing::info!(consumer = %self.name, resolved = report.resolved, failed = report.failed, "dead letters replayed");
            letters.answer_replay(&report).await?;
        }
        Ok(())
    }
}
