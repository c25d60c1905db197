//! Through faults below the engine: a write or an `fdatasync` of the log that fails (injected,
//! as a full or failing disk's would). The append is not acknowledged, the store refuses
//! writes and says why, then recovers by itself without a reopen: nothing acknowledged is
//! lost, and nothing unacknowledged is half there — neither now nor after a reopen.
#![allow(clippy::unwrap_used)]
use std::time::{Duration, Instant};

use factum_core::{Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamName};
use factum_engine::{Engine, EngineOptions};

fn small_segments() -> EngineOptions {
    EngineOptions {
        segment_bytes_limit: 16 * 1024,
        index_save_interval_events: 1_000_000,
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent::json(
        "Counted",
        &serde_json::json!({ "n": n, "pad": "x".repeat(200) }),
    )
    .unwrap()
}

async fn append(store: &Engine, n: u64) -> Result<u64, StoreError> {
    let stream = StreamName::user(format!("s-{}", n % 5)).unwrap();
    store
        .append(&stream, ExpectedState::Any, vec![event(n)])
        .await
        .map(|r| r.position)
}

/// Waits until the store takes writes again.
async fn recovered(store: &Engine) {
    let started = Instant::now();
    while store.write_refusal().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the store did not recover within 20 s: {:?}",
            store.write_refusal()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `n` of every event in `$all`, in order.
async fn numbers(store: &Engine) -> Vec<u64> {
    store
        .read_all(0, Direction::Forwards, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_write_or_sync_is_not_acknowledged_and_the_store_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), small_segments()).unwrap();
    let mut acknowledged = Vec::new();
    let mut n = 0;
    // Rounds: a failing write, a failing sync (the frame reached the page cache, not the disk),
    // and failures that go on while the store tries to recover.
    for (writes, syncs) in [(1, 0), (0, 1), (3, 0), (0, 4)] {
        for _ in 0..40 {
            append(&store, n).await.unwrap();
            acknowledged.push(n);
            n += 1;
        }
        store.inject_faults(writes, syncs);
        let failed = append(&store, n).await.unwrap_err();
        assert!(
            matches!(failed, StoreError::Poisoned(_)),
            "refused as a failed write: {failed}"
        );
        n += 1;
        let reason = store
            .write_refusal()
            .expect("the store says why it refuses");
        assert!(reason.contains("injected"), "{reason}");
        // Refused while it has not recovered; reads go on.
        if let Err(e) = append(&store, n).await {
            assert!(matches!(e, StoreError::Poisoned(_)), "{e}");
        } else {
            acknowledged.push(n);
        }
        n += 1;
        assert!(
            numbers(&store)
                .await
                .starts_with(&acknowledged[..acknowledged.len() - 1])
        );
        recovered(&store).await;
        // Writes are taken again, after what was acknowledged and nothing else.
        append(&store, n).await.unwrap();
        acknowledged.push(n);
        n += 1;
        assert_eq!(numbers(&store).await, acknowledged);
    }
    // Segments rolled over through it all, and every position is the next one.
    let all = store
        .read_all(0, Direction::Forwards, usize::MAX)
        .await
        .unwrap();
    assert!(all.iter().zip(0..).all(|(e, p)| e.position == p));
    let report = store.verify(|_, _| {}).unwrap();
    assert_eq!(report.events, acknowledged.len() as u64);
    store.close().unwrap();

    // A reopen finds exactly the acknowledged events, byte for byte.
    let reopened = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(numbers(&reopened).await, acknowledged);
    let again = reopened
        .read_all(0, Direction::Forwards, usize::MAX)
        .await
        .unwrap();
    assert_eq!(again, all);
    reopened.verify(|_, _| {}).unwrap();
    reopened.close().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_append_retried_after_a_failed_sync_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let stream = StreamName::user("order-1").unwrap();
    store
        .append(&stream, ExpectedState::NoStream, vec![event(0)])
        .await
        .unwrap();
    // The frame reaches the page cache, the sync fails: not acknowledged.
    let retried = event(1);
    store.inject_faults(0, 1);
    store
        .append(&stream, ExpectedState::Exact(0), vec![retried.clone()])
        .await
        .unwrap_err();
    recovered(&store).await;
    // The same append again (same ids, same expected revision): written now, once.
    let result = store
        .append(&stream, ExpectedState::Exact(0), vec![retried.clone()])
        .await
        .unwrap();
    assert_eq!((result.last_revision, result.position), (1, 1));
    let events = store
        .read_stream(&stream, 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].id, retried.id);
    store.close().unwrap();
    let reopened = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert_eq!(reopened.head(), 2);
    reopened.close().unwrap();
}
