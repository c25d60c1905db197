//! The store's connections terminated (`pg_terminate_backend`) again and again while appends
//! and a subscription run: every acknowledged append is stored exactly once, an append retried
//! with the same event ids after an unknown outcome answers the original result, and the
//! subscriber misses nothing and sees nothing twice. It terminates every other connection to
//! the database, so it runs in its own test binary (cargo runs test binaries one at a time).
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use factum_core::{
    Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamName, SubscriptionFilter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_and_a_subscription_go_through_terminated_connections_exactly_once() {
    let Some((store, _schema)) = common::fresh("terminated").await else {
        return;
    };
    let store: Arc<dyn EventStore> = Arc::new(store);
    let mut subscription = store.subscribe_all(0, SubscriptionFilter::default());

    // Terminates the other connections to the database every 25 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (client, connection) = common::connect().await.unwrap();
            tokio::spawn(connection);
            let mut terminated = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let rows = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = current_database() AND pid <> pg_backend_pid() \
                           AND backend_type = 'client backend'",
                        &[],
                    )
                    .await
                    .unwrap();
                terminated += rows.len() as u64;
            }
            terminated
        })
    };

    // Writers: each append retried with the same event (the same id) until it is answered.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamName::user(format!("w-{w}")).unwrap();
                let mut results = Vec::new();
                let mut retried = 0;
                for n in 0..150u64 {
                    let event =
                        NewEvent::json("Wrote", &serde_json::json!({"w": w, "n": n})).unwrap();
                    let started = Instant::now();
                    let result = loop {
                        match store
                            .append(&stream, ExpectedState::Any, vec![event.clone()])
                            .await
                        {
                            Ok(result) => break result,
                            // The outcome is unknown: the same append again is safe.
                            Err(StoreError::Unavailable(_)) => {
                                retried += 1;
                                assert!(
                                    started.elapsed() < Duration::from_secs(30),
                                    "no answer in 30 s"
                                );
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => panic!("append: {e}"),
                        }
                    };
                    results.push((event.id, result.position, result.last_revision));
                }
                (results, retried)
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut retried = 0;
    for writer in writers {
        let (results, r) = writer.await.unwrap();
        acknowledged.extend(results);
        retried += r;
    }
    stop.store(true, Ordering::Relaxed);
    let terminated = killer.await.unwrap();
    eprintln!("{terminated} connections terminated; {retried} appends retried");
    assert!(terminated > 0);
    assert!(retried > 0, "some appends met a terminated connection");

    // Every acknowledged append is stored once, where its answer said.
    let all = store
        .read_all(0, Direction::Forwards, 10_000)
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        acknowledged.len(),
        "nothing stored twice or lost"
    );
    let by_id: HashMap<_, _> = all
        .iter()
        .map(|e| (e.id, (e.position, e.revision)))
        .collect();
    assert_eq!(by_id.len(), all.len());
    for (id, position, revision) in &acknowledged {
        assert_eq!(by_id.get(id), Some(&(*position, *revision)), "{id}");
    }
    // The subscriber saw every position once, in order.
    for expected in 0..all.len() as u64 {
        let event = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscriber went on")
            .unwrap();
        assert_eq!(event.position, expected);
    }
    // And the store says it writes.
    let started = Instant::now();
    while let Some(reason) = store.write_refusal() {
        assert!(started.elapsed() < Duration::from_secs(10), "{reason}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
