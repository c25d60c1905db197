//! A subscriber survives a restart of PostgreSQL and resumes without loss; appends fail with a
//! clear error while it is away and work again after. Restarts the local server, so it runs in
//! its own test binary (cargo runs test binaries one at a time).
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::time::Duration;

use common::{cannot_restart, restart_postgres};
use factum_core::{
    EventStore, ExpectedState, NewEvent, StoreError, StreamName, SubscriptionFilter,
};

fn event(n: u64) -> NewEvent {
    NewEvent::json("Counted", &serde_json::json!({ "n": n })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_survives_a_restart_of_postgres() {
    let Some((store, _schema)) = common::fresh("restart").await else {
        return;
    };
    let stream = StreamName::new("counter").unwrap();
    let mut subscription = store.subscribe_all(0, SubscriptionFilter::default());
    for n in 0..10 {
        store
            .append(&stream, ExpectedState::Any, vec![event(n)])
            .await
            .unwrap();
    }
    for n in 0..10 {
        assert_eq!(subscription.next().await.unwrap().position, n);
    }

    if !restart_postgres() {
        cannot_restart();
        return;
    }
    // The connections of before are gone; the first append may find out and fail cleanly.
    let mut written = 10;
    for attempt in 0.. {
        match store
            .append(&stream, ExpectedState::Any, vec![event(written)])
            .await
        {
            Ok(_) => {
                written += 1;
                break;
            }
            Err(StoreError::Unavailable(_)) if attempt < 100 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("append after the restart: {e}"),
        }
    }
    for n in written..20 {
        store
            .append(&stream, ExpectedState::Any, vec![event(n)])
            .await
            .unwrap();
    }
    for n in 10..20 {
        let event = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscriber did not resume")
            .unwrap();
        assert_eq!(event.position, n);
    }
}
