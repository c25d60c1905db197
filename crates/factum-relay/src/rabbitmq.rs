//! A publisher to RabbitMQ, with publisher confirms.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;

use crate::message::{OutboundMessage, headers};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        tokio::time::timeout(WAIT, self.connect_now())
            .await
            .map_err(|_| {
                PublishError::new(
                    BROKER,
                    format!("connecting to {} took over {WAIT:?}", self.config.url),
                )
            })?
    }

    async fn connect_now(&self) -> Result<(Connection, Channel), PublishError> {
        let connection = Connection::connect(
            &self.config.url,
            ConnectionProperties::default().with_connection_name("factum-relay".into()),
        )
        .await
        .map_err(|e| {
            PublishError::new(
                BROKER,
                format!("cannot connect to {}: {e}", self.config.url),
            )
        })?;
        let channel = connection.create_channel().await.map_err(error)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(error)?;
        channel
            .exchange_declare(
                short(&self.config.exchange),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(error)?;
        Ok((connection, channel))
    }
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

async fn send_all(
    channel: &Channel,
    config: &RabbitConfig,
    messages: &[OutboundMessage],
) -> Result<Vec<(lapin::PublisherConfirm, uuid::Uuid)>, PublishError> {
    let exchange = short(&config.exchange);
    let mut confirms = Vec::with_capacity(messages.len());
    for message in messages {
        let confirm = channel
            .basic_publish(
                exchange.clone(),
                short(&message.subject(&config.routing_prefix)),
                BasicPublishOptions::default(),
                &message.event.payload,
                properties(message),
            )
            .await
            .map_err(error)?;
        confirms.push((confirm, message.id));
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
