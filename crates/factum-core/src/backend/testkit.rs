//! The conformance suite: one function per guarantee of [`EventStore`]. Every backend runs all of
//! them from its own tests with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! async fn fresh() -> (MyStore, TempDir) { ... }
//! factum_core::conformance_tests!(fresh);
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    AppendOptions, Checkpoint, CurrentRevision, Direction, EventStore, ExpectedState, NewEvent,
    StoreError, StreamMetadata, StreamName, SubscriptionFilter,
};

/// Generates one `#[tokio::test]` per conformance check. `$make` is an async function returning
/// `(store, guard)`; the guard (a temporary directory, say) lives as long as the test.
///
/// A backend that needs a service (a database server) may skip where it is missing: with
/// `conformance_tests!(optional $make)`, `$make` returns `Option<(store, guard)>` and a test
/// that gets `None` passes without running (it should print why).
#[macro_export]
macro_rules! conformance_tests {
    (optional $make:path) => {
        $crate::conformance_tests!(@list $make, optional);
    };
    ($make:path) => {
        $crate::conformance_tests!(@list $make, required);
    };
    (@list $make:path, $mode:ident) => {
        $crate::conformance_tests!(@each $make, $mode;
            empty_append_writes_nothing,
            expected_states_are_checked,
            wrong_expected_revision_writes_nothing,
            concurrent_appenders_with_same_expected_revision_one_wins,
            multi_event_append_is_all_or_none,
            idempotent_reappend_returns_original_result,
            read_stream_forwards_backwards_and_limits,
            read_all_is_in_log_order,
            missing_stream_is_not_found,
            reserved_names_and_bad_events_are_rejected,
            subscription_switches_from_catch_up_to_live_without_gap_or_duplicate,
            filtered_subscription_delivers_only_matching_events,
            stream_subscription_follows_one_stream,
            soft_delete_hides_stream_and_revisions_continue,
            tombstone_forbids_writes_forever,
            metadata_limits_what_reads_return,
            list_streams_by_prefix,
            checkpoint_is_stored_with_append_and_only_moves_forward,
            checkpoint_can_be_saved_on_its_own,
            toolkit_streams_take_appends_other_system_streams_do_not,
            data_and_metadata_round_trip_byte_for_byte,
            a_name_is_claimed_by_one_holder_at_a_time
        );
    };
    (@each $make:path, required; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $make().await;
                $crate::backend::testkit::$name(store).await;
            }
        )*
    };
    (@each $make:path, optional; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some((store, _guard)) = $make().await {
                    $crate::backend::testkit::$name(store).await;
                }
            }
        )*
    };
}

fn stream(name: &str) -> StreamName {
    StreamName::user(name).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent::json("Counted", &serde_json::json!({ "n": n })).unwrap()
}

fn events(count: u64) -> Vec<NewEvent> {
    (0..count).map(event).collect()
}

fn n_of(e: &crate::RecordedEvent) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
    value["n"].as_u64().unwrap()
}

pub async fn empty_append_writes_nothing<S: EventStore>(store: S) {
    let err = store
        .append(&stream("a"), ExpectedState::Any, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert_eq!(store.head(), 0);
    assert_eq!(
        store.stream_revision(&stream("a")).await.unwrap(),
        CurrentRevision(None)
    );
}

pub async fn expected_states_are_checked<S: EventStore>(store: S) {
    let s = stream("order-1");
    let wrong = |r: Result<_, StoreError>, actual: Option<u64>| match r {
        Err(StoreError::WrongExpectedRevision {
            actual: CurrentRevision(a),
            ..
        }) => assert_eq!(a, actual),
        other => panic!("expected a wrong expected revision error, got {other:?}"),
    };
    wrong(
        store
            .append(&s, ExpectedState::StreamExists, events(1))
            .await,
        None,
    );
    wrong(
        store.append(&s, ExpectedState::Exact(0), events(1)).await,
        None,
    );
    let first = store
        .append(&s, ExpectedState::NoStream, events(2))
        .await
        .unwrap();
    assert_eq!((first.first_revision, first.last_revision), (0, 1));
    assert_eq!(first.position, 1);
    wrong(
        store.append(&s, ExpectedState::NoStream, events(1)).await,
        Some(1),
    );
    wrong(
        store.append(&s, ExpectedState::Exact(0), events(1)).await,
        Some(1),
    );
    wrong(
        store.append(&s, ExpectedState::Exact(5), events(1)).await,
        Some(1),
    );
    let r = store
        .append(&s, ExpectedState::Exact(1), events(1))
        .await
        .unwrap();
    assert_eq!((r.first_revision, r.last_revision, r.position), (2, 2, 2));
    let r = store
        .append(&s, ExpectedState::StreamExists, events(1))
        .await
        .unwrap();
    assert_eq!(r.last_revision, 3);
    let r = store
        .append(&s, ExpectedState::Any, events(2))
        .await
        .unwrap();
    assert_eq!((r.first_revision, r.last_revision, r.position), (4, 5, 5));
    let r = store
        .append(&stream("order-2"), ExpectedState::Any, events(1))
        .await
        .unwrap();
    assert_eq!((r.first_revision, r.position), (0, 6));
    assert_eq!(store.head(), 7);
    assert_eq!(
        store.stream_revision(&s).await.unwrap(),
        CurrentRevision(Some(5))
    );
}

pub async fn wrong_expected_revision_writes_nothing<S: EventStore>(store: S) {
    let s = stream("acct-1");
    store
        .append(&s, ExpectedState::NoStream, events(3))
        .await
        .unwrap();
    let err = store
        .append(&s, ExpectedState::Exact(1), events(5))
        .await
        .unwrap_err();
    match err {
        StoreError::WrongExpectedRevision {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream, "acct-1");
            assert_eq!(expected, ExpectedState::Exact(1));
            assert_eq!(actual, CurrentRevision(Some(2)));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.head(), 3);
    let read = store
        .read_stream(&s, 0, Direction::Forwards, 100)
        .await
        .unwrap();
    assert_eq!(read.len(), 3);
}

pub async fn concurrent_appenders_with_same_expected_revision_one_wins<S: EventStore + 'static>(
    store: S,
) {
    let store = Arc::new(store);
    let s = stream("race");
    store
        .append(&s, ExpectedState::NoStream, events(1))
        .await
        .unwrap();
    for round in 0..5u64 {
        let head_before = store.head();
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let store = store.clone();
            let s = s.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(&s, ExpectedState::Exact(round), vec![event(i)])
                    .await
            }));
        }
        let mut winners = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(r) => {
                    winners += 1;
                    assert_eq!(r.last_revision, round + 1);
                    assert_eq!(r.position, head_before);
                }
                Err(StoreError::WrongExpectedRevision { actual, .. }) => {
                    assert_eq!(actual, CurrentRevision(Some(round + 1)));
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners, 1, "exactly one appender wins");
        // The losers burned no position.
        assert_eq!(store.head(), head_before + 1);
    }
    let all = store.read_all(0, Direction::Forwards, 100).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..6).collect::<Vec<_>>());
}

pub async fn multi_event_append_is_all_or_none<S: EventStore>(store: S) {
    let s = stream("batch");
    let mut bad = events(5);
    bad[3].data = bytes::Bytes::from_static(b"{not json");
    let err = store.append(&s, ExpectedState::Any, bad).await.unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidInput(ref m) if m.contains("event 3")),
        "{err}"
    );
    let mut duplicated = events(3);
    duplicated[2].id = duplicated[0].id;
    assert!(matches!(
        store.append(&s, ExpectedState::Any, duplicated).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(store.head(), 0);
    assert!(matches!(
        store.read_stream(&s, 0, Direction::Forwards, 10).await,
        Err(StoreError::NotFound(_))
    ));
    let r = store
        .append(&s, ExpectedState::NoStream, events(1000))
        .await
        .unwrap();
    assert_eq!(
        (r.first_revision, r.last_revision, r.position),
        (0, 999, 999)
    );
    let read = store
        .read_stream(&s, 0, Direction::Forwards, 2000)
        .await
        .unwrap();
    assert_eq!(read.len(), 1000);
    for (i, e) in read.iter().enumerate() {
        assert_eq!(
            (e.revision, e.position, n_of(e)),
            (i as u64, i as u64, i as u64)
        );
    }
}

pub async fn idempotent_reappend_returns_original_result<S: EventStore>(store: S) {
    let s = stream("idem");
    let batch = events(3);
    let first = store
        .append(&s, ExpectedState::NoStream, batch.clone())
        .await
        .unwrap();
    let again = store
        .append(&s, ExpectedState::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(first, again);
    let next = events(2);
    let second = store
        .append(&s, ExpectedState::Exact(2), next.clone())
        .await
        .unwrap();
    // Retried after other writes, with the same exact expected revision.
    store
        .append(&s, ExpectedState::Any, events(1))
        .await
        .unwrap();
    let retried = store
        .append(&s, ExpectedState::Exact(2), next.clone())
        .await
        .unwrap();
    assert_eq!(second, retried);
    // With `Any`, re-appending the stream's last events is recognised too.
    let tail = events(2);
    let r = store
        .append(&s, ExpectedState::Any, tail.clone())
        .await
        .unwrap();
    assert_eq!(store.append(&s, ExpectedState::Any, tail).await.unwrap(), r);
    assert_eq!(store.head(), 8);
    // Same ids at a different place are not a match: the usual check applies.
    assert!(matches!(
        store.append(&s, ExpectedState::Exact(0), batch).await,
        Err(StoreError::WrongExpectedRevision { .. })
    ));
}

pub async fn read_stream_forwards_backwards_and_limits<S: EventStore>(store: S) {
    let s = stream("reads");
    store
        .append(&s, ExpectedState::NoStream, events(10))
        .await
        .unwrap();
    store
        .append(&stream("other"), ExpectedState::Any, events(3))
        .await
        .unwrap();
    store
        .append(&s, ExpectedState::Exact(9), (10..15).map(event).collect())
        .await
        .unwrap();
    let revisions = |v: Vec<crate::RecordedEvent>| v.iter().map(|e| e.revision).collect::<Vec<_>>();
    assert_eq!(
        revisions(
            store
                .read_stream(&s, 0, Direction::Forwards, 100)
                .await
                .unwrap()
        ),
        (0..15).collect::<Vec<_>>()
    );
    assert_eq!(
        revisions(
            store
                .read_stream(&s, 8, Direction::Forwards, 4)
                .await
                .unwrap()
        ),
        vec![8, 9, 10, 11]
    );
    assert_eq!(
        revisions(
            store
                .read_stream(&s, u64::MAX, Direction::Backwards, 3)
                .await
                .unwrap()
        ),
        vec![14, 13, 12]
    );
    assert_eq!(
        revisions(
            store
                .read_stream(&s, 2, Direction::Backwards, 10)
                .await
                .unwrap()
        ),
        vec![2, 1, 0]
    );
    assert!(
        store
            .read_stream(&s, 15, Direction::Forwards, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_stream(&s, 0, Direction::Forwards, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let read = store
        .read_stream(&s, 10, Direction::Forwards, 1)
        .await
        .unwrap();
    assert_eq!((read[0].position, n_of(&read[0])), (13, 10));
}

pub async fn read_all_is_in_log_order<S: EventStore>(store: S) {
    for i in 0..20u64 {
        store
            .append(
                &stream(&format!("s-{}", i % 3)),
                ExpectedState::Any,
                vec![event(i)],
            )
            .await
            .unwrap();
    }
    let all = store.read_all(0, Direction::Forwards, 100).await.unwrap();
    assert_eq!(all.len(), 20);
    for (i, e) in all.iter().enumerate() {
        assert_eq!((e.position, n_of(e)), (i as u64, i as u64));
        assert_eq!(e.stream.as_str(), format!("s-{}", i % 3));
        assert_eq!(e.revision, i as u64 / 3);
    }
    let page = store.read_all(5, Direction::Forwards, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    let back = store
        .read_all(u64::MAX, Direction::Backwards, 4)
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![19, 18, 17, 16]
    );
    let back = store.read_all(1, Direction::Backwards, 4).await.unwrap();
    assert_eq!(
        back.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 0]
    );
    assert!(
        store
            .read_all(20, Direction::Forwards, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.head(), 20);
}

pub async fn missing_stream_is_not_found<S: EventStore>(store: S) {
    for direction in [Direction::Forwards, Direction::Backwards] {
        assert!(matches!(
            store.read_stream(&stream("nope"), 0, direction, 10).await,
            Err(StoreError::NotFound(_))
        ));
    }
    assert_eq!(
        store.stream_revision(&stream("nope")).await.unwrap(),
        CurrentRevision(None)
    );
    assert!(matches!(
        store
            .delete_stream(&stream("nope"), ExpectedState::Any)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.head(), 0);
}

pub async fn reserved_names_and_bad_events_are_rejected<S: EventStore>(store: S) {
    assert!(StreamName::user("$system").is_err());
    assert!(StreamName::new("").is_err());
    assert!(StreamName::new("a\0b").is_err());
    assert!(StreamName::new("x".repeat(513)).is_err());
    assert!(StreamName::new("x".repeat(512)).is_ok());
    let system = StreamName::new("$$orders").unwrap();
    assert!(matches!(
        store.append(&system, ExpectedState::Any, events(1)).await,
        Err(StoreError::InvalidInput(_))
    ));
    let s = stream("ok");
    let mut bad_type = event(0);
    bad_type.event_type = String::new();
    let mut system_type = event(0);
    system_type.event_type = "$metadata".into();
    let mut long_type = event(0);
    long_type.event_type = "t".repeat(257);
    let mut bad_metadata = event(0);
    bad_metadata.metadata = bytes::Bytes::from_static(b"[1,2]");
    for bad in [bad_type, system_type, long_type, bad_metadata] {
        assert!(matches!(
            store.append(&s, ExpectedState::Any, vec![bad]).await,
            Err(StoreError::InvalidInput(_))
        ));
    }
    assert_eq!(store.head(), 0);

    // Limits count characters, not bytes: the longest name and type in two-byte characters
    // are stored and read back; one character more is refused.
    assert!(StreamName::new("ü".repeat(513)).is_err());
    let wide = StreamName::new("ü".repeat(512)).unwrap();
    let mut wide_type = event(0);
    wide_type.event_type = "ü".repeat(256);
    let mut wider_type = event(1);
    wider_type.event_type = "ü".repeat(257);
    assert!(matches!(
        store
            .append(&wide, ExpectedState::Any, vec![wider_type])
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    store
        .append(&wide, ExpectedState::NoStream, vec![wide_type])
        .await
        .unwrap();
    let read = store
        .read_stream(&wide, 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].stream, wide);
    assert_eq!(read[0].event_type, "ü".repeat(256));
    // The streams the system derives from the longest name are written and read back too.
    let position = store
        .set_metadata(
            &wide,
            StreamMetadata {
                max_count: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let all = store
        .read_all(position, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(all[0].stream, wide.metadata_stream());
    assert_eq!(
        store.get_metadata(&wide).await.unwrap().unwrap().max_count,
        Some(5)
    );
}

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

pub async fn soft_delete_hides_stream_and_revisions_continue<S: EventStore>(store: S) {
    let s = stream("cart-9");
    store
        .append(&s, ExpectedState::NoStream, events(3))
        .await
        .unwrap();
    assert!(matches!(
        store.delete_stream(&s, ExpectedState::Exact(1)).await,
        Err(StoreError::WrongExpectedRevision { .. })
    ));
    let position = store
        .delete_stream(&s, ExpectedState::Exact(2))
        .await
        .unwrap();
    assert_eq!(position, 3);
    assert!(matches!(
        store.read_stream(&s, 0, Direction::Forwards, 10).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.stream_revision(&s).await.unwrap(),
        CurrentRevision(None)
    );
    assert!(store.list_streams("cart-", None, 10).await.unwrap()[0].deleted);
    // Recorded, not erased: the events and the deletion stay in $all.
    let all = store.read_all(0, Direction::Forwards, 10).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].stream.as_str(), "$$cart-9");
    assert_eq!(all[3].event_type, crate::backend::catalog::DELETED_TYPE);
    let r = store
        .append(&s, ExpectedState::NoStream, events(2))
        .await
        .unwrap();
    assert_eq!((r.first_revision, r.last_revision), (3, 4));
    let read = store
        .read_stream(&s, 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(
        read.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

pub async fn tombstone_forbids_writes_forever<S: EventStore>(store: S) {
    let s = stream("gone");
    store
        .append(&s, ExpectedState::NoStream, events(2))
        .await
        .unwrap();
    store
        .tombstone_stream(&s, ExpectedState::Any)
        .await
        .unwrap();
    let head = store.head();
    for expected in [
        ExpectedState::Any,
        ExpectedState::NoStream,
        ExpectedState::Exact(1),
    ] {
        assert!(matches!(
            store.append(&s, expected, events(1)).await,
            Err(StoreError::StreamDeleted(_))
        ));
    }
    assert!(matches!(
        store.read_stream(&s, 0, Direction::Forwards, 10).await,
        Err(StoreError::StreamDeleted(_))
    ));
    assert!(matches!(
        store.delete_stream(&s, ExpectedState::Any).await,
        Err(StoreError::StreamDeleted(_))
    ));
    assert!(matches!(
        store.tombstone_stream(&s, ExpectedState::Any).await,
        Err(StoreError::StreamDeleted(_))
    ));
    assert_eq!(store.head(), head);
}

pub async fn metadata_limits_what_reads_return<S: EventStore>(store: S) {
    let s = stream("meta");
    assert_eq!(store.get_metadata(&s).await.unwrap(), None);
    store
        .append(&s, ExpectedState::NoStream, events(10))
        .await
        .unwrap();
    let metadata = StreamMetadata {
        max_count: Some(4),
        custom: Some(serde_json::json!({"owner": "billing"})),
        ..Default::default()
    };
    store.set_metadata(&s, metadata.clone()).await.unwrap();
    assert_eq!(store.get_metadata(&s).await.unwrap(), Some(metadata));
    let revisions = |v: Vec<crate::RecordedEvent>| v.iter().map(|e| e.revision).collect::<Vec<_>>();
    assert_eq!(
        revisions(
            store
                .read_stream(&s, 0, Direction::Forwards, 100)
                .await
                .unwrap()
        ),
        vec![6, 7, 8, 9]
    );
    store
        .set_metadata(
            &s,
            StreamMetadata {
                truncate_before: Some(8),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        revisions(
            store
                .read_stream(&s, u64::MAX, Direction::Backwards, 100)
                .await
                .unwrap()
        ),
        vec![9, 8]
    );
    store
        .set_metadata(
            &s,
            StreamMetadata {
                max_age_secs: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store
        .append(&s, ExpectedState::Exact(9), events(1))
        .await
        .unwrap();
    assert_eq!(
        revisions(
            store
                .read_stream(&s, 0, Direction::Forwards, 100)
                .await
                .unwrap()
        ),
        vec![10]
    );
    // A page no longer than the hidden events still finds the visible ones after them.
    store
        .append(&s, ExpectedState::Exact(10), events(2))
        .await
        .unwrap();
    let read = |from, direction, limit| {
        let store = &store;
        let s = &s;
        async move { revisions(store.read_stream(s, from, direction, limit).await.unwrap()) }
    };
    assert_eq!(read(0, Direction::Forwards, 1).await, vec![10]);
    assert_eq!(read(0, Direction::Forwards, 2).await, vec![10, 11]);
    assert_eq!(read(3, Direction::Forwards, 5).await, vec![10, 11, 12]);
    assert_eq!(
        read(u64::MAX, Direction::Backwards, 5).await,
        vec![12, 11, 10]
    );
    assert_eq!(read(9, Direction::Backwards, 5).await, Vec::<u64>::new());
    // Metadata hides, it does not change revisions or the log.
    assert_eq!(
        store.stream_revision(&s).await.unwrap(),
        CurrentRevision(Some(12))
    );
    assert_eq!(
        store
            .read_all(0, Direction::Forwards, 100)
            .await
            .unwrap()
            .len(),
        16
    );
}

pub async fn list_streams_by_prefix<S: EventStore>(store: S) {
    for name in ["order-2", "cart-1", "order-1", "order-3"] {
        store
            .append(&stream(name), ExpectedState::Any, events(2))
            .await
            .unwrap();
    }
    store
        .set_metadata(&stream("order-1"), StreamMetadata::default())
        .await
        .unwrap();
    let names = |v: Vec<crate::StreamInfo>| {
        v.into_iter()
            .map(|i| i.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.list_streams("", None, 100).await.unwrap()),
        vec!["cart-1", "order-1", "order-2", "order-3"]
    );
    assert_eq!(
        names(
            store
                .list_streams("order-", Some(&stream("order-1")), 1)
                .await
                .unwrap()
        ),
        vec!["order-2"]
    );
    assert_eq!(
        names(store.list_streams("$$", None, 100).await.unwrap()),
        vec!["$$order-1"]
    );
    let info = &store.list_streams("cart", None, 1).await.unwrap()[0];
    assert_eq!(
        (info.last_revision, info.last_position, info.deleted),
        (1, 3, false)
    );
}

pub async fn checkpoint_is_stored_with_append_and_only_moves_forward<S: EventStore>(store: S) {
    let s = stream("saga-1");
    assert_eq!(store.read_checkpoint("saga").await.unwrap(), None);
    let with = |position| AppendOptions {
        checkpoint: Some(Checkpoint {
            consumer: "saga".into(),
            position,
        }),
    };
    store
        .append_with(&s, ExpectedState::Any, events(2), with(10))
        .await
        .unwrap();
    assert_eq!(store.read_checkpoint("saga").await.unwrap(), Some(10));
    let head = store.head();
    let err = store
        .append_with(&s, ExpectedState::Any, events(1), with(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::CheckpointBehind {
                stored: 10,
                given: 10,
                ..
            }
        ),
        "{err}"
    );
    // A failing expected state stores no checkpoint either.
    assert!(
        store
            .append_with(&s, ExpectedState::Exact(0), events(1), with(11))
            .await
            .is_err()
    );
    assert_eq!(store.head(), head);
    assert_eq!(store.read_checkpoint("saga").await.unwrap(), Some(10));
    store
        .append_with(&s, ExpectedState::Exact(1), events(1), with(11))
        .await
        .unwrap();
    assert_eq!(store.read_checkpoint("saga").await.unwrap(), Some(11));
    assert_eq!(store.read_checkpoint("other").await.unwrap(), None);
}

pub async fn data_and_metadata_round_trip_byte_for_byte<S: EventStore>(store: S) {
    let s = stream("bytes");
    let binary = NewEvent::binary("Blob", (0..=255u8).collect::<Vec<_>>());
    let json = NewEvent::json("Json", &serde_json::json!({"k": "välue ✓", "n": [1, 2.5]}))
        .unwrap()
        .with_metadata(&serde_json::json!({"$correlationId": "c-1", "$causationId": "k-9"}))
        .unwrap();
    let ids = (binary.id, json.id);
    let before = crate::now_micros();
    store
        .append(
            &s,
            ExpectedState::NoStream,
            vec![binary.clone(), json.clone()],
        )
        .await
        .unwrap();
    let read = store
        .read_stream(&s, 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(read[0].to_new_event(), binary);
    assert_eq!(read[1].to_new_event(), json);
    assert_eq!((read[0].id, read[1].id), ids);
    assert_eq!(read[1].metadata_json()["$correlationId"], "c-1");
    assert!(read[0].recorded_at_us >= before);
    assert!(read[0].recorded_at_us <= crate::now_micros());
}

pub async fn checkpoint_can_be_saved_on_its_own<S: EventStore>(store: S) {
    store
        .append(&stream("a"), ExpectedState::Any, events(3))
        .await
        .unwrap();
    let position = store.save_checkpoint("projector", 2).await.unwrap();
    assert_eq!(position, 3);
    assert_eq!(store.read_checkpoint("projector").await.unwrap(), Some(2));
    assert!(matches!(
        store.save_checkpoint("projector", 2).await,
        Err(StoreError::CheckpointBehind {
            stored: 2,
            given: 2,
            ..
        })
    ));
    assert!(matches!(
        store.save_checkpoint("", 5).await,
        Err(StoreError::InvalidInput(_))
    ));
    store.save_checkpoint("projector", 3).await.unwrap();
    assert_eq!(store.read_checkpoint("projector").await.unwrap(), Some(3));
    assert_eq!(store.head(), 5);
}

pub async fn a_name_is_claimed_by_one_holder_at_a_time<S: EventStore>(store: S) {
    let first = store.claim("relay-orders").await.unwrap().unwrap();
    assert_eq!(first.name(), "relay-orders");
    assert!(!first.is_lost());
    assert!(store.claim("relay-orders").await.unwrap().is_none());
    let other = store.claim("saga-orders").await.unwrap();
    assert!(other.is_some());
    assert!(matches!(
        store.claim("").await,
        Err(StoreError::InvalidInput(_))
    ));
    drop(first);
    // A backend may release asynchronously (a database connection closing).
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Some(claim) = store.claim("relay-orders").await.unwrap() {
                return claim;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a dropped claim is released");
    assert!(!again.is_lost());
    // Claims write nothing to the log.
    assert_eq!(store.head(), 0);
}

pub async fn toolkit_streams_take_appends_other_system_streams_do_not<S: EventStore>(store: S) {
    for name in [
        "$deadletter-billing",
        "$inbox-mailer",
        "$saga-order-1",
        "$sagas-order",
        "$snapshot-cart-1",
    ] {
        let s = StreamName::new(name).unwrap();
        assert!(s.is_toolkit_stream());
        store
            .append(&s, ExpectedState::NoStream, events(1))
            .await
            .unwrap();
    }
    for name in ["$deadletter-", "$$cart-1", "$checkpoint-x", "$other"] {
        let s = StreamName::new(name).unwrap();
        assert!(
            matches!(
                store.append(&s, ExpectedState::Any, events(1)).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{name}"
        );
    }
    assert_eq!(store.head(), 5);
}
