//! Bad options, a schema from a newer build, a bad import and a statement that fails inside the
//! transaction are refused with a clear error, and nothing is written.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use factum_core::{Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamName};
use factum_postgres::{PG_SCHEMA_VERSION, PgOptions, PgStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schema_names_and_connection_strings_are_refused() {
    for schema in ["", "Upper", "1digit", "semi;colon", "a-b", &"x".repeat(41)] {
        let options = PgOptions {
            schema: schema.to_owned(),
            ..PgOptions::default()
        };
        match PgStore::connect(&common::postgres(), options).await {
            Err(StoreError::InvalidInput(message)) => {
                assert!(message.contains("schema name"), "{message}")
            }
            Err(e) => panic!("schema {schema:?}: unexpected {e}"),
            Ok(_) => panic!("schema {schema:?} was accepted"),
        }
    }
    match PgStore::connect("host=127.0.0.1 port=notanumber", PgOptions::default()).await {
        Err(StoreError::InvalidInput(message)) => {
            assert!(message.contains("connection string"), "{message}")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a bad connection string was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_build_is_refused() {
    let Some((store, schema)) = common::fresh("newer").await else {
        return;
    };
    drop(store);
    let (client, connection) = common::connect().await.unwrap();
    tokio::spawn(connection);
    let newer = PG_SCHEMA_VERSION + 1;
    client
        .execute(
            &format!("INSERT INTO {}.schema_version VALUES ($1)", schema.0),
            &[&newer],
        )
        .await
        .unwrap();
    match PgStore::connect(&common::postgres(), common::options(&schema)).await {
        Err(StoreError::InvalidInput(message)) => assert!(message.contains("newer"), "{message}"),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    let row = client
        .query_one(
            &format!("SELECT max(version) FROM {}.schema_version", schema.0),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), newer, "the schema was changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_does_not_continue_its_streams_writes_nothing() {
    let Some((store, _schema)) = common::fresh("import").await else {
        return;
    };
    let cart = StreamName::new("cart-1").unwrap();
    let event = NewEvent::json("ItemAdded", &serde_json::json!({"sku": "apple"})).unwrap();
    store
        .append(&cart, ExpectedState::NoStream, vec![event])
        .await
        .unwrap();
    let mut exported = store.read_all(0, Direction::Forwards, 10).await.unwrap();
    // Revision 0 again, then a stream that starts at revision 5.
    let mut gap = exported[0].clone();
    gap.stream = StreamName::new("cart-2").unwrap();
    gap.revision = 5;
    exported.push(gap);
    match store.import(exported).await {
        Err(StoreError::InvalidInput(message)) => {
            assert!(message.contains("revision"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_logged(&store, 1).await;
    assert_eq!(
        store
            .stream_revision(&StreamName::new("cart-2").unwrap())
            .await
            .unwrap()
            .0,
        None
    );
}

/// The writer sends a batch's statements and its `COMMIT` together; when one of them fails,
/// PostgreSQL answers the `COMMIT` with a rollback, not an error. The append must still fail,
/// and nothing of it may be left: no event, no stream row, no position taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_fails_inside_the_transaction_commits_nothing() {
    let Some((store, schema)) = common::fresh("aborted").await else {
        return;
    };
    let event = |kind: &str| NewEvent::json(kind, &serde_json::json!({"n": 1})).unwrap();
    let first = store
        .append(
            &StreamName::new("cart-1").unwrap(),
            ExpectedState::NoStream,
            vec![event("ItemAdded")],
        )
        .await
        .unwrap();
    let (client, connection) = common::connect().await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "ALTER TABLE {}.events ADD CONSTRAINT no_poison CHECK (type <> 'Poison')",
            schema.0
        ))
        .await
        .unwrap();

    let poisoned = StreamName::new("cart-2").unwrap();
    match store
        .append(&poisoned, ExpectedState::NoStream, vec![event("Poison")])
        .await
    {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("no_poison"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.stream_revision(&poisoned).await.unwrap().0, None);
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {0}.streams WHERE name = 'cart-2'),
                        (SELECT count(*) FROM {0}.events),
                        (SELECT next_position FROM {0}.head)",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (0, 1, 1)
    );

    // The writer carries on: the next append takes the next position.
    let next = store
        .append(&poisoned, ExpectedState::NoStream, vec![event("ItemAdded")])
        .await
        .unwrap();
    assert_eq!(next.position, first.position + 1);
    assert_logged(&store, 2).await;
}

/// The log holds exactly `events` events: the head says so, and a read of `$all` finds them.
async fn assert_logged(store: &PgStore, events: u64) {
    assert_eq!(store.head(), events);
    let logged = store.read_all(0, Direction::Forwards, 10).await.unwrap();
    assert_eq!(logged.len() as u64, events);
}
