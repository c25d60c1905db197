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

/// Completes once the broker has confirmed every message of one [`Publisher::send`].
pub type Confirmation =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PublishError>> + Send>>;

/// Sends messages to a broker. RabbitMQ ([`crate::RabbitPublisher`]) and NATS JetStream
/// ([`crate::NatsPublisher`]) are built in; a Kafka publisher fits the same trait.
///
/// A publisher connects on first use and again after a failure: the relay only calls
/// [`Publisher::send`] again after a backoff, and starts again from its checkpoint.
#[async_trait::async_trait]
pub trait Publisher: Send {
    /// The broker's name, for logs and errors.
    fn broker(&self) -> &'static str;

    /// Sends `messages` in this order and returns a [`Confirmation`] that completes once the
    /// broker has confirmed (stored) every one. The relay may send the next messages before an
    /// earlier confirmation has completed, and awaits confirmations in the order of the sends:
    /// a publisher must keep that order on the broker, or confirm before it returns.
    ///
    /// On an error some messages may have been stored: the relay sends them again, with the
    /// same ids.
    async fn send(&mut self, messages: &[OutboundMessage]) -> Result<Confirmation, PublishError>;

    /// Sends `messages` and waits for the broker's confirmation.
    async fn publish(&mut self, messages: &[OutboundMessage]) -> Result<(), PublishError> {
        self.send(messages).await?.await
    }
}
