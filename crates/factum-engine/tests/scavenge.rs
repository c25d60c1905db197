//! Scavenging the embedded store: what the metadata hides for good goes, everything else stays
//! byte for byte, positions and revisions stay, the store verifies, and neither a crash in the
//! middle (SIGKILL, many rounds), nor appends and subscribers running meanwhile, lose anything.
//!
//! The crash child is this same test binary, run with `FACTUM_SCAVENGE_CHILD_DIR` set.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use factum_core::{
    Direction, EventStore, ExpectedState, NewEvent, Query, QueryItem, RecordedEvent,
    ScavengeOptions, StreamMetadata, StreamName, SubscriptionFilter, now_micros,
};
use factum_engine::{Engine, EngineOptions};
use rand::Rng;

const CHILD_DIR: &str = "FACTUM_SCAVENGE_CHILD_DIR";
const ROUNDS: usize = 200;

fn options() -> EngineOptions {
    EngineOptions {
        segment_bytes_limit: 64 * 1024,
        index_save_interval_events: 1000,
    }
}

fn event(stream: &str, i: usize) -> NewEvent {
    NewEvent::json(
        "Happened",
        &serde_json::json!({"stream": stream, "i": i, "pad": "x".repeat(200)}),
    )
    .unwrap()
    .with_tags([format!("s:{stream}")])
}

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

/// Fills a store with streams each metadata rule hides events of, written in turns so that
/// hidden and visible events share segments; then seals every segment that holds them.
async fn fill(store: &Engine) {
    for i in 0..8 {
        store
            .set_metadata(
                &name(&format!("count-{i}")),
                StreamMetadata {
                    max_count: Some(2),
                    ..StreamMetadata::default()
                },
            )
            .await
            .unwrap();
        store
            .set_metadata(
                &name(&format!("trunc-{i}")),
                StreamMetadata {
                    truncate_before: Some(15),
                    ..StreamMetadata::default()
                },
            )
            .await
            .unwrap();
        store
            .set_metadata(
                &name(&format!("aged-{i}")),
                StreamMetadata {
                    max_age_secs: Some(3600),
                    ..StreamMetadata::default()
                },
            )
            .await
            .unwrap();
        // Old events, recorded two hours ago, past the maximum age.
        let aged = name(&format!("aged-{i}"));
        let old: Vec<RecordedEvent> = (0..10)
            .map(|r| {
                let e = event(aged.as_str(), r);
                RecordedEvent {
                    stream: aged.clone(),
                    revision: r as u64,
                    position: 0,
                    id: e.id,
                    event_type: e.event_type,
                    content_type: e.content_type,
                    data: e.data,
                    metadata: e.metadata,
                    recorded_at_us: now_micros() - 2 * 3600 * 1_000_000,
                    tags: e.tags,
                }
            })
            .collect();
        store.import(old).await.unwrap();
    }
    for round in 0..30 {
        for i in 0..8 {
            for (kind, len) in [
                ("kept", 5),
                ("count", 30),
                ("tomb", 20),
                ("del", 20),
                ("trunc", 20),
            ] {
                if round < len {
                    let stream = format!("{kind}-{i}");
                    store
                        .append(
                            &name(&stream),
                            ExpectedState::Any,
                            vec![event(&stream, round)],
                        )
                        .await
                        .unwrap();
                }
            }
            if round < 2 {
                let stream = format!("aged-{i}");
                store
                    .append(
                        &name(&stream),
                        ExpectedState::Any,
                        vec![event(&stream, 10 + round)],
                    )
                    .await
                    .unwrap();
            }
        }
        let head = store.head();
        store.save_checkpoint("relay-a", head - 1).await.unwrap();
    }
    for i in 0..8 {
        store
            .tombstone_stream(&name(&format!("tomb-{i}")), ExpectedState::Any)
            .await
            .unwrap();
        let deleted = name(&format!("del-{i}"));
        store
            .delete_stream(&deleted, ExpectedState::Any)
            .await
            .unwrap();
        for r in 0..3 {
            store
                .append(
                    &deleted,
                    ExpectedState::Any,
                    vec![event(deleted.as_str(), 20 + r)],
                )
                .await
                .unwrap();
        }
    }
    seal(store).await;
}

/// Makes the segment being written a sealed one: an event larger than a segment goes into a
/// segment of its own, and the next append starts another.
async fn seal(store: &Engine) {
    let big = NewEvent::json("Big", &serde_json::json!({"pad": "b".repeat(70 * 1024)})).unwrap();
    store
        .append(&name("seal"), ExpectedState::Any, vec![big])
        .await
        .unwrap();
    store
        .append(&name("seal"), ExpectedState::Any, vec![event("seal", 0)])
        .await
        .unwrap();
}

/// What a store shows: every event of `$all`, and each stream's visible events.
#[derive(Debug, PartialEq)]
struct Shown {
    all: BTreeMap<u64, RecordedEvent>,
    streams: BTreeMap<String, Vec<RecordedEvent>>,
    checkpoint: Option<u64>,
}

async fn shown(store: &Engine) -> Shown {
    let all: BTreeMap<u64, RecordedEvent> = store
        .read_all(0, Direction::Forwards, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.position, e))
        .collect();
    let names: BTreeSet<String> = all
        .values()
        .filter(|e| !e.stream.is_system())
        .map(|e| e.stream.to_string())
        .collect();
    let mut streams = BTreeMap::new();
    for stream in names {
        let events = match store
            .read_stream(&name(&stream), 0, Direction::Forwards, usize::MAX)
            .await
        {
            Ok(events) => events,
            Err(
                factum_core::StoreError::NotFound(_) | factum_core::StoreError::StreamDeleted(_),
            ) => Vec::new(),
            Err(e) => panic!("{e}"),
        };
        streams.insert(stream, events);
    }
    Shown {
        all,
        streams,
        checkpoint: store.read_checkpoint("relay-a").await.unwrap(),
    }
}

/// The positions a scavenge of `before` must remove: events no stream read shows, that are
/// not their stream's newest record, and not metadata records.
fn hidden(before: &Shown) -> BTreeSet<u64> {
    let visible: BTreeSet<u64> = before
        .streams
        .values()
        .flatten()
        .map(|e| e.position)
        .collect();
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for e in before.all.values() {
        newest.insert(e.stream.as_str(), e.position);
    }
    let newest: BTreeSet<u64> = newest.into_values().collect();
    before
        .all
        .values()
        .filter(|e| !e.stream.as_str().starts_with("$$") && e.stream.as_str() != "seal")
        .map(|e| e.position)
        .filter(|p| !visible.contains(p) && !newest.contains(p))
        .collect()
}

/// What a store may show after a scavenge of `before` (complete or not): every event it
/// showed, except hidden ones, byte for byte; each stream read unchanged.
fn check_after(before: &Shown, after: &Shown, hidden: &BTreeSet<u64>, complete: bool) {
    assert_eq!(after.streams, before.streams, "stream reads changed");
    assert_eq!(after.checkpoint, before.checkpoint);
    for (position, event) in &before.all {
        match after.all.get(position) {
            Some(kept) => {
                assert_eq!(kept, event, "event at {position} changed");
                assert!(
                    !complete || !hidden.contains(position),
                    "hidden event at {position} is still there"
                );
            }
            None => assert!(
                hidden.contains(position),
                "event at {position} is gone but was not hidden"
            ),
        }
    }
    assert!(after.all.keys().all(|p| before.all.contains_key(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scavenge_removes_what_metadata_hides_and_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    fill(&store).await;
    let before = shown(&store).await;
    let hidden = hidden(&before);
    // count: 28 each; tomb: 19; del: 20; trunc: 15; aged: 10; checkpoints: all but the newest.
    assert_eq!(hidden.len(), 8 * (28 + 19 + 20 + 15 + 10) + 29);
    let head = store.head();

    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.events_removed, hidden.len() as u64, "{report:?}");
    assert!(report.segments_rewritten > 1);
    assert!(report.bytes_after < report.bytes_before);
    let after = shown(&store).await;
    check_after(&before, &after, &hidden, true);
    assert_eq!(store.head(), head, "positions do not move");
    // DCB reads no longer find the removed events.
    let query = Query {
        items: vec![QueryItem::new(Vec::<String>::new(), ["s:count-0"])],
    };
    let found = store
        .read_query(&query, None, Direction::Forwards, 100)
        .await
        .unwrap();
    assert_eq!(
        found.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [28, 29]
    );
    let verified = store.verify(|_, _| {}).unwrap();
    assert_eq!(verified.removed, hidden.len() as u64);

    // Expected revisions and idempotent retries of the newest append still work.
    let last = event("count-0", 30);
    let appended = store
        .append(
            &name("count-0"),
            ExpectedState::Exact(29),
            vec![last.clone()],
        )
        .await
        .unwrap();
    assert_eq!(appended.first_revision, 30);
    let again = store
        .append(&name("count-0"), ExpectedState::Exact(29), vec![last])
        .await
        .unwrap();
    assert_eq!(again.position, appended.position);
    assert!(
        store
            .append(
                &name("tomb-0"),
                ExpectedState::Any,
                vec![event("tomb-0", 99)]
            )
            .await
            .is_err()
    );
    let deleted = store
        .append(
            &name("del-0"),
            ExpectedState::Exact(22),
            vec![event("del-0", 23)],
        )
        .await
        .unwrap();
    assert_eq!(deleted.first_revision, 23);
    // Metadata that would show the removed events again does not bring them back.
    store
        .set_metadata(&name("count-1"), StreamMetadata::default())
        .await
        .unwrap();
    let count_1 = store
        .read_stream(&name("count-1"), 0, Direction::Forwards, 100)
        .await
        .unwrap();
    assert_eq!(
        count_1.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [28, 29]
    );
    let page = store
        .read_stream(&name("count-1"), 0, Direction::Forwards, 1)
        .await
        .unwrap();
    assert_eq!(page[0].revision, 28, "a page is full while more follows");
    // `$all` pages are full while more follows, forwards and backwards.
    let page = store.read_all(0, Direction::Forwards, 50).await.unwrap();
    assert_eq!(page.len(), 50);
    let page = store
        .read_all(u64::MAX, Direction::Backwards, 50)
        .await
        .unwrap();
    assert_eq!(page.len(), 50);
    assert!(page.windows(2).all(|w| w[0].position > w[1].position));

    // Reopened (with and without its saved index): the same, and it verifies.
    let now = shown(&store).await;
    store.close().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    assert_eq!(shown(&store).await, now);
    store.verify(|_, _| {}).unwrap();
    store.close().unwrap();
    std::fs::remove_file(dir.path().join("index.fidx")).unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    assert_eq!(shown(&store).await, now);
    assert_eq!(
        store.verify(|_, _| {}).unwrap().removed,
        hidden.len() as u64
    );
    // A second scavenge finds the one event the append above hid, and nothing else.
    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.events_removed <= 2, "{report:?}");
    store.verify(|_, _| {}).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scavenge_stops_at_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    fill(&store).await;
    let before = shown(&store).await;
    let hidden = hidden(&before);
    let bound = store.head() / 2;
    let report = store
        .scavenge(ScavengeOptions { below: Some(bound) }, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.below, Some(bound));
    let after = shown(&store).await;
    check_after(&before, &after, &hidden, false);
    for position in &hidden {
        assert_eq!(
            after.all.contains_key(position),
            *position >= bound,
            "position {position}"
        );
    }
    // The default bound: the lowest stored checkpoint.
    assert_eq!(
        factum_core::checkpoint_bound(&store).await.unwrap(),
        before.checkpoint
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_mostly_hidden_events_shrinks_by_four_fifths() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    for i in 0..100 {
        store
            .set_metadata(
                &name(&format!("s-{i}")),
                StreamMetadata {
                    max_count: Some(10),
                    ..StreamMetadata::default()
                },
            )
            .await
            .unwrap();
    }
    for round in 0..10 {
        for i in 0..100 {
            let stream = format!("s-{i}");
            let events = (0..10).map(|k| event(&stream, round * 10 + k)).collect();
            store
                .append(&name(&stream), ExpectedState::Any, events)
                .await
                .unwrap();
        }
    }
    seal(&store).await;
    store.close().unwrap();
    let before = dir_bytes(dir.path());
    let store = Engine::open(dir.path(), options()).unwrap();
    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.events_removed, 9_000);
    store.close().unwrap();
    // The two sealing events are no part of the store measured.
    let seal_bytes = 71 * 1024;
    let after = dir_bytes(dir.path());
    let shrunk = 1.0 - (after - seal_bytes) as f64 / (before - seal_bytes) as f64;
    println!(
        "{before} bytes before, {after} after: {:.1}% smaller",
        shrunk * 100.0
    );
    assert!(shrunk >= 0.8, "{before} bytes before, {after} after");
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in walk(dir) {
        total += std::fs::metadata(entry).unwrap().len();
    }
    total
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_subscribers_go_on_while_a_scavenge_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    for _ in 0..4 {
        fill_more(&store).await;
    }
    seal(&store).await;
    let before = shown(&store).await;
    let hidden = hidden(&before);
    let owed: BTreeSet<u64> = before
        .all
        .keys()
        .filter(|p| !hidden.contains(p))
        .copied()
        .collect();

    let mut subscription = store.subscribe_all(0, SubscriptionFilter::default());
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..300 {
                let stream = format!("live-{}", k % 7);
                let result = store
                    .append(&name(&stream), ExpectedState::Any, vec![event(&stream, k)])
                    .await
                    .unwrap();
                acked.push(result.position);
            }
            acked
        })
    };
    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.events_removed, hidden.len() as u64);
    let acked = writer.await.unwrap();
    let mut seen = Vec::new();
    let last = *acked.last().unwrap();
    while seen.last().is_none_or(|p| *p < last) {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscriber stalled")
            .unwrap();
        seen.push(event.position);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "a duplicate or out of order"
    );
    let seen: BTreeSet<u64> = seen.into_iter().collect();
    assert!(
        owed.is_subset(&seen),
        "a subscriber missed an event it was owed"
    );
    assert!(
        acked.iter().all(|p| seen.contains(p)),
        "an acknowledged append is missing"
    );
    let after = shown(&store).await;
    assert!(acked.iter().all(|p| after.all.contains_key(p)));
    store.verify(|_, _| {}).unwrap();
    store.close().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    store.verify(|_, _| {}).unwrap();
    assert!(acked.iter().all(|p| store.head() > *p));
}

/// Streams with most events hidden, for a scavenge that takes a while.
async fn fill_more(store: &Engine) {
    for i in 0..20 {
        let stream = name(&format!("more-{i}"));
        store
            .set_metadata(
                &stream,
                StreamMetadata {
                    max_count: Some(3),
                    ..StreamMetadata::default()
                },
            )
            .await
            .unwrap();
        let events = (0..100).map(|k| event(stream.as_str(), k)).collect();
        store
            .append(&stream, ExpectedState::Any, events)
            .await
            .unwrap();
    }
}

/// Runs only inside the child process: opens the store and scavenges until killed.
#[test]
fn scavenge_child_runs_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Engine::open(&dir, options()).unwrap();
        println!("opened");
        store
            .scavenge(ScavengeOptions::default(), &|_, _| {})
            .await
            .unwrap();
        println!("done");
        store.close().unwrap();
        std::thread::sleep(Duration::from_secs(60));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scavenge_killed_at_any_moment_leaves_a_store_that_opens_and_verifies() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let template = tempfile::tempdir().unwrap();
    let store = Engine::open(template.path(), options()).unwrap();
    fill(&store).await;
    fill_more(&store).await;
    seal(&store).await;
    let before = shown(&store).await;
    let hidden = hidden(&before);
    store.close().unwrap();
    drop(store);

    // How long a whole scavenge of it takes here: the kills land anywhere in it, or after.
    let timed = tempfile::tempdir().unwrap();
    copy_dir(template.path(), timed.path());
    let store = Engine::open(timed.path(), options()).unwrap();
    let started = std::time::Instant::now();
    store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    let span = started.elapsed().as_micros() as u64 * 5 / 4 + 1;
    store.close().unwrap();
    drop(store);

    let mut finished = 0;
    let mut interrupted = 0;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "scavenge_child_runs_until_killed",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // The test harness prints its own lines first.
        while !rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .ends_with("opened")
        {}
        let delay = rand::rng().random_range(0..span);
        std::thread::sleep(Duration::from_micros(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let done = rx.try_iter().any(|line| line == "done");
        if done {
            finished += 1
        } else {
            interrupted += 1
        }

        let store = Engine::open(dir.path(), options()).unwrap();
        store.verify(|_, _| {}).unwrap();
        let after = shown(&store).await;
        check_after(&before, &after, &hidden, done);
        if round % 20 == 0 {
            // Finished by another scavenge: exactly the hidden events are gone.
            store
                .scavenge(ScavengeOptions::default(), &|_, _| {})
                .await
                .unwrap();
            let finished = shown(&store).await;
            check_after(&before, &finished, &hidden, true);
            store.close().unwrap();
            let store = Engine::open(dir.path(), options()).unwrap();
            store.verify(|_, _| {}).unwrap();
            assert_eq!(shown(&store).await, finished);
        }
    }
    println!("{ROUNDS} kills over {span} µs: {interrupted} during a scavenge, {finished} after it");
    assert!(
        interrupted >= ROUNDS / 4,
        "too few kills landed during the scavenge"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&path, &target);
        } else if path.file_name().unwrap() != "LOCK" {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
