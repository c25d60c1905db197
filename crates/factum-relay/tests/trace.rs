//! Trace context across services: one command's `traceparent` goes into its event's metadata,
//! through each broker in the message's headers, and into the metadata of the event the
//! consumer's command records in another service — the same trace, a span of its own.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::tally::{self, Tally};
use common::*;
use factum_core::{Direction, EventStore, ExpectedState, MemoryStore, NewEvent, StreamName};
use factum_relay::{
    Consumer, KafkaConfig, KafkaPublisher, KafkaSource, KafkaSourceConfig, MessageSource,
    NatsConfig, NatsPublisher, NatsSource, NatsSourceConfig, Publisher, RabbitConfig,
    RabbitPublisher, RabbitSource, RabbitSourceConfig, Relay, ZeroPayload,
};
use factum_toolkit::{CommandContext, TRACEPARENT_KEY};

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The order service records one event in the trace `TRACE`; its relay publishes with
/// `publisher`; the tally service takes it from `source`. Returns the tally event's
/// `$traceparent`.
async fn across(
    publisher: impl Publisher + 'static,
    source: impl MessageSource + 'static,
) -> String {
    let orders: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let request = CommandContext::new().in_trace(TRACE);
    orders
        .append(
            &StreamName::user("order-7").unwrap(),
            ExpectedState::Any,
            vec![
                NewEvent::json("OrderPlaced", &serde_json::json!({}))
                    .unwrap()
                    .with_metadata(&request.metadata(1))
                    .unwrap(),
            ],
        )
        .await
        .unwrap();
    let relay = Relay::builder("orders-out", orders.clone())
        .translator(ZeroPayload)
        .build()
        .unwrap();
    let mut relaying = spawn_relay(relay, publisher);
    caught_up(&mut relaying.status, orders.as_ref()).await;
    relaying.stop().await;

    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let consumer = Consumer::builder("tally", tallies.clone())
        .bus(tally::bus(tallies.clone()))
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .build()
        .unwrap();
    let mut consuming = tally::spawn(consumer, source);
    consuming
        .wait_for(60, "the message handled", |s| s.handled == 1)
        .await;
    consuming.stop().await;
    let counted = tallies
        .read_stream(
            &StreamName::user("tally-order-7").unwrap(),
            0,
            Direction::Forwards,
            1,
        )
        .await
        .unwrap()
        .remove(0);
    counted.metadata_json()[TRACEPARENT_KEY]
        .as_str()
        .expect("the tally event carries a trace context")
        .to_owned()
}

fn assert_continues(traceparent: &str) {
    assert!(factum_toolkit::valid_traceparent(traceparent).is_some());
    assert_eq!(&traceparent[..36], &TRACE[..36], "the same trace");
    assert_ne!(&traceparent[36..52], &TRACE[36..52], "a span of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_nats() {
    let url = nats_url();
    if !reachable("NATS", &url).await {
        return;
    }
    let js_stream = unique("TRACE");
    let publisher = NatsPublisher::new(NatsConfig {
        subject_prefix: unique("t"),
        jetstream_stream: Some(js_stream.clone()),
        ..NatsConfig::new(&url)
    });
    let source = NatsSource::new(NatsSourceConfig::new(&url, &js_stream, "tally"));
    assert_continues(&across(publisher, source).await);
    delete_jetstream(&url, &js_stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_rabbitmq() {
    let url = rabbitmq_url();
    if !reachable("RabbitMQ", &url).await {
        return;
    }
    let exchange = unique("factum.trace.");
    let queue = unique("factum-trace-");
    drop(rabbit_queue(&url, &exchange, &queue, "#").await);
    let publisher = RabbitPublisher::new(RabbitConfig {
        exchange: exchange.clone(),
        ..RabbitConfig::new(&url)
    });
    let source = RabbitSource::new(RabbitSourceConfig {
        exchange: exchange.clone(),
        bindings: vec!["#".into()],
        ..RabbitSourceConfig::new(&url, &queue)
    });
    assert_continues(&across(publisher, source).await);
    delete_rabbit(&url, &exchange, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_kafka() {
    let brokers = kafka_brokers();
    if !reachable("Kafka", &brokers).await {
        return;
    }
    let topic = unique("factum-trace-");
    let publisher = KafkaPublisher::new(KafkaConfig::new(&brokers, &topic));
    let mut config = KafkaSourceConfig::new(&brokers, unique("trace-"), [topic.clone()]);
    config.settings = quick_group_settings();
    // The relay creates the topic before the group subscribes: `across` relays first.
    let source = KafkaSource::new(config);
    assert_continues(&across(publisher, source).await);
}

#[test]
fn a_message_without_a_valid_trace_context_starts_none() {
    let mut message = factum_relay::IncomingMessage {
        id: "m-1".into(),
        message_type: "OrderPlaced".into(),
        subject: "s".into(),
        data: bytes::Bytes::new(),
        headers: Default::default(),
        redelivered: false,
    };
    assert_eq!(message.context().traceparent, None);
    message
        .headers
        .insert(factum_relay::headers::TRACEPARENT.into(), "garbage".into());
    assert_eq!(message.context().traceparent, None);
    message
        .headers
        .insert(factum_relay::headers::TRACEPARENT.into(), TRACE.into());
    assert_continues(&message.context().traceparent.unwrap());
}
