//! Persistent subscription groups: sharing, pinning, retries, parking, replay, restarts, bad
//! input — on the in-memory store, the engine and PostgreSQL.
#![allow(clippy::unwrap_used)]
mod backends;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use factum_core::{Direction, EventStore, ExpectedState, MemoryStore, NewEvent, StreamName};
use factum_engine::{Engine, EngineOptions};
use factum_toolkit::{
    ConsumerStrategy, FilterSpec, GroupConnection, GroupError, GroupKey, GroupMessage,
    GroupSettings, GroupSource, Groups, MESSAGE_PARKED, NackAction, PersistentConsumer, StartFrom,
    handler_fn,
};
use parking_lot::Mutex;
use uuid::Uuid;

/// PostgreSQL in a fresh schema of this file's (see [`backends::postgres`]).
async fn postgres(name: &str) -> Option<Arc<dyn EventStore>> {
    backends::postgres(&format!("groups_{name}")).await
}

/// Every store a check runs on (see [`backends::all`]).
async fn stores(name: &str) -> Vec<(&'static str, Arc<dyn EventStore>, Option<tempfile::TempDir>)> {
    backends::all(&format!("groups_{name}")).await
}

async fn append(store: &dyn EventStore, stream: &str, n: usize) -> Vec<Uuid> {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::json("Noted", &serde_json::json!({ "i": i })).unwrap())
        .collect();
    let ids = events.iter().map(|e| e.id).collect();
    store
        .append(
            &StreamName::user(stream).unwrap(),
            ExpectedState::Any,
            events,
        )
        .await
        .unwrap();
    ids
}

fn quick() -> GroupSettings {
    GroupSettings {
        message_timeout: Duration::from_millis(300),
        max_retry_count: 2,
        checkpoint_after: Duration::from_millis(50),
        checkpoint_min_count: 1,
        ..GroupSettings::default()
    }
}

/// The next delivery, within 10 s.
async fn next(connection: &mut GroupConnection) -> GroupMessage {
    tokio::time::timeout(Duration::from_secs(10), connection.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the group runs")
}

/// Nothing is delivered for `wait`.
async fn nothing_for(connection: &mut GroupConnection, wait: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(wait, connection.next()).await {
        panic!(
            "nothing more was expected, got {} of {}",
            d.event.revision, d.event.stream
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_one_group_share_its_messages_disjointly_and_miss_none() {
    for (kind, store, _dir) in stores("share").await {
        let mut written = HashSet::new();
        for s in 0..5 {
            written.extend(append(store.as_ref(), &format!("order-{s}"), 40).await);
        }
        let groups = Groups::open(store.clone()).await.unwrap();
        let source = GroupSource::All(FilterSpec {
            stream_prefixes: vec!["order-".into()],
            ..FilterSpec::default()
        });
        groups.create(source, "workers", quick()).await.unwrap();
        let key = GroupKey::new("$all", "workers");
        let seen: Arc<Mutex<BTreeMap<u64, Vec<Uuid>>>> = Arc::default();
        let mut running = Vec::new();
        for n in 0..3u64 {
            let mut connection = groups.connect(&key, &format!("w{n}"), 5).await.unwrap();
            let seen = seen.clone();
            running.push(tokio::spawn(async move {
                while let Some(d) = connection.next().await {
                    seen.lock().entry(n).or_default().push(d.id);
                    if connection.ack(&[d.id]).await.is_err() {
                        break; // the group was closed
                    }
                }
            }));
        }
        // More while they run: live messages are shared the same way.
        for s in 0..5 {
            written.extend(append(store.as_ref(), &format!("order-{s}"), 20).await);
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while seen.lock().values().map(Vec::len).sum::<usize>() < written.len() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{kind}: every message within 20 s"));
        let seen = seen.lock().clone();
        let mut union = HashSet::new();
        for ids in seen.values() {
            for id in ids {
                assert!(union.insert(*id), "{kind}: {id} went to two consumers");
            }
        }
        assert_eq!(union, written, "{kind}");
        assert_eq!(seen.len(), 3, "{kind}: each consumer had a share");
        let info = groups.info(&key).await.unwrap();
        assert_eq!(info.acked, 300, "{kind}: {info:?}");
        assert_eq!(info.consumers.len(), 3, "{kind}");
        groups.close().await;
        for task in running {
            task.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_sends_each_stream_to_one_consumer_in_order() {
    for (kind, store, _dir) in stores("pinned").await {
        for strategy in [
            ConsumerStrategy::Pinned,
            ConsumerStrategy::PinnedByCorrelation,
        ] {
            let groups = Groups::open(store.clone()).await.unwrap();
            let group = format!("pinned-{}", strategy.name());
            let settings = GroupSettings {
                strategy,
                ..quick()
            };
            let prefix = format!("cart-{}-", strategy.name());
            let source = GroupSource::All(FilterSpec {
                stream_prefixes: vec![prefix.clone()],
                ..FilterSpec::default()
            });
            groups.create(source, &group, settings).await.unwrap();
            let key = GroupKey::new("$all", &group);
            // stream → (consumer, revision) in the order received
            let seen: Arc<Mutex<Vec<(String, u64, u64)>>> = Arc::default();
            let mut running = Vec::new();
            for n in 0..3u64 {
                let mut connection = groups.connect(&key, &format!("p{n}"), 3).await.unwrap();
                let seen = seen.clone();
                running.push(tokio::spawn(async move {
                    while let Some(d) = connection.next().await {
                        seen.lock()
                            .push((d.event.stream.to_string(), n, d.event.revision));
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        if connection.ack(&[d.id]).await.is_err() {
                            break; // the group was closed
                        }
                    }
                }));
            }
            for round in 0..5 {
                for s in 0..8 {
                    append(store.as_ref(), &format!("{prefix}{s}"), 1 + round % 2).await;
                }
            }
            let total = 8 * (1 + 2 + 1 + 2 + 1);
            tokio::time::timeout(Duration::from_secs(20), async {
                while seen.lock().len() < total {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{kind} {strategy:?}: every message within 20 s"));
            let seen = seen.lock().clone();
            let mut by_stream: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
            for (stream, consumer, revision) in seen {
                by_stream
                    .entry(stream)
                    .or_default()
                    .push((consumer, revision));
            }
            let mut consumers_used = HashSet::new();
            for (stream, got) in by_stream {
                let holders: HashSet<u64> = got.iter().map(|(c, _)| *c).collect();
                assert_eq!(
                    holders.len(),
                    1,
                    "{kind} {strategy:?}: {stream} went to {holders:?}"
                );
                consumers_used.extend(holders);
                let revisions: Vec<u64> = got.iter().map(|(_, r)| *r).collect();
                let in_order: Vec<u64> = (0..revisions.len() as u64).collect();
                assert_eq!(
                    revisions, in_order,
                    "{kind} {strategy:?}: {stream} in order"
                );
            }
            assert!(consumers_used.len() > 1, "{kind}: the streams were spread");
            groups.close().await;
            for task in running {
                task.await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_parked_once_after_its_last_retry_and_replays() {
    for (kind, store, _dir) in stores("poison").await {
        let ids = append(store.as_ref(), "payment-1", 3).await;
        let poison = ids[1];
        let groups = Groups::open(store.clone()).await.unwrap();
        groups
            .create(GroupSource::stream("payment-1").unwrap(), "pay", quick())
            .await
            .unwrap();
        let key = GroupKey::new("payment-1", "pay");
        // Two consumers; whoever gets the poison message hangs on it (never acks).
        let tries: Arc<Mutex<Vec<u32>>> = Arc::default();
        let mut running = Vec::new();
        for n in 0..2 {
            let mut connection = groups.connect(&key, &format!("c{n}"), 2).await.unwrap();
            let tries = tries.clone();
            running.push(tokio::spawn(async move {
                while let Some(d) = connection.next().await {
                    if d.id == poison {
                        tries.lock().push(d.retry_count);
                    } else if connection.ack(&[d.id]).await.is_err() {
                        break; // the group was closed
                    }
                }
            }));
        }
        let parked_stream = key.parked_stream().unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(parked) = store
                    .read_stream(&parked_stream, 0, Direction::Forwards, 10)
                    .await
                    && !parked.is_empty()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{kind}: parked within 20 s"));
        // Parked after 1 + max_retry_count deliveries, retry counts 0, 1, 2, and only once.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(*tries.lock(), vec![0, 1, 2], "{kind}");
        let parked = store
            .read_stream(&parked_stream, 0, Direction::Forwards, 10)
            .await
            .unwrap();
        assert_eq!(parked.len(), 1, "{kind}: parked once");
        assert_eq!(parked[0].event_type, MESSAGE_PARKED);
        let record: serde_json::Value = serde_json::from_slice(&parked[0].data).unwrap();
        assert_eq!(record["event_id"], poison.to_string());
        assert!(
            record["reason"]
                .as_str()
                .unwrap()
                .contains("max retry count 2"),
            "{record}"
        );
        let info = groups.info(&key).await.unwrap();
        assert_eq!((info.parked, info.in_flight), (1, 0), "{kind}: {info:?}");
        // The checkpoint passed it: parked counts as settled.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            groups.info(&key).await.unwrap().checkpoint,
            Some(3),
            "{kind}"
        );
        groups.close().await;
        for task in running {
            task.await.unwrap();
        }

        // Replayed, it comes again, first try; acknowledged, nothing is parked any more.
        let groups = Groups::open(store.clone()).await.unwrap();
        let mut connection = groups.connect(&key, "fixed", 5).await.unwrap();
        assert_eq!(groups.replay_parked(&key, None).await.unwrap(), 1, "{kind}");
        let again = next(&mut connection).await;
        assert_eq!((again.id, again.retry_count), (poison, 0), "{kind}");
        connection.ack(&[again.id]).await.unwrap();
        nothing_for(&mut connection, Duration::from_millis(300)).await;
        let info = groups.info(&key).await.unwrap();
        assert_eq!(info.parked, 0, "{kind}: {info:?}");
        assert!(!info.replaying, "{kind}");
        // Nothing is replayed twice: a second replay finds nothing.
        assert_eq!(groups.replay_parked(&key, None).await.unwrap(), 0, "{kind}");
        groups.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_actions_park_retry_skip_and_stop() {
    for (kind, store, _dir) in stores("nack").await {
        let ids = append(store.as_ref(), "job-1", 4).await;
        let groups = Groups::open(store.clone()).await.unwrap();
        groups
            .create(GroupSource::stream("job-1").unwrap(), "jobs", quick())
            .await
            .unwrap();
        let key = GroupKey::new("job-1", "jobs");
        let mut connection = groups.connect(&key, "one", 1).await.unwrap();
        let first = next(&mut connection).await;
        assert_eq!(first.id, ids[0]);
        connection
            .nack(&[first.id], NackAction::Retry, "busy")
            .await
            .unwrap();
        let retried = next(&mut connection).await;
        assert_eq!((retried.id, retried.retry_count), (ids[0], 1), "{kind}");
        connection
            .nack(&[retried.id], NackAction::Park, "bad data")
            .await
            .unwrap();
        let second = next(&mut connection).await;
        assert_eq!(second.id, ids[1]);
        connection
            .nack(&[second.id], NackAction::Skip, "not mine")
            .await
            .unwrap();
        let third = next(&mut connection).await;
        assert_eq!(third.id, ids[2]);
        connection
            .nack(&[third.id], NackAction::Stop, "shutting down")
            .await
            .unwrap();
        // Stop disconnects this consumer and gives the message back untried.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), connection.next())
                .await
                .unwrap()
                .is_none(),
            "{kind}: disconnected"
        );
        let mut other = groups.connect(&key, "two", 5).await.unwrap();
        let back = next(&mut other).await;
        assert_eq!((back.id, back.retry_count), (ids[2], 0), "{kind}");
        let fourth = next(&mut other).await;
        other.ack(&[back.id, fourth.id]).await.unwrap();
        let parked = store
            .read_stream(&key.parked_stream().unwrap(), 0, Direction::Forwards, 10)
            .await
            .unwrap();
        assert_eq!(parked.len(), 1, "{kind}");
        let record: serde_json::Value = serde_json::from_slice(&parked[0].data).unwrap();
        assert_eq!(record["event_id"], ids[0].to_string());
        assert!(record["reason"].as_str().unwrap().contains("bad data"));
        groups.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_goes_away_gives_back_what_it_held() {
    for (kind, store, _dir) in stores("away").await {
        let ids = append(store.as_ref(), "mail-1", 6).await;
        let groups = Groups::open(store.clone()).await.unwrap();
        let settings = GroupSettings {
            message_timeout: Duration::from_secs(60),
            ..quick()
        };
        groups
            .create(GroupSource::stream("mail-1").unwrap(), "senders", settings)
            .await
            .unwrap();
        let key = GroupKey::new("mail-1", "senders");
        let mut first = groups.connect(&key, "first", 4).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(next(&mut first).await.id);
        }
        first.ack(&held[..1]).await.unwrap();
        // Room for one more: the fifth.
        held.push(next(&mut first).await.id);
        assert_eq!(held, ids[..5], "{kind}");
        let mut second = groups.connect(&key, "second", 10).await.unwrap();
        let mut got = vec![next(&mut second).await];
        drop(first);
        for _ in 0..4 {
            got.push(next(&mut second).await);
        }
        let mut back: Vec<(Uuid, u32)> = got.iter().map(|d| (d.id, d.retry_count)).collect();
        back.sort();
        let mut expected: Vec<(Uuid, u32)> = held[1..].iter().map(|id| (*id, 1)).collect();
        expected.push((ids[5], 0));
        expected.sort();
        assert_eq!(back, expected, "{kind}");
        let all: Vec<Uuid> = got.iter().map(|d| d.id).collect();
        second.ack(&all).await.unwrap();
        groups.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_group_sends_only_what_was_not_settled_and_as_a_retry() {
    for (kind, store, _dir) in stores("resume").await {
        let ids = append(store.as_ref(), "ledger-1", 10).await;
        let key = GroupKey::new("ledger-1", "post");
        {
            let groups = Groups::open(store.clone()).await.unwrap();
            groups
                .create(GroupSource::stream("ledger-1").unwrap(), "post", quick())
                .await
                .unwrap();
            let mut connection = groups.connect(&key, "c", 10).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..10 {
                got.push(next(&mut connection).await.id);
            }
            assert_eq!(got, ids, "{kind}");
            // The first four settled, the fifth not, the rest settled.
            connection.ack(&got[..4]).await.unwrap();
            connection.ack(&got[5..]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                groups.info(&key).await.unwrap().checkpoint,
                Some(4),
                "{kind}"
            );
            groups.close().await;
        }
        let groups = Groups::open(store.clone()).await.unwrap();
        let mut connection = groups.connect(&key, "c", 10).await.unwrap();
        let again = next(&mut connection).await;
        assert_eq!(
            (again.id, again.retry_count),
            (ids[4], 1),
            "{kind}: the unsettled one, as a retry"
        );
        connection.ack(&[again.id]).await.unwrap();
        nothing_for(&mut connection, Duration::from_millis(300)).await;
        let new = append(store.as_ref(), "ledger-1", 1).await;
        let d = next(&mut connection).await;
        assert_eq!(
            (d.id, d.retry_count),
            (new[0], 0),
            "{kind}: a new one, as new"
        );
        connection.ack(&[d.id]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            groups.info(&key).await.unwrap().checkpoint,
            Some(11),
            "{kind}"
        );
        groups.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    for (kind, store, _dir) in stores("bad").await {
        append(store.as_ref(), "x-1", 2).await;
        let groups = Groups::open(store.clone()).await.unwrap();
        let source = || GroupSource::stream("x-1").unwrap();
        groups.create(source(), "g", quick()).await.unwrap();
        let before = store.head();
        let described = |infos: Vec<factum_toolkit::GroupInfo>| {
            infos
                .into_iter()
                .map(|i| (i.source, i.group, i.settings))
                .collect::<Vec<_>>()
        };
        let listed = described(groups.list(None).await.unwrap());
        let refused = [
            groups.create(source(), "g", quick()).await.unwrap_err(),
            groups
                .create(
                    source(),
                    "h",
                    GroupSettings {
                        read_batch_size: 0,
                        ..quick()
                    },
                )
                .await
                .unwrap_err(),
            groups
                .create(
                    source(),
                    "h",
                    GroupSettings {
                        checkpoint_min_count: 10,
                        checkpoint_max_count: 5,
                        ..quick()
                    },
                )
                .await
                .unwrap_err(),
            groups.create(source(), "", quick()).await.unwrap_err(),
            groups.create(source(), "a::b", quick()).await.unwrap_err(),
            // `x-1::` + `:b` would name the parked stream of source `x-1:`, group `b`.
            groups.create(source(), ":b", quick()).await.unwrap_err(),
            groups
                .update(&GroupKey::new("x-1", "nope"), quick())
                .await
                .unwrap_err(),
            groups
                .delete(&GroupKey::new("x-1", "nope"))
                .await
                .unwrap_err(),
            groups
                .connect(&GroupKey::new("x-1", "nope"), "c", 1)
                .await
                .unwrap_err(),
        ];
        assert!(
            matches!(refused[0], GroupError::Exists(_)),
            "{kind}: {:?}",
            refused[0]
        );
        assert_eq!(store.head(), before, "{kind}: nothing written");
        assert_eq!(
            described(groups.list(None).await.unwrap()),
            listed,
            "{kind}"
        );
        for e in &refused[1..6] {
            assert!(matches!(e, GroupError::Invalid(_)), "{kind}: {e:?}");
        }
        for e in &refused[6..] {
            assert!(matches!(e, GroupError::NotFound(_)), "{kind}: {e:?}");
        }
        let key = GroupKey::new("x-1", "g");
        let mut connection = groups.connect(&key, "c", 1).await.unwrap();
        let first = next(&mut connection).await;
        let unknown = Uuid::now_v7();
        let e = connection.ack(&[first.id, unknown]).await.unwrap_err();
        assert!(
            matches!(e, GroupError::UnknownMessage { id, .. } if id == unknown),
            "{kind}: {e:?}"
        );
        // The known id was not acknowledged either: it is still in flight.
        let info = groups.info(&key).await.unwrap();
        assert_eq!((info.in_flight, info.acked), (1, 0), "{kind}");
        // A group's limit of consumers.
        let limited = GroupSettings {
            max_subscriber_count: 1,
            ..quick()
        };
        groups.update(&key, limited).await.unwrap();
        assert!(
            next_or_end(&mut connection).await,
            "{kind}: the update ends connections"
        );
        let _one = groups.connect(&key, "a", 1).await.unwrap();
        let e = groups.connect(&key, "b", 1).await.unwrap_err();
        assert!(matches!(e, GroupError::Full(_)), "{kind}: {e:?}");
        groups.close().await;
    }
}

/// Whether the connection ends (the group stopped) within 5 s, taking what is left.
async fn next_or_end(connection: &mut GroupConnection) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        while connection.next().await.is_some() {}
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_survive_a_reopen_and_a_deleted_group_starts_afresh() {
    for (kind, store, _dir) in stores("reopen").await {
        append(store.as_ref(), "y-1", 3).await;
        let groups = Groups::open(store.clone()).await.unwrap();
        let settings = GroupSettings {
            start_from: StartFrom::End,
            ..quick()
        };
        groups
            .create(GroupSource::stream("y-1").unwrap(), "late", settings)
            .await
            .unwrap();
        groups
            .create(GroupSource::all(), "everything", quick())
            .await
            .unwrap();
        groups.close().await;
        let groups = Groups::open(store.clone()).await.unwrap();
        let listed: Vec<(String, String)> = groups
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.source, i.group))
            .collect();
        assert_eq!(
            listed,
            [
                ("$all".into(), "everything".into()),
                ("y-1".into(), "late".into())
            ],
            "{kind}"
        );
        // From the end: only what comes after the group was created.
        let key = GroupKey::new("y-1", "late");
        let mut connection = groups.connect(&key, "c", 5).await.unwrap();
        let new = append(store.as_ref(), "y-1", 1).await;
        let d = next(&mut connection).await;
        assert_eq!((d.id, d.event.revision), (new[0], 3), "{kind}");
        connection.ack(&[d.id]).await.unwrap();
        drop(connection);
        groups.delete(&key).await.unwrap();
        assert!(matches!(
            groups.info(&key).await,
            Err(GroupError::NotFound(_))
        ));
        groups
            .create(GroupSource::stream("y-1").unwrap(), "late", quick())
            .await
            .unwrap();
        let mut connection = groups.connect(&key, "c", 5).await.unwrap();
        let first = next(&mut connection).await;
        assert_eq!(
            first.event.revision, 0,
            "{kind}: a new group, from its own start"
        );
        groups.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_consumers_share_a_group_and_failures_end_parked() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let ids = append(store.as_ref(), "task-1", 30).await;
    let groups = Groups::open(store.clone()).await.unwrap();
    groups
        .create(GroupSource::stream("task-1").unwrap(), "tasks", quick())
        .await
        .unwrap();
    let key = GroupKey::new("task-1", "tasks");
    let bad = ids[7];
    let handled: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = Vec::new();
    for n in 0..2 {
        let handled = handled.clone();
        let handler = handler_fn(format!("worker-{n}"), move |event| {
            let handled = handled.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if event.id == bad {
                    return Err("cannot handle this one".into());
                }
                handled.lock().push(event.id);
                Ok(())
            }
        });
        let consumer = PersistentConsumer::new(&groups, key.clone(), handler);
        let mut stopped = stopped.clone();
        running.push(tokio::spawn(async move {
            consumer
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
                .unwrap()
        }));
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while groups.info(&key).await.unwrap().parked < 1 || handled.lock().len() < 29 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("handled and parked within 20 s");
    stop.send(true).unwrap();
    let mut stats = Vec::new();
    for task in running {
        stats.push(task.await.unwrap());
    }
    let handled = handled.lock().clone();
    assert_eq!(handled.len(), 29);
    assert_eq!(
        handled.iter().collect::<HashSet<_>>().len(),
        29,
        "each once"
    );
    assert_eq!(stats.iter().map(|s| s.failed).sum::<u64>(), 3, "{stats:?}");
    assert!(
        stats.iter().all(|s| s.handled > 0),
        "both worked: {stats:?}"
    );
    groups.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_asked_for_goes_on_after_a_reopen_and_stop_at_replays_the_first() {
    for (kind, store, _dir) in stores("replay").await {
        let ids = append(store.as_ref(), "fax-1", 3).await;
        let key = GroupKey::new("fax-1", "send");
        {
            let groups = Groups::open(store.clone()).await.unwrap();
            groups
                .create(GroupSource::stream("fax-1").unwrap(), "send", quick())
                .await
                .unwrap();
            let mut connection = groups.connect(&key, "c", 3).await.unwrap();
            for _ in 0..3 {
                let d = next(&mut connection).await;
                connection
                    .nack(&[d.id], NackAction::Park, "line busy")
                    .await
                    .unwrap();
            }
            drop(connection);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(groups.info(&key).await.unwrap().parked, 3, "{kind}");
            // Asked for with no consumer connected (as `factum subscriptions replay-parked`
            // does where the store is): the first two.
            assert_eq!(
                groups.replay_parked(&key, Some(2)).await.unwrap(),
                2,
                "{kind}"
            );
            groups.close().await;
        }
        let groups = Groups::open(store.clone()).await.unwrap();
        assert!(groups.info(&key).await.unwrap().replaying, "{kind}");
        let mut connection = groups.connect(&key, "c", 5).await.unwrap();
        let mut again = [next(&mut connection).await, next(&mut connection).await];
        nothing_for(&mut connection, Duration::from_millis(200)).await;
        again.sort_by_key(|d| d.event.revision);
        assert_eq!(
            again.iter().map(|d| d.id).collect::<Vec<_>>(),
            ids[..2],
            "{kind}"
        );
        let settled: Vec<Uuid> = again.iter().map(|d| d.id).collect();
        connection.ack(&settled).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let info = groups.info(&key).await.unwrap();
        assert_eq!(
            (info.parked, info.replaying),
            (1, false),
            "{kind}: {info:?}"
        );
        groups.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_to_single_sends_to_the_first_consumer_while_it_has_room() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let groups = Groups::open(store.clone()).await.unwrap();
    let settings = GroupSettings {
        strategy: ConsumerStrategy::DispatchToSingle,
        ..quick()
    };
    groups
        .create(GroupSource::stream("sms-1").unwrap(), "send", settings)
        .await
        .unwrap();
    let key = GroupKey::new("sms-1", "send");
    let mut first = groups.connect(&key, "first", 3).await.unwrap();
    let mut second = groups.connect(&key, "second", 10).await.unwrap();
    let ids = append(store.as_ref(), "sms-1", 5).await;
    let mut to_first = Vec::new();
    for _ in 0..3 {
        to_first.push(next(&mut first).await.id);
    }
    assert_eq!(to_first, ids[..3], "the first takes what it has room for");
    let overflow = [next(&mut second).await.id, next(&mut second).await.id];
    assert_eq!(overflow, ids[3..], "the second takes the rest");
    first.ack(&to_first).await.unwrap();
    second.ack(&overflow).await.unwrap();
    let more = append(store.as_ref(), "sms-1", 2).await;
    assert_eq!(
        [next(&mut first).await.id, next(&mut first).await.id],
        more[..],
        "with room again, the first takes everything"
    );
    nothing_for(&mut second, Duration::from_millis(200)).await;
    groups.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_acked_in_batches_reach_each_one_consumer_once() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    for s in 0..20 {
        append(store.as_ref(), &format!("line-{s}"), 1000).await;
    }
    let groups = Groups::open(store.clone()).await.unwrap();
    let settings = GroupSettings {
        live_buffer_size: 2000,
        read_batch_size: 500,
        checkpoint_min_count: 100,
        checkpoint_max_count: 10_000,
        ..GroupSettings::default()
    };
    groups
        .create(GroupSource::all(), "bulk", settings)
        .await
        .unwrap();
    let key = GroupKey::new("$all", "bulk");
    let seen: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let mut running = Vec::new();
    for n in 0..4 {
        let mut connection = groups.connect(&key, &format!("c{n}"), 200).await.unwrap();
        let seen = seen.clone();
        running.push(tokio::spawn(async move {
            while let Some(first) = connection.next().await {
                let mut batch = vec![first];
                while let Some(more) = connection.try_next() {
                    batch.push(more);
                }
                seen.lock()
                    .extend(batch.iter().map(|d| (d.event.position, d.retry_count)));
                let ids: Vec<Uuid> = batch.iter().map(|d| d.id).collect();
                if connection.ack(&ids).await.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.lock().len() < 20_000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every message within 60 s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().clone();
    let positions: HashSet<u64> = seen.iter().map(|(p, _)| *p).collect();
    let again: Vec<&(u64, u32)> = seen.iter().filter(|(_, r)| *r > 0).collect();
    assert_eq!(
        (seen.len(), positions.len()),
        (20_000, 20_000),
        "each once; retries: {:?}",
        &again[..again.len().min(10)]
    );
    groups.close().await;
    for task in running {
        task.await.unwrap();
    }
}

/// Two processes share a PostgreSQL store: a group runs in the one that claimed it, and the
/// other answers that it is served elsewhere. When the first loses its claim (its claims
/// connection ends), its group stops there and writes nothing more, its consumers are
/// disconnected, and the other process takes the group over from its checkpoint: what was
/// acknowledged does not come again, what was not comes as retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_claim_is_lost_stops_and_another_process_takes_it_over() {
    let url = backends::url();
    let Some(first) = postgres("claim_lost").await else {
        return;
    };
    let schema = format!("groups_claim_lost_{}", std::process::id());
    let (admin, connection) = factum_pgconnect::PgConnect::parse(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    tokio::spawn(connection);
    let options = factum_postgres::PgOptions {
        schema: schema.clone(),
        readers: 2,
        ..Default::default()
    };
    let second: Arc<dyn EventStore> = Arc::new(
        factum_postgres::PgStore::connect(&url, options)
            .await
            .unwrap(),
    );
    let ids = append(first.as_ref(), "w-1", 10).await;
    let key = GroupKey::new("w-1", "workers");
    let settings = GroupSettings {
        message_timeout: Duration::from_secs(60),
        ..quick()
    };
    let here = Groups::open(first.clone()).await.unwrap();
    here.create(GroupSource::stream("w-1").unwrap(), "workers", settings)
        .await
        .unwrap();
    let mut worker = here.connect(&key, "here", 10).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next(&mut worker).await);
    }
    worker
        .ack(&held[..5].iter().map(|m| m.id).collect::<Vec<_>>())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while here.info(&key).await.unwrap().checkpoint != Some(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the checkpoint passes what was acknowledged");

    let there = Groups::open(second.clone()).await.unwrap();
    assert!(
        matches!(
            there.connect(&key, "there", 10).await,
            Err(GroupError::ServedElsewhere(_))
        ),
        "the group runs in the process holding its claim"
    );

    // The first process's claims connection ends (a network failure, a restarted server).
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
            &[&format!("factum claims {schema}")],
        )
        .await
        .unwrap();
    assert_eq!(ended.len(), 1, "one connection holds the group's claim");
    assert!(
        next_or_end(&mut worker).await,
        "the consumers of a group whose claim is lost are disconnected"
    );

    // The other process takes the group over.
    let mut taker = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match there.connect(&key, "there", 10).await {
                Ok(connection) => return connection,
                Err(GroupError::ServedElsewhere(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await
    .expect("the other process takes the group over");
    let mut again = Vec::new();
    for _ in 0..5 {
        let m = next(&mut taker).await;
        assert!(m.retry_count >= 1, "maybe sent before: a retry ({m:?})");
        again.push(m.id);
    }
    again.sort();
    let mut unacked = ids[5..].to_vec();
    unacked.sort();
    assert_eq!(again, unacked, "only what was not acknowledged comes again");
    nothing_for(&mut taker, Duration::from_millis(300)).await;
    // The process that lost the claim does not run the group again while the other holds it,
    // and neither wrote over the other's state: the taker's acks move the checkpoint on.
    assert!(matches!(
        here.connect(&key, "here", 10).await,
        Err(GroupError::ServedElsewhere(_))
    ));
    taker.ack(&again).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while there.info(&key).await.unwrap().checkpoint != Some(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the taker's checkpoint passes everything");
    here.close().await;
    there.close().await;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scavenge_stops_at_the_first_message_a_group_has_not_settled() {
    for (backend, store, _dir) in stores("scavenge").await {
        let stream = StreamName::user("job-9").unwrap();
        store
            .set_metadata(
                &stream,
                factum_core::StreamMetadata {
                    max_count: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        append(store.as_ref(), "job-9", 10).await;
        let groups = Groups::open(store.clone()).await.unwrap();
        let source = GroupSource::All(FilterSpec {
            stream_prefixes: vec!["job-".into()],
            ..FilterSpec::default()
        });
        let key = GroupKey::new("$all", "jobs");
        groups.create(source, "jobs", quick()).await.unwrap();
        let mut connection = groups.connect(&key, "one", 3).await.unwrap();
        let mut settled = Vec::new();
        for _ in 0..3 {
            let d = next(&mut connection).await;
            settled.push(d.event.position);
            connection.ack(&[d.id]).await.unwrap();
        }
        // The three acks reach the group's checkpoint.
        let expected = settled.last().unwrap() + 1;
        let mut bound = None;
        for _ in 0..100 {
            bound = factum_toolkit::scavenge_bound(store.as_ref())
                .await
                .unwrap();
            if bound == Some(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(bound, Some(expected), "{backend}");
        // A processor's checkpoint further on does not move the bound.
        store.save_checkpoint("mailer", expected + 5).await.unwrap();
        assert_eq!(
            factum_toolkit::scavenge_bound(store.as_ref())
                .await
                .unwrap(),
            Some(expected),
            "{backend}"
        );
        match factum_toolkit::scavenge(store.as_ref(), false, &|_, _| {}).await {
            Err(factum_core::StoreError::Unsupported(_)) => assert_eq!(backend, "memory"),
            Ok(report) => {
                assert_eq!(report.below, Some(expected), "{backend}");
                let left: Vec<u64> = store
                    .read_all(0, Direction::Forwards, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.stream == stream)
                    .map(|e| e.revision)
                    .collect();
                // What the group settled went; what it has not read stays, hidden as it is.
                assert_eq!(left, (3..10).collect::<Vec<_>>(), "{backend}");
                let past = factum_toolkit::scavenge(store.as_ref(), true, &|_, _| {})
                    .await
                    .unwrap();
                assert_eq!(past.below, None);
                let left = store
                    .read_all(0, Direction::Forwards, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.stream == stream)
                    .count();
                assert_eq!(left, 1, "{backend}: only the newest");
            }
            Err(e) => panic!("{backend}: {e}"),
        }
        drop(connection);
        groups.close().await;
    }
}
