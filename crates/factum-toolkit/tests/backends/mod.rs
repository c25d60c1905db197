//! Every store a test runs its checks on: the in-memory store, the embedded engine and
//! PostgreSQL (in a fresh schema), for the integration tests that check all three.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use factum_core::{EventStore, MemoryStore};
use factum_engine::{Engine, EngineOptions};

/// The PostgreSQL the tests use; `FACTUM_TEST_POSTGRES` overrides it.
pub fn url() -> String {
    std::env::var("FACTUM_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// A store in the fresh PostgreSQL schema `{schema}_{process id}`, or `None` (with the reason
/// printed) where PostgreSQL is not reachable outside CI; under `CI=true` it must be.
pub async fn postgres(schema: &str) -> Option<Arc<dyn EventStore>> {
    let url = url();
    let schema = format!("{schema}_{}", std::process::id());
    let (admin, connection) = match factum_pgconnect::PgConnect::parse(&url)
        .unwrap()
        .connect()
        .await
    {
        Ok(connected) => connected,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping PostgreSQL: {url} is not reachable ({e})");
            return None;
        }
        Err(e) => panic!("PostgreSQL at {url} is needed under CI=true: {e}"),
    };
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    let options = factum_postgres::PgOptions {
        schema,
        readers: 2,
        ..Default::default()
    };
    Some(Arc::new(
        factum_postgres::PgStore::connect(&url, options)
            .await
            .unwrap(),
    ))
}

/// Every store a check runs on, named, with the directory that keeps the engine's files;
/// PostgreSQL's in the schema `{schema}_{process id}`.
pub async fn all(
    schema: &str,
) -> Vec<(&'static str, Arc<dyn EventStore>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut all: Vec<(&'static str, Arc<dyn EventStore>, Option<tempfile::TempDir>)> = vec![
        ("memory", Arc::new(MemoryStore::new()), None),
        ("engine", Arc::new(engine), Some(dir)),
    ];
    if let Some(pg) = postgres(schema).await {
        all.push(("postgres", pg, None));
    }
    all
}
