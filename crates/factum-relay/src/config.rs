//! Relays configured in a file, as `factum serve --relays FILE` and `factum relay FILE` read it.
//!
//! ```toml
//! [[relay]]
//! name = "orders-to-nats"          # its checkpoint's name
//! stream_prefixes = ["order-"]     # optional: only these streams
//! payload = "data"                 # "zero" (ids, type and place only; the default) or "data"
//! [relay.types]                    # what leaves, under which external type; required for
//! OrderPlaced = "order.placed.v1"  # "data", optional for "zero" (then every event leaves)
//! OrderCancelled = "order.cancelled.v1"
//! [relay.nats]
//! url = "nats://127.0.0.1:4222"
//! jetstream_stream = "ORDERS"      # created when missing, taking "factum.>"
//!
//! [[relay]]
//! name = "orders-to-rabbitmq"
//! [relay.rabbitmq]
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! exchange = "factum.events"
//!
//! [[relay]]
//! name = "orders-to-kafka"
//! [relay.kafka]
//! brokers = "127.0.0.1:9092"
//! topic = "orders"                 # or topic_prefix = "factum": one topic per category
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use factum_core::EventStore;
use serde::Deserialize;

use crate::message::{Payload, TypeMap, ZeroPayload};
use crate::publisher::Publisher;
use crate::relay::{Relay, RelayError};

/// A `[relay.nats]` section: read as NATS's configuration when the `nats` feature is built,
/// and refused when the relay is built otherwise.
#[cfg(feature = "nats")]
type NatsSection = crate::NatsConfig;
#[cfg(not(feature = "nats"))]
type NatsSection = serde::de::IgnoredAny;
/// A `[relay.rabbitmq]` section, as [`NatsSection`] for the `rabbitmq` feature.
#[cfg(feature = "rabbitmq")]
type RabbitSection = crate::RabbitConfig;
#[cfg(not(feature = "rabbitmq"))]
type RabbitSection = serde::de::IgnoredAny;
/// A `[relay.kafka]` section, as [`NatsSection`] for the `kafka` feature.
#[cfg(feature = "kafka")]
type KafkaSection = crate::KafkaConfig;
#[cfg(not(feature = "kafka"))]
type KafkaSection = serde::de::IgnoredAny;

/// Durations in configuration files: seconds, fractions allowed.
#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
pub(crate) mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

/// A relays file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaysConfig {
    /// The relays.
    #[serde(default)]
    pub relay: Vec<RelayConfig>,
}

/// One relay of a relays file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Its name, which is also its checkpoint's.
    pub name: String,
    /// Only events of streams starting with one of these.
    #[serde(default)]
    pub stream_prefixes: Vec<String>,
    /// What of an event's data leaves.
    #[serde(default = "zero")]
    pub payload: Payload,
    /// Domain type → external type. Only these leave; without it (zero payload only) every
    /// event leaves under its own type.
    #[serde(default)]
    pub types: Option<BTreeMap<String, String>>,
    /// At most this many messages per publish.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Publish to NATS JetStream.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// Publish to RabbitMQ.
    #[serde(default)]
    pub rabbitmq: Option<RabbitSection>,
    /// Publish to Kafka.
    #[serde(default)]
    pub kafka: Option<KafkaSection>,
}

fn zero() -> Payload {
    Payload::Zero
}

/// A relays file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("relays file {path}: {message}")]
pub struct RelaysFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl RelaysConfig {
    /// Reads and checks a relays file.
    pub fn from_file(path: &Path) -> Result<Self, RelaysFileError> {
        let error = |message: String| RelaysFileError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let config = Self::parse(&text).map_err(error)?;
        Ok(config)
    }

    /// Parses and checks the text of a relays file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: RelaysConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::HashSet::new();
        for relay in &config.relay {
            if !names.insert(relay.name.as_str()) {
                return Err(format!("two relays are named {:?}", relay.name));
            }
            relay.check()?;
        }
        Ok(config)
    }
}

impl RelayConfig {
    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        let brokers = [
            self.nats.is_some(),
            self.rabbitmq.is_some(),
            self.kafka.is_some(),
        ];
        if brokers.iter().filter(|named| **named).count() != 1 {
            return Err(format!(
                "relay {name:?} needs exactly one of [relay.nats], [relay.rabbitmq] and [relay.kafka]"
            ));
        }
        #[cfg(feature = "kafka")]
        if let Some(kafka) = &self.kafka {
            kafka
                .check()
                .map_err(|e| format!("relay {name:?}: [relay.kafka] {e}"))?;
        }
        match (&self.types, self.payload) {
            (None, Payload::Data) => Err(format!(
                "relay {name:?} sends event data, so it must name the types that leave in [relay.types]"
            )),
            (Some(types), _) if types.is_empty() => Err(format!(
                "relay {name:?} has an empty [relay.types]: nothing would leave"
            )),
            _ => Ok(()),
        }
    }

    /// The relay over `store`, and the publisher it publishes with.
    pub fn build(
        &self,
        store: Arc<dyn EventStore>,
    ) -> Result<(Relay, Box<dyn Publisher>), RelayError> {
        self.check().map_err(RelayError::Invalid)?;
        let mut builder =
            Relay::builder(self.name.clone(), store).stream_prefixes(self.stream_prefixes.clone());
        if let Some(batch) = self.batch {
            builder = builder.batch(batch);
        }
        builder = match &self.types {
            Some(types) => builder.translator(
                types
                    .iter()
                    .fold(TypeMap::new(), |map, (domain, external)| {
                        map.map(domain, external, self.payload)
                    }),
            ),
            None => builder.translator(ZeroPayload),
        };
        Ok((builder.build()?, self.publisher()?))
    }

    /// The publisher of the one broker the relay names ([`RelayConfig::check`]).
    fn publisher(&self) -> Result<Box<dyn Publisher>, RelayError> {
        let name = &self.name;
        match (&self.nats, &self.rabbitmq, &self.kafka) {
            #[cfg(feature = "nats")]
            (Some(nats), _, _) => Ok(Box::new(crate::NatsPublisher::new(nats.clone()))),
            #[cfg(not(feature = "nats"))]
            (Some(_), _, _) => Err(RelayError::Invalid(format!(
                "relay {name:?} publishes to NATS, which needs Factum's `nats` feature"
            ))),
            #[cfg(feature = "rabbitmq")]
            (_, Some(rabbitmq), _) => Ok(Box::new(crate::RabbitPublisher::new(rabbitmq.clone()))),
            #[cfg(not(feature = "rabbitmq"))]
            (_, Some(_), _) => Err(RelayError::Invalid(format!(
                "relay {name:?} publishes to RabbitMQ, which needs Factum's `rabbitmq` feature"
            ))),
            #[cfg(feature = "kafka")]
            (_, _, Some(kafka)) => Ok(Box::new(crate::KafkaPublisher::new(kafka.clone()))),
            #[cfg(not(feature = "kafka"))]
            (_, _, Some(_)) => Err(RelayError::Invalid(format!(
                "relay {name:?} publishes to Kafka, which needs Factum's `kafka` feature"
            ))),
            (None, None, None) => Err(RelayError::Invalid(format!(
                "relay {name:?} names no broker"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_are_checked() {
        let good = RelaysConfig::parse(
            r#"
            [[relay]]
            name = "a"
            payload = "data"
            types = { OrderPlaced = "order.placed" }
            nats = { url = "nats://127.0.0.1:4222", jetstream_stream = "S" }
            [[relay]]
            name = "b"
            rabbitmq = { url = "amqp://127.0.0.1:5672" }
            [[relay]]
            name = "c"
            kafka = { brokers = "127.0.0.1:9092", topic_prefix = "factum", settings = { "linger.ms" = "5" } }
            "#,
        )
        .unwrap();
        assert_eq!(good.relay.len(), 3);
        assert_eq!(good.relay[1].payload, Payload::Zero);
        let bad = [
            // Data without an explicit map of what leaves.
            "[[relay]]\nname='a'\npayload='data'\nnats={url='nats://x'}",
            // No broker, or two.
            "[[relay]]\nname='a'",
            "[[relay]]\nname='a'\nnats={url='x'}\nrabbitmq={url='y'}",
            // An empty map lets nothing out.
            "[[relay]]\nname='a'\ntypes={}\nnats={url='x'}",
            // Two relays with one name would share a checkpoint.
            "[[relay]]\nname='a'\nnats={url='x'}\n[[relay]]\nname='a'\nnats={url='x'}",
            // Unknown keys are refused, not ignored.
            "[[relay]]\nname='a'\nnats={url='x'}\nstream_prefix=['o-']",
            "[[relay]]\nname='a'\nkafka={brokers='x',topic='t',topics=['u']}",
            // Kafka: a topic and a prefix, neither, a bad topic name, a guarantee overridden.
            "[[relay]]\nname='a'\nkafka={brokers='x',topic='t',topic_prefix='p'}",
            "[[relay]]\nname='a'\nkafka={brokers='x'}",
            "[[relay]]\nname='a'\nkafka={brokers='x',topic='a b'}",
            "[[relay]]\nname='a'\nkafka={brokers='x',topic='t',settings={acks='1'}}",
        ];
        for text in bad {
            assert!(RelaysConfig::parse(text).is_err(), "accepted: {text}");
        }
    }
}
