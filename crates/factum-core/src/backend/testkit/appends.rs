//! Appends: expected states, atomicity, idempotency, what is refused.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::{
    CurrentRevision, Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamMetadata,
    StreamName,
};

use super::{event, events, n_of, stream};

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

pub async fn data_and_metadata_round_trip_byte_for_byte<S: EventStore>(store: S) {
    let s = stream("bytes");
    let binary = NewEvent::binary("Blob", (0..=255u8).collect::<Vec<_>>()).unwrap();
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
