//! What the broker examples share: which broker connects the services, and the names of one
//! run's broker objects (so that runs do not meet).
#![allow(dead_code)]

use factum::{
    Consumer, IncomingMessage, KafkaConfig, KafkaPublisher, KafkaSource, KafkaSourceConfig,
    MessageSource, NatsConfig, NatsPublisher, NatsSource, NatsSourceConfig, Publisher,
    RabbitConfig, RabbitPublisher, RabbitSource, RabbitSourceConfig, Relay,
};
use tokio::sync::watch;

/// Which broker connects the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Nats,
    RabbitMq,
    Kafka,
}

impl Broker {
    /// How long a message may take from one service to the next, at most, once the services
    /// run: a Kafka consumer group takes a few seconds to form when the services start.
    pub fn settle_time(self) -> std::time::Duration {
        match self {
            Broker::Kafka => std::time::Duration::from_secs(8),
            _ => std::time::Duration::from_secs(2),
        }
    }
}

pub fn nats_url() -> String {
    std::env::var("FACTUM_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("FACTUM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn rabbitmq_url() -> String {
    std::env::var("FACTUM_TEST_RABBITMQ")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Names of this run's broker objects, so that runs do not meet.
pub struct Wiring {
    broker: Broker,
    /// What the example is called in the broker's names.
    label: &'static str,
    run: String,
}

impl Wiring {
    /// Fresh names for a run of example `label` over `broker`.
    pub fn new(broker: Broker, label: &'static str) -> Self {
        Wiring {
            broker,
            label,
            run: format!("{}x{}", std::process::id(), uuid::Uuid::now_v7().simple()),
        }
    }

    pub fn stream(&self) -> String {
        format!("{}{}", self.label.to_uppercase(), self.run)
    }
    pub fn prefix(&self) -> String {
        format!("{}{}", self.label, self.run)
    }
    pub fn exchange(&self) -> String {
        format!("factum.{}.{}", self.label, self.run)
    }

    pub fn publisher(&self) -> Box<dyn Publisher> {
        match self.broker {
            Broker::Nats => Box::new(NatsPublisher::new(NatsConfig {
                subject_prefix: self.prefix(),
                jetstream_stream: Some(self.stream()),
                ..NatsConfig::new(nats_url())
            })),
            Broker::RabbitMq => Box::new(RabbitPublisher::new(RabbitConfig {
                exchange: self.exchange(),
                ..RabbitConfig::new(rabbitmq_url())
            })),
            // One topic per category: `{prefix}.{category}`.
            Broker::Kafka => Box::new(KafkaPublisher::new(KafkaConfig {
                topic: None,
                topic_prefix: Some(self.prefix()),
                ..KafkaConfig::new(kafka_brokers(), "unused")
            })),
        }
    }

    fn kafka_topic(&self, category: &str) -> String {
        format!("{}.{category}", self.prefix())
    }

    /// A durable subscription of `service` to the messages of the `categories` of others.
    pub fn source(&self, service: &str, categories: &[&str]) -> Box<dyn MessageSource> {
        match self.broker {
            Broker::Nats => Box::new(NatsSource::new(NatsSourceConfig {
                filter_subjects: categories
                    .iter()
                    .map(|c| format!("{}.{c}.>", self.prefix()))
                    .collect(),
                ..NatsSourceConfig::new(nats_url(), self.stream(), service)
            })),
            Broker::RabbitMq => {
                Box::new(RabbitSource::new(self.rabbit_source(service, categories)))
            }
            // A consumer group per service, on the topics of the categories it takes.
            Broker::Kafka => {
                let mut config = KafkaSourceConfig::new(
                    kafka_brokers(),
                    format!("{}-{service}", self.prefix()),
                    categories.iter().map(|c| self.kafka_topic(c)),
                );
                // Small groups on one broker: let them form in a few seconds.
                for (key, value) in [
                    ("session.timeout.ms", "6000"),
                    ("heartbeat.interval.ms", "1000"),
                    ("max.poll.interval.ms", "6000"),
                ] {
                    config.settings.insert(key.into(), value.into());
                }
                Box::new(KafkaSource::new(config))
            }
        }
    }

    pub fn rabbit_source(&self, service: &str, categories: &[&str]) -> RabbitSourceConfig {
        RabbitSourceConfig {
            exchange: self.exchange(),
            bindings: categories.iter().map(|c| format!("{c}.#")).collect(),
            ..RabbitSourceConfig::new(rabbitmq_url(), format!("{}.{service}", self.exchange()))
        }
    }

    /// Declares the queues before anything is published (RabbitMQ drops what no queue is bound
    /// to receive; JetStream keeps it in the stream).
    pub async fn prepare(&self, subscriptions: &[(&str, &[&str])]) -> Result<(), String> {
        match self.broker {
            Broker::Nats => {
                // Create the stream by publishing nothing: the relay's publisher creates it on
                // connection, the consumers need it to exist first.
                let client = async_nats::connect(nats_url())
                    .await
                    .map_err(|e| e.to_string())?;
                async_nats::jetstream::new(client)
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: self.stream(),
                        subjects: vec![format!("{}.>", self.prefix())],
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Broker::RabbitMq => {
                for (service, categories) in subscriptions {
                    let mut source = RabbitSource::new(self.rabbit_source(service, categories));
                    source.declare().await.map_err(|e| e.to_string())?;
                }
            }
            Broker::Kafka => {
                // The topics exist before the groups subscribe to them.
                let admin = self.kafka_admin()?;
                let topics: std::collections::BTreeSet<String> = subscriptions
                    .iter()
                    .flat_map(|(_, categories)| categories.iter().map(|c| self.kafka_topic(c)))
                    .collect();
                let new: Vec<_> = topics
                    .iter()
                    .map(|t| {
                        rdkafka::admin::NewTopic::new(
                            t,
                            3,
                            rdkafka::admin::TopicReplication::Fixed(1),
                        )
                    })
                    .collect();
                for result in admin
                    .create_topics(&new, &rdkafka::admin::AdminOptions::new())
                    .await
                    .map_err(|e| e.to_string())?
                {
                    match result {
                        Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => return Err(format!("topic {topic}: {code}")),
                    }
                }
            }
        }
        Ok(())
    }

    fn kafka_admin(
        &self,
    ) -> Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>, String> {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .create()
            .map_err(|e| e.to_string())
    }

    pub async fn clean_up(&self, services: &[&str]) {
        match self.broker {
            Broker::Kafka => {
                // The run's topics stay (their names are the run's own). Deleting them here
                // races the consumers' last fetches, which the test broker (Tansu 0.6.0) does
                // not survive: its storage task panics on a fetch of a topic deleted under it,
                // and every later client of the broker gets errors.
                let _ = services;
            }
            Broker::Nats => {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(self.stream())
                        .await;
                }
            }
            Broker::RabbitMq => {
                use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
                if let Ok(connection) = lapin::Connection::connect(
                    &rabbitmq_url(),
                    lapin::ConnectionProperties::default(),
                )
                .await
                    && let Ok(channel) = connection.create_channel().await
                {
                    for service in services {
                        let queue = format!("{}.{service}", self.exchange());
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    let _ = channel
                        .exchange_delete(
                            self.exchange().as_str().into(),
                            ExchangeDeleteOptions::default(),
                        )
                        .await;
                    let _ = connection.close(0, "done".into()).await;
                }
            }
        }
    }
}

/// Runs `task` until `stop` turns true.
pub fn spawn_until<F>(
    stop: &watch::Receiver<bool>,
    task: impl FnOnce(Shutdown) -> F,
) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut stop = stop.clone();
    tokio::spawn(task(Box::pin(async move {
        let _ = stop.wait_for(|s| *s).await;
    })))
}

pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub fn spawn_relay(
    relay: Relay,
    mut publisher: Box<dyn Publisher>,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    spawn_until(stop, |shutdown| async move {
        if let Err(e) = relay.run(&mut *publisher, shutdown).await {
            eprintln!("relay stopped: {e}");
        }
    })
}

pub fn spawn_consumer(
    consumer: Consumer,
    mut source: Box<dyn MessageSource>,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    spawn_until(stop, |shutdown| async move {
        consumer.run(&mut *source, shutdown).await;
    })
}

pub fn header(message: &IncomingMessage, name: &str) -> Result<String, String> {
    message
        .headers
        .get(name)
        .cloned()
        .ok_or_else(|| format!("{} has no {name} header", message.id))
}

/// Whether the broker at `url` answers; under `CI=true` it must. Outside CI a missing broker
/// skips the test with the reason printed.
pub async fn reachable(name: &str, url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let address = rest.split('/').next().unwrap_or(rest);
    match tokio::net::TcpStream::connect(address).await {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: {name} at {url} is not reachable ({e})");
            false
        }
        Err(e) => panic!("{name} at {url} is needed under CI=true: {e}"),
    }
}

/// The broker named on the command line: `nats` (the default), `rabbitmq` or `kafka`.
pub fn broker_from_args() -> Result<Broker, String> {
    match std::env::args().nth(1).as_deref() {
        None | Some("nats") => Ok(Broker::Nats),
        Some("rabbitmq") => Ok(Broker::RabbitMq),
        Some("kafka") => Ok(Broker::Kafka),
        Some(other) => Err(format!("unknown broker '{other}': nats, rabbitmq or kafka")),
    }
}
