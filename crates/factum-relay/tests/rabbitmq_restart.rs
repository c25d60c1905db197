//! The relay against a real RabbitMQ broker that is restarted while events flow. (A binary of
//! its own: the restart would disturb other tests running beside it.)
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use factum_core::EventStore;
use factum_engine::{Engine, EngineOptions};
use factum_relay::{Backoff, RabbitConfig, RabbitPublisher, Relay, ZeroPayload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let url = rabbitmq_url();
    if !reachable("RabbitMQ", &url).await {
        return;
    }
    if !can_restart_rabbitmq() {
        return;
    }
    let exchange = unique("factum.restart.");
    let queue = unique("factum-restart-");
    drop(rabbit_queue(&url, &exchange, &queue, "#").await);

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let relay = Relay::builder("restart-out", store.clone())
        .translator(ZeroPayload)
        .batch(50)
        .backoff(Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_millis(500),
        })
        .build()
        .unwrap();
    let publisher = RabbitPublisher::new(RabbitConfig {
        exchange: exchange.clone(),
        ..RabbitConfig::new(&url)
    });
    let mut running = spawn_relay(relay, publisher);

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut all = Vec::new();
            for round in 0..30 {
                let category = format!("r{round}");
                all.extend(append_orders(store.as_ref(), &category, 4, 10, &["A", "B"]).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            all
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    restart_rabbitmq().await;
    let appended = writer.await.unwrap();
    caught_up(&mut running.status, store.as_ref()).await;
    let status = running.stop().await;
    eprintln!("{} failed publishes", status.failures);
    assert!(status.failures > 0, "the restart was not felt: {status:?}");

    let received = read_rabbit_queue(&url, &queue, appended.len(), Duration::from_secs(5)).await;
    let ids: HashSet<_> = received.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), appended.len(), "nothing lost");
    eprintln!(
        "{} deliveries for {} events",
        received.len(),
        appended.len()
    );
    assert_stream_order(&received);
    delete_rabbit(&url, &exchange, &queue).await;
}
