//! Scavenging the embedded store: what the metadata hides for good goes, everything else stays
//! byte for byte, positions and revisions stay, the store verifies, and neither a crash in the
//! middle (SIGKILL, many rounds), nor appends and subscribers running meanwhile, lose anything.
//!
//! The crash child is this same test binary, run with `FACTUM_SCAVENGE_CHILD_DIR` set.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use factum_core::backend::testkit::{
    FILL_HIDDEN, aged_events, check_after, fill_for_scavenge, fill_mostly_hidden, hidden,
    scavenge_event, shown,
};
use factum_core::{
    EventStore, ExpectedState, NewEvent, ScavengeOptions, StreamMetadata, StreamName,
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
    scavenge_event(stream, i)
}

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_their_maximum_age_go_and_the_store_verifies_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    fill_for_scavenge(&store).await;
    for i in 0..8 {
        let aged = name(&format!("aged-{i}"));
        store
            .set_metadata(
                &aged,
                StreamMetadata {
                    max_age_secs: Some(3600),
                    ..StreamMetadata::default()
                },
            )
            .await
            .unwrap();
        // Events recorded two hours ago, past the maximum age, then two new ones.
        let old = aged_events(&aged, 10);
        store.import(old).await.unwrap();
        let new = (10..12).map(|r| event(aged.as_str(), r)).collect();
        store.append(&aged, ExpectedState::Any, new).await.unwrap();
    }
    let before = shown(&store).await;
    let hidden = hidden(&before);
    assert_eq!(hidden.len(), FILL_HIDDEN + 8 * 10);
    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.events_removed, hidden.len() as u64, "{report:?}");
    assert!(report.segments_rewritten > 1);
    assert!(report.bytes_after < report.bytes_before);
    let after = shown(&store).await;
    check_after(&before, &after, &hidden, true);
    let verified = store.verify(|_, _| {}).unwrap();
    assert_eq!(verified.removed, hidden.len() as u64);

    // Reopened, with its saved index and without: the same, and it verifies.
    store.close().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    assert_eq!(shown(&store).await, after);
    store.verify(|_, _| {}).unwrap();
    store.close().unwrap();
    std::fs::remove_file(dir.path().join("index.fidx")).unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    assert_eq!(shown(&store).await, after);
    assert_eq!(
        store.verify(|_, _| {}).unwrap().removed,
        hidden.len() as u64
    );
    // A scavenge and a verification do not run together.
    let (scavenged, verified) = tokio::join!(
        store.scavenge(ScavengeOptions::default(), &|_, _| {}),
        async { store.verify(|_, _| {}) }
    );
    scavenged.unwrap();
    verified.unwrap();
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
    fill_for_scavenge(&store).await;
    fill_mostly_hidden(&store, 20).await;
    let before = shown(&store).await;
    let hidden = hidden(&before);
    store.close().unwrap();
    drop(store);

    // How long the child's whole scavenge of it takes: the kills land anywhere in it (or, a
    // few, just after).
    let timed = tempfile::tempdir().unwrap();
    copy_dir(template.path(), timed.path());
    let (mut child, lines) = spawn_child(timed.path());
    while !lines
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .ends_with("opened")
    {}
    let started = std::time::Instant::now();
    while lines.recv_timeout(Duration::from_secs(60)).unwrap() != "done" {}
    let span = started.elapsed().as_micros() as u64 * 11 / 10 + 1;
    child.kill().unwrap();
    child.wait().unwrap();

    let mut finished = 0;
    let mut interrupted = 0;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let (mut child, rx) = spawn_child(dir.path());
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
        interrupted >= ROUNDS / 2,
        "too few kills landed during the scavenge"
    );
}

/// Starts the child on `dir`; its stdout's lines as they come.
fn spawn_child(dir: &Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "scavenge_child_runs_until_killed",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
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
