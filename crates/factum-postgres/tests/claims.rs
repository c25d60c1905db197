//! Claims across processes: two stores on one schema stand for two processes (two replicas
//! of a service). One holds a name at a time; when its connection ends, the claim is lost and
//! the other can take the name.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::time::Duration;

use factum_core::EventStore;
use factum_postgres::{PG_CLAIM_HOLDER_SQL, PgStore};

/// A store on `schema`: one process of a service.
async fn store(schema: &common::Schema) -> PgStore {
    PgStore::connect(&common::postgres(), common::options(schema))
        .await
        .unwrap()
}

async fn claim_within(store: &PgStore, name: &str, within: Duration) -> factum_core::Claim {
    tokio::time::timeout(within, async {
        loop {
            if let Some(claim) = store.claim(name).await.unwrap() {
                return claim;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the claim became free")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_process_holds_a_claim_and_another_takes_it_when_its_connection_ends() {
    let Some(schema) = common::schema("claims").await else {
        return;
    };
    let (admin, connection) = common::connect().await.unwrap();
    tokio::spawn(connection);
    let (first, second) = (store(&schema).await, store(&schema).await);
    let name = "relay-orders";

    let held = first.claim(name).await.unwrap().unwrap();
    assert!(second.claim(name).await.unwrap().is_none());
    assert!(first.claim(name).await.unwrap().is_none());

    // A store holds all its claims on one connection of its own.
    let mut more = Vec::new();
    for n in 0..8 {
        more.push(
            first
                .claim(&format!("processor-{n}"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let sessions = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("factum claims {}", schema.0)],
        )
        .await
        .unwrap();
    // Two stores (the second asked for a name above), nine claims.
    assert_eq!(sessions.len(), 2, "one claims connection per store");
    drop(more);
    claim_within(&second, "processor-7", Duration::from_secs(10)).await;

    // Another schema is another store: its names are its own.
    let Some(other_schema) = common::schema("claims_other").await else {
        return;
    };
    let other = PgStore::connect(&common::postgres(), common::options(&other_schema))
        .await
        .unwrap();
    assert!(other.claim(name).await.unwrap().is_some());

    // Released when dropped.
    drop(held);
    let held = claim_within(&second, name, Duration::from_secs(10)).await;
    assert!(first.claim(name).await.unwrap().is_none());

    // The holder's connection ends (the server restarts, a network failure, an operator):
    // the holder learns that its claim is lost, and the other process can take the name.
    let terminated = admin
        .query(
            &format!("SELECT pg_terminate_backend(pid) FROM ({PG_CLAIM_HOLDER_SQL}) holder"),
            &[&format!("{}.{name}", schema.0)],
        )
        .await
        .unwrap();
    assert_eq!(terminated.len(), 1, "one connection holds the claim");
    tokio::time::timeout(Duration::from_secs(10), held.lost())
        .await
        .expect("the holder learns that its claim is lost");
    assert!(held.is_lost());
    let taken = claim_within(&first, name, Duration::from_secs(10)).await;
    assert!(!taken.is_lost());
    assert!(second.claim(name).await.unwrap().is_none());
    // The store that lost its session opens a new one for its next claim (once the lost
    // claim is dropped: until then its name stays taken in that store).
    drop((held, taken));
    let again = claim_within(&second, name, Duration::from_secs(10)).await;
    assert!(!again.is_lost());
}

/// A claim dropped where no runtime runs (a plain thread) is still released in the database,
/// and a claim taken again by its own store right after a drop stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_outside_a_runtime_is_released() {
    let Some(schema) = common::schema("claims_drop").await else {
        return;
    };
    let (first, second) = (store(&schema).await, store(&schema).await);
    let name = "saga-transfers";

    let held = first.claim(name).await.unwrap().unwrap();
    assert!(second.claim(name).await.unwrap().is_none());
    std::thread::spawn(move || {
        assert!(tokio::runtime::Handle::try_current().is_err());
        drop(held);
    })
    .join()
    .unwrap();
    let held = claim_within(&second, name, Duration::from_secs(10)).await;

    // Dropped and taken again at once by the same store: the release that follows the drop
    // must not free the new claim.
    drop(held);
    let again = second
        .claim(name)
        .await
        .unwrap()
        .expect("free in this store");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        first.claim(name).await.unwrap().is_none(),
        "the release of the old claim freed the new one"
    );
    drop(again);
    claim_within(&first, name, Duration::from_secs(10)).await;
}
