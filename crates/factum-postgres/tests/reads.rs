//! Stream reads on PostgreSQL (one statement for the stream's row and its events, a second
//! only when metadata hides more) return exactly what the in-memory store returns, for every
//! start, direction and limit, on streams with soft deletes, metadata limits and tombstones.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use factum_core::{
    Direction, EventStore, ExpectedState, MemoryStore, NewEvent, StoreError, StreamMetadata,
    StreamName,
};

fn events(count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|n| NewEvent::json("Noted", &serde_json::json!({ "n": n })).unwrap())
        .collect()
}

async fn append(store: &dyn EventStore, stream: &str, count: usize) {
    let stream = StreamName::new(stream).unwrap();
    store
        .append(&stream, ExpectedState::Any, events(count))
        .await
        .unwrap();
}

async fn metadata(store: &dyn EventStore, stream: &str, metadata: StreamMetadata) {
    let stream = StreamName::new(stream).unwrap();
    store.set_metadata(&stream, metadata).await.unwrap();
}

async fn delete(store: &dyn EventStore, stream: &str) {
    let stream = StreamName::new(stream).unwrap();
    store
        .delete_stream(&stream, ExpectedState::Any)
        .await
        .unwrap();
}

/// The same history on any store: plain, soft-deleted then written again, limited by max
/// count, truncated, metadata only, tombstoned.
async fn history(store: &dyn EventStore) {
    append(store, "plain-1", 7).await;
    append(store, "again-1", 5).await;
    delete(store, "again-1").await;
    append(store, "again-1", 4).await;
    append(store, "gone-1", 3).await;
    delete(store, "gone-1").await;
    append(store, "counted-1", 9).await;
    let max_count = StreamMetadata {
        max_count: Some(4),
        ..Default::default()
    };
    metadata(store, "counted-1", max_count).await;
    append(store, "cut-1", 8).await;
    let truncate = StreamMetadata {
        truncate_before: Some(3),
        ..Default::default()
    };
    metadata(store, "cut-1", truncate).await;
    metadata(store, "described-1", StreamMetadata::default()).await;
    append(store, "dead-1", 2).await;
    store
        .tombstone_stream(&StreamName::new("dead-1").unwrap(), ExpectedState::Any)
        .await
        .unwrap();
}

/// What a read came to, comparable across stores.
fn outcome(result: Result<Vec<factum_core::RecordedEvent>, StoreError>) -> String {
    match result {
        Ok(events) => format!(
            "{:?}",
            events
                .iter()
                .map(|e| (e.revision, e.data.clone()))
                .collect::<Vec<_>>()
        ),
        Err(StoreError::NotFound(_)) => "not found".into(),
        Err(StoreError::StreamDeleted(_)) => "deleted".into(),
        Err(e) => format!("error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_match_the_in_memory_store() {
    let Some((store, _schema)) = common::fresh("reads").await else {
        return;
    };
    let memory = MemoryStore::new();
    history(&store).await;
    history(&memory).await;
    let mut compared = 0;
    for stream in [
        "plain-1",
        "again-1",
        "gone-1",
        "counted-1",
        "cut-1",
        "described-1",
        "dead-1",
        "never-1",
    ] {
        let stream = StreamName::new(stream).unwrap();
        for from in (0..12).chain([u64::MAX - 1, u64::MAX]) {
            for direction in [Direction::Forwards, Direction::Backwards] {
                for limit in [0, 1, 2, 3, 100] {
                    let expected =
                        outcome(memory.read_stream(&stream, from, direction, limit).await);
                    let read = outcome(store.read_stream(&stream, from, direction, limit).await);
                    assert_eq!(
                        read, expected,
                        "{stream} from {from} {direction:?} limit {limit}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 8 * 14 * 2 * 5);
}
