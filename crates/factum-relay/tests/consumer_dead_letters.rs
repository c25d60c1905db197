//! A consumer's parked messages are counted with the processors' dead letters, and replayed
//! once their cause is fixed: by `Consumer::replay_dead_letters`, or when the consumer starts
//! after `factum deadletters replay` asked for it. No broker is needed: messages are handed to
//! the consumer directly, as its source would.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::tally::{self, Count, Tally};
use factum_core::{EventStore, MemoryStore};
use factum_relay::{
    ConsumeError, Consumer, Delivery, DeliveryOutcome, IncomingMessage, MessageSource, headers,
};
use factum_toolkit::{DeadLetters, ReplayReport, processor_statuses};

const NAME: &str = "tally-replay";

/// The tally consumer as first deployed: it reads only version 1 bodies.
fn strict(store: Arc<dyn EventStore>) -> Consumer {
    Consumer::builder(NAME, store.clone())
        .bus(tally::bus(store))
        .on_aggregate::<Tally, _>("OrderPaid", |message: &IncomingMessage| {
            let body: serde_json::Value = message.json()?;
            if body["v"] != 1 {
                return Err(format!("version {} is not understood", body["v"]));
            }
            tally::decode(message)
        })
        .build()
        .unwrap()
}

/// The fixed consumer: any version, and a body that is not JSON counts as well. With `lenient`,
/// it no longer passes the body's refusal on to the tally.
fn fixed(store: Arc<dyn EventStore>, lenient: bool) -> Consumer {
    Consumer::builder(NAME, store.clone())
        .bus(tally::bus(store))
        .on_aggregate::<Tally, _>("OrderPaid", move |message: &IncomingMessage| {
            let stream = message.headers[headers::STREAM].clone();
            let refuse = match message.json::<serde_json::Value>() {
                Ok(body) => body["refuse"].as_bool().unwrap_or(false) && !lenient,
                // The binary body must arrive as it was sent.
                Err(_) if message.data.as_ref() == [0xff, 0xfe, 0x00] => false,
                Err(e) => return Err(e),
            };
            let message = message.id.clone();
            Ok((stream, Count { message, refuse }))
        })
        .build()
        .unwrap()
}

fn message(id: &str, body: &[u8]) -> IncomingMessage {
    IncomingMessage {
        id: id.to_owned(),
        message_type: "OrderPaid".to_owned(),
        subject: "order.OrderPaid".to_owned(),
        data: Bytes::copy_from_slice(body),
        headers: BTreeMap::from([(headers::STREAM.to_owned(), format!("order-{id}"))]),
        redelivered: false,
    }
}

async fn unresolved(store: &dyn EventStore) -> usize {
    processor_statuses(store)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == NAME)
        .map_or(0, |s| s.dead_letters)
}

/// A source with nothing to deliver.
struct Idle;

#[async_trait::async_trait]
impl MessageSource for Idle {
    fn broker(&self) -> &'static str {
        "idle"
    }
    async fn next(&mut self) -> Result<Delivery, ConsumeError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn parked_messages_are_counted_and_replayed_once_their_cause_is_fixed() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let strict = strict(store.clone());
    let parked = [
        message("m-1", br#"{"v": 2}"#),
        message("m-2", br#"{"v": 1, "refuse": true}"#),
        message("m-3", &[0xff, 0xfe, 0x00]),
    ];
    for m in &parked {
        assert!(
            matches!(strict.handle(m).await, DeliveryOutcome::DeadLettered(_)),
            "{}",
            m.id
        );
    }
    assert!(matches!(
        strict.handle(&message("m-0", br#"{"v": 1}"#)).await,
        DeliveryOutcome::Handled
    ));
    // The parked messages count as the consumer's dead letters, in `factum deadletters list`
    // and the server's `/processors`.
    assert_eq!(unresolved(store.as_ref()).await, 3);
    let letters = strict.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 3);
    assert!(
        letters[0].error.contains("version 2"),
        "{}",
        letters[0].error
    );
    assert_eq!(
        letters[2].data_bytes.as_deref(),
        Some(&[0xff, 0xfe, 0x00][..])
    );
    assert_eq!(letters[1].data_bytes, None);
    assert_eq!(
        letters[2].message(),
        IncomingMessage {
            redelivered: true,
            ..parked[2].clone()
        }
    );

    // The fix is deployed: m-1 and m-3 now count; m-2 is still refused by the tally.
    let report = fixed(store.clone(), false)
        .replay_dead_letters()
        .await
        .unwrap();
    assert_eq!(
        report,
        ReplayReport {
            resolved: 2,
            failed: 1
        }
    );
    let left = fixed(store.clone(), false).dead_letters().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message_id, "m-2");
    assert_eq!(unresolved(store.as_ref()).await, 1);

    // `factum deadletters replay` asks; the consumer replays when it next starts.
    let letters = DeadLetters::of(store.as_ref(), NAME).unwrap();
    letters.request_replay().await.unwrap();
    assert!(letters.replay_requested().await.unwrap());
    let running = tally::spawn(fixed(store.clone(), true), Idle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while letters.replay_requested().await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "no replay answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    assert_eq!(unresolved(store.as_ref()).await, 0);

    // Each message counted exactly once, the resolved ones included; a further replay finds
    // nothing to do.
    let (per_tally, mut counted) = tally::counted(store.as_ref()).await;
    counted.sort();
    assert_eq!(counted, ["m-0", "m-1", "m-2", "m-3"]);
    assert!(per_tally.values().all(|&n| n == 1), "{per_tally:?}");
    let again = fixed(store.clone(), true)
        .replay_dead_letters()
        .await
        .unwrap();
    assert_eq!(again, ReplayReport::default());
}

#[tokio::test]
async fn a_replay_cut_off_after_the_command_ran_is_resolved_without_running_it_again() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let m = message("m-9", br#"{"v": 2}"#);
    assert!(matches!(
        strict(store.clone()).handle(&m).await,
        DeliveryOutcome::DeadLettered(_)
    ));
    // A replay ran the command, and the process died before it marked the letter resolved.
    assert!(matches!(
        fixed(store.clone(), false).handle(&m).await,
        DeliveryOutcome::Handled
    ));
    assert_eq!(unresolved(store.as_ref()).await, 1);
    // The next replay finds the command's events: resolved, nothing written twice.
    let report = fixed(store.clone(), false)
        .replay_dead_letters()
        .await
        .unwrap();
    assert_eq!(
        report,
        ReplayReport {
            resolved: 1,
            failed: 0
        }
    );
    assert_eq!(unresolved(store.as_ref()).await, 0);
    let (_, counted) = tally::counted(store.as_ref()).await;
    assert_eq!(counted, ["m-9"]);
}
