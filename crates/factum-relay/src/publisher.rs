//! The broker side of a relay: a [`Publisher`] sends messages in order and returns once the
//! broker has confirmed every one of them.

use crate::message::OutboundMessage;

/// Why a publish failed. The relay publishes the same messages again, from its checkpoint, after
/// a backoff.
#[derive(Debug, thiserror::Error)]
#[error("{broker}: {message}")]
pub struct PublishError {
    /// The broker (`nats`, `rabbitmq`, ...).
    pub broker: &'static str,
    /// What went wrong.
    pub message: String,
}

impl PublishError {
    /// An error of `broker`.
    pub fn new(broker: &'static str, message: impl std::fmt::Display) -> Self {
        PublishError {
            broker,
            message: message.to_string(),
        }
    }
}

/// Sends messages to a broker. RabbitMQ ([`crate::RabbitPublisher`]) and NATS JetStream
/// ([`crate::NatsPublisher`]) are built in; a Kafka publisher fits the same trait.
///
/// A publisher connects on first use and again after a failure: the relay only calls
/// [`Publisher::publish`] again after a backoff.
#[async_trait::async_trait]
pub trait Publisher: Send {
    /// The broker's name, for logs and errors.
    fn broker(&self) -> &'static str;

    /// Publishes `messages` in this order and returns once the broker has confirmed (stored)
    /// every one. On an error some of them may have been stored: the relay sends them again,
    /// with the same ids.
    async fn publish(&mut self, messages: &[OutboundMessage]) -> Result<(), PublishError>;
}
