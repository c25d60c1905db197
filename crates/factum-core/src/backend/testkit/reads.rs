//! Reads of streams and of `$all`, and listings.

#![allow(clippy::unwrap_used)]

use crate::{CurrentRevision, Direction, EventStore, ExpectedState, StoreError, StreamMetadata};

use super::{event, events, n_of, stream};

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
