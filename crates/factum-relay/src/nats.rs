//! A publisher to NATS JetStream.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use serde::Deserialize;

use futures::StreamExt;

use crate::consumer::{Acknowledge, ConsumeError, Delivery, IncomingMessage, MessageSource};
use crate::message::{OutboundMessage, headers};
use crate::publisher::{Confirmation, PublishError, Publisher};

const BROKER: &str = "nats";

/// Where and how a [`NatsPublisher`] publishes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subjects are `{subject_prefix}.{category}.{type}`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// A JetStream stream taking `{subject_prefix}.>`, created when missing. Without it the
    /// subjects must already belong to a stream.
    #[serde(default)]
    pub jetstream_stream: Option<String>,
    /// How long the broker remembers message ids to drop duplicates (created streams only).
    #[serde(default = "default_window", with = "crate::config::seconds")]
    pub duplicate_window: Duration,
    /// How long to wait for the broker to confirm a message.
    #[serde(default = "default_timeout", with = "crate::config::seconds")]
    pub ack_timeout: Duration,
}

fn default_prefix() -> String {
    "factum".into()
}
fn default_window() -> Duration {
    Duration::from_secs(120)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl NatsConfig {
    /// A configuration with the defaults: prefix `factum`, no stream created, a two-minute
    /// duplicate window and a five-second confirm timeout.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            subject_prefix: default_prefix(),
            jetstream_stream: None,
            duplicate_window: default_window(),
            ack_timeout: default_timeout(),
        }
    }
}

/// The header JetStream de-duplicates by: a message's id.
const MSG_ID: &str = "Nats-Msg-Id";

/// Connects to the server at `url`, giving up after five seconds.
async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// Publishes to NATS JetStream: the subject is `{prefix}.{category}.{type}`, the header
/// `Nats-Msg-Id` is the event id (so JetStream drops a duplicate within its window), and each
/// publish is confirmed by JetStream's acknowledgement. Messages of different streams are
/// pipelined; a stream's next message is sent only once its previous one is confirmed, so each
/// stream's messages are stored in order even when the connection drops mid-batch.
pub struct NatsPublisher {
    config: NatsConfig,
    context: Option<jetstream::Context>,
}

impl NatsPublisher {
    /// A publisher; it connects on first use.
    pub fn new(config: NatsConfig) -> Self {
        NatsPublisher {
            config,
            context: None,
        }
    }

    async fn connect(&self) -> Result<jetstream::Context, PublishError> {
        let client = connect(&self.config.url)
            .await
            .map_err(|e| PublishError::new(BROKER, e))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(self.config.ack_timeout)
            .max_ack_inflight(4096)
            .build(client);
        if let Some(name) = &self.config.jetstream_stream {
            context
                .get_or_create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{}.>", self.config.subject_prefix)],
                    duplicate_window: self.config.duplicate_window,
                    ..Default::default()
                })
                .await
                .map_err(|e| PublishError::new(BROKER, format!("JetStream stream {name}: {e}")))?;
        }
        Ok(context)
    }
}

#[async_trait::async_trait]
impl Publisher for NatsPublisher {
    fn broker(&self) -> &'static str {
        BROKER
    }

    /// Confirms before it returns: a stream's next message may only go out once its previous
    /// one is stored (see [`NatsPublisher`]).
    async fn send(&mut self, messages: &[OutboundMessage]) -> Result<Confirmation, PublishError> {
        let context = match &self.context {
            Some(context) => context.clone(),
            None => {
                let context = self.connect().await?;
                self.context = Some(context.clone());
                context
            }
        };
        let result = publish_all(
            &context,
            &self.config.subject_prefix,
            self.config.ack_timeout,
            messages,
        )
        .await;
        if result.is_err() {
            // Connect afresh next time (the client also reconnects by itself).
            self.context = None;
        }
        result.map(|()| -> Confirmation { Box::pin(std::future::ready(Ok(()))) })
    }
}

async fn publish_all(
    context: &jetstream::Context,
    prefix: &str,
    ack_timeout: Duration,
    messages: &[OutboundMessage],
) -> Result<(), PublishError> {
    // The client resends what it had queued after a reconnection, while what was in the lost
    // socket is gone: a later message could be stored before an earlier one that is sent again.
    // So a stream's next message goes out only once its previous one is confirmed: the batch
    // goes in waves, the n-th message of every stream in the n-th wave.
    let mut rank: HashMap<&str, usize> = HashMap::new();
    let mut waves: Vec<Vec<&OutboundMessage>> = Vec::new();
    for message in messages {
        let n = rank.entry(message.stream.as_str()).or_default();
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(message);
        *n += 1;
    }
    for wave in waves {
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(wave.len());
        for message in &wave {
            let ack = context
                .send_publish(
                    message.subject(prefix),
                    jetstream::message::PublishMessage::build()
                        .headers(message_headers(message))
                        .payload(message.event.payload.clone()),
                )
                .await
                .map_err(|e| PublishError::new(BROKER, format!("publish {}: {e}", message.id)))?;
            acks.push(ack);
        }
        // Each acknowledgement has its own timeout; the wave as a whole gets the same.
        let count = wave.len();
        tokio::time::timeout(ack_timeout, async {
            for (ack, message) in acks.into_iter().zip(&wave) {
                ack.await.map_err(|e| {
                    PublishError::new(BROKER, format!("confirm of {}: {e}", message.id))
                })?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| {
            Err(PublishError::new(
                BROKER,
                format!("{count} messages not all confirmed within {ack_timeout:?}"),
            ))
        })?;
    }
    Ok(())
}

fn message_headers(message: &OutboundMessage) -> HeaderMap {
    let mut map = HeaderMap::new();
    let id = message.id.to_string();
    map.insert(MSG_ID, id.as_str());
    map.insert(headers::MESSAGE_ID, id.as_str());
    map.insert(headers::TYPE, message.event.event_type.as_str());
    map.insert(headers::STREAM, message.stream.as_str());
    map.insert(headers::REVISION, message.revision.to_string().as_str());
    map.insert(headers::POSITION, message.position.to_string().as_str());
    map.insert("Content-Type", message.event.content_type.as_str());
    if let Some(id) = &message.correlation_id {
        map.insert(headers::CORRELATION_ID, id.as_str());
    }
    if let Some(id) = &message.causation_id {
        map.insert(headers::CAUSATION_ID, id.as_str());
    }
    if let Some(trace) = &message.traceparent {
        map.insert(headers::TRACEPARENT, trace.as_str());
    }
    map
}

/// Where a [`NatsSource`] takes messages from: a durable pull consumer of a JetStream stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream (for a relay's messages: its `jetstream_stream`).
    pub stream: String,
    /// The durable consumer's name: it remembers what was acknowledged across restarts.
    pub durable: String,
    /// Only subjects matching these (e.g. `factum.order.>`); all of the stream when empty.
    #[serde(default)]
    pub filter_subjects: Vec<String>,
    /// A message not acknowledged within this long is delivered again.
    #[serde(default = "default_ack_wait", with = "crate::config::seconds")]
    pub ack_wait: Duration,
    /// Messages delivered and not yet acknowledged, at most. 1 keeps the stream's order even
    /// across redeliveries, at the cost of a round trip per message.
    #[serde(default = "default_ack_pending")]
    pub max_ack_pending: i64,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_ack_pending() -> i64 {
    1000
}

impl NatsSourceConfig {
    /// The durable consumer `durable` of the JetStream stream `stream`, with the defaults: all
    /// subjects, redelivery after 30 s, up to 1000 messages unacknowledged.
    pub fn new(
        url: impl Into<String>,
        stream: impl Into<String>,
        durable: impl Into<String>,
    ) -> Self {
        NatsSourceConfig {
            url: url.into(),
            stream: stream.into(),
            durable: durable.into(),
            filter_subjects: Vec::new(),
            ack_wait: default_ack_wait(),
            max_ack_pending: default_ack_pending(),
        }
    }
}

/// Takes messages from a JetStream durable pull consumer (created when missing), for a
/// [`Consumer`](crate::Consumer). The message id is the `Nats-Msg-Id` header (or, for a message
/// published without one, `{stream}:{sequence}`); the type is the `Factum-Type` header (or the
/// subject's last token).
pub struct NatsSource {
    config: NatsSourceConfig,
    messages: Option<jetstream::consumer::pull::Stream>,
}

impl NatsSource {
    /// A source; it connects on first use.
    pub fn new(config: NatsSourceConfig) -> Self {
        NatsSource {
            config,
            messages: None,
        }
    }

    async fn connect(&self) -> Result<jetstream::consumer::pull::Stream, ConsumeError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ConsumeError::new(BROKER, format!("{what} {}: {e}", self.config.url))
        };
        let client = connect(&self.config.url)
            .await
            .map_err(|e| ConsumeError::new(BROKER, e))?;
        let context = jetstream::new(client);
        let stream = context
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| fail(&format!("JetStream stream {} on", self.config.stream), &e))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.config.durable,
                jetstream::consumer::pull::Config {
                    durable_name: Some(self.config.durable.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    filter_subjects: self.config.filter_subjects.clone(),
                    max_ack_pending: self.config.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| fail(&format!("consumer {} on", self.config.durable), &e))?;
        consumer
            .stream()
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .map_err(|e| fail("cannot pull from", &e))
    }
}

fn incoming(message: &jetstream::Message) -> IncomingMessage {
    let mut fields = std::collections::BTreeMap::new();
    if let Some(map) = &message.headers {
        for (name, values) in map.iter() {
            if let Some(value) = values.first() {
                fields.insert(name.to_string(), value.as_str().to_owned());
            }
        }
    }
    let info = message.info().ok();
    let id = fields
        .get(MSG_ID)
        .cloned()
        .or_else(|| {
            info.as_ref()
                .map(|info| format!("{}:{}", info.stream, info.stream_sequence))
        })
        .unwrap_or_default();
    let subject = message.subject.to_string();
    let message_type = fields
        .get(headers::TYPE)
        .cloned()
        .unwrap_or_else(|| subject.rsplit('.').next().unwrap_or_default().to_owned());
    IncomingMessage {
        id,
        message_type,
        subject,
        data: message.payload.clone(),
        headers: fields,
        redelivered: info.is_some_and(|info| info.delivered > 1),
    }
}

struct NatsAck(jetstream::Message);

#[async_trait::async_trait]
impl Acknowledge for NatsAck {
    async fn ack(self: Box<Self>) -> Result<(), ConsumeError> {
        self.0.ack().await.map_err(|e| ConsumeError::new(BROKER, e))
    }
}

#[async_trait::async_trait]
impl MessageSource for NatsSource {
    fn broker(&self) -> &'static str {
        BROKER
    }

    async fn next(&mut self) -> Result<Delivery, ConsumeError> {
        let messages = match &mut self.messages {
            Some(messages) => messages,
            None => self.messages.insert(self.connect().await?),
        };
        match messages.next().await {
            Some(Ok(message)) => Ok(Delivery {
                message: incoming(&message),
                acker: Box::new(NatsAck(message)),
            }),
            Some(Err(e)) => {
                self.messages = None;
                Err(ConsumeError::new(BROKER, e))
            }
            None => {
                self.messages = None;
                Err(ConsumeError::new(BROKER, "the subscription ended"))
            }
        }
    }
}
