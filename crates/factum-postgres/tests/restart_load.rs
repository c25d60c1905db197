//! PostgreSQL restarted while writers append and subscribers follow: every acknowledged append
//! is stored exactly once, an append retried with the same event ids after an unknown outcome
//! answers the original result, and the subscribers (of `$all` and of a stream) miss nothing
//! and see nothing twice. Restarts the local server, so it runs in its own test binary (cargo
//! runs test binaries one at a time).
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{cannot_restart, restart_postgres};
use factum_core::{
    Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamName, SubscriptionFilter,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_and_subscriptions_go_through_a_restart_of_postgres_exactly_once() {
    const WRITERS: u64 = 4;
    const EACH: u64 = 120;
    let Some((store, _schema)) = common::fresh("restart_load").await else {
        return;
    };
    let store: Arc<dyn EventStore> = Arc::new(store);
    // Subscribers of `$all` and of one stream, following from the start.
    let follow = |mut subscription: factum_core::Subscription, until: u64| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while (seen.len() as u64) < until {
                let event = tokio::time::timeout(Duration::from_secs(60), subscription.next())
                    .await
                    .expect("the subscriber went on")
                    .unwrap();
                seen.push((event.id, event.position, event.revision));
            }
            seen
        })
    };
    let all_follower = follow(
        store.subscribe_all(0, SubscriptionFilter::default()),
        WRITERS * EACH,
    );
    let stream_follower = follow(
        store.subscribe_stream(StreamName::user("w-0").unwrap(), 0),
        EACH,
    );

    // Writers: each append retried with the same event (the same id) until it is answered.
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, written) = (store.clone(), written.clone());
            tokio::spawn(async move {
                let stream = StreamName::user(format!("w-{w}")).unwrap();
                let mut results = Vec::new();
                let mut retried = 0;
                for n in 0..EACH {
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
                                    started.elapsed() < Duration::from_secs(60),
                                    "no answer in 60 s"
                                );
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("append: {e}"),
                        }
                    };
                    written.fetch_add(1, Ordering::Relaxed);
                    results.push((event.id, result.position, result.last_revision));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (results, retried)
            })
        })
        .collect();

    // PostgreSQL restarts while a third or so is written.
    while written.load(Ordering::Relaxed) < WRITERS * EACH / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = written.load(Ordering::Relaxed);
    let restarted = tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    if !restarted {
        cannot_restart();
        return;
    }

    let mut acknowledged = Vec::new();
    let mut retried = 0;
    for writer in writers {
        let (results, r) = writer.await.unwrap();
        acknowledged.extend(results);
        retried += r;
    }
    eprintln!("PostgreSQL restarted after {before} appends; {retried} appends retried");
    assert!(
        before < WRITERS * EACH,
        "the restart came while appends went on"
    );
    assert!(retried > 0, "some appends met the restart");

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
    // The subscribers saw every event once, in order.
    let stored: Vec<_> = all.iter().map(|e| (e.id, e.position, e.revision)).collect();
    assert_eq!(all_follower.await.unwrap(), stored);
    let of_w0: Vec<_> = all
        .iter()
        .filter(|e| e.stream.as_str() == "w-0")
        .map(|e| (e.id, e.position, e.revision))
        .collect();
    assert_eq!(stream_follower.await.unwrap(), of_w0);
}
