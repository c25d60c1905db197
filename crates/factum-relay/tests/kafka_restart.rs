//! The Kafka relay and consumer against a Kafka-protocol broker that is killed and started
//! again while events flow. (A binary of its own, with a broker of its own.)
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::tally::{self, Tally};
use common::*;
use factum_core::{EventStore, MemoryStore};
use factum_engine::{Engine, EngineOptions};
use factum_relay::{
    Backoff, Consumer, KafkaConfig, KafkaPublisher, KafkaSource, KafkaSourceConfig, Relay,
    ZeroPayload,
};

fn quick() -> Backoff {
    Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing_and_the_consumer_recognises_what_comes_again() {
    let Some(binary) = tansu_binary() else {
        return;
    };
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = OwnBroker::start(binary, broker_dir.path()).await;
    let brokers = broker.address.clone();

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let relay = Relay::builder("restart-out", store.clone())
        .translator(ZeroPayload)
        .batch(50)
        .backoff(quick())
        .build()
        .unwrap();
    let topic = "orders";
    let mut config = KafkaConfig::new(&brokers, topic);
    // Shorter than the broker is down: publishes fail, and the relay sends again.
    config.ack_timeout = Duration::from_secs(2);
    let mut running = spawn_relay(relay, KafkaPublisher::new(config));
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut all = Vec::new();
            for round in 0..30 {
                let category = format!("r{round}");
                all.extend(append_orders(store.as_ref(), &category, 4, 10, &["OrderPlaced"]).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            all
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    broker.restart(Duration::from_secs(3)).await;
    let appended = writer.await.unwrap();
    caught_up(&mut running.status, store.as_ref()).await;
    let status = running.stop().await;
    eprintln!("{} failed publishes", status.failures);
    assert!(status.failures > 0, "the restart was not felt: {status:?}");

    // Everything there is, duplicates included: until nothing new comes for 3 s.
    let received = read_kafka(&brokers, topic, usize::MAX, Duration::from_secs(3)).await;
    let plain: Vec<Received> = received.iter().map(|m| m.received.clone()).collect();
    let ids: HashSet<_> = plain.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), appended.len(), "nothing lost");
    eprintln!("{} messages for {} events", plain.len(), appended.len());
    assert_stream_order(&plain);

    // A consumer group reads the topic, duplicates and all: each command runs once.
    let tallies: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let consumer = Consumer::builder("tally", tallies.clone())
        .bus(tally::bus(tallies.clone()))
        .on_aggregate::<Tally, _>("OrderPlaced", tally::decode)
        .backoff(quick())
        .build()
        .unwrap();
    let mut source = KafkaSourceConfig::new(&brokers, "tally", [topic]);
    source.settings = quick_group_settings();
    let mut consuming = tally::spawn(consumer, KafkaSource::new(source));
    let delivered = plain.len() as u64;
    tokio::time::timeout(
        Duration::from_secs(90),
        // Received counts a message before its outcome is stored: wait for the outcomes.
        consuming
            .status
            .wait_for(|s| s.handled + s.duplicates >= delivered),
    )
    .await
    .expect("every message delivered to the group within 90 s")
    .unwrap();
    let status = consuming.stop().await;
    let (_, counted) = tally::counted(tallies.as_ref()).await;
    let unique_counted: HashSet<_> = counted.iter().collect();
    assert_eq!(counted.len(), unique_counted.len(), "each command once");
    assert_eq!(counted.len(), appended.len(), "{status:?}");
    assert_eq!(status.handled + status.duplicates, delivered);
}
