//! Soft deletes, tombstones, metadata and system streams.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::{
    CurrentRevision, Direction, EventStore, ExpectedState, StoreError, StreamMetadata, StreamName,
};

use super::{events, stream};

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

pub async fn metadata_written_expecting_the_metadata_streams_revision<S: EventStore>(store: S) {
    use crate::backend::catalog::{WriteKind, WriteRequest};
    let s = stream("meta-expect");
    store
        .append(&s, ExpectedState::NoStream, events(1))
        .await
        .unwrap();
    let set = |expected, max_count| {
        WriteRequest::admin(
            &s,
            ExpectedState::Any,
            WriteKind::SetMetadataExpecting {
                metadata: StreamMetadata {
                    max_count: Some(max_count),
                    ..StreamMetadata::default()
                },
                metadata_stream: expected,
            },
        )
        .unwrap()
    };
    // `$$meta-expect` has no record yet: "no stream" holds, revision 0 does not.
    let wrong = store
        .write(set(ExpectedState::Exact(0), 5))
        .await
        .unwrap_err();
    assert!(
        matches!(&wrong, StoreError::WrongExpectedRevision { stream, actual: CurrentRevision(None), .. } if stream == "$$meta-expect"),
        "{wrong:?}"
    );
    let head = store.head();
    assert_eq!(store.get_metadata(&s).await.unwrap(), None);
    store.write(set(ExpectedState::NoStream, 5)).await.unwrap();
    assert!(store.head() > head);
    assert_eq!(
        store.get_metadata(&s).await.unwrap().unwrap().max_count,
        Some(5)
    );
    // Now its record is revision 0.
    let wrong = store
        .write(set(ExpectedState::NoStream, 6))
        .await
        .unwrap_err();
    assert!(
        matches!(
            wrong,
            StoreError::WrongExpectedRevision {
                actual: CurrentRevision(Some(0)),
                ..
            }
        ),
        "{wrong:?}"
    );
    store.write(set(ExpectedState::Exact(0), 6)).await.unwrap();
    assert_eq!(
        store.get_metadata(&s).await.unwrap().unwrap().max_count,
        Some(6)
    );
}
