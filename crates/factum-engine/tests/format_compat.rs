//! A data directory written by the release before tags (record format with a zero where
//! `tags_len` is now, index file version 1) opens unchanged: every event, stream metadata and
//! checkpoint as it was, the index rebuilt once, DCB reads over the old events, and tagged
//! events appended after them.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use factum_core::{
    DcbAppend, DcbEvent, Direction, EventStore, ExpectedState, NewEvent, Query, StreamName,
};
use factum_engine::{Engine, EngineOptions};

/// Copies the fixture (written by `factum-engine` 0.1 before tags: twenty `OrderPlaced` over
/// `order-0` … `order-3` with ids 1 … 20, max count 3 on `order-0`, checkpoint `projector` at
/// 7) into `to`.
fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-v1");
    std::fs::create_dir_all(to.join("log")).unwrap();
    std::fs::copy(from.join("index.fidx"), to.join("index.fidx")).unwrap();
    std::fs::copy(
        from.join("log/0000000000.seg"),
        to.join("log/0000000000.seg"),
    )
    .unwrap();
}

#[tokio::test]
async fn a_data_directory_of_the_release_before_tags_opens_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert_eq!(
        store.open_report().replayed_events,
        22,
        "the old index is rebuilt from the log"
    );
    store.verify(|_, _| {}).unwrap();
    let all = store.read_all(0, Direction::Forwards, 100).await.unwrap();
    assert_eq!(
        all.len(),
        22,
        "twenty events, a metadata record, a checkpoint"
    );
    let users: Vec<_> = all.iter().filter(|e| !e.stream.is_system()).collect();
    for (n, event) in users.iter().enumerate() {
        assert_eq!(event.id, uuid::Uuid::from_u128(n as u128 + 1));
        assert_eq!(event.stream.as_str(), format!("order-{}", n % 4));
        assert_eq!(event.revision, n as u64 / 4);
        assert_eq!(event.event_type, "OrderPlaced");
        let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
        assert_eq!(data["n"], n as u64);
        assert_eq!(event.metadata_json()["$correlationId"], format!("c-{n}"));
        assert!(event.tags.is_empty());
    }
    let order0 = StreamName::user("order-0").unwrap();
    let kept = store
        .read_stream(&order0, 0, Direction::Forwards, 100)
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [2, 3, 4],
        "max count 3"
    );
    assert_eq!(store.read_checkpoint("projector").await.unwrap(), Some(7));
    // DCB reads see the old events; new ones carry tags.
    let read = store
        .read_query(&Query::all(), None, Direction::Forwards, 100)
        .await
        .unwrap();
    assert_eq!(read.events.len(), 20);
    assert_eq!(read.head, Some(21));
    let placed = Query::item(["OrderPlaced"], Vec::<String>::new());
    assert_eq!(
        store
            .read_query(&placed, Some(15), Direction::Forwards, 100)
            .await
            .unwrap()
            .events
            .len(),
        4
    );
    store
        .append(
            &order0,
            ExpectedState::Exact(4),
            vec![
                NewEvent::json("OrderShipped", &1)
                    .unwrap()
                    .with_tags(["order:0"]),
            ],
        )
        .await
        .unwrap();
    store
        .append_conditional(DcbAppend::new([DcbEvent::new(
            NewEvent::json("Audited", &2)
                .unwrap()
                .with_tags(["order:0"]),
        )]))
        .await
        .unwrap();
    store.close().unwrap();
    drop(store);

    let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert_eq!(
        store.open_report().replayed_events,
        0,
        "the index saved anew"
    );
    store.verify(|_, _| {}).unwrap();
    let tagged = store
        .read_query(
            &Query::item(Vec::<String>::new(), ["order:0"]),
            None,
            Direction::Forwards,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        tagged
            .events
            .iter()
            .map(|e| (e.position, e.event_type.as_str(), e.tags.clone()))
            .collect::<Vec<_>>(),
        [
            (22, "OrderShipped", vec!["order:0".to_owned()]),
            (23, "Audited", vec!["order:0".to_owned()])
        ]
    );
    assert_eq!(store.head(), 24);
}
