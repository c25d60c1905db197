//! A child process appends from several tasks and is killed with SIGKILL at random moments,
//! many rounds over the same directory. After each kill the store must open, verify, hold every
//! acknowledged event byte for byte, and hold each unacknowledged append whole or not at all.
//!
//! The child is this same test binary, run with `FACTUM_CRASH_CHILD_DIR` set.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use factum_core::{Direction, EventStore, ExpectedState, NewEvent, Query, StreamName};
use factum_engine::{Engine, EngineOptions};
use rand::Rng;

const CHILD_DIR: &str = "FACTUM_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "FACTUM_CRASH_CHILD_ROUND";
const ROUNDS: u64 = 60;

fn options() -> EngineOptions {
    EngineOptions {
        segment_bytes_limit: 256 * 1024,
        index_save_interval_events: 500,
    }
}

/// Runs only inside the child process: appends until killed, printing each acknowledgement.
#[test]
fn crash_child_appends_until_killed() {
    let (Ok(dir), Ok(round)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ROUND)) else {
        return;
    };
    let round: u64 = round.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Engine::open(&dir, options()).unwrap();
        let tasks: Vec<_> = (0..8u64)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for k in 0u64.. {
                        let (stream, count, pad) = {
                            let mut rng = rand::rng();
                            (
                                format!("crash-{}", rng.random_range(0..20)),
                                rng.random_range(1..=8u64),
                                rng.random_range(0..400usize),
                            )
                        };
                        let events: Vec<NewEvent> = (0..count)
                            .map(|i| {
                                NewEvent::json(
                                    "Crashed",
                                    &serde_json::json!({
                                        "append": format!("{round}-{task}-{k}"),
                                        "i": i,
                                        "count": count,
                                        "pad": "p".repeat(pad),
                                    }),
                                )
                                .unwrap()
                                .with_tags(tags_of(&stream, task, i))
                            })
                            .collect();
                        let stream = StreamName::user(stream).unwrap();
                        let result = store
                            .append(&stream, ExpectedState::Any, events.clone())
                            .await
                            .unwrap();
                        let ack = serde_json::json!({
                            "stream": stream.as_str(),
                            "first_revision": result.first_revision,
                            "position": result.position,
                            "ids": events.iter().map(|e| e.id.to_string()).collect::<Vec<_>>(),
                            "data": events.iter().map(|e| String::from_utf8(e.data.to_vec()).unwrap()).collect::<Vec<_>>(),
                            "tags": events.iter().map(|e| e.tags.clone()).collect::<Vec<_>>(),
                        });
                        println!("{ack}");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// The tags the child gives an event: its stream, its task, and `first` on an append's first.
fn tags_of(stream: &str, task: u64, i: u64) -> Vec<String> {
    let mut tags = vec![format!("stream:{stream}"), format!("task:{task}")];
    if i == 0 {
        tags.push("first".into());
    }
    tags
}

struct Ack {
    stream: String,
    first_revision: u64,
    position: u64,
    ids: Vec<String>,
    data: Vec<String>,
    tags: Vec<Vec<String>>,
}

fn run_child_and_kill(dir: &std::path::Path, round: u64) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_appends_until_killed",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        let mut first = Some(first_tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // A line cut by the kill does not parse; its append is simply not checked.
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            acks.push(Ack {
                stream: value["stream"].as_str().unwrap().to_owned(),
                first_revision: value["first_revision"].as_u64().unwrap(),
                position: value["position"].as_u64().unwrap(),
                ids: serde_json::from_value(value["ids"].clone()).unwrap(),
                data: serde_json::from_value(value["data"].clone()).unwrap(),
                tags: serde_json::from_value(value["tags"].clone()).unwrap(),
            });
        }
        acks
    });
    first_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child acknowledged nothing");
    let delay = rand::rng().random_range(1..120);
    std::thread::sleep(Duration::from_millis(delay));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill_and_torn_appends_vanish_whole() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<Ack> = Vec::new();
    let mut cut_rounds = 0;
    for round in 0..ROUNDS {
        acknowledged.extend(run_child_and_kill(dir.path(), round));
        let store = Engine::open(dir.path(), options()).unwrap();
        if store.open_report().cut_bytes > 0 {
            cut_rounds += 1;
        }
        store.verify(|_, _| {}).unwrap();
        let log = store
            .read_all(0, Direction::Forwards, usize::MAX)
            .await
            .unwrap();
        for (i, event) in log.iter().enumerate() {
            assert_eq!(event.position, i as u64, "positions are dense");
        }
        for ack in &acknowledged {
            let count = ack.ids.len() as u64;
            for i in 0..count {
                let event = &log[(ack.position + 1 - count + i) as usize];
                assert_eq!(event.stream.as_str(), ack.stream);
                assert_eq!(event.revision, ack.first_revision + i);
                assert_eq!(event.id.to_string(), ack.ids[i as usize]);
                assert_eq!(event.data, ack.data[i as usize].as_bytes(), "byte for byte");
                assert_eq!(event.tags, ack.tags[i as usize]);
            }
        }
        // The tag index, saved and brought up to date from the log's tail or rebuilt from
        // all of it, answers as a scan of the log does.
        let queries = [
            Query::item(Vec::<String>::new(), ["first"]),
            Query::item(["Crashed"], ["task:3", "stream:crash-7"]),
            Query::item(Vec::<String>::new(), ["task:1"]).or(["Crashed"], ["stream:crash-2"]),
            Query::all(),
        ];
        for query in &queries {
            let read = store
                .read_query(query, None, Direction::Forwards, usize::MAX)
                .await
                .unwrap();
            let scanned: Vec<u64> = log
                .iter()
                .filter(|e| query.matches_event(e))
                .map(|e| e.position)
                .collect();
            let found: Vec<u64> = read.events.iter().map(|e| e.position).collect();
            assert_eq!(found, scanned, "{query:?}");
            assert_eq!(read.head, (log.len() as u64).checked_sub(1));
        }
        // Every append in the log is whole, acknowledged or not.
        let mut appends: HashMap<String, (u64, u64)> = HashMap::new();
        for event in &log {
            let value: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
            let entry = appends
                .entry(value["append"].as_str().unwrap().to_owned())
                .or_insert((0, value["count"].as_u64().unwrap()));
            entry.0 += 1;
        }
        for (append, (seen, count)) in appends {
            assert_eq!(seen, count, "append {append} is partly there");
        }
        // Stream reads agree with the log.
        for s in 0..20 {
            let stream = StreamName::user(format!("crash-{s}")).unwrap();
            if let Ok(events) = store
                .read_stream(&stream, 0, Direction::Forwards, usize::MAX)
                .await
            {
                for (revision, event) in events.iter().enumerate() {
                    assert_eq!(event.revision, revision as u64);
                    assert_eq!(&log[event.position as usize], event);
                }
            }
        }
        // Every other round, lose the saved index too, so recovery replays the whole log.
        drop(store);
        if round % 2 == 1 {
            let _ = std::fs::remove_file(dir.path().join("index.fidx"));
        }
    }
    println!(
        "{ROUNDS} kills, {} acknowledged appends checked, {cut_rounds} torn tails cut",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() as u64 > ROUNDS,
        "the child must get appends done"
    );
}
