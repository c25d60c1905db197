//! Snapshots: saved by policy beside the stream, loaded with the events after them, and ignored
//! whenever they cannot be trusted — on the in-memory store and on the engine.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use factum_core::ContentType;
use factum_core::{Direction, EventStore, ExpectedState, MemoryStore, NewEvent, StreamName};
use factum_engine::{Engine, EngineOptions};
use factum_toolkit::snapshot_stream;
use factum_toolkit::{CommandContext, Decider, Repository, SnapshotPolicy};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    Booked { cents: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Ledger {
    balance: i64,
    entries: u64,
}

/// A ledger; each command books `count` entries of one cent each.
struct Ledgers {
    state_version: u32,
}

impl Decider for Ledgers {
    type State = Ledger;
    type Command = u64;
    type Event = Event;
    type Error = Never;
    const CATEGORY: &'static str = "ledger";

    fn initial_state(&self) -> Ledger {
        Ledger::default()
    }

    fn decide(&self, _: &Ledger, count: &u64) -> Result<Vec<Event>, Never> {
        Ok((0..*count).map(|_| Event::Booked { cents: 1 }).collect())
    }

    fn evolve(&self, mut ledger: Ledger, event: &Event) -> Ledger {
        let Event::Booked { cents } = event;
        ledger.balance += cents;
        ledger.entries += 1;
        ledger
    }

    fn state_version(&self) -> u32 {
        self.state_version
    }
}

fn repository(store: &Arc<dyn EventStore>, every: u64, state_version: u32) -> Repository<Ledgers> {
    Repository::new(store.clone(), Ledgers { state_version }).with_snapshots(every)
}

async fn snapshots_of(store: &Arc<dyn EventStore>, id: &str) -> Vec<factum_core::RecordedEvent> {
    let stream = snapshot_stream(&StreamName::user(format!("ledger-{id}")).unwrap()).unwrap();
    match store
        .read_stream(&stream, 0, Direction::Forwards, 1000)
        .await
    {
        Ok(events) => events,
        Err(factum_core::StoreError::NotFound(_)) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

async fn execute(repository: &Repository<Ledgers>, id: &str, count: u64) {
    repository
        .execute(id, count, &CommandContext::new())
        .await
        .unwrap();
}

/// Every store the checks run on: the in-memory one and the engine in a fresh directory.
async fn stores() -> Vec<(Arc<dyn EventStore>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    vec![
        (Arc::new(MemoryStore::new()) as Arc<dyn EventStore>, None),
        (Arc::new(engine) as Arc<dyn EventStore>, Some(dir)),
    ]
}

#[tokio::test]
async fn a_snapshot_is_saved_every_n_events_and_loaded_with_the_events_after_it() {
    for (store, _dir) in stores().await {
        let ledgers = repository(&store, 10, 1);
        for _ in 0..25 {
            execute(&ledgers, "a", 1).await;
        }
        let loaded = ledgers.load("a").await.unwrap();
        assert_eq!(loaded.state.entries, 25);
        assert_eq!(loaded.revision, Some(24));
        assert_eq!(loaded.snapshot, Some(19));
        assert_eq!(loaded.replayed, 5);
        assert_eq!(snapshots_of(&store, "a").await.len(), 2);

        // The same state as a replay from the start.
        let plain = Repository::new(store.clone(), Ledgers { state_version: 1 });
        let replayed = plain.load("a").await.unwrap();
        assert_eq!(replayed.state, loaded.state);
        assert_eq!(replayed.snapshot, None);
        assert_eq!(replayed.replayed, 25);
    }
}

#[tokio::test]
async fn a_time_policy_snapshots_an_aggregate_whose_snapshot_is_old_enough() {
    // Two ages, so that no check depends on how fast the machine is: nothing here gets an
    // hour old, and everything gets 50 ms old after a sleep of 50 ms.
    const HOUR: Duration = Duration::from_secs(3600);
    const SHORT: Duration = Duration::from_millis(50);
    let policy = |policy| {
        move |store: &Arc<dyn EventStore>| {
            Repository::new(store.clone(), Ledgers { state_version: 1 })
                .with_snapshot_policy(policy)
        }
    };
    for (store, _dir) in stores().await {
        let hourly = policy(SnapshotPolicy::every(HOUR))(&store);
        let eager = policy(SnapshotPolicy::every(SHORT))(&store);
        // Young: however many events, no snapshot.
        for _ in 0..5 {
            execute(&hourly, "t", 4).await;
        }
        assert_eq!(snapshots_of(&store, "t").await.len(), 0);
        // Its first event is old enough now: the next command saves one.
        tokio::time::sleep(SHORT).await;
        execute(&eager, "t", 1).await;
        assert_eq!(eager.load("t").await.unwrap().snapshot, Some(20));
        // That snapshot is young: no other until it is old enough.
        execute(&hourly, "t", 2).await;
        assert_eq!(snapshots_of(&store, "t").await.len(), 1);
        tokio::time::sleep(SHORT).await;
        execute(&eager, "t", 1).await;
        let loaded = eager.load("t").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.replayed), (Some(23), 0));
        assert_eq!(loaded.state.entries, 24);
        assert_eq!(snapshots_of(&store, "t").await.len(), 2);

        // Both triggers: whichever comes first.
        let both = policy(SnapshotPolicy::every_events(5).or_every(HOUR))(&store);
        execute(&both, "b", 4).await;
        assert_eq!(snapshots_of(&store, "b").await.len(), 0);
        execute(&both, "b", 1).await;
        assert_eq!(both.load("b").await.unwrap().snapshot, Some(4), "by count");
        let both = policy(SnapshotPolicy::every_events(1000).or_every(SHORT))(&store);
        tokio::time::sleep(SHORT).await;
        execute(&both, "b", 1).await;
        assert_eq!(both.load("b").await.unwrap().snapshot, Some(5), "by age");
    }
}

#[tokio::test]
async fn a_command_of_many_events_snapshots_after_its_last_event() {
    for (store, _dir) in stores().await {
        let ledgers = repository(&store, 10, 1);
        execute(&ledgers, "b", 4).await;
        execute(&ledgers, "b", 7).await; // 11 events since the start: a snapshot at revision 10
        let loaded = ledgers.load("b").await.unwrap();
        assert_eq!(loaded.snapshot, Some(10));
        assert_eq!(loaded.replayed, 0);
        assert_eq!(loaded.state.entries, 11);
        // Executing from the snapshot keeps counting from it.
        execute(&ledgers, "b", 3).await;
        let loaded = ledgers.load("b").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.replayed), (Some(10), 3));
        assert_eq!(loaded.state.balance, 14);
    }
}

#[tokio::test]
async fn snapshots_of_another_state_version_are_ignored_and_replaced() {
    for (store, _dir) in stores().await {
        let v1 = repository(&store, 5, 1);
        for _ in 0..12 {
            execute(&v1, "c", 1).await;
        }
        assert_eq!(v1.load("c").await.unwrap().snapshot, Some(9));

        let v2 = repository(&store, 5, 2);
        let loaded = v2.load("c").await.unwrap();
        assert_eq!(
            loaded.snapshot, None,
            "a version 1 snapshot must not be used"
        );
        assert_eq!(loaded.replayed, 12);
        assert_eq!(loaded.state.entries, 12);

        // The next command takes a version 2 snapshot (more than 5 events were folded).
        execute(&v2, "c", 1).await;
        let loaded = v2.load("c").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.replayed), (Some(12), 0));
        assert_eq!(loaded.state.entries, 13);
        let newest = snapshots_of(&store, "c").await.pop().unwrap();
        assert_eq!(newest.metadata_json()["$stateVersion"], 2);
        // Version 1 code, still running somewhere, reads only the newest snapshot, which is not
        // its version: it replays, and gets the same state.
        let loaded = v1.load("c").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.state.entries), (None, 13));
    }
}

/// Appends a forged snapshot of `data` and `metadata` for ledger `id`.
async fn forge(store: &Arc<dyn EventStore>, id: &str, data: &str, metadata: String) {
    let stream = snapshot_stream(&StreamName::user(format!("ledger-{id}")).unwrap()).unwrap();
    let event = NewEvent {
        id: uuid::Uuid::now_v7(),
        event_type: "Snapshot".into(),
        content_type: ContentType::Json,
        data: Bytes::from(data.to_owned()),
        metadata: Bytes::from(metadata),
        tags: Vec::new(),
    };
    store
        .append(&stream, ExpectedState::Any, vec![event])
        .await
        .unwrap();
}

#[tokio::test]
async fn snapshots_that_do_not_decode_or_do_not_match_the_stream_are_ignored() {
    for (store, _dir) in stores().await {
        let ledgers = repository(&store, 1000, 1);
        for _ in 0..3 {
            execute(&ledgers, "d", 1).await;
        }
        let stream = StreamName::user("ledger-d").unwrap();
        let events = store
            .read_stream(&stream, 0, Direction::Forwards, 10)
            .await
            .unwrap();
        let last = events.last().unwrap();

        // A state that no longer decodes.
        let meta = |revision: u64, id: uuid::Uuid| {
            format!(r#"{{"$stateVersion":1,"$revision":{revision},"$eventId":"{id}"}}"#)
        };
        forge(&store, "d", r#"{"total":99}"#, meta(2, last.id)).await;
        let loaded = ledgers.load("d").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.state.entries), (None, 3));

        // A snapshot claiming an event the stream does not have at that revision.
        forge(
            &store,
            "d",
            r#"{"balance":1000,"entries":1000}"#,
            meta(2, uuid::Uuid::now_v7()),
        )
        .await;
        let loaded = ledgers.load("d").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.state.entries), (None, 3));

        // A snapshot past the end of the stream.
        forge(
            &store,
            "d",
            r#"{"balance":1000,"entries":1000}"#,
            meta(7, last.id),
        )
        .await;
        let loaded = ledgers.load("d").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.state.entries), (None, 3));

        // Unreadable metadata.
        forge(&store, "d", r#"{"balance":1,"entries":1}"#, "{}".into()).await;
        let loaded = ledgers.load("d").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.state.entries), (None, 3));

        // And a good one is used (its state is taken as is, which is how it shows here).
        forge(
            &store,
            "d",
            r#"{"balance":1000,"entries":1000}"#,
            meta(2, last.id),
        )
        .await;
        let loaded = ledgers.load("d").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.state.entries), (Some(2), 1000));
    }
}

#[tokio::test]
async fn a_stream_deleted_and_written_again_is_not_loaded_from_its_old_snapshot() {
    for (store, _dir) in stores().await {
        let ledgers = repository(&store, 4, 1);
        for _ in 0..6 {
            execute(&ledgers, "e", 1).await;
        }
        assert_eq!(ledgers.load("e").await.unwrap().snapshot, Some(3));
        let stream = StreamName::user("ledger-e").unwrap();
        store
            .delete_stream(&stream, ExpectedState::Any)
            .await
            .unwrap();
        let loaded = ledgers.load("e").await.unwrap();
        assert_eq!((loaded.snapshot, loaded.state.entries), (None, 0));
        execute(&ledgers, "e", 1).await;
        let loaded = ledgers.load("e").await.unwrap();
        assert_eq!(loaded.snapshot, None);
        assert_eq!(loaded.state.entries, 1);
    }
}

#[tokio::test]
async fn snapshots_survive_reopening_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store: Arc<dyn EventStore> =
            Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
        let ledgers = repository(&store, 50, 1);
        for _ in 0..3 {
            execute(&ledgers, "f", 40).await;
        }
    }
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let loaded = repository(&store, 50, 1).load("f").await.unwrap();
    assert_eq!(loaded.snapshot, Some(79));
    assert_eq!(loaded.replayed, 40);
    assert_eq!(loaded.state.entries, 120);
}

#[tokio::test]
async fn an_idempotent_command_is_recognised_behind_a_snapshot_within_the_window() {
    for (store, _dir) in stores().await {
        let ledgers = repository(&store, 10, 1);
        let delivery = CommandContext::from_message("msg-snap", None);
        ledgers.execute("d", 2, &delivery).await.unwrap();
        for _ in 0..30 {
            execute(&ledgers, "d", 1).await;
        }
        let loaded = ledgers.load("d").await.unwrap();
        assert!(
            loaded.snapshot.unwrap() > 1,
            "the delivery is behind the snapshot"
        );
        let again = ledgers.execute("d", 2, &delivery).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(ledgers.load("d").await.unwrap().state.entries, 32);

        // Past the window, only the snapshot's state is left to go by: executed again.
        let old = CommandContext::from_message("msg-old", None);
        ledgers.execute("e", 1, &old).await.unwrap();
        ledgers
            .execute(
                "e",
                factum_toolkit::DUPLICATE_WINDOW_EVENTS as u64 + 20,
                &CommandContext::new(),
            )
            .await
            .unwrap();
        let executed = ledgers.execute("e", 1, &old).await.unwrap();
        assert!(!executed.duplicate);
    }
}
