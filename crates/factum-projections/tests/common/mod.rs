//! A bank-account projection, a reference model computed in memory, and read-model set-up for
//! the tests.
#![allow(clippy::unwrap_used, dead_code, missing_docs, unused_macros)]

use std::collections::BTreeMap;
use std::sync::Arc;

use factum_core::{EventStore, ExpectedState, NewEvent, RecordedEvent, StreamName};
use factum_projections::{
    ApplyError, PgReadModel, Projection, ReadModel, SqliteReadModel, Table, Tx, Value,
};
use serde_json::json;

/// Runs a scenario on a SQLite file and on a PostgreSQL schema.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(crate::common::sqlite(&dir, "read.db").await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(read_model) = crate::common::postgres(stringify!($name)).await {
                    super::$name(read_model).await;
                }
            }
        }
    };
}

pub struct Accounts {
    pub version: u32,
}

impl Projection for Accounts {
    fn name(&self) -> &str {
        "accounts"
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn tables(&self) -> Vec<Table> {
        vec![
            Table::new(
                "accounts",
                "id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL, \
                 suspended BOOLEAN NOT NULL, events BIGINT NOT NULL",
            )
            .index("accounts_by_balance", "balance"),
        ]
    }
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let Some(id) = event.stream.as_str().strip_prefix("account-") else {
            return Ok(());
        };
        let data: serde_json::Value = serde_json::from_slice(&event.data)?;
        let id = Value::from(id);
        let amount = || Value::from(data["amount"].as_i64().unwrap_or(0));
        match event.event_type.as_str() {
            "AccountOpened" => tx.execute(
                "INSERT INTO {accounts} (id, owner, balance, suspended, events) \
                 VALUES ($1, $2, 0, FALSE, 1)",
                [id, Value::from(data["owner"].as_str().unwrap_or(""))],
            ),
            "Deposited" => tx.execute(
                "UPDATE {accounts} SET balance = balance + $2, events = events + 1 WHERE id = $1",
                [id, amount()],
            ),
            "Withdrawn" => tx.execute(
                "UPDATE {accounts} SET balance = balance - $2, events = events + 1 WHERE id = $1",
                [id, amount()],
            ),
            "AccountSuspended" => tx.execute(
                "UPDATE {accounts} SET suspended = TRUE, events = events + 1 WHERE id = $1",
                [id],
            ),
            _ => {}
        }
        Ok(())
    }
}

/// (owner, balance, suspended, events) by account id.
pub type Model = BTreeMap<String, (String, i64, bool, i64)>;

/// Every event of the store, in order.
pub async fn all_events(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    loop {
        let from = all.last().map_or(0, |e: &RecordedEvent| e.position + 1);
        let events = store
            .read_all(from, factum_core::Direction::Forwards, 1000)
            .await
            .unwrap();
        if events.is_empty() {
            return all;
        }
        all.extend(events);
    }
}

/// The read model computed from every event of the store, in memory.
pub async fn expected(store: &dyn EventStore) -> Model {
    let mut model = Model::new();
    for event in &all_events(store).await {
        let Some(id) = event.stream.as_str().strip_prefix("account-") else {
            continue;
        };
        let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
        let amount = data["amount"].as_i64().unwrap_or(0);
        match event.event_type.as_str() {
            "AccountOpened" => {
                model.insert(
                    id.to_owned(),
                    (data["owner"].as_str().unwrap().to_owned(), 0, false, 1),
                );
            }
            kind => {
                let account = model.get_mut(id).unwrap();
                account.3 += 1;
                match kind {
                    "Deposited" => account.1 += amount,
                    "Withdrawn" => account.1 -= amount,
                    "AccountSuspended" => account.2 = true,
                    _ => {}
                }
            }
        }
    }
    model
}

/// The read model as the table holds it.
pub async fn actual(read_model: &dyn ReadModel) -> Model {
    read_model
        .query(
            "SELECT id, owner, balance, suspended, events FROM accounts ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let (id, owner, balance, suspended, events): (String, String, i64, bool, i64) =
                serde_json::from_value(json!([
                    row.values()[0].to_json(),
                    row.values()[1].to_json(),
                    row.values()[2].to_json(),
                    row.values()[3].to_json(),
                    row.values()[4].to_json()
                ]))
                .unwrap();
            (id, (owner, balance, suspended, events))
        })
        .collect()
}

/// Appends an account's life: opened, `deposits` deposits of 10, one withdrawal of 5.
pub async fn account_life(store: &dyn EventStore, id: &str, deposits: usize) -> u64 {
    let stream = StreamName::user(format!("account-{id}")).unwrap();
    let mut events =
        vec![NewEvent::json("AccountOpened", &json!({"owner": format!("owner {id}")})).unwrap()];
    for _ in 0..deposits {
        events.push(NewEvent::json("Deposited", &json!({"amount": 10})).unwrap());
    }
    events.push(NewEvent::json("Withdrawn", &json!({"amount": 5})).unwrap());
    store
        .append(&stream, ExpectedState::NoStream, events)
        .await
        .unwrap()
        .position
}

/// A fresh SQLite read model in a temporary directory.
pub async fn sqlite(dir: &tempfile::TempDir, file: &str) -> Arc<dyn ReadModel> {
    Arc::new(SqliteReadModel::open(dir.path().join(file)).await.unwrap())
}

pub const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A PostgreSQL read model in a schema named after `label`, emptied first, or `None` (with the
/// reason printed) when the server is not reachable outside CI. Under `CI=true` a missing
/// server fails the test.
pub async fn postgres(label: &str) -> Option<Arc<dyn ReadModel>> {
    let schema = postgres_schema(label).await?;
    Some(Arc::new(PgReadModel::connect(PG, &schema).await.unwrap()))
}

/// An empty PostgreSQL schema named after `label`, as [`postgres`] makes it.
pub async fn postgres_schema(label: &str) -> Option<String> {
    // Schema names are short: the initials of the scenario's words.
    let initials: String = label.split('_').filter_map(|w| w.chars().next()).collect();
    let schema = format!("fp_{initials}_{}", label.len());
    let client = match tokio_postgres::connect(PG, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: PostgreSQL at {PG} is not reachable ({e})");
            return None;
        }
        Err(e) => panic!("PostgreSQL at {PG} is needed under CI=true: {e}"),
    };
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP SCHEMA IF EXISTS {schema}__rebuild CASCADE"
        ))
        .await
        .unwrap();
    Some(schema)
}
