//! A read model of personal data: its projection reads the fields opened (the toolkit's
//! `OpenPersonalData`), and once the subject is forgotten a rebuild leaves no plaintext of it
//! in the read model — on SQLite (the file's bytes searched) and on PostgreSQL.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use factum_core::{Direction, EventStore, RecordedEvent};
use factum_engine::{Engine, EngineOptions};
use factum_projections::{ApplyError, Projection, Projector, ReadModel, Table, Tx, Value};
use factum_toolkit::{
    CommandContext, Decider, OpenPersonalData, Personal, Repository, forget_subject,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Event {
    Registered { email: Personal<String> },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

struct Customers;

impl Decider for Customers {
    type State = ();
    type Command = String;
    type Event = Event;
    type Error = Never;
    const CATEGORY: &'static str = "customer";
    fn initial_state(&self) {}
    fn decide(&self, _: &(), email: &String) -> Result<Vec<Event>, Never> {
        Ok(vec![Event::Registered {
            email: Personal::new("cus-1", email.clone()),
        }])
    }
    fn evolve(&self, _: (), _: &Event) {}
}

struct Contacts;

impl Projection for Contacts {
    fn name(&self) -> &str {
        "contacts"
    }
    fn tables(&self) -> Vec<Table> {
        vec![Table::new("contacts", "id TEXT PRIMARY KEY, email TEXT")]
    }
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        if event.event_type != "Registered" {
            return Ok(());
        }
        let data: serde_json::Value = serde_json::from_slice(&event.data)?;
        let email = &data["email"]["$personal"];
        let email = email["value"]
            .as_str()
            .map(Value::from)
            .unwrap_or(Value::Null);
        tx.execute(
            "INSERT INTO {contacts} (id, email) VALUES ($1, $2)",
            [Value::from(event.stream.as_str()), email],
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_rebuild_after_forget_leaves_no_plaintext_in_the_read_models_files() {
    let dir = tempfile::tempdir().unwrap();
    let read_model = common::sqlite(&dir, "read.db").await;
    rebuild_after_forget(read_model, Some(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_rebuild_after_forget_leaves_no_plaintext_in_the_read_model() {
    if let Some(read_model) = common::postgres("personal_rebuild").await {
        rebuild_after_forget(read_model, None).await;
    }
}

/// Projects a customer's email, forgets the customer, rebuilds; `files`: where the read
/// model's files are, searched for the email's bytes.
async fn rebuild_after_forget(read_model: Arc<dyn ReadModel>, files: Option<&std::path::Path>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path().join("store"), EngineOptions::default()).unwrap());
    Repository::new(store.clone(), Customers)
        .execute("cus-1", "ann@example.com".into(), &CommandContext::new())
        .await
        .unwrap();
    let projector = Projector::new(store.clone(), read_model.clone(), Contacts)
        .open_events(Arc::new(OpenPersonalData));
    projector.install().await.unwrap();
    projector.run_until(store.head()).await.unwrap();
    let email = || async {
        read_model
            .query("SELECT email FROM contacts", &[])
            .await
            .unwrap()
            .first()
            .and_then(|row| row.get("email").cloned())
    };
    assert_eq!(email().await, Some(Value::from("ann@example.com")));
    let raw = store.read_all(0, Direction::Forwards, 10).await.unwrap();
    assert!(
        raw.iter()
            .all(|e| !String::from_utf8_lossy(&e.data).contains("ann@"))
    );

    forget_subject(store.as_ref(), "cus-1").await.unwrap();
    projector.rebuild(|_| {}).await.unwrap();
    assert_eq!(email().await, Some(Value::Null));
    // The read model's own storage holds no trace of it.
    let Some(files) = files else {
        return;
    };
    for file in std::fs::read_dir(files).unwrap() {
        let path = file.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(15).any(|w| w == b"ann@example.com"),
                "{} holds the forgotten email",
                path.display()
            );
        }
    }
}
