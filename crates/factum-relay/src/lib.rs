//! The event store as outbox (SPEC R5.1, R5.3): a [`Relay`] follows `$all` from a durable
//! checkpoint and publishes to RabbitMQ ([`RabbitPublisher`]) or NATS JetStream
//! ([`NatsPublisher`]) what an explicit [`Translator`] lets out of the service.
//!
//! What a relay guarantees:
//! - **At least once.** The checkpoint moves only after the broker has confirmed every message
//!   before it (JetStream's acknowledgement, RabbitMQ's publisher confirm). After a failure or a
//!   crash the relay publishes again from the checkpoint, with the same message ids: JetStream
//!   drops those duplicates itself (`Nats-Msg-Id`, within its duplicate window), and consumers
//!   de-duplicate by message id.
//! - **Per-stream order.** Messages go out in log order on one connection, and a batch is
//!   confirmed before the next is sent.
//! - **Nothing leaves unmapped.** A translator returns `None` for what stays inside;
//!   [`ZeroPayload`] sends only ids, type and place; [`TypeMap`] names each type that leaves.
//! - **Lag is visible.** The checkpoint is an ordinary consumer checkpoint, so `/processors`,
//!   `/metrics` and the web UI show how far behind the relay is;
//!   [`Relay::status`] follows it in process.
//!
//! ```no_run
//! # mod factum { pub use factum_core::*; pub use factum_toolkit::*; pub use factum_relay::*; }
//! use std::sync::Arc;
//! use factum::{EventStore, MemoryStore};
//! use factum::{NatsConfig, NatsPublisher, Payload, Relay, TypeMap};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
//! let relay = Relay::builder("orders-out", store.clone())
//!     .stream_prefixes(["order-"])
//!     .translator(TypeMap::new().map("OrderPlaced", "order.placed.v1", Payload::Data))
//!     .build()?;
//! let mut nats = NatsPublisher::new(NatsConfig {
//!     jetstream_stream: Some("ORDERS".into()),
//!     ..NatsConfig::new("nats://127.0.0.1:4222")
//! });
//! relay.run(&mut nats, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod config;
mod consumer;
#[cfg(feature = "kafka")]
mod kafka;
mod message;
#[cfg(feature = "nats")]
mod nats;
mod publisher;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod relay;

pub use config::{RelayConfig, RelaysConfig, RelaysFileError};
pub use consumer::{
    Acknowledge, ConsumeError, Consumer, ConsumerBuilder, ConsumerStatus, Delivery,
    DeliveryOutcome, IncomingMessage, MessageDeadLetter, MessageSource,
    unresolved_message_dead_letters,
};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, KafkaPublisher, KafkaSource, KafkaSourceConfig};
pub use message::{
    ExternalEvent, OutboundMessage, Payload, Translator, TypeMap, ZeroPayload, headers,
    zero_payload,
};
#[cfg(feature = "nats")]
pub use nats::{NatsConfig, NatsPublisher, NatsSource, NatsSourceConfig};
pub use publisher::{Confirmation, PublishError, Publisher};
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{QueueType, RabbitConfig, RabbitPublisher, RabbitSource, RabbitSourceConfig};
pub use relay::{Backoff, Relay, RelayBuilder, RelayError, RelayStatus};
