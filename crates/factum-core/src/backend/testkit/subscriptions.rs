//! Catch-up-then-live subscriptions.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::{EventStore, ExpectedState, StreamMetadata, SubscriptionFilter};

use super::{event, events, n_of, stream};

pub async fn subscription_switches_from_catch_up_to_live_without_gap_or_duplicate<
    S: EventStore + 'static,
>(
    store: S,
) {
    let store = Arc::new(store);
    for i in 0..300u64 {
        store
            .append(
                &stream(&format!("sub-{}", i % 7)),
                ExpectedState::Any,
                vec![event(i)],
            )
            .await
            .unwrap();
    }
    let mut subscription = store.subscribe_all(0, SubscriptionFilter::default());
    let total = 2_300u64;
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..500u64 {
                    let n = 300 + w * 500 + i;
                    store
                        .append(
                            &stream(&format!("live-{w}")),
                            ExpectedState::Any,
                            vec![event(n)],
                        )
                        .await
                        .unwrap();
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for expected_position in 0..total {
        let e = tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .expect("subscription stalled")
            .unwrap();
        assert_eq!(e.position, expected_position, "no gap, no duplicate");
        assert!(seen.insert(n_of(&e)));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(seen.len() as u64, total);
    // Live: one more event arrives.
    store
        .append(&stream("late"), ExpectedState::Any, vec![event(99_999)])
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.position, n_of(&e)), (total, 99_999));
}

pub async fn filtered_subscription_delivers_only_matching_events<S: EventStore + 'static>(
    store: S,
) {
    for i in 0..40u64 {
        let name = if i % 2 == 0 { "cart-" } else { "order-" };
        let mut e = event(i);
        if i % 4 == 0 {
            e.event_type = "Special".into();
        }
        store
            .append(&stream(&format!("{name}{i}")), ExpectedState::Any, vec![e])
            .await
            .unwrap();
    }
    let filter = SubscriptionFilter {
        stream_prefixes: vec!["cart-".into()],
        ..Default::default()
    };
    let mut by_prefix = store.subscribe_all(0, filter);
    for i in (0..40).step_by(2) {
        assert_eq!(n_of(&by_prefix.next().await.unwrap()), i);
    }
    let filter = SubscriptionFilter {
        event_types: vec!["Special".into()],
        ..Default::default()
    };
    let mut by_type = store.subscribe_all(10, filter);
    for i in (12..40).step_by(4) {
        assert_eq!(n_of(&by_type.next().await.unwrap()), i);
    }
    store
        .set_metadata(&stream("cart-0"), StreamMetadata::default())
        .await
        .unwrap();
    store
        .append(&stream("cart-x"), ExpectedState::Any, vec![event(1000)])
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), by_prefix.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        n_of(&e),
        1000,
        "the $$cart-0 record does not match the prefix"
    );
    let mut no_system = store.subscribe_all(
        40,
        SubscriptionFilter {
            exclude_system: true,
            ..Default::default()
        },
    );
    assert_eq!(n_of(&no_system.next().await.unwrap()), 1000);
}

pub async fn stream_subscription_follows_one_stream<S: EventStore + 'static>(store: S) {
    let store = Arc::new(store);
    let s = stream("followed");
    let mut subscription = store.subscribe_stream(s.clone(), 0);
    store
        .append(&s, ExpectedState::NoStream, events(3))
        .await
        .unwrap();
    store
        .append(&stream("noise"), ExpectedState::Any, events(3))
        .await
        .unwrap();
    let writer = {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move {
            for i in 3..50 {
                store
                    .append(&s, ExpectedState::Exact(i - 1), vec![event(i)])
                    .await
                    .unwrap();
            }
        })
    };
    for revision in 0..50u64 {
        let e = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("stream subscription stalled")
            .unwrap();
        assert_eq!((e.stream.as_str(), e.revision), ("followed", revision));
    }
    writer.await.unwrap();
    let mut from_middle = store.subscribe_stream(s, 45);
    assert_eq!(from_middle.next().await.unwrap().revision, 45);
}
