//! `factum bench --scenarios relay-nats,relay-rabbitmq,relay-kafka`: how fast a relay empties a
//! backlog into the broker (with JetStream acknowledgements / RabbitMQ publisher confirms, the
//! broker storing every message: a quorum queue, and a classic queue beside it / Kafka's
//! `acks=all` with an idempotent producer), and how long an event
//! takes from its append to the broker's confirmation (`-published`) and to a consumer of the
//! broker (`-latency`) while appends flow in.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use factum::{
    Engine, EngineOptions, EventStore, ExpectedState, KafkaConfig, KafkaPublisher, NatsConfig,
    NatsPublisher, Payload, Publisher, RabbitConfig, RabbitPublisher, Relay, StreamName, TypeMap,
    ZeroPayload, now_micros,
};
use futures::StreamExt;

use crate::kit::{Payloads, Row, bar, json_event, row};

const BACKLOG_EVENTS: u64 = 100_000;
const WRITERS: u64 = 64;
const LIVE_EVENTS: u64 = 20_000;
/// Appends per second offered while latency is measured.
const LIVE_EVENTS_PER_SEC: u64 = 5_000;

fn nats_url() -> String {
    std::env::var("FACTUM_BENCH_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The Kafka-protocol broker (`.ci/run` starts Tansu there, storing in SQLite).
fn kafka_brokers() -> String {
    std::env::var("FACTUM_BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn rabbitmq_url() -> String {
    std::env::var("FACTUM_BENCH_RABBITMQ")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// RabbitMQ's replicated queue type, which confirms a message once it is written and flushed
/// to disk (on a quorum of nodes): the queue RabbitMQ recommends where messages must not be
/// lost, and the one the `relay-rabbitmq` rows measure.
const QUORUM: &str = "quorum";
/// The classic queue (persistent messages, confirmed once on disk), measured beside it.
const CLASSIC: &str = "classic";

/// The broker's side of the bench: where to publish, how to follow what arrives, and how to
/// clean up.
enum Broker {
    Nats {
        context: async_nats::jetstream::Context,
        stream: String,
        prefix: String,
    },
    Rabbit {
        connection: lapin::Connection,
        exchange: String,
        queue: String,
    },
    Kafka {
        brokers: String,
        topic: String,
    },
}

impl Broker {
    /// The broker for `scenario`; for RabbitMQ, a queue of type `kind`.
    async fn connect(scenario: &str, kind: &'static str) -> Result<Broker> {
        let id = std::process::id();
        Ok(match scenario {
            "relay-nats" => {
                let url = nats_url();
                let client = async_nats::connect(url.as_str())
                    .await
                    .with_context(|| format!("NATS at {url} (FACTUM_BENCH_NATS)"))?;
                Broker::Nats {
                    context: async_nats::jetstream::new(client),
                    stream: format!("FACTUM_BENCH_{id}"),
                    prefix: format!("factumbench{id}"),
                }
            }
            "relay-kafka" => {
                let brokers = kafka_brokers();
                tokio::net::TcpStream::connect(&brokers)
                    .await
                    .with_context(|| format!("Kafka at {brokers} (FACTUM_BENCH_KAFKA)"))?;
                Broker::Kafka {
                    brokers,
                    topic: format!("factum-bench-{id}"),
                }
            }
            _ => {
                let url = rabbitmq_url();
                let connection = lapin::Connection::connect(&url, Default::default())
                    .await
                    .with_context(|| format!("RabbitMQ at {url} (FACTUM_BENCH_RABBITMQ)"))?;
                let exchange = format!("factum.bench.{id}");
                let queue = format!("factum-bench-{id}");
                let channel = connection.create_channel().await?;
                channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        lapin::ExchangeKind::Topic,
                        lapin::options::ExchangeDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await?;
                // A durable queue bound to everything: the broker stores each message on disk
                // before it confirms it.
                let mut arguments = lapin::types::FieldTable::default();
                arguments.insert(
                    "x-queue-type".into(),
                    lapin::types::AMQPValue::LongString(kind.into()),
                );
                channel
                    .queue_declare(
                        queue.as_str().into(),
                        lapin::options::QueueDeclareOptions::durable(),
                        arguments,
                    )
                    .await?;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        "#".into(),
                        Default::default(),
                        Default::default(),
                    )
                    .await?;
                Broker::Rabbit {
                    connection,
                    exchange,
                    queue,
                }
            }
        })
    }

    fn publisher(&self) -> Box<dyn Publisher> {
        match self {
            Broker::Nats { stream, prefix, .. } => Box::new(NatsPublisher::new(NatsConfig {
                subject_prefix: prefix.clone(),
                jetstream_stream: Some(stream.clone()),
                ..NatsConfig::new(nats_url())
            })),
            Broker::Rabbit { exchange, .. } => Box::new(RabbitPublisher::new(RabbitConfig {
                exchange: exchange.clone(),
                ..RabbitConfig::new(rabbitmq_url())
            })),
            Broker::Kafka { brokers, topic } => {
                Box::new(KafkaPublisher::new(KafkaConfig::new(brokers, topic)))
            }
        }
    }

    /// Empties the RabbitMQ queue (the backlog's messages) so that the live phase's consumer
    /// sees only its own.
    async fn purge(&self) -> Result<()> {
        if let Broker::Rabbit {
            connection, queue, ..
        } = self
        {
            let channel = connection.create_channel().await?;
            channel
                .queue_purge(queue.as_str().into(), Default::default())
                .await?;
        }
        Ok(())
    }

    /// The payloads of the messages that arrive from now on.
    async fn follow(&self) -> Result<futures::stream::BoxStream<'static, Vec<u8>>> {
        Ok(match self {
            Broker::Nats {
                context, prefix, ..
            } => {
                let client = context.client();
                client
                    .subscribe(format!("{prefix}.>"))
                    .await?
                    .map(|message| message.payload.to_vec())
                    .boxed()
            }
            Broker::Rabbit {
                connection, queue, ..
            } => {
                let channel = connection.create_channel().await?;
                channel
                    .basic_consume(
                        queue.as_str().into(),
                        "".into(),
                        lapin::options::BasicConsumeOptions {
                            no_ack: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await?
                    .filter_map(|delivery| async move { delivery.ok().map(|d| d.data) })
                    .boxed()
            }
            Broker::Kafka { brokers, topic } => follow_kafka(brokers, topic)?,
        })
    }

    async fn clean_up(&self) {
        match self {
            Broker::Nats {
                context, stream, ..
            } => {
                let _ = context.delete_stream(stream).await;
            }
            Broker::Rabbit {
                connection,
                exchange,
                queue,
            } => {
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), Default::default())
                        .await;
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), Default::default())
                        .await;
                }
            }
            Broker::Kafka { brokers, topic } => {
                let admin: Result<
                    rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
                    _,
                > = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create();
                if let Ok(admin) = admin {
                    let _ = admin
                        .delete_topics(&[topic.as_str()], &rdkafka::admin::AdminOptions::new())
                        .await;
                }
            }
        }
    }
}

/// The payloads of the messages that arrive on `topic` from now on: every partition assigned
/// by hand at its end (no group to form).
fn follow_kafka(
    brokers: &str,
    topic: &str,
) -> Result<futures::stream::BoxStream<'static, Vec<u8>>> {
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Message as _;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("factum-bench-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    if partitions == 0 {
        bail!("Kafka topic {topic} has no partitions");
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, rdkafka::Offset::End)?;
    }
    consumer.assign(&assignment)?;
    let consumer = Arc::new(consumer);
    Ok(futures::stream::unfold(consumer, |consumer| async move {
        loop {
            match consumer.recv().await {
                Ok(message) => {
                    let payload = message.payload().unwrap_or_default().to_vec();
                    drop(message);
                    return Some((payload, consumer));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .boxed())
}

/// Runs a relay in a task until the returned sender is dropped or sent to.
fn spawn(
    relay: Relay,
    mut publisher: Box<dyn Publisher>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), factum::RelayError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(publisher.as_mut(), async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

/// Appends `events` events from `WRITERS` writers, one event per append, over many streams
/// (as services do: many aggregates, a few events each); at most `rate` appends a second in
/// all when given.
async fn append(
    store: Arc<dyn EventStore>,
    events: u64,
    rate: Option<u64>,
    payloads: &Arc<Payloads>,
    label: &str,
) -> Result<()> {
    let per_writer = events / WRITERS;
    let progress = bar(per_writer * WRITERS, label.to_owned());
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let payloads = payloads.clone();
        let progress = progress.clone();
        let pause = rate.map(|r| Duration::from_secs_f64(WRITERS as f64 / r as f64));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..per_writer {
                if let Some(pause) = pause {
                    let due = started + pause * i as u32;
                    tokio::time::sleep_until(due.into()).await;
                }
                let stream = StreamName::user(format!("order-{w}x{}", i % 50))?;
                let event = json_event("OrderPlaced", payloads.get(w * per_writer + i));
                store
                    .append(&stream, ExpectedState::Any, vec![event])
                    .await?;
                progress.inc(1);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    progress.finish_and_clear();
    Ok(())
}

pub async fn run(scenario: &str, work: &Path, payloads: &Arc<Payloads>) -> Result<Vec<Row>> {
    let store_name = match scenario {
        "relay-nats" => "nats",
        "relay-rabbitmq" => "rabbitmq",
        "relay-kafka" => "kafka",
        other => bail!("unknown relay scenario {other}"),
    };
    let mut rows = measure_on(scenario, store_name, QUORUM, true, work, payloads).await?;
    if scenario == "relay-rabbitmq" {
        // The same backlog into a classic queue, for comparison.
        let classic = "relay-rabbitmq-classic";
        rows.extend(measure_on(classic, store_name, CLASSIC, false, work, payloads).await?);
    }
    Ok(rows)
}

/// [`measure`] on a store of its own, with the broker's queue of type `kind`.
async fn measure_on(
    scenario: &str,
    store_name: &str,
    kind: &'static str,
    live: bool,
    work: &Path,
    payloads: &Arc<Payloads>,
) -> Result<Vec<Row>> {
    let broker = Broker::connect(scenario, kind).await?;
    let dir = work.join(scenario);
    std::fs::create_dir_all(&dir)?;
    let engine = Engine::open(&dir, EngineOptions::default())?;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let result = measure(scenario, store_name, &store, &broker, payloads, live).await;
    broker.clean_up().await;
    engine.close()?;
    result
}

async fn measure(
    scenario: &str,
    store_name: &str,
    store: &Arc<dyn EventStore>,
    broker: &Broker,
    payloads: &Arc<Payloads>,
    live: bool,
) -> Result<Vec<Row>> {
    // 1. A backlog, emptied into the broker: throughput.
    append(
        store.clone(),
        BACKLOG_EVENTS,
        None,
        payloads,
        &format!("{scenario}: backlog"),
    )
    .await?;
    let last = store.head() - 1;
    let relay = Relay::builder("bench-backlog", store.clone())
        .translator(TypeMap::new().map("OrderPlaced", "order.placed", Payload::Data))
        .build()?;
    let mut status = relay.status();
    let progress = bar(BACKLOG_EVENTS, format!("{scenario}: publishing"));
    let started = Instant::now();
    let mut samples = Vec::new();
    let (stop, task) = spawn(relay, broker.publisher());
    let mut previous = (Instant::now(), 0u64);
    loop {
        let state = status.borrow_and_update().clone();
        progress.set_position(state.published);
        if state.published >= 10_000 + previous.1 {
            // Time per 10,000 messages, as the other throughput scenarios sample it.
            let per =
                previous.0.elapsed().as_micros() as u64 * 10_000 / (state.published - previous.1);
            samples.push(per);
            previous = (Instant::now(), state.published);
        }
        if state.checkpoint >= Some(last) {
            break;
        }
        if let Some(error) = &state.last_error
            && started.elapsed() > Duration::from_secs(60)
        {
            bail!("the relay does not get through: {error}");
        }
        tokio::time::timeout(Duration::from_secs(1), status.changed())
            .await
            .ok();
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let _ = stop.send(());
    task.await??;
    let published = status.borrow().published;
    let throughput = row(scenario, store_name, published, elapsed, samples);
    if !live {
        return Ok(vec![throughput]);
    }

    // 2. Appends flowing in at a steady rate, a consumer on the broker: from append to arrival.
    broker.purge().await?;
    let relay = Relay::builder("bench-live", store.clone())
        .translator(ZeroPayload)
        .build()?;
    let start = store.head() - 1;
    store.save_checkpoint("bench-live", start).await?;
    let confirms = tokio::spawn(confirmed_latencies(store.clone(), relay.status(), start));
    let mut arrivals = broker.follow().await?;
    let (stop, task) = spawn(relay, broker.publisher());
    let writer = {
        let store = store.clone();
        let payloads = payloads.clone();
        let label = format!("{scenario}: live at {LIVE_EVENTS_PER_SEC}/s");
        tokio::spawn(async move {
            append(
                store,
                LIVE_EVENTS,
                Some(LIVE_EVENTS_PER_SEC),
                &payloads,
                &label,
            )
            .await
        })
    };
    let expected = LIVE_EVENTS / WRITERS * WRITERS;
    let mut latencies = Vec::with_capacity(expected as usize);
    let started = Instant::now();
    while (latencies.len() as u64) < expected {
        let payload = tokio::time::timeout(Duration::from_secs(30), arrivals.next())
            .await
            .context("no message for 30 s")?
            .context("the broker's consumer ended")?;
        let body: serde_json::Value = serde_json::from_slice(&payload)?;
        if let Some(recorded) = body["recorded_at_us"].as_u64() {
            latencies.push(now_micros().saturating_sub(recorded));
        }
    }
    let elapsed = started.elapsed();
    writer.await??;
    let confirmed = tokio::time::timeout(Duration::from_secs(30), confirms)
        .await
        .context("the relay's checkpoint did not reach the last event")???;
    let _ = stop.send(());
    task.await??;
    let published = row(
        &format!("{scenario}-published"),
        store_name,
        confirmed.len() as u64,
        elapsed,
        confirmed,
    );
    let live = row(
        &format!("{scenario}-latency"),
        store_name,
        expected,
        elapsed,
        latencies,
    );
    Ok(vec![throughput, published, live])
}

/// Append → published: each time the relay's checkpoint moves (it moves only once the broker
/// has confirmed every message up to it), the time since each newly covered event was
/// recorded. Conservative: the checkpoint moves after the relay has also stored it, and a move
/// seen late counts as late. Ends once `LIVE_EVENTS` events (the bench's own, not the relay's
/// checkpoint records) are covered.
async fn confirmed_latencies(
    store: Arc<dyn EventStore>,
    mut status: tokio::sync::watch::Receiver<factum::RelayStatus>,
    start: u64,
) -> Result<Vec<u64>> {
    let expected = LIVE_EVENTS / WRITERS * WRITERS;
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut covered = start;
    while (latencies.len() as u64) < expected {
        status
            .changed()
            .await
            .context("the relay stopped before it published everything")?;
        let now = now_micros();
        let Some(checkpoint) = status.borrow_and_update().checkpoint else {
            continue;
        };
        while covered < checkpoint {
            let page = store
                .read_all(covered + 1, factum::Direction::Forwards, 1_000)
                .await?;
            let Some(last) = page.last() else { break };
            for event in page.iter().take_while(|e| e.position <= checkpoint) {
                if !event.stream.as_str().starts_with('$') {
                    latencies.push(now.saturating_sub(event.recorded_at_us));
                }
            }
            covered = last.position.min(checkpoint);
        }
    }
    Ok(latencies)
}
