//! Dynamic consistency boundaries: tags, reads by query, conditional appends, idempotent
//! retries, races on overlapping queries, subscriptions by query, bad input.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::dcb::DCB_DEFAULT_STREAM;
use crate::{
    AppendCondition, DcbAppend, DcbEvent, Direction, EventStore, ExpectedState, NewEvent, Query,
    StoreError, StreamName,
};

use super::stream;

fn tagged(event_type: &str, n: u64, tags: &[&str]) -> NewEvent {
    NewEvent::json(event_type, &serde_json::json!({ "n": n }))
        .unwrap()
        .with_tags(tags.iter().copied())
}

fn dcb(event: NewEvent) -> DcbEvent {
    DcbEvent::new(event)
}

fn positions(events: &[crate::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

pub async fn tags_round_trip_and_queries_select_by_type_and_tag<S: EventStore>(store: S) {
    let empty = store
        .read_query(&Query::all(), None, Direction::Forwards, 10)
        .await
        .unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.head, None);
    // Tags come with stream appends as with DCB appends.
    store
        .append(
            &stream("course-c1"),
            ExpectedState::NoStream,
            vec![
                tagged("CourseDefined", 0, &["course:c1"]),
                tagged("StudentEnrolled", 1, &["course:c1", "student:s1"]),
            ],
        )
        .await
        .unwrap();
    store
        .set_metadata(&stream("course-c1"), crate::StreamMetadata::default())
        .await
        .unwrap();
    let p = store
        .append_conditional(DcbAppend::new([
            dcb(tagged("StudentEnrolled", 2, &["course:c2", "student:s1"])),
            dcb(tagged("CourseDefined", 3, &["course:c2"]))
                .in_stream(StreamName::user("course-c2").unwrap()),
            dcb(tagged("Untagged", 4, &[])),
        ]))
        .await
        .unwrap();
    assert_eq!(p, 5, "positions 0, 1, the metadata record 2, then 3 to 5");
    let all = store.read_all(0, Direction::Forwards, 10).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[1].tags, ["course:c1", "student:s1"]);
    assert_eq!(all[3].stream.as_str(), DCB_DEFAULT_STREAM);
    assert_eq!(all[4].stream.as_str(), "course-c2");
    assert!(all[5].tags.is_empty());
    let in_stream = store
        .read_stream(&stream("course-c2"), 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(in_stream[0].tags, ["course:c2"]);

    let read = |query: Query, after: Option<u64>, direction: Direction, limit: usize| {
        let store = &store;
        async move {
            store
                .read_query(&query, after, direction, limit)
                .await
                .unwrap()
        }
    };
    let forwards = Direction::Forwards;
    // Every event of user streams; the metadata record (position 2) never matches.
    let r = read(Query::all(), None, forwards, 100).await;
    assert_eq!(positions(&r.events), [0, 1, 3, 4, 5]);
    assert_eq!(r.head, Some(5));
    assert_eq!(r.events[1].tags, ["course:c1", "student:s1"]);
    let student = Query::item(Vec::<String>::new(), ["student:s1"]);
    assert_eq!(
        positions(&read(student.clone(), None, forwards, 100).await.events),
        [1, 3]
    );
    // Every tag of an item; a type of the item.
    let both = Query::item(["StudentEnrolled"], ["course:c2", "student:s1"]);
    assert_eq!(
        positions(&read(both, None, forwards, 100).await.events),
        [3]
    );
    let defined = Query::item(["CourseDefined"], Vec::<String>::new());
    assert_eq!(
        positions(&read(defined.clone(), None, forwards, 100).await.events),
        [0, 4]
    );
    let wrong_type = Query::item(["CourseDefined"], ["student:s1"]);
    assert!(
        read(wrong_type, None, forwards, 100)
            .await
            .events
            .is_empty()
    );
    // Any item.
    let either = defined.or(Vec::<String>::new(), ["student:s1"]);
    assert_eq!(
        positions(&read(either.clone(), None, forwards, 100).await.events),
        [0, 1, 3, 4]
    );
    // After, limit, backwards.
    assert_eq!(
        positions(&read(either.clone(), Some(1), forwards, 100).await.events),
        [3, 4]
    );
    assert_eq!(
        positions(&read(either.clone(), None, forwards, 2).await.events),
        [0, 1]
    );
    assert_eq!(
        positions(
            &read(either.clone(), None, Direction::Backwards, 3)
                .await
                .events
        ),
        [4, 3, 1]
    );
    assert_eq!(
        positions(
            &read(either.clone(), Some(1), Direction::Backwards, 10)
                .await
                .events
        ),
        [4, 3]
    );
    let after_end = read(either, Some(5), forwards, 10).await;
    assert!(after_end.events.is_empty());
    assert_eq!(after_end.head, Some(5));
    let unknown = Query::item(Vec::<String>::new(), ["course:none"]);
    assert!(read(unknown, None, forwards, 10).await.events.is_empty());
}

pub async fn a_conditional_append_fails_if_a_match_follows_its_position_and_writes_nothing<
    S: EventStore,
>(
    store: S,
) {
    let course = Query::item(Vec::<String>::new(), ["course:c1"]);
    // Without `after`: any match at all fails it.
    let first = DcbAppend::new([dcb(tagged("CourseDefined", 0, &["course:c1"]))])
        .on_condition(AppendCondition::new(course.clone(), None));
    assert_eq!(store.append_conditional(first).await.unwrap(), 0);
    let again = DcbAppend::new([dcb(tagged("CourseDefined", 1, &["course:c1"]))])
        .on_condition(AppendCondition::new(course.clone(), None));
    let err = store.append_conditional(again).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::ConditionFailed {
                after: None,
                position: 0
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.head(), 1, "a failed condition writes nothing");
    // Unrelated events after the position do not fail it; a matching one does.
    store
        .append(
            &stream("other"),
            ExpectedState::Any,
            vec![tagged("Noted", 2, &["course:c2"])],
        )
        .await
        .unwrap();
    let read = store
        .read_query(&course, None, Direction::Forwards, 100)
        .await
        .unwrap();
    assert_eq!(read.head, Some(1));
    let enrol = |n: u64, after: Option<u64>| {
        DcbAppend::new([dcb(tagged(
            "StudentEnrolled",
            n,
            &["course:c1", "student:s1"],
        ))])
        .on_condition(AppendCondition::new(course.clone(), after))
    };
    assert_eq!(
        store.append_conditional(enrol(3, read.head)).await.unwrap(),
        2
    );
    let err = store
        .append_conditional(enrol(4, read.head))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::ConditionFailed {
                after: Some(1),
                position: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.head(), 3);
    // Expected states of streams go with the condition: both must hold.
    let orders = StreamName::user("orders-1").unwrap();
    let with_stream = |n: u64, expected: ExpectedState| {
        DcbAppend::new([dcb(tagged("OrderPlaced", n, &["order:1"])).in_stream(orders.clone())])
            .expecting(orders.clone(), expected)
            .on_condition(AppendCondition::new(
                Query::item(Vec::<String>::new(), ["order:1"]),
                Some(2),
            ))
    };
    let err = store
        .append_conditional(with_stream(5, ExpectedState::StreamExists))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedRevision { .. }),
        "{err:?}"
    );
    assert_eq!(
        store
            .append_conditional(with_stream(6, ExpectedState::NoStream))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store.stream_revision(&orders).await.unwrap(),
        crate::CurrentRevision(Some(0))
    );
    // A tombstoned stream takes no DCB event.
    store
        .tombstone_stream(&orders, ExpectedState::Any)
        .await
        .unwrap();
    let head = store.head();
    let err = store
        .append_conditional(DcbAppend::new([
            dcb(tagged("Late", 7, &[])).in_stream(orders.clone())
        ]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StreamDeleted(_)), "{err:?}");
    assert_eq!(store.head(), head);
    // A position past the store's last event: nothing is after it yet.
    assert_eq!(
        store
            .append_conditional(enrol(8, Some(head + 5)))
            .await
            .unwrap(),
        head
    );
}

pub async fn dcb_appends_retried_with_the_same_ids_return_the_original_position<S: EventStore>(
    store: S,
) {
    let query = Query::item(["InvoiceIssued"], Vec::<String>::new());
    let issue = DcbAppend::new([
        dcb(tagged("InvoiceIssued", 0, &["invoice:0"])),
        dcb(tagged("InvoiceSent", 0, &["invoice:0"])),
    ])
    .on_condition(AppendCondition::new(query.clone(), None));
    let position = store.append_conditional(issue.clone()).await.unwrap();
    assert_eq!(position, 1);
    // Right after: its events are the last of their stream.
    assert_eq!(store.append_conditional(issue.clone()).await.unwrap(), 1);
    // After other writes to the same stream: found where its condition now fails.
    store
        .append_conditional(DcbAppend::new([dcb(tagged("Noted", 1, &[]))]))
        .await
        .unwrap();
    assert_eq!(store.append_conditional(issue.clone()).await.unwrap(), 1);
    assert_eq!(store.head(), 3, "nothing written twice");
    // The same condition with other events fails.
    let other = DcbAppend::new([dcb(tagged("InvoiceIssued", 2, &[]))])
        .on_condition(AppendCondition::new(query, None));
    assert!(matches!(
        store.append_conditional(other).await,
        Err(StoreError::ConditionFailed { position: 0, .. })
    ));
    // Unconditional, retried while its events are the last of the stream.
    let plain = DcbAppend::new([dcb(tagged("Noted", 3, &[]))]);
    let at = store.append_conditional(plain.clone()).await.unwrap();
    assert_eq!(store.append_conditional(plain).await.unwrap(), at);
    assert_eq!(store.head(), at + 1);
}

/// 64 tasks race conditional appends on overlapping queries, as the specification's cases
/// do: invoice numbers with no gap, unique user names, course capacities. Every invariant
/// holds and every refused append wrote nothing.
pub async fn racing_conditional_appends_keep_every_invariant<S: EventStore + 'static>(store: S) {
    let store = Arc::new(store);
    let tasks = 64u64;
    // Every task reads before any appends its first invoice, so they certainly race.
    let all_read = Arc::new(tokio::sync::Barrier::new(tasks as usize));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = store.clone();
        let all_read = all_read.clone();
        handles.push(tokio::spawn(async move {
            let mut written = 0u64;
            let mut refused = 0u64;
            let mut first = true;
            // The next invoice number: one more than the last issued.
            let invoices = Query::item(["InvoiceIssued"], Vec::<String>::new());
            loop {
                let read = store
                    .read_query(&invoices, None, Direction::Backwards, 1)
                    .await
                    .unwrap();
                if std::mem::take(&mut first) {
                    all_read.wait().await;
                }
                let next = read.events.first().map_or(0, |e| {
                    let v: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
                    v["n"].as_u64().unwrap() + 1
                });
                let append = DcbAppend::new([dcb(tagged("InvoiceIssued", next, &[]))])
                    .on_condition(AppendCondition::new(invoices.clone(), read.head));
                match store.append_conditional(append).await {
                    Ok(_) => {
                        written += 1;
                        break;
                    }
                    Err(StoreError::ConditionFailed { .. }) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            // A user name out of eight, claimed by whoever is first.
            let name = format!("user:name-{}", task % 8);
            let names = Query::item(Vec::<String>::new(), [name.as_str()]);
            let read = store
                .read_query(&names, None, Direction::Forwards, 10)
                .await
                .unwrap();
            if read.events.is_empty() {
                let append =
                    DcbAppend::new([dcb(tagged("UsernameClaimed", task, &[name.as_str()]))])
                        .on_condition(AppendCondition::new(names, read.head));
                match store.append_conditional(append).await {
                    Ok(_) => written += 1,
                    Err(StoreError::ConditionFailed { .. }) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            // A course of capacity 5 out of four; a student may take at most 2 courses.
            for attempt in 0..3u64 {
                let course = format!("course:c{}", (task + attempt) % 4);
                let student = format!("student:s{}", task % 16);
                let query = Query::item(["Enrolled"], [course.as_str()])
                    .or(["Enrolled"], [student.as_str()]);
                loop {
                    let read = store
                        .read_query(&query, None, Direction::Forwards, 1000)
                        .await
                        .unwrap();
                    let in_course = read
                        .events
                        .iter()
                        .filter(|e| e.tags.contains(&course))
                        .count();
                    let of_student = read
                        .events
                        .iter()
                        .filter(|e| e.tags.contains(&student))
                        .count();
                    let taken = read
                        .events
                        .iter()
                        .any(|e| e.tags.contains(&course) && e.tags.contains(&student));
                    if in_course >= 5 || of_student >= 2 || taken {
                        break;
                    }
                    let append = DcbAppend::new([dcb(tagged(
                        "Enrolled",
                        task,
                        &[course.as_str(), student.as_str()],
                    ))])
                    .on_condition(AppendCondition::new(query.clone(), read.head));
                    match store.append_conditional(append).await {
                        Ok(_) => {
                            written += 1;
                            break;
                        }
                        Err(StoreError::ConditionFailed { .. }) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            (written, refused)
        }));
    }
    let mut written = 0;
    let mut refused = 0;
    for handle in handles {
        let (w, r) = handle.await.unwrap();
        written += w;
        refused += r;
    }
    assert!(
        refused > 0,
        "the race was a race: some appends were refused"
    );
    assert_eq!(store.head(), written, "every refused append wrote nothing");
    let all = store
        .read_all(0, Direction::Forwards, 10_000)
        .await
        .unwrap();
    let numbers: Vec<u64> = all
        .iter()
        .filter(|e| e.event_type == "InvoiceIssued")
        .map(super::n_of)
        .collect();
    assert_eq!(
        numbers,
        (0..tasks).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let names: Vec<&String> = all
        .iter()
        .filter(|e| e.event_type == "UsernameClaimed")
        .flat_map(|e| &e.tags)
        .collect();
    assert_eq!(names.len(), 8, "each name once: {names:?}");
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), 8);
    let enrolled: Vec<&crate::RecordedEvent> =
        all.iter().filter(|e| e.event_type == "Enrolled").collect();
    for c in 0..4 {
        let tag = format!("course:c{c}");
        let n = enrolled.iter().filter(|e| e.tags.contains(&tag)).count();
        assert!(n <= 5, "{tag} has {n} students");
    }
    let mut pairs = BTreeSet::new();
    for s in 0..16 {
        let tag = format!("student:s{s}");
        let n = enrolled.iter().filter(|e| e.tags.contains(&tag)).count();
        assert!(n <= 2, "{tag} takes {n} courses");
    }
    for e in &enrolled {
        assert!(pairs.insert(e.tags.clone()), "enrolled twice: {:?}", e.tags);
    }
}

async fn next(s: &mut crate::Subscription) -> crate::RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
}

pub async fn query_subscription_catches_up_then_follows_live<S: EventStore + 'static>(store: S) {
    let store: Arc<dyn EventStore> = store.shared();
    let cart = Query::item(Vec::<String>::new(), ["cart:1"]);
    for n in 0..3 {
        store
            .append_conditional(DcbAppend::new([
                dcb(tagged("ItemAdded", n, &["cart:1"])),
                dcb(tagged("ItemAdded", n, &["cart:2"])),
            ]))
            .await
            .unwrap();
    }
    let mut subscription = store
        .subscribe_query(cart.clone(), Some(0))
        .with_batch_size(1);
    assert_eq!(next(&mut subscription).await.position, 2);
    assert_eq!(next(&mut subscription).await.position, 4);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 3..6 {
                store
                    .append_conditional(DcbAppend::new([
                        dcb(tagged("ItemAdded", n, &["cart:2"])),
                        dcb(tagged("ItemAdded", n, &["cart:1"])),
                    ]))
                    .await
                    .unwrap();
            }
        })
    };
    for expected in [7, 9, 11] {
        let event = next(&mut subscription).await;
        assert_eq!(event.position, expected);
        assert!(event.tags.contains(&"cart:1".to_owned()));
    }
    writer.await.unwrap();
    let from_start = store.subscribe_query(cart, None);
    let mut from_start = from_start;
    assert_eq!(next(&mut from_start).await.position, 0);
}

pub async fn bad_tags_queries_and_conditions_are_refused_and_write_nothing<S: EventStore>(
    store: S,
) {
    let long = "t".repeat(crate::limits::TAG_CHARS_MAX + 1);
    let many: Vec<String> = (0..=crate::limits::TAGS_PER_EVENT_MAX)
        .map(|i| format!("t{i}"))
        .collect();
    let bad_tags: Vec<Vec<String>> = vec![
        vec![String::new()],
        vec![long.clone()],
        many,
        vec!["a".into(), "a".into()],
        vec!["line\nbreak".into()],
    ];
    for tags in &bad_tags {
        let event = tagged("Noted", 0, &[]).with_tags(tags.clone());
        let err = store
            .append(&stream("s"), ExpectedState::Any, vec![event.clone()])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidInput(_)),
            "{tags:?}: {err:?}"
        );
        let err = store
            .append_conditional(DcbAppend::new([dcb(event)]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidInput(_)),
            "{tags:?}: {err:?}"
        );
    }
    let bad_queries = [
        Query::item([""], ["a"]),
        Query::item(["T"], [long.as_str()]),
        Query {
            items: vec![Default::default(); crate::limits::QUERY_ITEMS_MAX + 1],
        },
    ];
    for query in bad_queries {
        let err = store
            .read_query(&query, None, Direction::Forwards, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        let err = store
            .append_conditional(
                DcbAppend::new([dcb(tagged("Noted", 0, &["a"]))])
                    .on_condition(AppendCondition::new(query, None)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    let system = StreamName::new("$system").unwrap();
    for append in [
        DcbAppend::new([]),
        DcbAppend::new([dcb(tagged("Noted", 0, &[])).in_stream(system.clone())]),
        DcbAppend::new([dcb(tagged("$Reserved", 0, &[]))]),
        DcbAppend::new([dcb(tagged("Noted", 0, &[]))]).expecting(system, ExpectedState::Any),
    ] {
        let err = store.append_conditional(append).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    let twice = tagged("Noted", 0, &[]);
    let err = store
        .append_conditional(DcbAppend::new([dcb(twice.clone()), dcb(twice)]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(store.head(), 0, "nothing written");
}
