//! Idempotent consumers against the real brokers: messages relayed from one service's store
//! become commands in another's, each executed once however often the broker delivers it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::tally::{self, LosingAcks, Tally};
use common::*;
use factum_core::{EventStore, MemoryStore};
use factum_relay::{
    Backoff, Consumer, NatsConfig, NatsPublisher, NatsSource, NatsSourceConfig, RabbitSource,
    RabbitSourceConfig, Relay, ZeroPayload, headers,
};

fn quick() -> Backoff {
    Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_millis(500),
    }
}

/// The tally service's consumer: both order event types count in the order's tally.
fn tally_consumer(name: &str, store: Arc<dyn EventStore>) -> Consumer {
    Consumer::builder(name, store.clone())
        .bus(tally::bus(store))
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .on_aggregate::<Tally, _>("OrderPaid", tally::decode)
        .backoff(quick())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_redeliveries_after_lost_acks_and_cut_connections_change_nothing() {
    let url = nats_url();
    if !reachable("NATS", &url).await {
        return;
    }
    // The order service: 100 events, relayed to JetStream.
    let orders: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    append_orders(
        orders.as_ref(),
        "order",
        5,
        20,
        &["OrderPlaced", "OrderPaid"],
    )
    .await;
    let js_stream = unique("CONSUME");
    let relay = Relay::builder("orders-out", orders.clone())
        .translator(ZeroPayload)
        .build()
        .unwrap();
    let publisher = NatsPublisher::new(NatsConfig {
        subject_prefix: unique("c"),
        jetstream_stream: Some(js_stream.clone()),
        ..NatsConfig::new(&url)
    });
    let mut relaying = spawn_relay(relay, publisher);
    caught_up(&mut relaying.status, orders.as_ref()).await;

    // The tally service takes them through a proxy that cuts its connections, and its first
    // 30 acknowledgements are lost: JetStream delivers those messages again after `ack_wait`.
    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let proxy = Proxy::start(host_port(&url)).await;
    let source = NatsSource::new(NatsSourceConfig {
        ack_wait: Duration::from_secs(1),
        ..NatsSourceConfig::new(format!("nats://{}", proxy.address), &js_stream, "tally")
    });
    let mut consuming = tally::spawn(
        tally_consumer("tally-in", tallies.clone()),
        LosingAcks::new(source, 30),
    );
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        proxy.cut();
    }
    consuming
        .wait_for(
            60,
            "every message handled, the lost ones delivered again",
            |s| s.handled == 100 && s.duplicates >= 30,
        )
        .await;
    // Whatever else is still delivered again is recognised too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = consuming.stop().await;
    assert_eq!(status.handled, 100, "{status:?}");
    assert_eq!(status.dead_lettered + status.ignored, 0, "{status:?}");

    let (per_tally, messages) = tally::counted(tallies.as_ref()).await;
    assert_eq!(per_tally.len(), 5);
    assert!(per_tally.values().all(|&n| n == 20), "{per_tally:?}");
    let distinct: HashSet<_> = messages.iter().collect();
    assert_eq!(distinct.len(), 100, "each message counted once");
    relaying.stop().await;
    delete_jetstream(&url, &js_stream).await;
}

/// Publishes one message to `exchange` with the routing key `order.{type}` and waits for the
/// broker's confirm.
async fn publish_raw(
    channel: &lapin::Channel,
    exchange: &str,
    message_type: &str,
    id: Option<&str>,
    stream: Option<&str>,
    body: &str,
) {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut table = FieldTable::default();
    if let Some(stream) = stream {
        table.insert(
            headers::STREAM.into(),
            AMQPValue::LongString(LongString::from(stream)),
        );
    }
    let mut properties = lapin::BasicProperties::default()
        .with_type(message_type.into())
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(id) = id {
        properties = properties.with_message_id(id.into());
    }
    channel
        .basic_publish(
            exchange.into(),
            format!("order.{message_type}").as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_message_delivered_twice_runs_once_and_bad_messages_are_parked() {
    let url = rabbitmq_url();
    if !reachable("RabbitMQ", &url).await {
        return;
    }
    let exchange = unique("factum.consume.");
    let queue = unique("factum-consume-");
    let connection = rabbit_queue(&url, &exchange, &queue, "#").await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (body, refused) = ("{}", r#"{"refuse": true}"#);
    let messages = [
        ("OrderPlaced", Some("m-1"), Some("order-1"), body),
        // The same message again, as a publisher that retried would send it.
        ("OrderPlaced", Some("m-1"), Some("order-1"), body),
        ("OrderPaid", Some("m-2"), Some("order-1"), refused),
        ("OrderPaid", Some("m-3"), None, body),
        ("OrderPaid", Some("m-4"), Some("order-2"), "not json"),
        ("OrderPaid", None, Some("order-2"), body),
        ("OrderShipped", Some("m-6"), Some("order-1"), body),
    ];
    for (message_type, id, stream, body) in messages {
        publish_raw(&channel, &exchange, message_type, id, stream, body).await;
    }

    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let consumer = tally_consumer("tally-rabbit", tallies.clone());
    let source = RabbitSource::new(RabbitSourceConfig {
        exchange: exchange.clone(),
        bindings: vec!["order.*".into()],
        ..RabbitSourceConfig::new(&url, &queue)
    });
    let mut consuming = tally::spawn(consumer, source);
    consuming
        .wait_for(30, "an outcome for all seven deliveries", |s| {
            s.handled + s.duplicates + s.dead_lettered + s.ignored == 7
        })
        .await;
    let status = consuming.stop().await;
    assert_eq!(
        (
            status.handled,
            status.duplicates,
            status.dead_lettered,
            status.ignored
        ),
        (1, 1, 4, 1),
        "{status:?}"
    );
    let (per_tally, messages) = tally::counted(tallies.as_ref()).await;
    assert_eq!(per_tally.get("tally-order-1"), Some(&1));
    assert_eq!(messages, vec!["m-1".to_owned()]);

    // The parked messages, with why; they were acknowledged, so a new consumer gets none.
    let parked = tally_consumer("tally-rabbit", tallies.clone())
        .dead_letters()
        .await
        .unwrap();
    let reasons: Vec<_> = parked
        .iter()
        .map(|p| (p.message_id.as_str(), p.error.as_str()))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].0 == "m-2" && reasons[0].1.contains("refused to count m-2"));
    assert!(reasons[1].0 == "m-3" && reasons[1].1.contains("names no stream"));
    assert!(reasons[2].0 == "m-4" && reasons[2].1.contains("m-4"));
    assert!(reasons[3].0.is_empty() && reasons[3].1.contains("no id"));
    assert_eq!(parked[2].data, "not json");
    assert_eq!(parked[0].headers[headers::STREAM], "order-1");

    let source = RabbitSource::new(RabbitSourceConfig {
        exchange: exchange.clone(),
        ..RabbitSourceConfig::new(&url, &queue)
    });
    let again = tally::spawn(tally_consumer("tally-rabbit", tallies.clone()), source);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(again.stop().await.received, 0);
    drop(connection);
    delete_rabbit(&url, &exchange, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_stream_is_missing_fails_with_its_name_and_is_tried_again() {
    let url = nats_url();
    if !reachable("NATS", &url).await {
        return;
    }
    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let missing = unique("MISSING");
    let source = NatsSource::new(NatsSourceConfig::new(&url, &missing, "tally"));
    let mut consuming = tally::spawn(tally_consumer("tally-missing", tallies.clone()), source);
    consuming
        .wait_for(10, "two failed connections", |s| s.failures >= 2)
        .await;
    let status = consuming.stop().await;
    let error = status.last_error.unwrap();
    assert!(
        error.contains(&missing) && error.starts_with("nats:"),
        "{error}"
    );
    assert_eq!(
        (status.received, tallies.head()),
        (0, 0),
        "nothing received or written"
    );
}

#[tokio::test]
async fn a_consumer_without_a_bus_or_routes_or_with_two_routes_for_a_type_is_refused() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let no_bus = Consumer::builder("c", store.clone())
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .build();
    assert!(no_bus.unwrap_err().to_string().contains("command bus"));
    let no_routes = Consumer::builder("c", store.clone())
        .bus(tally::bus(store.clone()))
        .build();
    assert!(no_routes.unwrap_err().to_string().contains("route"));
    let twice = Consumer::builder("c", store.clone())
        .bus(tally::bus(store.clone()))
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .build();
    assert!(twice.unwrap_err().to_string().contains("OrderPlaced"));
    let unnamed = Consumer::builder("", store.clone())
        .bus(tally::bus(store.clone()))
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .build();
    assert!(unnamed.is_err());
    assert_eq!(store.head(), 0, "nothing written");
}
