//! The Kafka relay and the Kafka consumer against a real Kafka-protocol broker.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::tally::{self, Tally};
use common::*;
use factum_core::{EventStore, ExpectedState, MemoryStore, NewEvent, StreamName};
use factum_relay::{
    Backoff, Consumer, KafkaConfig, KafkaPublisher, KafkaSource, KafkaSourceConfig, MessageSource,
    Payload, Publisher, Relay, TypeMap, ZeroPayload, headers,
};

fn quick() -> Backoff {
    Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_events_leave_keyed_by_stream_in_order_with_their_headers() {
    let brokers = kafka_brokers();
    if !reachable("Kafka", &brokers).await {
        return;
    }
    let (_dir, store) = engine_store();
    let appended = append_orders(
        store.as_ref(),
        "order",
        6,
        30,
        &["OrderPlaced", "OrderPaid", "Internal"],
    )
    .await;
    // One event carries a correlation, a causation and a trace context in its metadata.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    store
        .append(
            &StreamName::user("order-0").unwrap(),
            ExpectedState::Any,
            vec![
                NewEvent::json("OrderPaid", &serde_json::json!({ "n": 99 }))
                    .unwrap()
                    .with_metadata(&serde_json::json!({
                        "$correlationId": "corr-1",
                        "$causationId": "cause-1",
                        factum_toolkit::TRACEPARENT_KEY: trace,
                    }))
                    .unwrap(),
            ],
        )
        .await
        .unwrap();
    let leaving = appended.iter().filter(|(_, t)| t != "Internal").count() + 1;
    let topic = unique("factum-orders-");
    let relay = Relay::builder("kafka-out", store.clone())
        .translator(
            TypeMap::new()
                .map("OrderPlaced", "order.placed.v1", Payload::Data)
                .map("OrderPaid", "order.paid.v1", Payload::Zero),
        )
        .batch(40)
        .build()
        .unwrap();
    let mut running = spawn_relay(
        relay,
        KafkaPublisher::new(KafkaConfig::new(&brokers, &topic)),
    );
    caught_up(&mut running.status, store.as_ref()).await;
    let status = running.stop().await;
    assert_eq!(status.published, leaving as u64, "{status:?}");

    let received = read_kafka(&brokers, &topic, leaving, Duration::from_secs(5)).await;
    assert_eq!(received.len(), leaving, "every mapped event, once");
    let ids: HashSet<_> = received.iter().map(|m| m.received.id.clone()).collect();
    assert_eq!(ids.len(), leaving);
    // The key is the stream: a stream's messages share a partition, in revision order.
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    for message in &received {
        assert_eq!(message.key, message.received.stream);
        let partition = *partition_of
            .entry(message.received.stream.as_str())
            .or_insert(message.partition);
        assert_eq!(partition, message.partition, "{message:?}");
        assert!(message.headers.contains_key("Content-Type"));
    }
    assert!(
        partition_of.values().collect::<HashSet<_>>().len() > 1,
        "six streams over three partitions use more than one"
    );
    let plain: Vec<Received> = received.iter().map(|m| m.received.clone()).collect();
    assert_stream_order(&plain);
    for (message, event) in with_stored_events(store.as_ref(), &plain).await {
        match event.event_type.as_str() {
            "OrderPlaced" => {
                assert_eq!(message.event_type, "order.placed.v1");
                assert_eq!(
                    message.payload,
                    event.data.to_vec(),
                    "data leaves as stored"
                );
            }
            "OrderPaid" => {
                assert_eq!(message.event_type, "order.paid.v1");
                let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                assert_eq!(body["id"], event.id.to_string(), "zero payload: ids only");
                assert!(body.get("n").is_none());
            }
            other => panic!("{other} was not to leave"),
        }
    }
    let traced = received
        .iter()
        .find(|m| m.headers.contains_key(headers::TRACEPARENT))
        .expect("the traced event's message");
    assert_eq!(traced.headers[headers::TRACEPARENT], trace);
    assert_eq!(traced.headers[headers::CORRELATION_ID], "corr-1");
    assert_eq!(traced.headers[headers::CAUSATION_ID], "cause-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_topic_per_category_is_created_when_missing() {
    let brokers = kafka_brokers();
    if !reachable("Kafka", &brokers).await {
        return;
    }
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    append_orders(store.as_ref(), "cart", 2, 5, &["Added"]).await;
    append_orders(store.as_ref(), "stock", 2, 5, &["Moved"]).await;
    let prefix = unique("factum-cat-");
    let publisher = KafkaPublisher::new(KafkaConfig {
        topic: None,
        topic_prefix: Some(prefix.clone()),
        partitions: 2,
        ..KafkaConfig::new(&brokers, "unused")
    });
    let relay = Relay::builder("kafka-categories", store.clone())
        .translator(ZeroPayload)
        .build()
        .unwrap();
    let mut running = spawn_relay(relay, publisher);
    caught_up(&mut running.status, store.as_ref()).await;
    running.stop().await;
    for category in ["cart", "stock"] {
        let topic = format!("{prefix}.{category}");
        let received = read_kafka(&brokers, &topic, 10, Duration::from_secs(5)).await;
        assert_eq!(received.len(), 10, "{topic}");
        assert!(
            received
                .iter()
                .all(|m| m.received.stream.starts_with(category))
        );
    }
}

// On a current-thread runtime: the publisher's wait for the brokers must not need another
// worker thread.
#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_and_nothing_is_acknowledged() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut publisher = KafkaPublisher::new(KafkaConfig::new(&address, "orders"));
    let store = MemoryStore::new();
    append_orders(&store, "order", 1, 1, &["OrderPlaced"]).await;
    let event = store
        .read_all(0, factum_core::Direction::Forwards, 1)
        .await
        .unwrap()
        .remove(0);
    let message =
        factum_relay::OutboundMessage::new(&event, factum_relay::zero_payload(&event, "t"));
    let error = publisher.publish(&[message]).await.unwrap_err();
    assert!(
        error.to_string().contains(&address) && error.to_string().contains("brokers"),
        "{error}"
    );
}

/// A source whose every delivery takes 50 ms longer.
struct Slow<S>(S);

#[async_trait::async_trait]
impl<S: MessageSource> MessageSource for Slow<S> {
    fn broker(&self) -> &'static str {
        self.0.broker()
    }
    async fn next(&mut self) -> Result<factum_relay::Delivery, factum_relay::ConsumeError> {
        let delivery = self.0.next().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(delivery)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_consumers_runs_each_command_once_when_one_stops_mid_stream() {
    let brokers = kafka_brokers();
    if !reachable("Kafka", &brokers).await {
        return;
    }
    // The order service relays 200 events to a topic of three partitions.
    let orders: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let appended = append_orders(
        orders.as_ref(),
        "order",
        8,
        25,
        &["OrderPlaced", "OrderPaid"],
    )
    .await;
    let topic = unique("factum-group-");
    let relay = Relay::builder("orders-out", orders.clone())
        .translator(ZeroPayload)
        .build()
        .unwrap();
    let mut running = spawn_relay(
        relay,
        KafkaPublisher::new(KafkaConfig::new(&brokers, &topic)),
    );
    caught_up(&mut running.status, orders.as_ref()).await;
    running.stop().await;

    // The tally service: two members of one group, sharing one store.
    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let group = unique("tally-");
    let source = || {
        let mut config = KafkaSourceConfig::new(&brokers, &group, [topic.clone()]);
        config.settings = quick_group_settings();
        KafkaSource::new(config)
    };
    let consumer = |name: &str| {
        Consumer::builder(name, tallies.clone())
            .bus(tally::bus(tallies.clone()))
            .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
            .on_aggregate::<Tally, _>("OrderPaid", tally::decode)
            .backoff(quick())
            .build()
            .unwrap()
    };
    // Each member takes 50 ms a message, so that neither is through before both have
    // partitions (a group forms in a few seconds).
    let first = tally::spawn(consumer("tally-a"), Slow(source()));
    let mut second = tally::spawn(consumer("tally-b"), Slow(source()));
    // The first stops once both have handled some: its partitions go to the second.
    let (mut first_status, mut second_status) = (first.status.clone(), second.status.clone());
    tokio::time::timeout(Duration::from_secs(90), async {
        first_status.wait_for(|s| s.handled >= 5).await.unwrap();
        second_status.wait_for(|s| s.handled >= 1).await.unwrap();
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "both members handled messages within 90 s: first {:?}, second {:?}",
            *first_status.borrow(),
            *second_status.borrow()
        )
    });
    let stopped = first.stop().await;
    let total = appended.len() as u64;
    let done = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let (_, counted) = tally::counted(tallies.as_ref()).await;
            if counted.len() as u64 >= total {
                return counted;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let after = second.status.borrow_and_update().clone();
    let counted = done.unwrap_or_else(|_| {
        panic!("not every message counted in 90 s: first {stopped:?}, second {after:?}")
    });
    second.stop().await;
    let unique_ids: HashSet<_> = counted.iter().collect();
    assert_eq!(
        counted.len(),
        unique_ids.len(),
        "each command executed once"
    );
    assert_eq!(counted.len() as u64, total, "nothing lost");
    assert!(
        after.handled > 0,
        "the second member took partitions: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_become_a_command_is_parked_and_its_offset_moves_on() {
    let brokers = kafka_brokers();
    if !reachable("Kafka", &brokers).await {
        return;
    }
    let topic = unique("factum-park-");
    // Messages from another producer: one good, one refused, one not JSON, then a good one.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
    admin
        .create_topics(
            [&rdkafka::admin::NewTopic::new(
                &topic,
                1,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let bodies: [&[u8]; 4] = [
        br#"{"n":1}"#,
        br#"{"refuse":true}"#,
        b"not json",
        br#"{"n":2}"#,
    ];
    for (n, body) in bodies.iter().enumerate() {
        let id = format!("m-{n}");
        let record = rdkafka::producer::FutureRecord::to(&topic)
            .key("order-1")
            .payload(*body)
            .headers(
                rdkafka::message::OwnedHeaders::new()
                    .insert(rdkafka::message::Header {
                        key: headers::MESSAGE_ID,
                        value: Some(id.as_str()),
                    })
                    .insert(rdkafka::message::Header {
                        key: headers::TYPE,
                        value: Some("OrderPlaced"),
                    })
                    .insert(rdkafka::message::Header {
                        key: headers::STREAM,
                        value: Some("order-1"),
                    }),
            );
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let group = unique("park-");
    let consumer = || {
        Consumer::builder("tally", tallies.clone())
            .bus(tally::bus(tallies.clone()))
            .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
            .backoff(quick())
            .build()
            .unwrap()
    };
    let source = || {
        let mut config = KafkaSourceConfig::new(&brokers, &group, [topic.clone()]);
        config.settings = quick_group_settings();
        KafkaSource::new(config)
    };
    let mut running = tally::spawn(consumer(), source());
    tokio::time::timeout(
        Duration::from_secs(60),
        // Received counts a message before its outcome is stored: wait for the outcomes.
        running
            .status
            .wait_for(|s| s.handled + s.dead_lettered >= 4),
    )
    .await
    .expect("four outcomes within 60 s")
    .unwrap();
    let status = running.stop().await;
    assert_eq!((status.handled, status.dead_lettered), (2, 2), "{status:?}");
    let letters = consumer().dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(
        letters.iter().any(|l| l.error.contains("refused")),
        "{letters:?}"
    );
    // The offsets were committed: the group, started again, finds nothing new.
    let mut again = tally::spawn(consumer(), source());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = again.status.borrow_and_update().clone();
    again.stop().await;
    assert_eq!(status.received, 0, "{status:?}");
}
