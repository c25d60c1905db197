//! KurrentDB's official Rust client (crates.io `kurrentdb`), unchanged, against `factum serve`:
//! appends with every expected revision, batch appends, reads of a stream and of `$all` both
//! ways, filtered subscriptions from catch-up to live while writers run, delete and tombstone,
//! stream metadata, credentials and rights, TLS — on the embedded store and on PostgreSQL.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use factum_core::{StreamMetadata, StreamName};
use factum_server::auth::Auth;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, DeleteStreamOptions,
    Error as KError, EventData, Position, ReadAllOptions, ReadEvent, ReadStreamOptions,
    StreamMetadataBuilder, StreamMetadataResult, StreamPosition, StreamState,
    SubscribeToAllOptions, SubscribeToStreamOptions, SubscriptionEvent, SubscriptionFilter,
    TombstoneStreamOptions,
};
use serde_json::{Value, json};

mod common;
use common::{CLIENT_TOKENS, Served, certificate, drop_schema, engine, postgres, serve};

impl Served {
    fn client(&self, query: &str) -> Client {
        let settings: ClientSettings = format!("kurrentdb://localhost:{}?{query}", self.port)
            .parse()
            .unwrap();
        Client::new(settings).unwrap()
    }

    fn client_as(&self, user: &str, password: &str, query: &str) -> Client {
        let settings: ClientSettings = format!(
            "kurrentdb://{user}:{password}@localhost:{}?{query}",
            self.port
        )
        .parse()
        .unwrap();
        Client::new(settings).unwrap()
    }
}

fn event(kind: &str, n: u64) -> EventData {
    EventData::json(kind, &json!({ "n": n }))
        .unwrap()
        .id(uuid::Uuid::new_v4())
}

fn events(kind: &str, range: std::ops::Range<u64>) -> Vec<EventData> {
    range.map(|n| event(kind, n)).collect()
}

fn expect(state: StreamState) -> AppendToStreamOptions {
    AppendToStreamOptions::default().stream_state(state)
}

async fn read_stream(
    client: &Client,
    stream: &str,
    options: &ReadStreamOptions,
) -> kurrentdb::Result<Vec<kurrentdb::RecordedEvent>> {
    let mut read = client.read_stream(stream, options).await?;
    let mut out = Vec::new();
    while let Some(event) = read.next().await? {
        out.push(event.event.unwrap());
    }
    Ok(out)
}

async fn read_all(client: &Client, options: &ReadAllOptions) -> Vec<kurrentdb::RecordedEvent> {
    let mut read = client.read_all(options).await.unwrap();
    let mut out = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        out.push(event.event.unwrap());
    }
    out
}

fn numbers(events: &[kurrentdb::RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.as_json::<Value>().unwrap()["n"].as_u64().unwrap())
        .collect()
}

fn revisions(events: &[kurrentdb::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

fn is_wrong(error: &KError, current: CurrentRevision) -> bool {
    matches!(error, KError::WrongExpectedVersion { current: c, .. } if *c == current)
}

/// Everything a client does with streams, on one store.
async fn streams_scenario(served: &Served) {
    let client = served.client("tls=false");
    // The client asked for the supported methods when it connected; a version came back.
    let info = client.server_info().await.unwrap();
    assert!(info.version().major() >= 21, "{}", info.version());

    // Appends, and every expected-revision case.
    let written = client
        .append_to_stream(
            "order-1",
            &expect(StreamState::NoStream),
            events("Placed", 0..3),
        )
        .await
        .unwrap();
    assert_eq!(written.next_expected_version, 2);
    assert_eq!(written.position.commit, written.position.prepare);
    let error = client
        .append_to_stream(
            "order-1",
            &expect(StreamState::NoStream),
            event("Placed", 9),
        )
        .await
        .unwrap_err();
    assert!(is_wrong(&error, CurrentRevision::Current(2)), "{error:?}");
    let error = client
        .append_to_stream(
            "order-1",
            &expect(StreamState::StreamRevision(1)),
            event("Placed", 9),
        )
        .await
        .unwrap_err();
    assert!(is_wrong(&error, CurrentRevision::Current(2)), "{error:?}");
    let error = client
        .append_to_stream(
            "order-none",
            &expect(StreamState::StreamExists),
            event("Placed", 9),
        )
        .await
        .unwrap_err();
    assert!(is_wrong(&error, CurrentRevision::NoStream), "{error:?}");
    let error = client
        .append_to_stream(
            "order-none",
            &expect(StreamState::StreamRevision(0)),
            event("Placed", 9),
        )
        .await
        .unwrap_err();
    assert!(is_wrong(&error, CurrentRevision::NoStream), "{error:?}");
    let written = client
        .append_to_stream(
            "order-1",
            &expect(StreamState::StreamRevision(2)),
            events("Paid", 3..5),
        )
        .await
        .unwrap();
    assert_eq!(written.next_expected_version, 4);
    client
        .append_to_stream(
            "order-1",
            &expect(StreamState::StreamExists),
            event("Shipped", 5),
        )
        .await
        .unwrap();
    client
        .append_to_stream("order-1", &expect(StreamState::Any), event("Shipped", 6))
        .await
        .unwrap();
    // Nothing the refused appends proposed was written.
    let stream = StreamName::new("order-1").unwrap();
    assert_eq!(
        served.store.stream_revision(&stream).await.unwrap().0,
        Some(6)
    );
    assert!(
        served
            .store
            .stream_revision(&StreamName::new("order-none").unwrap())
            .await
            .unwrap()
            .0
            .is_none()
    );

    // Reads of a stream: as Factum recorded them, both ways, from a revision, with limits.
    let all = read_stream(&client, "order-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(numbers(&all), vec![0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(revisions(&all), vec![0, 1, 2, 3, 4, 5, 6]);
    let stored = served
        .store
        .read_stream(&stream, 0, factum_core::Direction::Forwards, 10)
        .await
        .unwrap();
    for (read, stored) in all.iter().zip(&stored) {
        assert_eq!(read.id, stored.id);
        assert_eq!(read.stream_id(), "order-1");
        assert_eq!(read.event_type, stored.event_type);
        assert!(read.is_json);
        assert_eq!(read.position.commit, stored.position + 1);
        // This client keeps whole seconds of the 100-ns ticks it is sent.
        assert_eq!(
            read.created.timestamp() as u64,
            stored.recorded_at_us / 1_000_000
        );
    }
    let backwards = read_stream(
        &client,
        "order-1",
        &ReadStreamOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(3),
    )
    .await
    .unwrap();
    assert_eq!(revisions(&backwards), vec![6, 5, 4]);
    let from = read_stream(
        &client,
        "order-1",
        &ReadStreamOptions::default()
            .position(StreamPosition::Position(2))
            .max_count(2),
    )
    .await
    .unwrap();
    assert_eq!(revisions(&from), vec![2, 3]);
    let back_from = read_stream(
        &client,
        "order-1",
        &ReadStreamOptions::default()
            .backwards()
            .position(StreamPosition::Position(2)),
    )
    .await
    .unwrap();
    assert_eq!(revisions(&back_from), vec![2, 1, 0]);
    // The stream's last revision comes at the end of a read, as newer nodes send it.
    let mut read = client
        .read_stream("order-1", &ReadStreamOptions::default().max_count(1))
        .await
        .unwrap();
    let mut last = None;
    while let Some(message) = read.next_read_event().await.unwrap() {
        if let ReadEvent::LastStreamPosition(revision) = message {
            last = Some(revision);
        }
    }
    assert_eq!(last, Some(6));
    assert!(matches!(
        read_stream(&client, "order-404", &ReadStreamOptions::default()).await,
        Err(KError::ResourceNotFound)
    ));

    // Batch appends (one call, many batches), their errors typed.
    let batch = client.batch_append(&Default::default()).await.unwrap();
    let done = batch
        .append_to_stream("cart-1", StreamState::NoStream, events("Added", 0..4))
        .await
        .unwrap();
    assert_eq!(done.current_revision(), Some(3));
    let done = batch
        .append_to_stream(
            "cart-1",
            StreamState::StreamRevision(3),
            events("Added", 4..6),
        )
        .await
        .unwrap();
    assert_eq!(done.current_revision(), Some(5));
    let refused = batch
        .append_to_stream("cart-1", StreamState::NoStream, events("Added", 9..10))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, KError::Grpc { code, message } if format!("{code:?}") == "FailedPrecondition" && message.contains("wrong expected version")),
        "{refused:?}"
    );
    let cart = read_stream(&client, "cart-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(numbers(&cart), vec![0, 1, 2, 3, 4, 5]);
}

/// Reads of `$all` both ways, positions as the client resumes from them, and filters.
async fn all_scenario(served: &Served) {
    let client = served.client("tls=false");
    for n in 0..6 {
        let stream = if n % 2 == 0 { "account-a" } else { "invoice-b" };
        let kind = if n % 3 == 0 { "Opened" } else { "Noted" };
        client
            .append_to_stream(stream, &Default::default(), event(kind, n))
            .await
            .unwrap();
    }
    let forwards = read_all(&client, &ReadAllOptions::default()).await;
    let commits: Vec<u64> = forwards.iter().map(|e| e.position.commit).collect();
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "{commits:?}");
    let mine: Vec<_> = forwards
        .into_iter()
        .filter(|e| e.stream_id() == "account-a" || e.stream_id() == "invoice-b")
        .collect();
    assert_eq!(numbers(&mine), vec![0, 1, 2, 3, 4, 5]);
    let backwards = read_all(
        &client,
        &ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(2),
    )
    .await;
    assert_eq!(numbers(&backwards), vec![5, 4]);
    // Forwards from an event's position includes it; backwards from it does not.
    let third = &mine[2];
    let from = read_all(
        &client,
        &ReadAllOptions::default()
            .position(StreamPosition::Position(third.position))
            .max_count(2),
    )
    .await;
    assert_eq!(numbers(&from), vec![2, 3]);
    let before = read_all(
        &client,
        &ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::Position(third.position))
            .max_count(2),
    )
    .await;
    assert_eq!(numbers(&before), vec![1, 0]);
    let nothing = read_all(
        &client,
        &ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::Position(Position {
                commit: 0,
                prepare: 0,
            })),
    )
    .await;
    assert!(nothing.is_empty());

    // Filters: a stream prefix, an event-type prefix, a regular expression with look-ahead.
    let by_stream = read_all(
        &client,
        &ReadAllOptions::default().filter(SubscriptionFilter::on_stream_name().add_prefix("inv")),
    )
    .await;
    assert_eq!(numbers(&by_stream), vec![1, 3, 5]);
    let by_type = read_all(
        &client,
        &ReadAllOptions::default().filter(SubscriptionFilter::on_event_type().add_prefix("Open")),
    )
    .await;
    assert_eq!(numbers(&by_type), vec![0, 3]);
    let look_ahead = read_all(
        &client,
        &ReadAllOptions::default()
            .filter(SubscriptionFilter::on_stream_name().regex("^(?!account-)(account|invoice)-")),
    )
    .await;
    assert_eq!(numbers(&look_ahead), vec![1, 3, 5]);
    let no_system = read_all(
        &client,
        &ReadAllOptions::default()
            .filter(SubscriptionFilter::on_event_type().exclude_system_events()),
    )
    .await;
    assert!(no_system.iter().all(|e| !e.event_type.starts_with('$')));

    // Reads of several pages (the server reads the next page ahead while one goes out),
    // both ways, whole and with a limit that ends inside a page.
    client
        .append_to_stream("bulk-1", &Default::default(), events("Bulk", 0..900))
        .await
        .unwrap();
    let bulk = |events: Vec<kurrentdb::RecordedEvent>| -> Vec<u64> {
        let events: Vec<_> = events
            .into_iter()
            .filter(|e| e.stream_id() == "bulk-1")
            .collect();
        numbers(&events)
    };
    let forwards = bulk(read_all(&client, &ReadAllOptions::default()).await);
    assert_eq!(forwards, (0..900).collect::<Vec<_>>());
    let backwards = bulk(
        read_all(
            &client,
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::End),
        )
        .await,
    );
    assert_eq!(backwards, (0..900).rev().collect::<Vec<_>>());
    let limited = bulk(
        read_all(
            &client,
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(600),
        )
        .await,
    );
    assert_eq!(limited, (300..900).rev().collect::<Vec<_>>());
}

/// Subscriptions to `$all` (filtered) and to a stream go from catch-up to live while writers
/// append: every event once, in order, with a confirmation first and caught-up on the way.
async fn subscription_scenario(served: &Served) {
    let client = served.client("tls=false");
    let before = 300u64;
    let during = 700u64;
    client
        .append_to_stream("live-1", &Default::default(), events("Tick", 0..before))
        .await
        .unwrap();
    client
        .append_to_stream("other-1", &Default::default(), events("Tock", 0..50))
        .await
        .unwrap();
    let mut all = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Start)
                .filter(
                    SubscriptionFilter::on_stream_name()
                        .add_prefix("live-")
                        .max(8),
                ),
        )
        .await;
    let mut one = client
        .subscribe_to_stream(
            "live-1",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    // Writers append while the subscriptions catch up, one event per append.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for n in 0..during / 2 {
                    let n = before + w * (during / 2) + n;
                    let stream = "live-1";
                    client
                        .append_to_stream(stream, &Default::default(), event("Tick", n))
                        .await
                        .unwrap();
                    client
                        .append_to_stream("other-1", &Default::default(), event("Tock", n))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let total = before + during;
    let (mut seen_all, mut confirmed, mut caught_up, mut checkpoints) =
        (Vec::new(), false, false, 0);
    let mut last_commit = 0;
    while (seen_all.len() as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(20), all.next_subscription_event())
            .await
            .expect("a message within 20 s")
            .unwrap();
        match message {
            SubscriptionEvent::Confirmed(_) => {
                assert!(seen_all.is_empty());
                confirmed = true;
            }
            SubscriptionEvent::EventAppeared(event) => {
                let event = event.get_original_event();
                assert_eq!(event.stream_id(), "live-1");
                assert!(event.position.commit > last_commit);
                last_commit = event.position.commit;
                seen_all.push(event.revision);
            }
            SubscriptionEvent::CaughtUp(_) => caught_up = true,
            SubscriptionEvent::Checkpoint(position) => {
                assert!(position.commit >= last_commit);
                checkpoints += 1;
            }
            _ => {}
        }
    }
    assert!(confirmed, "a confirmation first");
    assert_eq!(
        seen_all,
        (0..total).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert!(checkpoints > 0, "checkpoints while filtering");
    let mut seen_one = Vec::new();
    while (seen_one.len() as u64) < total {
        let event = tokio::time::timeout(Duration::from_secs(20), one.next())
            .await
            .expect("an event within 20 s")
            .unwrap();
        seen_one.push(event.get_original_event().revision);
    }
    assert_eq!(seen_one, (0..total).collect::<Vec<_>>());
    for writer in writers {
        writer.await.unwrap();
    }
    // Live now: a new event arrives, and the subscription said it had caught up.
    client
        .append_to_stream("live-1", &Default::default(), event("Tick", total))
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), all.next_subscription_event())
            .await
            .expect("a message within 20 s")
            .unwrap();
        match message {
            SubscriptionEvent::EventAppeared(event) => {
                assert_eq!(event.get_original_event().revision, total);
                break;
            }
            SubscriptionEvent::CaughtUp(_) => caught_up = true,
            _ => {}
        }
    }
    assert!(caught_up, "caught-up before live events");
    // A subscription from a revision starts after it (the client resumes so).
    let mut after = client
        .subscribe_to_stream(
            "live-1",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Position(total - 1)),
        )
        .await;
    let next = tokio::time::timeout(Duration::from_secs(20), after.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.get_original_event().revision, total);
}

/// Delete and tombstone with expected revisions; the deleted stream as a client sees it.
async fn delete_scenario(served: &Served) {
    let client = served.client("tls=false");
    client
        .append_to_stream("gone-1", &Default::default(), events("Made", 0..3))
        .await
        .unwrap();
    let error = client
        .delete_stream(
            "gone-1",
            &DeleteStreamOptions::default().stream_state(StreamState::StreamRevision(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, KError::Grpc { code, message } if format!("{code:?}") == "FailedPrecondition" && message.contains("WrongExpectedVersion") && message.contains("Actual version: 2")),
        "{error:?}"
    );
    client
        .delete_stream(
            "gone-1",
            &DeleteStreamOptions::default().stream_state(StreamState::StreamRevision(2)),
        )
        .await
        .unwrap();
    assert!(matches!(
        read_stream(&client, "gone-1", &ReadStreamOptions::default()).await,
        Err(KError::ResourceNotFound)
    ));
    // Soft-deleted: the client sees `$tb` at the end; written again, the revisions go on.
    match client
        .get_stream_metadata("gone-1", &Default::default())
        .await
        .unwrap()
    {
        StreamMetadataResult::Success(meta) => {
            assert_eq!(meta.metadata().truncate_before, Some(i64::MAX as u64));
        }
        other => panic!("metadata of a deleted stream: {other:?}"),
    }
    let again = client
        .append_to_stream("gone-1", &expect(StreamState::NoStream), event("Made", 3))
        .await
        .unwrap();
    assert_eq!(again.next_expected_version, 3);
    let read = read_stream(&client, "gone-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(revisions(&read), vec![3]);
    match client
        .get_stream_metadata("gone-1", &Default::default())
        .await
        .unwrap()
    {
        StreamMetadataResult::Success(meta) => {
            assert_eq!(meta.metadata().truncate_before, Some(3));
        }
        other => panic!("metadata of a recreated stream: {other:?}"),
    }
    // Tombstoned: reads and appends fail as deleted, for good.
    client
        .tombstone_stream(
            "gone-1",
            &TombstoneStreamOptions::default().stream_state(StreamState::StreamRevision(3)),
        )
        .await
        .unwrap();
    assert!(matches!(
        client
            .read_stream("gone-1", &ReadStreamOptions::default())
            .await,
        Err(KError::ResourceDeleted)
    ));
    assert!(matches!(
        client
            .append_to_stream("gone-1", &Default::default(), event("Made", 9))
            .await,
        Err(KError::ResourceDeleted)
    ));
    let error = client
        .delete_stream("never-1", &DeleteStreamOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, KError::Grpc { message, .. } if message.contains("Actual version: -1")),
        "{error:?}"
    );
}

/// Metadata a client sets is what Factum enforces, and what Factum sets a client reads.
async fn metadata_scenario(served: &Served) {
    let client = served.client("tls=false");
    client
        .append_to_stream("meta-1", &Default::default(), events("Made", 0..5))
        .await
        .unwrap();
    assert!(
        client
            .get_stream_metadata("meta-1", &Default::default())
            .await
            .unwrap()
            .is_not_found()
    );
    let mut custom = HashMap::new();
    custom.insert("owner".to_owned(), json!("billing"));
    let mut builder = StreamMetadataBuilder::new()
        .max_count(2)
        .max_age(Duration::from_secs(3600))
        .cache_control(Duration::from_secs(5));
    for (key, value) in &custom {
        builder = builder.insert_custom_property(key.clone(), value.clone());
    }
    let wanted = builder.build();
    client
        .set_stream_metadata("meta-1", &Default::default(), &wanted)
        .await
        .unwrap();
    let stored = served
        .store
        .get_metadata(&StreamName::new("meta-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    // `$maxAge` is seconds on a KurrentDB node and in Factum; this client writes a duration
    // as milliseconds, so an hour arrives as 3,600,000 (seconds), as a node would read it.
    assert_eq!(
        (stored.max_count, stored.max_age_secs),
        (Some(2), Some(3_600_000))
    );
    assert_eq!(stored.custom.as_ref().unwrap()["owner"], "billing");
    assert_eq!(stored.custom.as_ref().unwrap()["$cacheControl"], 5000);
    let read = read_stream(&client, "meta-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(revisions(&read), vec![3, 4], "$maxCount 2 is enforced");
    match client
        .get_stream_metadata("meta-1", &Default::default())
        .await
        .unwrap()
    {
        StreamMetadataResult::Success(meta) => assert_eq!(meta.metadata(), &wanted),
        other => panic!("{other:?}"),
    }
    // The metadata stream's expected revision is checked.
    let error = client
        .set_stream_metadata(
            "meta-1",
            &expect(StreamState::NoStream),
            &StreamMetadataBuilder::new().max_count(1).build(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, KError::WrongExpectedVersion { .. }),
        "{error:?}"
    );
    // What Factum sets, the client reads.
    served
        .store
        .set_metadata(
            &StreamName::new("meta-1").unwrap(),
            StreamMetadata {
                max_count: Some(4),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    match client
        .get_stream_metadata("meta-1", &Default::default())
        .await
        .unwrap()
    {
        StreamMetadataResult::Success(meta) => {
            assert_eq!(meta.metadata().max_count, Some(4));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_works_on_the_embedded_store() {
    let (store, _dir) = engine();
    let served = serve(store, factum_server::Config::default()).await;
    streams_scenario(&served).await;
    all_scenario(&served).await;
    subscription_scenario(&served).await;
    delete_scenario(&served).await;
    metadata_scenario(&served).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_works_on_postgresql() {
    let Some((store, schema)) = postgres("rust").await else {
        return;
    };
    let served = serve(store, factum_server::Config::default()).await;
    streams_scenario(&served).await;
    all_scenario(&served).await;
    subscription_scenario(&served).await;
    delete_scenario(&served).await;
    metadata_scenario(&served).await;
    served.stop().await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_rights_are_those_of_the_http_api() {
    let (store, _dir) = engine();
    let served = serve(
        store,
        factum_server::Config {
            auth: Some(Arc::new(Auth::from_toml(CLIENT_TOKENS).unwrap())),
            ..factum_server::Config::default()
        },
    )
    .await;
    let head = served.store.head();
    // No credentials, wrong ones, a token without the right: refused, nothing written.
    let anonymous = served.client("tls=false");
    let wrong = served.client_as("orders", "not-the-secret-000", "tls=false");
    let reader = served.client_as("reader", "reader-0123456789", "tls=false");
    for client in [&anonymous, &wrong, &reader] {
        let error = client
            .append_to_stream("order-1", &Default::default(), event("Placed", 0))
            .await
            .unwrap_err();
        assert!(matches!(error, KError::AccessDenied), "{error:?}");
    }
    let error = read_stream(&anonymous, "order-1", &ReadStreamOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, KError::AccessDenied), "{error:?}");
    assert_eq!(served.store.head(), head, "nothing was written");
    // The right token writes; it reads its own prefix, not `$all`.
    let orders = served.client_as("orders", "orders-0123456789", "tls=false");
    orders
        .append_to_stream("order-1", &Default::default(), event("Placed", 0))
        .await
        .unwrap();
    assert_eq!(
        read_stream(&orders, "order-1", &ReadStreamOptions::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let error = orders
        .append_to_stream("cart-1", &Default::default(), event("Added", 0))
        .await
        .unwrap_err();
    assert!(matches!(error, KError::AccessDenied), "{error:?}");
    let error = orders.read_all(&ReadAllOptions::default()).await.err();
    assert!(matches!(error, Some(KError::AccessDenied)), "{error:?}");
    // A prefix filter within its rights reads `$all`.
    let own = read_all(
        &orders,
        &ReadAllOptions::default()
            .filter(SubscriptionFilter::on_stream_name().add_prefix("order-")),
    )
    .await;
    assert_eq!(own.len(), 1);
    // A reader of every stream reads `$all`.
    assert!(
        !read_all(&reader, &ReadAllOptions::default())
            .await
            .is_empty()
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_the_servers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, cert_pem) = certificate(dir.path());
    let (store, _data) = engine();
    let served = serve(
        store,
        factum_server::Config {
            tls: Some(factum_server::tls::load(&cert_path, &key_path).unwrap()),
            ..factum_server::Config::default()
        },
    )
    .await;
    let client = served.client(&format!("tls=true&tlsCaFile={}", cert_path.display()));
    client
        .append_to_stream("order-1", &Default::default(), events("Placed", 0..2))
        .await
        .unwrap();
    let read = read_stream(&client, "order-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(numbers(&read), vec![0, 1]);
    // HTTP/1.1 clients still reach the HTTP API on the same port.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let health = http
        .get(format!("https://localhost:{}/health", served.port))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    served.stop().await;
}
