//! A publisher to RabbitMQ, with publisher confirms.

use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;

use crate::message::{OutboundMessage, headers};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::consumer::{Acknowledge, ConsumeError, Delivery, IncomingMessage, MessageSource};
use crate::publisher::{Confirmation, PublishError, Publisher};

const BROKER: &str = "rabbitmq";
/// The longest wait for the broker: to connect, to take a batch, to confirm it.
const WAIT: Duration = Duration::from_secs(10);

/// Where a [`RabbitPublisher`] publishes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// The server, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// A durable topic exchange, declared when missing.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Routing keys are `{routing_prefix}.{category}.{type}` (without the prefix when empty).
    #[serde(default)]
    pub routing_prefix: String,
}

fn default_exchange() -> String {
    "factum.events".into()
}

impl RabbitConfig {
    /// A configuration for the exchange `factum.events`, routing keys `{category}.{type}`.
    pub fn new(url: impl Into<String>) -> Self {
        RabbitConfig {
            url: url.into(),
            exchange: default_exchange(),
            routing_prefix: String::new(),
        }
    }
}

/// Publishes to a RabbitMQ topic exchange with publisher confirms: the routing key is
/// `{category}.{type}`, the `message_id` property is the event id, messages are persistent, and
/// a publish counts only once the broker has confirmed it. Messages go out in order on one
/// channel, so each queue receives them in that order; several sends may await their confirms
/// at once (a lost message takes every later one of its connection with it, and the relay
/// sends them all again in order).
///
/// A message no queue is bound to receive is confirmed and dropped by RabbitMQ, as for any
/// topic exchange: bind the consumers' queues before the relay starts.
pub struct RabbitPublisher {
    config: RabbitConfig,
    connection: Option<(Connection, Channel)>,
    /// Set by a confirmation that failed: connect afresh before the next send.
    broken: Arc<AtomicBool>,
}

impl RabbitPublisher {
    /// A publisher; it connects on first use.
    pub fn new(config: RabbitConfig) -> Self {
        RabbitPublisher {
            config,
            connection: None,
            broken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Connects, opens a confirming channel and declares the exchange, all within [`WAIT`].
    async fn connect(&self) -> Result<(Connection, Channel), PublishError> {
        within(&self.config.url, self.connect_now(), |e| {
            PublishError::new(BROKER, e)
        })
        .await
    }

    async fn connect_now(&self) -> Result<(Connection, Channel), PublishError> {
        let connection = open(&self.config.url, "factum-relay")
            .await
            .map_err(|e| PublishError::new(BROKER, e))?;
        let channel = connection.create_channel().await.map_err(error)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(error)?;
        declare_exchange(&channel, &self.config.exchange)
            .await
            .map_err(error)?;
        Ok((connection, channel))
    }
}

/// `connecting` to `url`, given [`WAIT`] at most; `error` makes the error that it took longer.
async fn within<T, E>(
    url: &str,
    connecting: impl Future<Output = Result<T, E>>,
    error: impl FnOnce(String) -> E,
) -> Result<T, E> {
    tokio::time::timeout(WAIT, connecting)
        .await
        .unwrap_or_else(|_| Err(error(format!("connecting to {url} took over {WAIT:?}"))))
}

/// Opens a connection to `url`, named `name` in the broker's connection list.
async fn open(url: &str, name: &str) -> Result<Connection, String> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// Declares the durable topic exchange `name` (nothing changes when it exists).
async fn declare_exchange(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            short(name),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Closes a connection that may be dead already: a second at most.
async fn close(connection: Connection) {
    let closing = connection.close(0, "reconnecting".into());
    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
}

fn error(e: lapin::Error) -> PublishError {
    PublishError::new(BROKER, e)
}

/// `text` cut to the 255 bytes an AMQP short string holds (at a character boundary).
fn short(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&text[..end]).unwrap_or_default()
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn properties(message: &OutboundMessage) -> BasicProperties {
    let mut table = FieldTable::default();
    let id = message.id.to_string();
    table.insert(headers::MESSAGE_ID.into(), long(&id));
    table.insert(headers::TYPE.into(), long(&message.event.event_type));
    table.insert(headers::STREAM.into(), long(&message.stream));
    table.insert(
        headers::REVISION.into(),
        AMQPValue::LongLongInt(message.revision as i64),
    );
    table.insert(
        headers::POSITION.into(),
        AMQPValue::LongLongInt(message.position as i64),
    );
    if let Some(id) = &message.causation_id {
        table.insert(headers::CAUSATION_ID.into(), long(id));
    }
    if let Some(trace) = &message.traceparent {
        table.insert(headers::TRACEPARENT.into(), long(trace));
    }
    let mut properties = BasicProperties::default()
        .with_message_id(short(&id))
        .with_type(short(&message.event.event_type))
        .with_content_type(short(&message.event.content_type))
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(id) = &message.correlation_id {
        properties = properties.with_correlation_id(short(id));
    }
    properties
}

#[async_trait::async_trait]
impl Publisher for RabbitPublisher {
    fn broker(&self) -> &'static str {
        BROKER
    }

    async fn send(&mut self, messages: &[OutboundMessage]) -> Result<Confirmation, PublishError> {
        let broken = self.broken.swap(false, Ordering::SeqCst);
        let channel = match &self.connection {
            Some((connection, channel))
                if !broken && connection.status().connected() && channel.status().connected() =>
            {
                channel.clone()
            }
            _ => {
                if let Some((connection, _)) = self.connection.take() {
                    close(connection).await;
                }
                let (connection, channel) = self.connect().await?;
                self.connection = Some((connection, channel.clone()));
                channel
            }
        };
        let sent = tokio::time::timeout(WAIT, send_all(&channel, &self.config, messages))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::new(
                    BROKER,
                    format!("sending took over {WAIT:?}"),
                ))
            });
        match sent {
            Ok(confirms) => {
                let broken = self.broken.clone();
                Ok(Box::pin(async move {
                    let result = await_confirms(confirms).await;
                    if result.is_err() {
                        broken.store(true, Ordering::SeqCst);
                    }
                    result
                }))
            }
            Err(e) => {
                if let Some((connection, _)) = self.connection.take() {
                    close(connection).await;
                }
                Err(e)
            }
        }
    }
}

/// Publishes `messages` in order and returns their confirms, in the same order.
///
/// A publish hands its frames to the connection when it is first polled, then waits until they
/// are written. Each one is polled once, in order, before any is awaited: the frames queue in
/// the messages' order (which keeps each stream's order), and the connection writes them in
/// large writes instead of one round trip to its I/O thread per message.
async fn send_all(
    channel: &Channel,
    config: &RabbitConfig,
    messages: &[OutboundMessage],
) -> Result<Vec<(lapin::PublisherConfirm, uuid::Uuid)>, PublishError> {
    let exchange = short(&config.exchange);
    let mut publishes: Vec<_> = messages
        .iter()
        .map(|message| {
            Box::pin(channel.basic_publish(
                exchange.clone(),
                short(&message.subject(&config.routing_prefix)),
                BasicPublishOptions::default(),
                &message.event.payload,
                properties(message),
            ))
        })
        .collect();
    let mut done: Vec<Option<Result<lapin::PublisherConfirm, lapin::Error>>> =
        Vec::with_capacity(publishes.len());
    std::future::poll_fn(|cx| {
        done.extend(
            publishes
                .iter_mut()
                .map(|publish| match publish.as_mut().poll(cx) {
                    Poll::Ready(result) => Some(result),
                    Poll::Pending => None,
                }),
        );
        Poll::Ready(())
    })
    .await;
    let mut confirms = Vec::with_capacity(messages.len());
    for ((publish, done), message) in publishes.into_iter().zip(done).zip(messages) {
        let confirm = match done {
            Some(result) => result,
            None => publish.await,
        };
        confirms.push((confirm.map_err(error)?, message.id));
    }
    Ok(confirms)
}

/// Waits for every confirm, [`WAIT`] at most in all.
async fn await_confirms(
    confirms: Vec<(lapin::PublisherConfirm, uuid::Uuid)>,
) -> Result<(), PublishError> {
    let count = confirms.len();
    tokio::time::timeout(WAIT, async {
        for (confirm, id) in confirms {
            let confirmation = confirm.await.map_err(error)?;
            if confirmation.is_nack() {
                return Err(PublishError::new(
                    BROKER,
                    format!("the broker refused {id} (nack)"),
                ));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| {
        Err(PublishError::new(
            BROKER,
            format!("{count} messages not all confirmed within {WAIT:?}"),
        ))
    })
}

/// Where a [`RabbitSource`] takes messages from: a durable queue bound to a topic exchange.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitSourceConfig {
    /// The server, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// The durable topic exchange the relay publishes to, declared when missing.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// The durable queue, declared when missing: it keeps what arrives while the consumer is
    /// down.
    pub queue: String,
    /// The routing-key patterns the queue is bound with (`order.*`, `#`).
    #[serde(default = "default_bindings")]
    pub bindings: Vec<String>,
    /// Messages delivered and not yet acknowledged, at most.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// The type of the queue, when it is declared (`"queue_type": "quorum"` when the
    /// configuration is read with serde). A queue that exists already keeps its type; declaring
    /// it with another one fails.
    #[serde(default)]
    pub queue_type: QueueType,
}

/// The type of queue a [`RabbitSource`] declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A classic queue (RabbitMQ's own default): persistent messages are stored on disk.
    #[default]
    Classic,
    /// A quorum queue: replicated over the cluster's nodes, a message confirmed only once it is
    /// written and flushed to disk on a quorum of them. What RabbitMQ recommends where messages
    /// must not be lost; on one node it also took the relay's messages about twice as fast as a
    /// classic queue (docs/benchmarks.md).
    Quorum,
}

impl QueueType {
    /// The queue's declaration arguments.
    fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }
}

fn default_bindings() -> Vec<String> {
    vec!["#".into()]
}
fn default_prefetch() -> u16 {
    256
}

impl RabbitSourceConfig {
    /// The queue `queue` bound to every message of the exchange `factum.events`.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        RabbitSourceConfig {
            url: url.into(),
            exchange: default_exchange(),
            queue: queue.into(),
            bindings: default_bindings(),
            prefetch: default_prefetch(),
            queue_type: QueueType::default(),
        }
    }
}

/// Takes messages from a RabbitMQ queue, for a [`Consumer`](crate::Consumer). The message id is
/// the `message_id` property; the type is the `type` property (or the `Factum-Type` header).
/// Messages not acknowledged when the connection drops are delivered again by the broker.
pub struct RabbitSource {
    config: RabbitSourceConfig,
    consumer: Option<(Connection, lapin::Consumer)>,
}

impl RabbitSource {
    /// A source; it connects on first use.
    pub fn new(config: RabbitSourceConfig) -> Self {
        RabbitSource {
            config,
            consumer: None,
        }
    }

    /// Connects now, declaring the exchange, the queue and its bindings, so that what is
    /// published from now on is kept for this consumer (RabbitMQ drops messages no queue is
    /// bound to receive). The connection is kept for the first [`MessageSource::next`].
    pub async fn declare(&mut self) -> Result<(), ConsumeError> {
        if self.consumer.is_none() {
            self.consumer = Some(self.connect_within().await?);
        }
        Ok(())
    }

    async fn connect_within(&self) -> Result<(Connection, lapin::Consumer), ConsumeError> {
        within(&self.config.url, self.connect(), |e| {
            ConsumeError::new(BROKER, e)
        })
        .await
    }

    async fn connect(&self) -> Result<(Connection, lapin::Consumer), ConsumeError> {
        let config = &self.config;
        let fail = |e: lapin::Error| ConsumeError::new(BROKER, e);
        let connection = open(&config.url, "factum-consumer")
            .await
            .map_err(|e| ConsumeError::new(BROKER, e))?;
        let channel = connection.create_channel().await.map_err(fail)?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(fail)?;
        declare_exchange(&channel, &config.exchange)
            .await
            .map_err(fail)?;
        channel
            .queue_declare(
                short(&config.queue),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                config.queue_type.arguments(),
            )
            .await
            .map_err(fail)?;
        for binding in &config.bindings {
            channel
                .queue_bind(
                    short(&config.queue),
                    short(&config.exchange),
                    short(binding),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(fail)?;
        }
        let consumer = channel
            .basic_consume(
                short(&config.queue),
                short(&format!("factum-{}", config.queue)),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(fail)?;
        Ok((connection, consumer))
    }
}

/// A header's value as text.
fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn incoming(delivery: &lapin::message::Delivery) -> IncomingMessage {
    let properties = &delivery.properties;
    let mut fields: std::collections::BTreeMap<String, String> = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), text(value)))
                .collect()
        })
        .unwrap_or_default();
    let message_type = properties
        .kind()
        .as_ref()
        .map(|kind| kind.as_str().to_owned())
        .or_else(|| fields.get(headers::TYPE).cloned())
        .unwrap_or_default();
    if let Some(id) = properties.correlation_id() {
        fields
            .entry(headers::CORRELATION_ID.to_owned())
            .or_insert_with(|| id.as_str().to_owned());
    }
    IncomingMessage {
        id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        message_type,
        subject: delivery.routing_key.as_str().to_owned(),
        data: bytes::Bytes::copy_from_slice(&delivery.data),
        headers: fields,
        redelivered: delivery.redelivered,
    }
}

struct RabbitAck(lapin::Acker);

#[async_trait::async_trait]
impl Acknowledge for RabbitAck {
    async fn ack(self: Box<Self>) -> Result<(), ConsumeError> {
        tokio::time::timeout(WAIT, self.0.ack(BasicAckOptions::default()))
            .await
            .map_err(|_| ConsumeError::new(BROKER, format!("acknowledging took over {WAIT:?}")))?
            .map(|_| ())
            .map_err(|e| ConsumeError::new(BROKER, e))
    }
}

#[async_trait::async_trait]
impl MessageSource for RabbitSource {
    fn broker(&self) -> &'static str {
        BROKER
    }

    async fn next(&mut self) -> Result<Delivery, ConsumeError> {
        let consumer = match &mut self.consumer {
            Some((_, consumer)) => consumer,
            None => {
                let connected = self.connect_within().await?;
                &mut self.consumer.insert(connected).1
            }
        };
        let failure = match consumer.next().await {
            Some(Ok(delivery)) => {
                return Ok(Delivery {
                    message: incoming(&delivery),
                    acker: Box::new(RabbitAck(delivery.acker)),
                });
            }
            Some(Err(e)) => ConsumeError::new(BROKER, e),
            None => ConsumeError::new(BROKER, "the queue's consumer was cancelled"),
        };
        if let Some((connection, _)) = self.consumer.take() {
            close(connection).await;
        }
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_source_declares_a_classic_queue_unless_told_quorum() {
        let read = |json: &str| serde_json::from_str::<RabbitSourceConfig>(json).unwrap();
        let classic = read(r#"{"url": "amqp://x", "queue": "q"}"#);
        assert_eq!(classic.queue_type, QueueType::Classic);
        assert!(classic.queue_type.arguments().inner().is_empty());
        let quorum = read(r#"{"url": "amqp://x", "queue": "q", "queue_type": "quorum"}"#);
        assert_eq!(quorum.queue_type, QueueType::Quorum);
        let arguments = quorum.queue_type.arguments();
        assert_eq!(
            arguments.inner().get("x-queue-type"),
            Some(&lapin::types::AMQPValue::LongString("quorum".into()))
        );
        assert!(
            serde_json::from_str::<RabbitSourceConfig>(
                r#"{"url": "amqp://x", "queue": "q", "queue_type": "lazy"}"#
            )
            .is_err()
        );
    }
}
