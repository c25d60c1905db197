//! Event processors: order, checkpoints, retries, dead letters, replay, inbox.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use factum_core::{EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StreamName};
use factum_toolkit::DeadLetters;
use factum_toolkit::{EventProcessor, HandlerError, Inbox, RetryPolicy, handler_fn};
use parking_lot::Mutex;

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_delay: Duration::from_millis(1),
        multiplier: 2.0,
        max_delay: Duration::from_millis(10),
        jitter: true,
    }
}

async fn append(store: &MemoryStore, stream: &str, event_type: &str, n: u64) {
    let event = NewEvent::json(event_type, &serde_json::json!({ "n": n })).unwrap();
    store
        .append(
            &StreamName::user(stream).unwrap(),
            ExpectedState::Any,
            vec![event],
        )
        .await
        .unwrap();
}

fn recorder(
    name: &str,
    seen: Arc<Mutex<Vec<(String, u64)>>>,
) -> Arc<dyn factum_toolkit::EventHandler> {
    handler_fn(name, move |event: RecordedEvent| {
        let seen = seen.clone();
        async move {
            seen.lock().push((event.stream.to_string(), event.revision));
            Ok(())
        }
    })
}

#[tokio::test]
async fn handlers_see_their_events_in_stream_order_and_the_checkpoint_moves_on() {
    let store = MemoryStore::new();
    for n in 0..30 {
        append(
            &store,
            &format!("order-{}", n % 3),
            if n % 2 == 0 { "Placed" } else { "Noted" },
            n,
        )
        .await;
    }
    // A rejected append is never seen by anyone.
    let refused = store
        .append(
            &StreamName::user("order-0").unwrap(),
            ExpectedState::NoStream,
            vec![NewEvent::json("Placed", &0).unwrap()],
        )
        .await;
    assert!(refused.is_err());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let processor = EventProcessor::builder("orders", Arc::new(store.clone()))
        .on("Placed", recorder("placed", seen.clone()))
        .build()
        .unwrap();
    let stats = processor.run_until(store.head()).await.unwrap();
    assert_eq!(stats.events, 15);
    assert_eq!(store.read_checkpoint("orders").await.unwrap(), Some(29));
    let seen_now = seen.lock().clone();
    assert_eq!(seen_now.len(), 15);
    for stream in ["order-0", "order-1", "order-2"] {
        let revisions: Vec<u64> = seen_now
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, r)| *r)
            .collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "order kept in {stream}"
        );
    }
    // Nothing is handled twice; new events are.
    assert_eq!(processor.run_until(store.head()).await.unwrap().events, 0);
    append(&store, "order-9", "Placed", 99).await;
    assert_eq!(processor.run_until(store.head()).await.unwrap().events, 1);
    assert_eq!(seen.lock().len(), 16);
}

#[tokio::test]
async fn a_failing_handler_is_retried_and_does_not_hold_up_the_others() {
    let store = MemoryStore::new();
    append(&store, "order-1", "OrderCancelled", 1).await;
    let calls = Arc::new(AtomicU32::new(0));
    let flaky = {
        let calls = calls.clone();
        handler_fn("refund", move |_| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err::<(), HandlerError>("payment service unavailable".into())
                } else {
                    Ok(())
                }
            }
        })
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let processor = EventProcessor::builder("cancellations", Arc::new(store.clone()))
        .on("OrderCancelled", flaky)
        .on("OrderCancelled", recorder("notify", seen.clone()))
        .retry(fast_retry(3))
        .build()
        .unwrap();
    let stats = processor.run_until(store.head()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!((stats.failures, stats.dead_lettered), (2, 0));
    assert_eq!(seen.lock().len(), 1);
    assert!(processor.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_parked_and_can_be_replayed() {
    let store = MemoryStore::new();
    append(&store, "order-1", "OrderCancelled", 1).await;
    append(&store, "order-2", "OrderCancelled", 2).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let mailer = {
        let healthy = healthy.clone();
        handler_fn("notify", move |event: RecordedEvent| {
            let healthy = healthy.clone();
            async move {
                if healthy.load(Ordering::SeqCst) || event.stream.as_str() == "order-2" {
                    Ok(())
                } else {
                    Err::<(), HandlerError>("mail server refused".into())
                }
            }
        })
    };
    let refunds = Arc::new(Mutex::new(Vec::new()));
    let processor = EventProcessor::builder("cancellations", Arc::new(store.clone()))
        .on("OrderCancelled", mailer)
        .on("OrderCancelled", recorder("refund", refunds.clone()))
        .retry(fast_retry(3))
        .build()
        .unwrap();
    let stats = processor.run_until(store.head()).await.unwrap();
    assert_eq!((stats.failures, stats.dead_lettered), (3, 1));
    assert_eq!(refunds.lock().len(), 2, "the refund was not blocked");
    let letters = processor.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.handler.as_str(), letter.position, letter.attempts),
        ("notify", 0, 3)
    );
    assert_eq!(
        (letter.stream.as_str(), letter.event_type.as_str()),
        ("order-1", "OrderCancelled")
    );
    assert!(letter.error.contains("mail server refused"));
    // The processor moved on: its checkpoint is past the parked event.
    assert_eq!(
        store.read_checkpoint("cancellations").await.unwrap(),
        Some(1)
    );

    // Still failing: the replay leaves it parked.
    let report = processor.replay_dead_letters().await.unwrap();
    assert_eq!((report.resolved, report.failed), (0, 1));
    healthy.store(true, Ordering::SeqCst);
    let report = processor.replay_dead_letters().await.unwrap();
    assert_eq!((report.resolved, report.failed), (1, 0));
    assert!(processor.dead_letters().await.unwrap().is_empty());
    assert_eq!(
        refunds.lock().len(),
        2,
        "replay runs only the handler that failed"
    );
}

#[tokio::test]
async fn a_requested_replay_runs_when_the_processor_starts() {
    let store = MemoryStore::new();
    append(&store, "order-1", "OrderCancelled", 1).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let build = |healthy: Arc<AtomicBool>| {
        EventProcessor::builder("mailer", Arc::new(store.clone()))
            .on(
                "OrderCancelled",
                handler_fn("notify", move |_| {
                    let ok = healthy.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            Ok(())
                        } else {
                            Err::<(), HandlerError>("down".into())
                        }
                    }
                }),
            )
            .retry(fast_retry(1))
            .build()
            .unwrap()
    };
    build(healthy.clone())
        .run_until(store.head())
        .await
        .unwrap();
    assert_eq!(
        DeadLetters::of(&store, "mailer")
            .unwrap()
            .processor_letters()
            .await
            .unwrap()
            .len(),
        1
    );
    healthy.store(true, Ordering::SeqCst);
    DeadLetters::of(&store, "mailer")
        .unwrap()
        .request_replay()
        .await
        .unwrap();
    let processor = build(healthy);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running =
        tokio::spawn(async move { processor.run(async { stopped.await.unwrap_or(()) }).await });
    for _ in 0..100 {
        if DeadLetters::of(&store, "mailer")
            .unwrap()
            .processor_letters()
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert!(
        DeadLetters::of(&store, "mailer")
            .unwrap()
            .processor_letters()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_processor_follows_new_events_live_and_saves_its_checkpoint_on_stop() {
    let store = MemoryStore::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let processor = EventProcessor::builder("live", Arc::new(store.clone()))
        .on_any(recorder("all", seen.clone()))
        .stream_prefixes(["cart-"])
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running =
        tokio::spawn(async move { processor.run(async { stopped.await.unwrap_or(()) }).await });
    for n in 0..20 {
        append(
            &store,
            if n % 2 == 0 { "cart-1" } else { "other-1" },
            "Happened",
            n,
        )
        .await;
    }
    for _ in 0..200 {
        if seen.lock().len() == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    let stats = running.await.unwrap().unwrap();
    assert_eq!(stats.events, 10);
    assert_eq!(seen.lock().len(), 10);
    // At least the last handled event; past it when the filtered-out one after it was read.
    let checkpoint = store.read_checkpoint("live").await.unwrap().unwrap();
    assert!((18..=19).contains(&checkpoint), "{checkpoint}");
}

#[tokio::test]
async fn an_inbox_runs_an_effect_once_per_event_even_across_restarts() {
    let store = MemoryStore::new();
    append(&store, "customer-1", "CustomerBecameVip", 1).await;
    let event = store
        .read_all(0, factum_core::Direction::Forwards, 1)
        .await
        .unwrap()
        .remove(0);
    let sent = Arc::new(AtomicU32::new(0));
    let send = || {
        let sent = sent.clone();
        async move {
            sent.fetch_add(1, Ordering::SeqCst);
            Ok::<_, factum_core::StoreError>("mail sent")
        }
    };
    let inbox = Arc::new(
        Inbox::open(Arc::new(store.clone()), "congratulations")
            .await
            .unwrap(),
    );
    let (a, b) = tokio::join!(inbox.once(&event, send), inbox.once(&event, send));
    assert_eq!(
        [a.unwrap().is_some(), b.unwrap().is_some()]
            .iter()
            .filter(|x| **x)
            .count(),
        1
    );
    let reopened = Inbox::open(Arc::new(store.clone()), "congratulations")
        .await
        .unwrap();
    assert_eq!(reopened.once(&event, send).await.unwrap(), None);
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    // A failed effect is not recorded, so it runs again next time.
    let other = Inbox::open(Arc::new(store.clone()), "other").await.unwrap();
    let failed = other
        .once(&event, || async {
            Err::<(), _>(factum_core::StoreError::Closed)
        })
        .await;
    assert!(failed.is_err());
    assert!(other.once(&event, send).await.unwrap().is_some());
    assert_eq!(
        Inbox::derived_id(&event, "vip-mail"),
        Inbox::derived_id(&event, "vip-mail")
    );
    assert_ne!(
        Inbox::derived_id(&event, "vip-mail"),
        Inbox::derived_id(&event, "other")
    );
}

#[test]
fn backoff_grows_exponentially_within_its_jitter_and_cap() {
    let policy = RetryPolicy {
        attempts: 6,
        initial_delay: Duration::from_millis(100),
        multiplier: 2.0,
        max_delay: Duration::from_millis(500),
        jitter: true,
    };
    for (failed, full) in [(1, 100), (2, 200), (3, 400), (4, 500), (5, 500)] {
        for _ in 0..50 {
            let delay = policy.delay(failed);
            assert!(delay <= Duration::from_millis(full), "{failed}: {delay:?}");
            assert!(
                delay >= Duration::from_millis(full / 2),
                "{failed}: {delay:?}"
            );
        }
    }
    let steady = RetryPolicy {
        jitter: false,
        ..policy
    };
    assert_eq!(steady.delay(3), Duration::from_millis(400));
}

#[tokio::test]
async fn an_empty_processor_or_inbox_name_is_refused_and_writes_nothing() {
    let store = Arc::new(MemoryStore::new());
    let head = store.head();
    assert!(matches!(
        factum_toolkit::dead_letter_stream(""),
        Err(factum_core::StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        DeadLetters::of(store.as_ref(), ""),
        Err(factum_core::StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        Inbox::open(store.clone(), "").await,
        Err(factum_core::StoreError::InvalidInput(_))
    ));
    assert!(EventProcessor::builder("", store.clone()).build().is_err());
    assert_eq!(store.head(), head, "nothing was written");
}

/// Waits until `seen` holds `count` events (or 5 s pass).
async fn seen_reaches(seen: &Mutex<Vec<(String, u64)>>, count: usize) {
    for _ in 0..1000 {
        if seen.lock().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Two replicas of a service each run the same processor: one handles the events, the other
/// waits and takes over, from the checkpoint, when the first stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_of_a_processor_waits_and_takes_over_when_the_first_stops() {
    let store = MemoryStore::new();
    let first_seen = Arc::new(Mutex::new(Vec::new()));
    let second_seen = Arc::new(Mutex::new(Vec::new()));
    let copy = |seen: &Arc<Mutex<Vec<(String, u64)>>>| {
        EventProcessor::builder("mailer", Arc::new(store.clone()))
            .on_any(recorder("mail", seen.clone()))
            .build()
            .unwrap()
    };
    let (first, second) = (copy(&first_seen), copy(&second_seen));
    let (stop_first, first_stopped) = tokio::sync::oneshot::channel::<()>();
    let first =
        tokio::spawn(async move { first.run(async { first_stopped.await.unwrap_or(()) }).await });
    for n in 0..10 {
        append(&store, "order-1", "Placed", n).await;
    }
    seen_reaches(&first_seen, 10).await;
    let (stop_second, second_stopped) = tokio::sync::oneshot::channel::<()>();
    let second_copy = second.clone();
    let second = tokio::spawn(async move {
        second
            .run(async { second_stopped.await.unwrap_or(()) })
            .await
    });
    let mut standby = second_copy.standby();
    tokio::time::timeout(Duration::from_secs(5), standby.wait_for(|s| *s))
        .await
        .expect("the second copy waits")
        .map(drop)
        .unwrap();
    // A one-shot run is refused while the name is held.
    assert!(matches!(
        second_copy.run_until(store.head()).await,
        Err(factum_core::StoreError::Claimed(name)) if name == "mailer"
    ));
    // So is a direct replay of the dead letters: the running copy owns them.
    assert!(matches!(
        second_copy.replay_dead_letters().await,
        Err(factum_core::StoreError::Claimed(name)) if name == "mailer"
    ));
    for n in 10..20 {
        append(&store, "order-1", "Placed", n).await;
    }
    seen_reaches(&first_seen, 20).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(first_seen.lock().len(), 20);
    assert!(
        second_seen.lock().is_empty(),
        "the waiting copy handled events"
    );

    stop_first.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap().events, 20);
    tokio::time::timeout(Duration::from_secs(5), standby.wait_for(|s| !*s))
        .await
        .expect("the second copy takes over")
        .map(drop)
        .unwrap();
    for n in 20..30 {
        append(&store, "order-1", "Placed", n).await;
    }
    seen_reaches(&second_seen, 10).await;
    stop_second.send(()).unwrap();
    assert_eq!(second.await.unwrap().unwrap().events, 10);
    let revisions: Vec<u64> = second_seen.lock().iter().map(|(_, r)| *r).collect();
    assert_eq!(revisions, (20..30).collect::<Vec<_>>());
    let last = store
        .read_stream(
            &StreamName::user("order-1").unwrap(),
            u64::MAX,
            factum_core::Direction::Backwards,
            1,
        )
        .await
        .unwrap();
    let checkpoint = store.read_checkpoint("mailer").await.unwrap().unwrap();
    assert!(checkpoint >= last[0].position, "{checkpoint}");
}
