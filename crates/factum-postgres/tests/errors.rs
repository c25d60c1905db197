//! Bad options, a schema from a newer build and a bad import are refused with a clear error,
//! and nothing is written.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use factum_core::{Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamName};
use factum_postgres::{PgOptions, PgStore, SCHEMA_VERSION};

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
    let newer = SCHEMA_VERSION + 1;
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
    assert_eq!(store.head(), 1);
    assert_eq!(
        store
            .read_all(0, Direction::Forwards, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .stream_revision(&StreamName::new("cart-2").unwrap())
            .await
            .unwrap()
            .0,
        None
    );
}
