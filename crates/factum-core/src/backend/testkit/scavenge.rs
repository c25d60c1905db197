//! Scavenging: what the metadata hides for good goes, everything else stays byte for byte,
//! positions and revisions stay, and appends and subscribers going on meanwhile lose nothing.
//! A store that cannot scavenge ([`StoreError::Unsupported`]) passes without running them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Direction, EventStore, ExpectedState, NewEvent, Query, QueryItem, RecordedEvent,
    ScavengeOptions, StoreError, StreamMetadata, StreamName, SubscriptionFilter,
};

/// An event of `stream` with about 250 bytes of data and a tag naming its stream.
pub fn scavenge_event(stream: &str, i: usize) -> NewEvent {
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

/// `count` events of `stream` from revision 0, recorded two hours ago (for an import: a
/// maximum age of an hour hides them).
pub fn aged_events(stream: &StreamName, count: usize) -> Vec<RecordedEvent> {
    (0..count)
        .map(|r| {
            let e = scavenge_event(stream.as_str(), r);
            RecordedEvent {
                stream: stream.clone(),
                revision: r as u64,
                position: 0,
                id: e.id,
                event_type: e.event_type,
                content_type: e.content_type,
                data: e.data,
                metadata: e.metadata,
                recorded_at_us: crate::now_micros() - 2 * 3600 * 1_000_000,
                tags: e.tags,
            }
        })
        .collect()
}

/// Whether `store` scavenges at all (asked on an empty store, where it removes nothing).
pub async fn scavenges<S: EventStore + ?Sized>(store: &S) -> bool {
    match store.scavenge(ScavengeOptions::default(), &|_, _| {}).await {
        Ok(_) => true,
        Err(StoreError::Unsupported(_)) => {
            println!("this store does not scavenge: nothing to check");
            false
        }
        Err(e) => panic!("{e}"),
    }
}

/// Streams that each metadata rule hides events of (max count, tombstone, soft delete,
/// truncate before), and a checkpoint saved thirty times, written in turns so that hidden and
/// visible events lie side by side in the log.
pub async fn fill_for_scavenge<S: EventStore + ?Sized>(store: &S) {
    for i in 0..8 {
        for (stream, metadata) in [
            (
                format!("count-{i}"),
                StreamMetadata {
                    max_count: Some(2),
                    ..StreamMetadata::default()
                },
            ),
            (
                format!("trunc-{i}"),
                StreamMetadata {
                    truncate_before: Some(15),
                    ..StreamMetadata::default()
                },
            ),
        ] {
            store.set_metadata(&name(&stream), metadata).await.unwrap();
        }
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
                            vec![scavenge_event(&stream, round)],
                        )
                        .await
                        .unwrap();
                }
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
                    vec![scavenge_event(deleted.as_str(), 20 + r)],
                )
                .await
                .unwrap();
        }
    }
}

/// What [`fill_for_scavenge`] hides: per stream group, max count 28, tombstone 19, soft
/// delete 20, truncate before 15; and every checkpoint record but the newest.
pub const FILL_HIDDEN: usize = 8 * (28 + 19 + 20 + 15) + 29;

/// What a store shows: every event of `$all`, and each user stream's visible events.
#[derive(Debug, PartialEq)]
pub struct Shown {
    pub all: BTreeMap<u64, RecordedEvent>,
    pub streams: BTreeMap<String, Vec<RecordedEvent>>,
    pub checkpoint: Option<u64>,
}

pub async fn shown<S: EventStore + ?Sized>(store: &S) -> Shown {
    let mut all = BTreeMap::new();
    let mut from = 0;
    loop {
        let page = store
            .read_all(from, Direction::Forwards, 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        all.extend(page.into_iter().map(|e| (e.position, e)));
    }
    let names: BTreeSet<String> = all
        .values()
        .filter(|e: &&RecordedEvent| !e.stream.is_system())
        .map(|e| e.stream.to_string())
        .collect();
    let mut streams = BTreeMap::new();
    for stream in names {
        let events = match store
            .read_stream(&name(&stream), 0, Direction::Forwards, 100_000)
            .await
        {
            Ok(events) => events,
            Err(StoreError::NotFound(_) | StoreError::StreamDeleted(_)) => Vec::new(),
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

/// The positions a scavenge of what `before` shows must remove: events no stream read shows,
/// that are not their stream's newest record, nor metadata records.
pub fn hidden(before: &Shown) -> BTreeSet<u64> {
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
        .filter(|e| !e.stream.as_str().starts_with("$$"))
        .map(|e| e.position)
        .filter(|p| !visible.contains(p) && !newest.contains(p))
        .collect()
}

/// What a store may show after a scavenge of what `before` shows, complete or not: every
/// event it showed except hidden ones, byte for byte, and each stream read unchanged.
pub fn check_after(before: &Shown, after: &Shown, hidden: &BTreeSet<u64>, complete: bool) {
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

pub async fn a_scavenge_removes_what_metadata_hides_and_keeps_everything_else<S: EventStore>(
    store: S,
) {
    if !scavenges(&store).await {
        return;
    }
    fill_for_scavenge(&store).await;
    let before = shown(&store).await;
    let hidden = hidden(&before);
    assert_eq!(hidden.len(), FILL_HIDDEN);
    let head = store.head();

    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.events_removed, hidden.len() as u64, "{report:?}");
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

    // Expected revisions and an idempotent retry of the newest append still work.
    let last = scavenge_event("count-0", 30);
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
    assert!(matches!(
        store
            .append(
                &name("tomb-0"),
                ExpectedState::Any,
                vec![scavenge_event("tomb-0", 99)]
            )
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
    let deleted = store
        .append(
            &name("del-0"),
            ExpectedState::Exact(22),
            vec![scavenge_event("del-0", 23)],
        )
        .await
        .unwrap();
    assert_eq!(deleted.first_revision, 23);
    // A retry of an append whose events are gone is not taken for one that was stored.
    let stale = store
        .append(
            &name("count-2"),
            ExpectedState::Exact(26),
            vec![scavenge_event("count-2", 28)],
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::WrongExpectedRevision { .. })),
        "{stale:?}"
    );
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
    assert!(page.windows(2).all(|w| w[0].position < w[1].position));
    let page = store
        .read_all(u64::MAX, Direction::Backwards, 50)
        .await
        .unwrap();
    assert_eq!(page.len(), 50);
    assert!(page.windows(2).all(|w| w[0].position > w[1].position));
    // A subscription from the start goes over the gaps.
    let mut subscription = store.subscribe_all(0, SubscriptionFilter::default());
    let now = shown(&store).await;
    for expected in now.all.keys() {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscription stalled")
            .unwrap();
        assert_eq!(event.position, *expected);
    }
    // A second scavenge finds what the appends above hid, and nothing else.
    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.events_removed <= 2, "{report:?}");
}

pub async fn a_scavenge_stops_at_its_bound<S: EventStore>(store: S) {
    if !scavenges(&store).await {
        return;
    }
    fill_for_scavenge(&store).await;
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
        crate::checkpoint_bound(&store).await.unwrap(),
        before.checkpoint
    );
}

/// Streams of 100 events of which max count leaves 3.
pub async fn fill_mostly_hidden<S: EventStore + ?Sized>(store: &S, streams: usize) {
    for i in 0..streams {
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
        let events = (0..100)
            .map(|k| scavenge_event(stream.as_str(), k))
            .collect();
        store
            .append(&stream, ExpectedState::Any, events)
            .await
            .unwrap();
    }
}

pub async fn appends_and_subscribers_go_on_while_a_scavenge_runs<S: EventStore + 'static>(
    store: S,
) {
    if !scavenges(&store).await {
        return;
    }
    let store = Arc::new(store);
    fill_mostly_hidden(store.as_ref(), 80).await;
    let before = shown(store.as_ref()).await;
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
                    .append(
                        &name(&stream),
                        ExpectedState::Any,
                        vec![scavenge_event(&stream, k)],
                    )
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
    let after = shown(store.as_ref()).await;
    assert!(acked.iter().all(|p| after.all.contains_key(p)));
    check_after(
        &before,
        &Shown {
            all: after
                .all
                .into_iter()
                .filter(|(p, _)| before.all.contains_key(p))
                .collect(),
            streams: after
                .streams
                .into_iter()
                .filter(|(s, _)| !s.starts_with("live-"))
                .collect(),
            checkpoint: after.checkpoint,
        },
        &hidden,
        true,
    );
}
