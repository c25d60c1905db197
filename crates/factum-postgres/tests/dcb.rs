//! DCB on PostgreSQL across processes (two stores on one schema stand for two processes):
//! conditional appends racing on overlapping queries from both, exactly one of two
//! conflicting appends winning, and readers that never see a position skipped; and a schema
//! of the version before tags migrated with its events kept.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use factum_core::{
    AppendCondition, DcbAppend, DcbEvent, Direction, EventStore, ExpectedState, NewEvent, Query,
    StoreError, StreamName, SubscriptionFilter,
};
use factum_postgres::PgStore;

fn issued(n: u64) -> NewEvent {
    NewEvent::json("InvoiceIssued", &serde_json::json!({ "n": n }))
        .unwrap()
        .with_tags([format!("invoice:{n}")])
}

fn number(event: &factum_core::RecordedEvent) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
    value["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_appends_from_two_processes_keep_invoice_numbers_gapless() {
    let Some(schema) = common::schema("dcb_race").await else {
        return;
    };
    let mut stores = Vec::new();
    for _ in 0..2 {
        stores.push(Arc::new(
            PgStore::connect(&common::postgres(), common::options(&schema))
                .await
                .unwrap(),
        ));
    }
    // A reader in a third process follows `$all`: positions come dense, none skipped.
    let reader = PgStore::connect(&common::postgres(), common::options(&schema))
        .await
        .unwrap();
    let mut follow = reader.subscribe_all(0, SubscriptionFilter::default());
    let per_process = 24u64;
    let invoices = Query::item(["InvoiceIssued"], Vec::<String>::new());
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..per_process {
            let store = store.clone();
            let invoices = invoices.clone();
            tasks.push(tokio::spawn(async move {
                let mut refused = 0u64;
                loop {
                    let read = store
                        .read_query(&invoices, None, Direction::Backwards, 1)
                        .await
                        .unwrap();
                    let next = read.events.first().map_or(0, |e| number(e) + 1);
                    let append = DcbAppend::new([DcbEvent::new(issued(next))])
                        .on_condition(AppendCondition::new(invoices.clone(), read.head));
                    match store.append_conditional(append).await {
                        Ok(_) => return refused,
                        Err(StoreError::ConditionFailed { .. }) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    let total = 2 * per_process;
    assert!(refused > 0, "the processes raced");
    let mut seen = Vec::new();
    while (seen.len() as u64) < total {
        let event = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("the reader sees every event")
            .unwrap();
        assert_eq!(event.position, seen.len() as u64, "no position skipped");
        seen.push(number(&event));
    }
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "consecutive, no gap, no duplicate"
    );
    assert_eq!(stores[0].head(), total, "refused appends wrote nothing");

    // Two appends conditioned on the same read: exactly one wins.
    let read = stores[0]
        .read_query(&invoices, None, Direction::Backwards, 1)
        .await
        .unwrap();
    let both = [
        stores[0].append_conditional(
            DcbAppend::new([DcbEvent::new(issued(total))])
                .on_condition(AppendCondition::new(invoices.clone(), read.head)),
        ),
        stores[1].append_conditional(
            DcbAppend::new([DcbEvent::new(issued(total))])
                .on_condition(AppendCondition::new(invoices.clone(), read.head)),
        ),
    ];
    let [a, b] = both;
    let (a, b) = tokio::join!(a, b);
    assert_eq!(
        u8::from(a.is_ok()) + u8::from(b.is_ok()),
        1,
        "exactly one wins: {a:?} {b:?}"
    );
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(StoreError::ConditionFailed { .. })));
    // The tag table answers as a scan does.
    let one = Query::item(Vec::<String>::new(), ["invoice:7"]);
    let read = stores[1]
        .read_query(&one, None, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    assert_eq!(number(&read.events[0]), 7);
    assert_eq!(read.events[0].tags, ["invoice:7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_before_tags_is_migrated_and_keeps_its_events() {
    let Some(schema) = common::schema("dcb_migrate").await else {
        return;
    };
    let (admin, connection) = common::connect().await.unwrap();
    tokio::spawn(connection);
    let store = PgStore::connect(&common::postgres(), common::options(&schema))
        .await
        .unwrap();
    let stream = StreamName::user("order-1").unwrap();
    for n in 0..3u64 {
        store
            .append(
                &stream,
                ExpectedState::Any,
                vec![NewEvent::json("OrderPlaced", &n).unwrap()],
            )
            .await
            .unwrap();
    }
    drop(store);
    // The schema as the release before tags left it: version 1, no tag column or table.
    admin
        .batch_execute(&format!(
            "SET search_path TO {0};
             ALTER TABLE events DROP COLUMN tags;
             DROP TABLE event_tags;
             DROP INDEX events_type_position;
             ALTER TABLE streams DROP COLUMN scavenged_below;
             DROP TABLE subject_keys;
             DELETE FROM schema_version WHERE version > 1;",
            schema.0
        ))
        .await
        .unwrap();
    let store = PgStore::connect(&common::postgres(), common::options(&schema))
        .await
        .unwrap();
    let events = store
        .read_stream(&stream, 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.tags.is_empty()));
    let placed = Query::item(["OrderPlaced"], Vec::<String>::new());
    let read = store
        .read_query(&placed, Some(0), Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(
        read.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2]
    );
    store
        .append_conditional(
            DcbAppend::new([DcbEvent::new(
                NewEvent::json("OrderShipped", &1)
                    .unwrap()
                    .with_tags(["order:1"]),
            )
            .in_stream(stream.clone())])
            .on_condition(AppendCondition::new(placed, read.head)),
        )
        .await
        .unwrap();
    let version: i32 = admin
        .query_one(
            &format!("SELECT max(version) FROM {}.schema_version", schema.0),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, factum_postgres::PG_SCHEMA_VERSION);
}
