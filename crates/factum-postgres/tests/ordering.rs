//! No committed event is ever skipped: a reader never moves past a position whose transaction
//! is still open, and under writers in several processes a subscriber receives exactly the
//! committed events, in position order.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use factum_core::{
    Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamName, SubscriptionFilter,
};
use factum_postgres::{PgOptions, PgStore};
use rand::Rng;
use tokio::sync::Semaphore;

fn event(n: u64) -> NewEvent {
    NewEvent::json("Counted", &serde_json::json!({ "n": n })).unwrap()
}

/// Waits until the held transaction of `schema` has written its events (it holds the lock on
/// the head and waits to commit).
async fn wait_for_open_transaction(schema: &str) {
    let (client, connection) = common::connect().await.unwrap();
    tokio::spawn(connection);
    for _ in 0..200 {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON l.relation = c.oid
                 JOIN pg_namespace n ON c.relnamespace = n.oid
                 WHERE n.nspname = $1 AND c.relname = 'events' AND l.mode = 'RowExclusiveLock'",
                &[&schema],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the held transaction never wrote its events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_never_moves_past_a_transaction_still_open() {
    let Some(schema) = common::schema("open").await else {
        return;
    };
    let hold = Arc::new(Semaphore::new(0));
    // Two stores on one schema stand for two application processes.
    let slow = PgStore::connect(
        &common::postgres(),
        PgOptions {
            hold_before_commit: Some(hold.clone()),
            ..common::options(&schema)
        },
    )
    .await
    .unwrap();
    let other = PgStore::connect(&common::postgres(), common::options(&schema))
        .await
        .unwrap();
    let mut subscription = other.subscribe_all(0, SubscriptionFilter::default());

    // The slow writer takes position 0 and holds its transaction open.
    let first = tokio::spawn({
        let slow = slow.clone();
        async move {
            slow.append(
                &StreamName::new("a").unwrap(),
                ExpectedState::Any,
                vec![event(0)],
            )
            .await
        }
    });
    wait_for_open_transaction(&schema.0).await;
    // A later writer from the other process cannot take a position past it meanwhile.
    let second = tokio::spawn({
        let other = other.clone();
        async move {
            other
                .append(
                    &StreamName::new("b").unwrap(),
                    ExpectedState::Any,
                    vec![event(1)],
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "no append may finish while the first is open"
    );
    assert_eq!(
        other.read_all(0, Direction::Forwards, 10).await.unwrap(),
        vec![]
    );
    assert_eq!(other.head(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), subscription.next())
            .await
            .is_err(),
        "the subscriber saw an event while the first transaction was open"
    );

    hold.add_permits(1);
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!((first.position, second.position), (0, 1));
    for expected in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.position, expected);
    }
    let all = other.read_all(0, Direction::Forwards, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_that_loses_the_check_takes_no_position() {
    let Some((store, _schema)) = common::fresh("loser").await else {
        return;
    };
    let cart = StreamName::new("cart-1").unwrap();
    store
        .append(&cart, ExpectedState::NoStream, vec![event(0)])
        .await
        .unwrap();
    // Many losers at once, in one transaction with a winner.
    let mut tasks = Vec::new();
    for n in 0..20 {
        let (store, cart) = (store.clone(), cart.clone());
        tasks.push(tokio::spawn(async move {
            store
                .append(&cart, ExpectedState::Exact(0), vec![event(n)])
                .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(result) => {
                won += 1;
                assert_eq!(result.position, 1);
            }
            Err(StoreError::WrongExpectedRevision { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.head(), 2);
    let next = store
        .append(
            &StreamName::new("other").unwrap(),
            ExpectedState::Any,
            vec![event(9)],
        )
        .await
        .unwrap();
    assert_eq!(next.position, 2, "losers burnt positions");
}

/// The writer process of the stress test (runs only when the test starts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_writer_process() {
    let Ok(schema) = std::env::var("FACTUM_PG_STRESS_SCHEMA") else {
        return;
    };
    let store = PgStore::connect(
        &common::postgres(),
        PgOptions {
            schema,
            readers: 1,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for writer in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..60u64 {
                let (stream, count, exact) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..12u32),
                        rng.random_range(1..4u64),
                        rng.random_bool(0.3),
                    )
                };
                let stream = StreamName::new(format!("stress-{stream}")).unwrap();
                let expected = if exact {
                    match store.stream_revision(&stream).await.unwrap().0 {
                        Some(revision) => ExpectedState::Exact(revision),
                        None => ExpectedState::NoStream,
                    }
                } else {
                    ExpectedState::Any
                };
                let events = (0..count)
                    .map(|i| event(writer * 1_000_000 + n * 10 + i))
                    .collect();
                match store.append(&stream, expected, events).await {
                    Ok(result) => acked.push((result.position, count)),
                    Err(StoreError::WrongExpectedRevision { .. }) => {}
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            acked
        }));
    }
    for task in tasks {
        for (position, count) in task.await.unwrap() {
            println!("acked {position} {count}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_writers_in_several_processes_a_subscriber_receives_exactly_the_committed_events() {
    let Some((store, schema)) = common::fresh("stress").await else {
        return;
    };
    let mut subscription = store.subscribe_all(0, SubscriptionFilter::default());
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "stress_writer_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("FACTUM_PG_STRESS_SCHEMA", &schema.0)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Receive while the writers run.
    let receiver = tokio::spawn(async move {
        let mut received = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), subscription.next()).await {
                Ok(event) => received.push(event.unwrap()),
                Err(_) => return received,
            }
        }
    });
    let mut acked = Vec::new();
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success(), "a writer process failed");
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            // The harness prints "test … " before the test's own output, on the same line.
            if let Some(rest) = line.split("acked ").nth(1) {
                let (position, count) = rest.split_once(' ').unwrap();
                acked.push((
                    position.parse::<u64>().unwrap(),
                    count.parse::<u64>().unwrap(),
                ));
            }
        }
    }
    let received = receiver.await.unwrap();
    let committed = store
        .read_all(0, Direction::Forwards, 1_000_000)
        .await
        .unwrap();
    assert!(
        committed.len() > 500,
        "the writers wrote too little: {}",
        committed.len()
    );
    // Exactly the committed events, in position order, none twice, none skipped.
    assert_eq!(
        received
            .iter()
            .map(|e| (e.position, e.id))
            .collect::<Vec<_>>(),
        committed
            .iter()
            .map(|e| (e.position, e.id))
            .collect::<Vec<_>>()
    );
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64)
    );
    // Every acknowledged append is there, whole.
    let positions: HashSet<u64> = received.iter().map(|e| e.position).collect();
    let acknowledged: u64 = acked.iter().map(|(_, count)| count).sum();
    assert_eq!(
        acknowledged,
        committed.len() as u64,
        "events stored that were not acknowledged, or the reverse"
    );
    for (last, count) in acked {
        for position in last + 1 - count..=last {
            assert!(positions.contains(&position));
        }
    }
}
