//! The brokers the tests use, and a TCP proxy that can cut every connection through it.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use factum_core::{Direction, EventStore, ExpectedState, NewEvent, StreamName};
use factum_relay::{Publisher, Relay, RelayError, RelayStatus};
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::sync::watch;

pub fn nats_url() -> String {
    std::env::var("FACTUM_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn rabbitmq_url() -> String {
    std::env::var("FACTUM_TEST_RABBITMQ")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_owned()
}

/// Whether the broker at `url` answers; under `CI=true` it must. Outside CI a missing broker
/// skips the test with the reason printed.
pub async fn reachable(name: &str, url: &str) -> bool {
    match TcpStream::connect(host_port(url)).await {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: {name} at {url} is not reachable ({e})");
            false
        }
        Err(e) => panic!("{name} at {url} is needed under CI=true: {e}"),
    }
}

/// A name no other test of this run uses.
pub fn unique(label: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{label}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Appends `per_stream` events to each of `streams` streams `{category}-{i}`, interleaved,
/// with types cycling through `types`; returns them in append order as (stream, type).
pub async fn append_orders(
    store: &dyn EventStore,
    category: &str,
    streams: usize,
    per_stream: usize,
    types: &[&str],
) -> Vec<(String, String)> {
    let mut appended = Vec::new();
    for n in 0..per_stream {
        for s in 0..streams {
            let stream = format!("{category}-{s}");
            let event_type = types[(n + s) % types.len()];
            let event = NewEvent::json(event_type, &serde_json::json!({ "n": n, "s": s })).unwrap();
            store
                .append(
                    &StreamName::user(&stream).unwrap(),
                    ExpectedState::Any,
                    vec![event],
                )
                .await
                .unwrap();
            appended.push((stream, event_type.to_owned()));
        }
    }
    appended
}

/// A message as a test reads it back from a broker.
#[derive(Clone, Debug)]
pub struct Received {
    pub subject: String,
    pub id: String,
    pub event_type: String,
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub payload: Vec<u8>,
}

pub async fn jetstream(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// Every message in the JetStream stream `name`, in stream order, waiting until there are
/// at least `expect` or `patience` passes without a new one.
pub async fn read_jetstream(
    url: &str,
    name: &str,
    expect: usize,
    patience: Duration,
) -> Vec<Received> {
    let context = jetstream(url).await;
    let stream = context.get_stream(name).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut received = Vec::new();
    while received.len() < expect {
        let Ok(Some(message)) = tokio::time::timeout(patience, messages.next()).await else {
            break;
        };
        let message = message.unwrap();
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        received.push(Received {
            subject: message.subject.to_string(),
            id: header("Nats-Msg-Id"),
            event_type: header("Factum-Type"),
            stream: header("Factum-Stream"),
            revision: header("Factum-Revision").parse().unwrap(),
            position: header("Factum-Position").parse().unwrap(),
            payload: message.payload.to_vec(),
        });
    }
    // Anything more would be a duplicate JetStream should have dropped.
    if let Ok(Some(Ok(extra))) =
        tokio::time::timeout(Duration::from_millis(300), messages.next()).await
    {
        panic!("more than {expect} messages: {:?}", extra.headers);
    }
    received
}

pub async fn delete_jetstream(url: &str, name: &str) {
    let _ = jetstream(url).await.delete_stream(name).await;
}

/// Per stream, the revisions received (the first delivery of each message id) only rise.
pub fn assert_stream_order(received: &[Received]) {
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for message in received {
        if !seen.insert(message.id.as_str()) {
            continue;
        }
        if let Some(before) = last.insert(message.stream.as_str(), message.revision) {
            assert!(
                message.revision > before,
                "{} revision {} arrived after {before}",
                message.stream,
                message.revision
            );
        }
    }
}

/// Each received message with the stored event it names by id; checks that it carries that
/// event's stream, revision and position.
pub async fn with_stored_events<'a>(
    store: &dyn EventStore,
    received: &'a [Received],
) -> Vec<(&'a Received, factum_core::RecordedEvent)> {
    let stored = store
        .read_all(0, Direction::Forwards, 100_000)
        .await
        .unwrap();
    received
        .iter()
        .map(|message| {
            let event = stored
                .iter()
                .find(|e| e.id.to_string() == message.id)
                .unwrap_or_else(|| panic!("no stored event has the id of {message:?}"))
                .clone();
            assert_eq!(event.stream.as_str(), message.stream);
            assert_eq!(event.revision, message.revision);
            assert_eq!(event.position, message.position);
            (message, event)
        })
        .collect()
}

/// A TCP proxy to `target` whose connections can all be cut at once.
pub struct Proxy {
    pub address: String,
    cut: Arc<watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (cut, _) = watch::channel(0u64);
        let cut = Arc::new(cut);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { address, cut, task }
    }

    /// Drops every connection open through the proxy (new ones are accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Declares the durable topic exchange `exchange` and a durable queue `queue` bound to it for
/// `binding`; returns the connection.
pub async fn rabbit_queue(
    url: &str,
    exchange: &str,
    queue: &str,
    binding: &str,
) -> lapin::Connection {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    connection
}

/// Reads the queue until `expect` distinct message ids arrived or `patience` passes without a
/// message; returns every delivery (duplicates included), in order.
pub async fn read_rabbit_queue(
    url: &str,
    queue: &str,
    expect: usize,
    patience: Duration,
) -> Vec<Received> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut ids = std::collections::HashSet::new();
    while ids.len() < expect {
        let Ok(Some(delivery)) = tokio::time::timeout(patience, consumer.next()).await else {
            break;
        };
        let delivery = delivery.unwrap();
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            Some(AMQPValue::LongLongInt(n)) => n.to_string(),
            _ => String::new(),
        };
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        ids.insert(id.clone());
        received.push(Received {
            subject: delivery.routing_key.to_string(),
            id,
            event_type: text("Factum-Type"),
            stream: text("Factum-Stream"),
            revision: text("Factum-Revision").parse().unwrap(),
            position: text("Factum-Position").parse().unwrap(),
            payload: delivery.data.clone(),
        });
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = connection.close(0, "done".into()).await;
    received
}

pub async fn delete_rabbit(url: &str, exchange: &str, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    if let Ok(connection) =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = connection.close(0, "done".into()).await;
    }
}

/// An embedded store in a temporary directory (kept as long as the directory).
pub fn engine_store() -> (tempfile::TempDir, Arc<dyn EventStore>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = factum_engine::Engine::open(dir.path(), factum_engine::EngineOptions::default());
    (dir, Arc::new(engine.unwrap()))
}

/// The last event a relay can take: after it come only checkpoints.
pub async fn appended_last(store: &dyn EventStore) -> u64 {
    store
        .read_all(u64::MAX, Direction::Backwards, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| !e.stream.is_system())
        .unwrap()
        .position
}

pub async fn caught_up(status: &mut watch::Receiver<RelayStatus>, store: &dyn EventStore) {
    let last = appended_last(store).await;
    let caught = tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.checkpoint >= Some(last)),
    )
    .await
    .is_ok();
    assert!(
        caught,
        "the relay did not catch up in 60 s: {:?} (head {})",
        *status.borrow(),
        store.head()
    );
}

/// A relay running in a task until `stop`.
pub struct Running {
    pub status: watch::Receiver<RelayStatus>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RelayError>>,
}

pub fn spawn_relay(relay: Relay, mut publisher: impl Publisher + 'static) -> Running {
    let status = relay.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(&mut publisher, async {
                let _ = stopped.await;
            })
            .await
    });
    Running { status, stop, task }
}

impl Running {
    pub async fn stop(self) -> RelayStatus {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        self.status.borrow().clone()
    }
}

/// The service the consumer tests send commands to: a tally per order stream, counting each
/// message it is asked to count. A message whose body says `"refuse": true` is refused.
pub mod tally {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use factum_core::{Direction, EventStore};
    use factum_relay::{
        Acknowledge, ConsumeError, Consumer, ConsumerStatus, Delivery, IncomingMessage,
        MessageSource, headers,
    };
    use factum_toolkit::CommandBus;
    use factum_toolkit::{Decider, Repository, ToAggregate};
    use serde::{Deserialize, Serialize};
    use tokio::sync::{oneshot, watch};

    pub struct Tally;

    #[derive(Serialize, Deserialize)]
    pub enum TallyEvent {
        Counted { message: String },
    }

    pub struct Count {
        pub message: String,
        pub refuse: bool,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused to count {0}")]
    pub struct Refused(pub String);

    impl Decider for Tally {
        type State = u64;
        type Command = Count;
        type Event = TallyEvent;
        type Error = Refused;
        const CATEGORY: &'static str = "tally";
        fn initial_state(&self) -> u64 {
            0
        }
        fn decide(&self, _: &u64, count: &Count) -> Result<Vec<TallyEvent>, Refused> {
            if count.refuse {
                return Err(Refused(count.message.clone()));
            }
            Ok(vec![TallyEvent::Counted {
                message: count.message.clone(),
            }])
        }
        fn evolve(&self, n: u64, _: &TallyEvent) -> u64 {
            n + 1
        }
    }

    /// The tally service's command bus over `store`.
    pub fn bus(store: Arc<dyn EventStore>) -> CommandBus {
        let tallies = Arc::new(Repository::new(store, Tally));
        CommandBus::builder()
            .handle::<ToAggregate<Tally>, _>(tallies.handler())
            .build()
            .unwrap()
    }

    /// Which tally a message counts in (its order stream) and the command.
    pub fn decode(message: &IncomingMessage) -> Result<(String, Count), String> {
        let stream = message
            .headers
            .get(headers::STREAM)
            .ok_or("the message names no stream")?;
        let body: serde_json::Value = message.json()?;
        Ok((
            stream.clone(),
            Count {
                message: message.id.clone(),
                refuse: body["refuse"].as_bool().unwrap_or(false),
            },
        ))
    }

    /// The `Counted` events in `store`, per tally stream, and the message ids counted.
    pub async fn counted(store: &dyn EventStore) -> (HashMap<String, u64>, Vec<String>) {
        let mut per_stream = HashMap::new();
        let mut messages = Vec::new();
        let mut from = 0;
        loop {
            let page = store
                .read_all(from, Direction::Forwards, 1000)
                .await
                .unwrap();
            let Some(last) = page.last() else {
                return (per_stream, messages);
            };
            from = last.position + 1;
            for event in page.iter().filter(|e| e.event_type == "Counted") {
                *per_stream.entry(event.stream.to_string()).or_insert(0) += 1;
                let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
                messages.push(data["message"].as_str().unwrap().to_owned());
            }
        }
    }

    /// A source whose first `lose` acknowledgements never reach the broker, as if the
    /// connection had dropped just before each: the broker delivers those messages again.
    pub struct LosingAcks<S> {
        inner: S,
        lose: Arc<AtomicUsize>,
        /// The real acknowledgers of the lost ones, kept unused: the deliveries stay pending.
        kept: Vec<Box<dyn Acknowledge>>,
    }

    impl<S> LosingAcks<S> {
        pub fn new(inner: S, lose: usize) -> Self {
            LosingAcks {
                inner,
                lose: Arc::new(AtomicUsize::new(lose)),
                kept: Vec::new(),
            }
        }
    }

    struct Lost;

    #[async_trait::async_trait]
    impl Acknowledge for Lost {
        async fn ack(self: Box<Self>) -> Result<(), ConsumeError> {
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl<S: MessageSource> MessageSource for LosingAcks<S> {
        fn broker(&self) -> &'static str {
            self.inner.broker()
        }
        async fn next(&mut self) -> Result<Delivery, ConsumeError> {
            let mut delivery = self.inner.next().await?;
            let lose = self
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lose {
                self.kept
                    .push(std::mem::replace(&mut delivery.acker, Box::new(Lost)));
            }
            Ok(delivery)
        }
    }

    /// A consumer running in a task until `stop`.
    pub struct RunningConsumer {
        pub status: watch::Receiver<ConsumerStatus>,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<ConsumerStatus>,
    }

    pub fn spawn(consumer: Consumer, mut source: impl MessageSource + 'static) -> RunningConsumer {
        let status = consumer.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            consumer
                .run(&mut source, async {
                    let _ = stopped.await;
                })
                .await
        });
        RunningConsumer { status, stop, task }
    }

    impl RunningConsumer {
        pub async fn stop(self) -> ConsumerStatus {
            let _ = self.stop.send(());
            self.task.await.unwrap()
        }

        /// Waits (at most `secs`) until `done` holds of the status.
        pub async fn wait_for(
            &mut self,
            secs: u64,
            what: &str,
            done: impl Fn(&ConsumerStatus) -> bool,
        ) {
            let reached = tokio::time::timeout(
                std::time::Duration::from_secs(secs),
                self.status.wait_for(|s| done(s)),
            )
            .await
            .is_ok();
            assert!(
                reached,
                "{what}: not within {secs} s: {:?}",
                *self.status.borrow()
            );
        }
    }
}

fn rabbitmqctl(action: &str) {
    let status = std::process::Command::new("rabbitmqctl")
        .arg(action)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("rabbitmqctl {action}: {e}"));
    assert!(status.success(), "rabbitmqctl {action}: {status}");
}

/// Whether `rabbitmqctl` can restart the broker; under `CI=true` it must.
pub fn can_restart_rabbitmq() -> bool {
    if std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "CI must be able to restart RabbitMQ"
    );
    eprintln!("skipping: rabbitmqctl is not available to restart RabbitMQ");
    false
}

/// Stops the RabbitMQ application for a second and starts it again.
pub async fn restart_rabbitmq() {
    tokio::task::spawn_blocking(|| {
        rabbitmqctl("stop_app");
        std::thread::sleep(Duration::from_secs(1));
        rabbitmqctl("start_app");
    })
    .await
    .unwrap();
}

/// The Kafka-protocol broker the tests use (`.ci/run` starts one there).
pub fn kafka_brokers() -> String {
    std::env::var("FACTUM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Settings that let a consumer group form quickly on a test broker.
pub fn quick_group_settings() -> std::collections::BTreeMap<String, String> {
    [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
        ("max.poll.interval.ms", "6000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A message read back from Kafka, with its key and partition.
#[derive(Clone, Debug)]
pub struct KafkaReceived {
    pub received: Received,
    pub key: String,
    pub partition: i32,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Every message of `topic` from the beginning of each partition (no group: the partitions
/// are assigned by hand), waiting until there are at least `expect` or `patience` passes
/// without a new one. Per partition in offset order.
pub async fn read_kafka(
    brokers: &str,
    topic: &str,
    expect: usize,
    patience: Duration,
) -> Vec<KafkaReceived> {
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::{Headers as _, Message as _};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = tokio::task::block_in_place(|| {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap()
    });
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut received = Vec::new();
    while received.len() < expect {
        let Ok(message) = tokio::time::timeout(patience, consumer.recv()).await else {
            break;
        };
        let message = message.unwrap();
        let mut headers = std::collections::BTreeMap::new();
        if let Some(map) = message.headers() {
            for header in map.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        let field = |name: &str| headers.get(name).cloned().unwrap_or_default();
        received.push(KafkaReceived {
            received: Received {
                subject: message.topic().to_owned(),
                id: field(factum_relay::headers::MESSAGE_ID),
                event_type: field(factum_relay::headers::TYPE),
                stream: field(factum_relay::headers::STREAM),
                revision: field(factum_relay::headers::REVISION).parse().unwrap(),
                position: field(factum_relay::headers::POSITION).parse().unwrap(),
                payload: message.payload().unwrap_or_default().to_vec(),
            },
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            partition: message.partition(),
            headers,
        });
    }
    received
}

/// The Tansu broker binary (`.ci/run` builds it into ~/.cache/factum/tansu), if there is one:
/// `FACTUM_TANSU`, then `tansu` on the path, then the cache. Under `CI=true` it must exist.
pub fn tansu_binary() -> Option<std::path::PathBuf> {
    let candidates = std::env::var_os("FACTUM_TANSU")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("tansu"))
                .collect::<Vec<_>>()
        }))
        .chain(
            std::env::var_os("HOME")
                .map(|home| std::path::PathBuf::from(home).join(".cache/factum/tansu/bin/tansu")),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the Tansu broker is needed under CI=true (.ci/run builds it)");
    }
    eprintln!("skipping: no tansu binary (FACTUM_TANSU, PATH, ~/.cache/factum/tansu/bin)");
    None
}

/// A Tansu broker of the test's own, on a free loopback port, storing in SQLite in `dir`: it
/// can be killed and started again on the same data.
pub struct OwnBroker {
    binary: std::path::PathBuf,
    dir: std::path::PathBuf,
    pub address: String,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    pub async fn start(binary: std::path::PathBuf, dir: &std::path::Path) -> OwnBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = OwnBroker {
            binary,
            dir: dir.to_owned(),
            address: format!("127.0.0.1:{port}"),
            child: None,
        };
        broker.run().await;
        broker
    }

    async fn run(&mut self) {
        let url = format!("tcp://{}", self.address);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap();
        let child = std::process::Command::new(&self.binary)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(&self.address).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the test's broker did not listen on {} in 10 s",
            self.address
        );
    }

    /// SIGKILL, then the same broker on the same data and port again after `down`.
    pub async fn restart(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
        self.run().await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
