//! The relay against a real RabbitMQ broker.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use factum_core::EventStore;
use factum_engine::{Engine, EngineOptions};
use factum_relay::{Payload, RabbitConfig, RabbitPublisher, Relay, TypeMap};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_reach_the_bound_queue_in_stream_order() {
    let url = rabbitmq_url();
    if !reachable("RabbitMQ", &url).await {
        return;
    }
    let exchange = unique("factum.test.");
    let queue = unique("factum-test-");
    let _setup = rabbit_queue(&url, &exchange, &queue, "order.#").await;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let appended = append_orders(
        store.as_ref(),
        "order",
        8,
        25,
        &["OrderPlaced", "OrderShipped", "Secret"],
    )
    .await;
    let relay = Relay::builder("to-rabbit", store.clone())
        .translator(
            TypeMap::new()
                .map("OrderPlaced", "order.placed.v1", Payload::Data)
                .map("OrderShipped", "OrderShipped", Payload::Zero),
        )
        .build()
        .unwrap();
    let publisher = RabbitPublisher::new(RabbitConfig {
        exchange: exchange.clone(),
        ..RabbitConfig::new(&url)
    });
    let mut running = spawn_relay(relay, publisher);
    caught_up(&mut running.status, store.as_ref()).await;
    let status = running.stop().await;
    let leaving = appended.iter().filter(|(_, t)| t != "Secret").count();
    assert_eq!(status.published, leaving as u64);
    assert_eq!(status.failures, 0);

    let received = read_rabbit_queue(&url, &queue, leaving, Duration::from_secs(5)).await;
    assert_eq!(
        received.len(),
        leaving,
        "each once: nothing failed, so nothing was sent twice"
    );
    assert_stream_order(&received);
    for (message, event) in with_stored_events(store.as_ref(), &received).await {
        match event.event_type.as_str() {
            "OrderPlaced" => {
                assert_eq!(message.subject, "order.order_placed_v1");
                assert_eq!(message.payload, event.data.to_vec());
            }
            "OrderShipped" => assert_eq!(message.subject, "order.OrderShipped"),
            other => panic!("{other} should not have left"),
        }
    }
    delete_rabbit(&url, &exchange, &queue).await;
}
