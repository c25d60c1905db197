//! Checkpoints and claims.

#![allow(clippy::unwrap_used)]

use crate::{AppendOptions, Checkpoint, EventStore, ExpectedState, StoreError};

use super::{events, stream};

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
