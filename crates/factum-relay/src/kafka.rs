//! A publisher to Kafka and a consumer-group source, on librdkafka (`rdkafka`). Only standard
//! Kafka semantics are used, so the same code runs against Apache Kafka, Redpanda, a managed
//! Kafka or any broker that speaks its protocol; `settings` pass librdkafka properties through
//! (SASL, TLS, timeouts).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use serde::Deserialize;

use crate::consumer::{Acknowledge, ConsumeError, Delivery, IncomingMessage, MessageSource};
use crate::message::{OutboundMessage, headers};
use crate::publisher::{Confirmation, PublishError, Publisher};

const BROKER: &str = "kafka";

/// librdkafka's log lines, into `tracing` (target `librdkafka`). Its warning at every start
/// that `enable.gapless.guarantee` is experimental is a choice Factum made knowingly (see
/// [`KafkaPublisher`]): it is logged at debug level.
#[derive(Clone, Copy, Default)]
struct Logs;

impl rdkafka::ClientContext for Logs {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        if facility == "CONFWARN" && message.contains("enable.gapless.guarantee") {
            tracing::debug!(target: "librdkafka", "{facility} {message}");
            return;
        }
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(target: "librdkafka", "{facility} {message}");
            }
            Level::Warning => tracing::warn!(target: "librdkafka", "{facility} {message}"),
            Level::Notice | Level::Info => {
                tracing::info!(target: "librdkafka", "{facility} {message}");
            }
            Level::Debug => tracing::debug!(target: "librdkafka", "{facility} {message}"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Logs {}

/// Properties Factum sets itself, which `settings` may not change: they are what makes the
/// relay's and the consumer's guarantees.
const PRODUCER_OWN: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.gapless.guarantee",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
];
const CONSUMER_OWN: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
];

/// Where and how a [`KafkaPublisher`] publishes.
///
/// ```toml
/// [relay.kafka]
/// brokers = "127.0.0.1:9092"      # bootstrap.servers
/// topic = "orders"                # every message to one topic, or:
/// # topic_prefix = "factum"       # one topic per stream category: "factum.order"
/// partitions = 3                  # for topics it creates
/// [relay.kafka.settings]          # librdkafka properties, passed through
/// "security.protocol" = "SASL_SSL"
/// "sasl.mechanism" = "SCRAM-SHA-512"
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The brokers to start from (`bootstrap.servers`), e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Every message goes to this topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Or: each stream category has its topic, `{topic_prefix}.{category}`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Create a topic that is missing (where the broker allows it).
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// Partitions of a topic the publisher creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each partition of a topic the publisher creates.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// How long a send waits for every in-sync replica's acknowledgement before the relay
    /// counts it failed. The producer goes on trying (in order); the relay sends again from
    /// its checkpoint once what the producer still holds is delivered.
    #[serde(default = "default_ack_timeout", with = "crate::config::seconds")]
    pub ack_timeout: Duration,
    /// librdkafka properties passed through (security, SASL, TLS, batching). Those that make
    /// the guarantees (idempotence, `acks`, the brokers) are Factum's and refused here.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}

impl KafkaConfig {
    /// Every message to `topic` on `brokers`, topics created when missing with 3 partitions
    /// and 1 replica, 30 seconds for an acknowledgement.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic: Some(topic.into()),
            topic_prefix: None,
            create_topics: true,
            partitions: default_partitions(),
            replication: default_replication(),
            ack_timeout: default_ack_timeout(),
            settings: BTreeMap::new(),
        }
    }

    /// Checks the configuration: one of `topic` and `topic_prefix`, valid topic names, no
    /// setting that would change the guarantees.
    pub fn check(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("brokers is empty".into());
        }
        match (&self.topic, &self.topic_prefix) {
            (Some(topic), None) => check_topic(topic, "topic")?,
            (None, Some(prefix)) => check_topic(prefix, "topic_prefix")?,
            _ => return Err("set exactly one of topic and topic_prefix".into()),
        }
        if self.partitions < 1 {
            return Err(format!("partitions is {}; at least 1", self.partitions));
        }
        if self.replication < 1 {
            return Err(format!("replication is {}; at least 1", self.replication));
        }
        check_settings(&self.settings, PRODUCER_OWN)
    }

    /// The topic of `message`.
    fn topic_of(&self, message: &OutboundMessage) -> String {
        match (&self.topic, &self.topic_prefix) {
            (Some(topic), _) => topic.clone(),
            (None, Some(prefix)) => format!("{prefix}.{}", topic_token(&message.category)),
            (None, None) => topic_token(&message.category),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = base_config(&self.brokers, &self.settings);
        // No message times out in the producer: a message given up on would let a later one
        // of its partition through first (the producer starts its sequence numbers again),
        // so the producer keeps trying, in order, and the relay's wait is `ack_timeout`.
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("enable.gapless.guarantee", "true")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", "0");
        if !self.settings.contains_key("linger.ms") {
            config.set("linger.ms", "2");
        }
        config
    }
}

/// A Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, and not `.` or `..`.
fn check_topic(name: &str, setting: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{setting} {name:?} is not a topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"
        ))
    }
}

/// A category as part of a topic name: characters a topic may not hold become `_`.
fn topic_token(text: &str) -> String {
    if text.is_empty() {
        return "_".into();
    }
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A client configuration: the settings passed through, then the brokers.
fn base_config(brokers: &str, settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in settings {
        config.set(key, value);
    }
    config.set("bootstrap.servers", brokers);
    config
}

fn check_settings(settings: &BTreeMap<String, String>, own: &[&str]) -> Result<(), String> {
    for key in settings.keys() {
        if own.contains(&key.as_str()) {
            return Err(format!(
                "settings may not set {key:?}; Factum sets it to keep its guarantees"
            ));
        }
    }
    Ok(())
}

/// Publishes to Kafka with an idempotent producer and `acks=all`: the key is the stream name
/// (one stream's messages stay in one partition, in order); the headers carry the message id
/// (the event id, which consumers de-duplicate on), type, stream, revision, position,
/// correlation and causation ids and the trace context (`traceparent`) when the event has one.
///
/// Messages are pipelined and a send's [`Confirmation`] completes once every one of its
/// messages is acknowledged by the in-sync replicas. The producer keeps each partition's order
/// across its retries, and a failure that could leave a gap stops it
/// (`enable.gapless.guarantee`): the relay then sends again from its checkpoint, with a new
/// producer. Topics are created when missing, where the broker allows.
pub struct KafkaPublisher {
    config: KafkaConfig,
    producer: Option<FutureProducer<Logs>>,
    /// Topics known to exist.
    topics: HashSet<String>,
    /// Set by a confirmation that failed: a new producer before the next send.
    broken: Arc<AtomicBool>,
    /// Set by a confirmation that timed out: the producer still holds messages, and nothing
    /// new goes out before they are delivered (a copy sent now could overtake them).
    waiting: Arc<AtomicBool>,
}

impl KafkaPublisher {
    /// A publisher; it connects on first use.
    pub fn new(config: KafkaConfig) -> Self {
        KafkaPublisher {
            config,
            producer: None,
            topics: HashSet::new(),
            broken: Arc::new(AtomicBool::new(false)),
            waiting: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A producer that has reached the brokers.
    async fn connect(&self) -> Result<FutureProducer<Logs>, PublishError> {
        self.config
            .check()
            .map_err(|e| PublishError::new(BROKER, e))?;
        let producer: FutureProducer<Logs> = self
            .config
            .client_config()
            .create_with_context(Logs)
            .map_err(|e| PublishError::new(BROKER, format!("settings: {e}")))?;
        let reaching = producer.clone();
        reach(&self.config.brokers, move || {
            reaching
                .client()
                .fetch_metadata(None, REACH_TIMEOUT)
                .map(|_| ())
        })
        .await
        .map_err(|e| PublishError::new(BROKER, e))?;
        Ok(producer)
    }

    /// Drops the producer off the runtime's threads (dropping it purges what it holds and
    /// waits up to half a second for the purge); the next send makes a new one.
    fn discard_producer(&mut self) {
        if let Some(producer) = self.producer.take() {
            tokio::task::spawn_blocking(move || drop(producer));
        }
    }

    /// Makes sure `topic` exists: created when missing (and allowed), else an error naming it.
    async fn ensure_topic(&mut self, topic: &str) -> Result<(), PublishError> {
        if self.topics.contains(topic) {
            return Ok(());
        }
        if self.config.create_topics {
            create_topic(&self.config, topic)
                .await
                .map_err(|e| PublishError::new(BROKER, e))?;
        }
        self.topics.insert(topic.to_owned());
        Ok(())
    }
}

/// How long a client waits for the brokers' metadata when it starts.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `fetch` (a client's metadata call, which blocks) on a blocking thread, so that the
/// runtime, of either flavour, goes on meanwhile; an error says the brokers are out of reach.
async fn reach<F>(brokers: &str, fetch: F) -> Result<(), String>
where
    F: FnOnce() -> rdkafka::error::KafkaResult<()> + Send + 'static,
{
    match tokio::task::spawn_blocking(fetch).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "cannot reach the brokers {brokers:?} (brokers): {e}"
        )),
        Err(e) => Err(format!("reaching the brokers {brokers:?}: {e}")),
    }
}

/// Creates `topic` with the configured partitions and replicas; one that exists is fine.
async fn create_topic(config: &KafkaConfig, topic: &str) -> Result<(), String> {
    let admin: AdminClient<Logs> = base_config(&config.brokers, &config.settings)
        .create_with_context(Logs)
        .map_err(|e| format!("settings: {e}"))?;
    let new = NewTopic::new(
        topic,
        config.partitions,
        TopicReplication::Fixed(config.replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| format!("cannot create topic {topic:?}: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(format!(
                    "cannot create topic {name:?} (create_topics): {code}; create it, or give the relay the right to"
                ));
            }
        }
    }
    Ok(())
}

fn message_headers(message: &OutboundMessage) -> OwnedHeaders {
    let id = message.id.to_string();
    let revision = message.revision.to_string();
    let position = message.position.to_string();
    let mut map = OwnedHeaders::new_with_capacity(10)
        .insert(text(headers::MESSAGE_ID, &id))
        .insert(text(headers::TYPE, &message.event.event_type))
        .insert(text(headers::STREAM, &message.stream))
        .insert(text(headers::REVISION, &revision))
        .insert(text(headers::POSITION, &position))
        .insert(text("Content-Type", &message.event.content_type));
    if let Some(id) = &message.correlation_id {
        map = map.insert(text(headers::CORRELATION_ID, id));
    }
    if let Some(id) = &message.causation_id {
        map = map.insert(text(headers::CAUSATION_ID, id));
    }
    if let Some(trace) = &message.traceparent {
        map = map.insert(text(headers::TRACEPARENT, trace));
    }
    map
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[async_trait::async_trait]
impl Publisher for KafkaPublisher {
    fn broker(&self) -> &'static str {
        BROKER
    }

    async fn send(&mut self, messages: &[OutboundMessage]) -> Result<Confirmation, PublishError> {
        if self.broken.swap(false, Ordering::SeqCst) {
            self.discard_producer();
        }
        if self.waiting.load(Ordering::SeqCst) {
            let held = self.producer.as_ref().map_or(0, |p| p.in_flight_count());
            if held > 0 {
                return Err(PublishError::new(
                    BROKER,
                    format!(
                        "{held} messages of earlier sends are still being delivered to {}",
                        self.config.brokers
                    ),
                ));
            }
            self.waiting.store(false, Ordering::SeqCst);
        }
        let producer = match &self.producer {
            Some(producer) => producer.clone(),
            None => {
                let producer = self.connect().await?;
                self.producer = Some(producer.clone());
                producer
            }
        };
        let mut deliveries: Vec<(DeliveryFuture, uuid::Uuid)> = Vec::with_capacity(messages.len());
        for message in messages {
            let topic = self.config.topic_of(message);
            if let Err(e) = self.ensure_topic(&topic).await {
                self.discard_producer();
                return Err(e);
            }
            let mut record = FutureRecord::to(&topic)
                .key(message.stream.as_str())
                .payload(message.event.payload.as_ref())
                .headers(message_headers(message));
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push((delivery, message.id));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The producer's queue is full: let it drain.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        self.discard_producer();
                        return Err(PublishError::new(
                            BROKER,
                            format!("publish {}: {e}", message.id),
                        ));
                    }
                }
            }
        }
        let (broken, waiting) = (self.broken.clone(), self.waiting.clone());
        let (timeout, count) = (self.config.ack_timeout, deliveries.len());
        Ok(Box::pin(async move {
            let confirmed = tokio::time::timeout(timeout, async {
                for (delivery, id) in deliveries {
                    let failed = match delivery.await {
                        Ok(Ok(_)) => None,
                        Ok(Err((e, _))) => Some(format!("confirm of {id}: {e}")),
                        Err(_) => Some(format!("confirm of {id}: the producer was dropped")),
                    };
                    if let Some(error) = failed {
                        // A delivery failed for good (the producer stops at a possible gap):
                        // the next send makes a new producer.
                        broken.store(true, Ordering::SeqCst);
                        return Err(PublishError::new(BROKER, error));
                    }
                }
                Ok(())
            })
            .await;
            confirmed.unwrap_or_else(|_| {
                waiting.store(true, Ordering::SeqCst);
                Err(PublishError::new(
                    BROKER,
                    format!("{count} messages not all acknowledged within {timeout:?}"),
                ))
            })
        }))
    }
}

/// Where a [`KafkaSource`] takes messages from: a consumer group's share of some topics.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// The brokers to start from (`bootstrap.servers`).
    pub brokers: String,
    /// The consumer group (`group.id`): its members share the topics' partitions, and it
    /// remembers what was handled across restarts.
    pub group: String,
    /// The topics to take messages from.
    pub topics: Vec<String>,
    /// Where a group that has no committed offset for a partition starts: `earliest` (the
    /// default: nothing published before the group existed is missed) or `latest`.
    #[serde(default = "default_reset")]
    pub start: String,
    /// librdkafka properties passed through (security, SASL, TLS, `session.timeout.ms`,
    /// `max.poll.interval.ms`). The group and offset handling are Factum's and refused here.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

fn default_reset() -> String {
    "earliest".into()
}

impl KafkaSourceConfig {
    /// The group `group` on `brokers` taking `topics`, from the earliest message.
    pub fn new(
        brokers: impl Into<String>,
        group: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        KafkaSourceConfig {
            brokers: brokers.into(),
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            start: default_reset(),
            settings: BTreeMap::new(),
        }
    }

    /// Checks the configuration.
    pub fn check(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("brokers is empty".into());
        }
        if self.group.is_empty() {
            return Err("group is empty".into());
        }
        if self.topics.is_empty() {
            return Err("topics is empty".into());
        }
        for topic in &self.topics {
            check_topic(topic, "topics")?;
        }
        if !matches!(self.start.as_str(), "earliest" | "latest") {
            return Err(format!(
                "start is {:?}; \"earliest\" or \"latest\"",
                self.start
            ));
        }
        check_settings(&self.settings, CONSUMER_OWN)
    }
}

/// Takes messages from Kafka as a member of a consumer group, for a
/// [`Consumer`](crate::Consumer). The message id is the `Factum-Message-Id` header (or, for a
/// message published without one, `{topic}:{partition}:{offset}`); the type is the
/// `Factum-Type` header (or the topic).
///
/// A message's offset is stored for the group's next commit only when the consumer
/// acknowledges it, that is once its command's outcome is stored; the consumer handles one
/// message at a time, so a partition's offset never passes a message not yet handled. After a
/// rebalance or a crash the group's new owner of a partition starts after the last committed
/// offset: what comes again is recognised by its command id.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: Option<Arc<StreamConsumer<Logs>>>,
}

impl KafkaSource {
    /// A source; it joins the group on first use.
    pub fn new(config: KafkaSourceConfig) -> Self {
        KafkaSource {
            config,
            consumer: None,
        }
    }

    async fn connect(&self) -> Result<Arc<StreamConsumer<Logs>>, ConsumeError> {
        self.config
            .check()
            .map_err(|e| ConsumeError::new(BROKER, e))?;
        let mut config = base_config(&self.config.brokers, &self.config.settings);
        config
            .set("group.id", &self.config.group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &self.config.start);
        let consumer: StreamConsumer<Logs> = config
            .create_with_context(Logs)
            .map_err(|e| ConsumeError::new(BROKER, format!("settings: {e}")))?;
        let consumer = Arc::new(consumer);
        let reaching = consumer.clone();
        reach(&self.config.brokers, move || {
            reaching
                .client()
                .fetch_metadata(None, REACH_TIMEOUT)
                .map(|_| ())
        })
        .await
        .map_err(|e| ConsumeError::new(BROKER, e))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ConsumeError::new(BROKER, format!("subscribe to {topics:?}: {e}")))?;
        Ok(consumer)
    }
}

/// Stores a message's offset for the group's next commit.
struct KafkaAck {
    consumer: Arc<StreamConsumer<Logs>>,
    topic: String,
    partition: i32,
    offset: i64,
}

#[async_trait::async_trait]
impl Acknowledge for KafkaAck {
    async fn ack(self: Box<Self>) -> Result<(), ConsumeError> {
        // librdkafka stores the offset after this one: where the group goes on from.
        self.consumer
            .store_offset(&self.topic, self.partition, self.offset)
            .map_err(|e| {
                ConsumeError::new(
                    BROKER,
                    format!(
                        "offset {} of {}[{}] (the partition may have moved to another member): {e}",
                        self.offset, self.topic, self.partition
                    ),
                )
            })
    }
}

#[async_trait::async_trait]
impl MessageSource for KafkaSource {
    fn broker(&self) -> &'static str {
        BROKER
    }

    async fn next(&mut self) -> Result<Delivery, ConsumeError> {
        let consumer = match &self.consumer {
            Some(consumer) => consumer.clone(),
            None => {
                let consumer = self.connect().await?;
                self.consumer = Some(consumer.clone());
                consumer
            }
        };
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(e) => {
                if is_fatal(&e) {
                    self.consumer = None;
                }
                return Err(ConsumeError::new(BROKER, e));
            }
        };
        let mut fields = BTreeMap::new();
        if let Some(map) = message.headers() {
            for header in map.iter() {
                if let Some(value) = header.value {
                    fields.insert(
                        header.key.to_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                }
            }
        }
        let topic = message.topic().to_owned();
        let (partition, offset) = (message.partition(), message.offset());
        let id = fields
            .get(headers::MESSAGE_ID)
            .cloned()
            .unwrap_or_else(|| format!("{topic}:{partition}:{offset}"));
        let message_type = fields
            .get(headers::TYPE)
            .cloned()
            .unwrap_or_else(|| topic.clone());
        let data = bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
        drop(message);
        Ok(Delivery {
            message: IncomingMessage {
                id,
                message_type,
                subject: topic.clone(),
                data,
                headers: fields,
                redelivered: false,
            },
            acker: Box::new(KafkaAck {
                consumer,
                topic,
                partition,
                offset,
            }),
        })
    }
}

/// An error after which the consumer must be made again (librdkafka recovers from the rest).
fn is_fatal(error: &KafkaError) -> bool {
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configurations_are_checked() {
        assert!(KafkaConfig::new("127.0.0.1:9092", "orders").check().is_ok());
        let mut bad = KafkaConfig::new("127.0.0.1:9092", "orders and more");
        assert!(bad.check().unwrap_err().contains("topic"));
        bad.topic = Some("orders".into());
        bad.topic_prefix = Some("factum".into());
        assert!(bad.check().unwrap_err().contains("exactly one"));
        bad.topic_prefix = None;
        bad.settings.insert("acks".into(), "1".into());
        assert!(bad.check().unwrap_err().contains("\"acks\""));
        let mut source = KafkaSourceConfig::new("127.0.0.1:9092", "g", ["orders"]);
        assert!(source.check().is_ok());
        source.start = "middle".into();
        assert!(source.check().unwrap_err().contains("start"));
        source.start = "latest".into();
        source
            .settings
            .insert("enable.auto.commit".into(), "false".into());
        assert!(source.check().unwrap_err().contains("enable.auto.commit"));
    }

    #[test]
    fn categories_become_topic_names() {
        assert_eq!(topic_token("order"), "order");
        assert_eq!(topic_token("ünï code.x"), "_n__code_x");
        assert_eq!(topic_token(""), "_");
        assert!(check_topic(".", "topic").is_err());
        assert!(check_topic(&"a".repeat(250), "topic").is_err());
    }
}
