//! Reopening, locking, segment rolls and index rebuilds.
#![allow(clippy::unwrap_used)]
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
        &serde_json::json!({ "n": n, "pad": "x".repeat(100) }),
    )
    .unwrap()
}

async fn fill(store: &Engine, streams: u64, per_stream: u64) {
    for round in 0..per_stream {
        for s in 0..streams {
            let stream = StreamName::user(format!("s-{s}")).unwrap();
            store
                .append(
                    &stream,
                    ExpectedState::Any,
                    vec![event(round * streams + s)],
                )
                .await
                .unwrap();
        }
    }
}

async fn all(store: &Engine) -> Vec<factum_core::RecordedEvent> {
    store
        .read_all(0, Direction::Forwards, usize::MAX)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert!(matches!(
        Engine::open(dir.path(), EngineOptions::default()),
        Err(StoreError::Locked {
            by_this_process: true,
            ..
        })
    ));
    let refused = Engine::open(dir.path(), EngineOptions::default())
        .err()
        .unwrap();
    assert!(refused.to_string().contains("by this process"), "{refused}");
    store.close().unwrap();
    Engine::open(dir.path(), EngineOptions::default()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn events_survive_reopen_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), small_segments()).unwrap();
    fill(&store, 7, 60).await;
    let before = all(&store).await;
    store.close().unwrap();
    let segments = std::fs::read_dir(dir.path().join("log")).unwrap().count();
    assert!(segments > 5, "only {segments} segments");

    let store = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(
        store.open_report().replayed_events,
        0,
        "the saved index covers the log"
    );
    assert_eq!(all(&store).await, before);
    let report = store.verify(|_, _| {}).unwrap();
    assert_eq!(report.events, 420);
    // Appends go on where they stopped.
    let r = store
        .append(
            &StreamName::user("s-0").unwrap(),
            ExpectedState::Exact(59),
            vec![event(1)],
        )
        .await
        .unwrap();
    assert_eq!((r.last_revision, r.position), (60, 420));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_damaged_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), small_segments()).unwrap();
    fill(&store, 5, 40).await;
    store
        .set_metadata(
            &StreamName::user("s-1").unwrap(),
            factum_core::StreamMetadata {
                max_count: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .delete_stream(&StreamName::user("s-2").unwrap(), ExpectedState::Any)
        .await
        .unwrap();
    let before = all(&store).await;
    let s1 = store
        .read_stream(
            &StreamName::user("s-1").unwrap(),
            0,
            Direction::Forwards,
            100,
        )
        .await
        .unwrap();
    store.close().unwrap();
    let index = dir.path().join("index.fidx");

    let mut bytes = std::fs::read(&index).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&index, bytes).unwrap();
    let store = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(store.open_report().replayed_events, 202);
    assert_eq!(all(&store).await, before);
    store.close().unwrap();

    std::fs::remove_file(&index).unwrap();
    let store = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(all(&store).await, before);
    let s1_again = store
        .read_stream(
            &StreamName::user("s-1").unwrap(),
            0,
            Direction::Forwards,
            100,
        )
        .await
        .unwrap();
    assert_eq!(s1_again, s1);
    assert_eq!(s1.len(), 3);
    assert!(matches!(
        store
            .read_stream(&StreamName::user("s-2").unwrap(), 0, Direction::Forwards, 1)
            .await,
        Err(StoreError::NotFound(_))
    ));
    store.verify(|_, _| {}).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_saved_as_the_log_grows() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        segment_bytes_limit: 1 << 20,
        index_save_interval_events: 50,
    };
    let store = Engine::open(dir.path(), options.clone()).unwrap();
    fill(&store, 3, 40).await;
    // Simulate a crash: the index on disk is whatever was saved last while running.
    let saved = std::fs::read(dir.path().join("index.fidx")).unwrap();
    store.close().unwrap();
    std::fs::write(dir.path().join("index.fidx"), saved).unwrap();
    let store = Engine::open(dir.path(), options).unwrap();
    let report = store.open_report();
    assert_eq!(report.events, 120);
    assert!(
        report.replayed_events < 50,
        "replayed {}",
        report.replayed_events
    );
    assert_eq!(all(&store).await.len(), 120);
}

#[tokio::test(flavor = "multi_thread")]
async fn import_keeps_ids_order_revisions_and_times() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Engine::open(source_dir.path(), small_segments()).unwrap();
    fill(&source, 4, 10).await;
    source
        .set_metadata(
            &StreamName::user("s-3").unwrap(),
            factum_core::StreamMetadata {
                truncate_before: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    source
        .tombstone_stream(&StreamName::user("s-0").unwrap(), ExpectedState::Any)
        .await
        .unwrap();
    let exported = all(&source).await;

    let target_dir = tempfile::tempdir().unwrap();
    let target = Engine::open(target_dir.path(), small_segments()).unwrap();
    for chunk in exported.chunks(7) {
        target.import(chunk.to_vec()).await.unwrap();
    }
    assert_eq!(all(&target).await, exported);
    let s3 = StreamName::user("s-3").unwrap();
    assert_eq!(
        target
            .read_stream(&s3, 0, Direction::Forwards, 100)
            .await
            .unwrap(),
        source
            .read_stream(&s3, 0, Direction::Forwards, 100)
            .await
            .unwrap()
    );
    assert!(matches!(
        target
            .append(
                &StreamName::user("s-0").unwrap(),
                ExpectedState::Any,
                vec![event(0)]
            )
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
    // An import that does not continue a stream is refused whole.
    let head = target.head();
    let mut wrong = exported[5].clone();
    wrong.stream = StreamName::user("s-1").unwrap();
    assert!(matches!(
        target.import(vec![wrong]).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(target.head(), head);
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_open_changes_nothing_in_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let empty = Engine::open_read_only(&missing).unwrap();
    assert_eq!(empty.head(), 0);
    assert!(all(&empty).await.is_empty());
    empty.close().unwrap();
    assert!(!missing.exists(), "a read-only open creates nothing");

    let store = Engine::open(dir.path(), small_segments()).unwrap();
    fill(&store, 3, 200).await;
    let events = all(&store).await;
    store.close().unwrap();
    // A torn tail (a crash in the middle of a write), which an open for writing would cut.
    let last = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut file, &[0xAB; 37]).unwrap();
    drop(file);
    let before = snapshot(dir.path());

    let reader = Engine::open_read_only(dir.path()).unwrap();
    assert_eq!(all(&reader).await, events);
    let report = reader.verify(|_, _| {}).unwrap();
    assert_eq!(report.events, events.len() as u64);
    let refused = reader
        .append(
            &StreamName::user("s-0").unwrap(),
            ExpectedState::Any,
            vec![event(0)],
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Unsupported(_)), "{refused}");
    // One process at a time, for reading too.
    assert!(matches!(
        Engine::open(dir.path(), small_segments()),
        Err(StoreError::Locked { .. })
    ));
    reader.close().unwrap();
    drop(reader);
    assert!(
        snapshot(dir.path()) == before,
        "the directory is byte for byte as it was"
    );
    // Opened for writing, the store cuts the torn tail and goes on.
    let store = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(all(&store).await, events);
    store.close().unwrap();
}
