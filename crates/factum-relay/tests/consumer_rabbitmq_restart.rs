//! A consumer (on a quorum queue) and a relay against a real RabbitMQ broker that is restarted
//! while events flow.
//! (A binary of its own: the restart would disturb other tests running beside it.)
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::tally::{self, LosingAcks, Tally};
use common::*;
use factum_core::{EventStore, MemoryStore};
use factum_engine::{Engine, EngineOptions};
use factum_relay::{
    Backoff, Consumer, QueueType, RabbitConfig, RabbitPublisher, RabbitSource, RabbitSourceConfig,
    Relay, ZeroPayload,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing_and_what_comes_again_is_recognised() {
    let url = rabbitmq_url();
    if !reachable("RabbitMQ", &url).await || !can_restart_rabbitmq() {
        return;
    }
    let exchange = unique("factum.crestart.");
    let queue = unique("factum-crestart-");
    // A quorum queue, declared before anything is published.
    let mut source = RabbitSource::new(RabbitSourceConfig {
        exchange: exchange.clone(),
        queue_type: QueueType::Quorum,
        ..RabbitSourceConfig::new(&url, &queue)
    });
    source.declare().await.unwrap();
    let quick = Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };

    // The order service, relaying to RabbitMQ.
    let dir = tempfile::tempdir().unwrap();
    let orders: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let relay = Relay::builder("orders-out", orders.clone())
        .translator(ZeroPayload)
        .batch(50)
        .backoff(quick)
        .build()
        .unwrap();
    let publisher = RabbitPublisher::new(RabbitConfig {
        exchange: exchange.clone(),
        ..RabbitConfig::new(&url)
    });
    let mut relaying = spawn_relay(relay, publisher);

    // The tally service, whose first 20 acknowledgements are lost: those messages stay
    // unacknowledged until the restart drops the connection, and come again after it.
    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let consumer = Consumer::builder("tally-in", tallies.clone())
        .bus(tally::bus(tallies.clone()))
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .on_aggregate::<Tally, _>("OrderPaid", tally::decode)
        .backoff(quick)
        .build()
        .unwrap();
    let mut consuming = tally::spawn(consumer, LosingAcks::new(source, 20));

    let writer = {
        let orders = orders.clone();
        tokio::spawn(async move {
            let mut all = Vec::new();
            for round in 0..30 {
                let category = format!("r{round}");
                let types = ["OrderPlaced", "OrderPaid"];
                all.extend(append_orders(orders.as_ref(), &category, 4, 10, &types).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            all
        })
    };
    consuming
        .wait_for(30, "the first deliveries", |s| s.received >= 20)
        .await;
    restart_rabbitmq().await;
    let appended = writer.await.unwrap();
    caught_up(&mut relaying.status, orders.as_ref()).await;
    let relayed = relaying.stop().await;
    assert!(
        relayed.failures > 0,
        "the restart was not felt: {relayed:?}"
    );

    let total = appended.len() as u64;
    consuming
        .wait_for(90, "every message handled once", |s| {
            s.handled == total && s.duplicates >= 20
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = consuming.stop().await;
    eprintln!("{status:?}");
    assert_eq!(status.handled, total, "{status:?}");
    assert!(status.failures > 0, "the restart was not felt: {status:?}");

    let (per_tally, messages) = tally::counted(tallies.as_ref()).await;
    let distinct: HashSet<_> = messages.iter().collect();
    assert_eq!(messages.len(), appended.len(), "each message counted once");
    assert_eq!(distinct.len(), appended.len());
    assert_eq!(per_tally.len(), 30 * 4);
    assert!(per_tally.values().all(|&n| n == 10), "{per_tally:?}");
    delete_rabbit(&url, &exchange, &queue).await;
}
