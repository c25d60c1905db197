//! Projections against real SQLite files and the real PostgreSQL server.
#![allow(clippy::unwrap_used, missing_docs)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Accounts, account_life, actual, expected};
use factum_core::{EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StreamName};
use factum_projections::{
    ApplyError, Commit, ProjectionError, ProjectionTarget, Projector, ReadModel, Table, Tx, Value,
    projection_statuses,
};
use serde_json::json;

fn store() -> Arc<dyn EventStore> {
    Arc::new(MemoryStore::new())
}

on_both!(catches_up_then_follows_live);
async fn catches_up_then_follows_live(read_model: Arc<dyn ReadModel>) {
    let store = store();
    for i in 0..20 {
        account_life(&*store, &format!("a{i}"), 3).await;
    }
    let projector =
        Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 }).batch_size(7);
    projector.install().await.unwrap();
    let running = projector.spawn();
    let last = account_life(&*store, "late", 2).await;
    let state = read_model
        .wait_for("accounts", last, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(state.position >= Some(last));
    assert_eq!(actual(&*read_model).await, expected(&*store).await);
    let rows = read_model
        .query(
            "SELECT id, balance FROM accounts WHERE id = $1",
            &["late".into()],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get("balance"), Some(&Value::Int(15)));
    let stats = running.stop().await.unwrap();
    assert_eq!(stats.events, store.head());
}

on_both!(two_projectors_of_one_projection_apply_each_event_once);
async fn two_projectors_of_one_projection_apply_each_event_once(read_model: Arc<dyn ReadModel>) {
    let store = store();
    for i in 0..50 {
        account_life(&*store, &format!("a{i}"), 5).await;
    }
    let one =
        Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 }).batch_size(3);
    let two = one.clone().batch_size(5);
    let head = store.head();
    let (a, b) = tokio::join!(one.run_until(head), two.run_until(head));
    a.unwrap();
    b.unwrap();
    assert_eq!(
        read_model.state("accounts").await.unwrap().position,
        Some(head - 1)
    );
    assert_eq!(actual(&*read_model).await, expected(&*store).await);
}

on_both!(a_rebuild_equals_the_live_model_and_swaps_while_events_arrive);
async fn a_rebuild_equals_the_live_model_and_swaps_while_events_arrive(
    read_model: Arc<dyn ReadModel>,
) {
    let store = store();
    for i in 0..100 {
        account_life(&*store, &format!("a{i}"), 4).await;
    }
    let projector =
        Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 }).batch_size(50);
    projector.run_until(store.head()).await.unwrap();
    let live = actual(&*read_model).await;
    assert_eq!(live, expected(&*store).await);

    // A rebuild runs while a live projector follows and new accounts keep coming.
    let running = projector.spawn();
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for i in 0..50 {
                account_life(&*store, &format!("b{i}"), 2).await;
                tokio::task::yield_now().await;
            }
        }
    });
    let mut reports = 0;
    let stats = projector
        .rebuild(|progress| {
            reports += 1;
            assert!(progress.position.is_none_or(|p| p < progress.target));
        })
        .await
        .unwrap();
    assert!(reports > 0 && stats.events >= 600);
    writer.await.unwrap();
    let head = store.head();
    read_model
        .wait_for("accounts", head - 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(actual(&*read_model).await, expected(&*store).await);
    let state = read_model.state("accounts").await.unwrap();
    assert!(!state.rebuilding && state.rebuilt_at_us > 0);

    // A second rebuild works too (index names alternate in SQLite), and queries use the index.
    projector.rebuild(|_| {}).await.unwrap();
    running.stop().await.unwrap();
    assert_eq!(actual(&*read_model).await, expected(&*store).await);
    let poor = read_model
        .query(
            "SELECT id FROM accounts WHERE balance < $1 ORDER BY id",
            &[Value::Int(20)],
        )
        .await
        .unwrap();
    assert_eq!(poor.len(), 50, "the b accounts have 15");
}

on_both!(a_new_version_is_rebuilt_before_the_projector_goes_on);
async fn a_new_version_is_rebuilt_before_the_projector_goes_on(read_model: Arc<dyn ReadModel>) {
    let store = store();
    for i in 0..10 {
        account_life(&*store, &format!("a{i}"), 1).await;
    }
    Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 })
        .run_until(store.head())
        .await
        .unwrap();
    assert_eq!(read_model.state("accounts").await.unwrap().version, 1);
    account_life(&*store, "x", 1).await;
    Projector::new(store.clone(), read_model.clone(), Accounts { version: 2 })
        .run_until(store.head())
        .await
        .unwrap();
    let state = read_model.state("accounts").await.unwrap();
    assert_eq!((state.version, state.position), (2, Some(store.head() - 1)));
    assert!(state.rebuilt_at_us > 0);
    assert_eq!(actual(&*read_model).await, expected(&*store).await);
}

on_both!(a_requested_rebuild_is_taken_up_by_the_running_projector);
async fn a_requested_rebuild_is_taken_up_by_the_running_projector(read_model: Arc<dyn ReadModel>) {
    let store = store();
    for i in 0..30 {
        account_life(&*store, &format!("a{i}"), 2).await;
    }
    let projector = Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 });
    projector.install().await.unwrap();
    let running = projector.spawn();
    read_model.request_rebuild("accounts").await.unwrap();
    assert!(matches!(
        read_model.request_rebuild("nope").await,
        Err(ProjectionError::UnknownProjection(_))
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = read_model.state("accounts").await.unwrap();
        if state.rebuilt_at_us > 0 && !state.rebuild_requested {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebuild: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();
    assert_eq!(actual(&*read_model).await, expected(&*store).await);
}

on_both!(lag_is_reported_in_positions_and_seconds);
async fn lag_is_reported_in_positions_and_seconds(read_model: Arc<dyn ReadModel>) {
    let store = store();
    account_life(&*store, "a", 1).await; // positions 0..=2
    let projector = Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 });
    projector.install().await.unwrap();
    let before = projection_statuses(&*store, &*read_model).await.unwrap();
    assert_eq!((before[0].behind, before[0].behind_seconds), (3, None));
    projector.run_until(store.head()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    account_life(&*store, "b", 3).await; // positions 3..=7
    let after = projection_statuses(&*store, &*read_model).await.unwrap();
    assert_eq!(after[0].behind, 5);
    let seconds = after[0].behind_seconds.unwrap();
    assert!((0.25..5.0).contains(&seconds), "{seconds}");
    projector.run_until(store.head()).await.unwrap();
    let done = projection_statuses(&*store, &*read_model).await.unwrap();
    assert_eq!((done[0].behind, done[0].behind_seconds), (0, Some(0.0)));
    assert_eq!(done[0].state.head, store.head());
}

on_both!(read_your_writes_waits_for_the_position_or_times_out);
async fn read_your_writes_waits_for_the_position_or_times_out(read_model: Arc<dyn ReadModel>) {
    let store = store();
    let projector = Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 });
    projector.install().await.unwrap();
    let position = account_life(&*store, "a", 1).await;
    // Nothing runs the projector yet: the wait times out with where it got to.
    match read_model
        .wait_for("accounts", position, Duration::from_millis(100))
        .await
    {
        Err(ProjectionError::Timeout { reached, .. }) => assert_eq!(reached, None),
        other => panic!("{other:?}"),
    }
    let running = projector.spawn();
    for i in 0..20 {
        let position = account_life(&*store, &format!("n{i}"), 1).await;
        read_model
            .wait_for("accounts", position, Duration::from_secs(5))
            .await
            .unwrap();
        let rows = read_model
            .query(
                "SELECT balance FROM accounts WHERE id = $1",
                &[format!("n{i}").into()],
            )
            .await
            .unwrap();
        assert_eq!(
            rows[0].get("balance"),
            Some(&Value::Int(5)),
            "read {i} after its write"
        );
    }
    running.stop().await.unwrap();
}

/// A projection that fails on one event, or names a table it did not declare.
struct Faulty {
    undeclared: bool,
}

impl factum_projections::Projection for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn tables(&self) -> Vec<Table> {
        vec![Table::new("seen", "id TEXT PRIMARY KEY")]
    }
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        if event.event_type == "Poison" {
            return Err("cannot fold a poison event".into());
        }
        let table = if self.undeclared { "{other}" } else { "{seen}" };
        tx.execute(
            format!("INSERT INTO {table} (id) VALUES ($1)"),
            [event.id.to_string().into()],
        );
        Ok(())
    }
}

on_both!(a_failing_batch_writes_nothing);
async fn a_failing_batch_writes_nothing(read_model: Arc<dyn ReadModel>) {
    let store = store();
    let stream = StreamName::user("things").unwrap();
    let events = (0..5)
        .map(|i| NewEvent::json(if i == 3 { "Poison" } else { "Thing" }, &json!({})).unwrap())
        .collect();
    store
        .append(&stream, ExpectedState::Any, events)
        .await
        .unwrap();
    let projector = Projector::new(
        store.clone(),
        read_model.clone(),
        Faulty { undeclared: false },
    );
    match projector.run_until(store.head()).await {
        Err(ProjectionError::Apply { position, .. }) => assert_eq!(position, 3),
        other => panic!("{other:?}"),
    }
    let state = read_model.state("faulty").await.unwrap();
    assert_eq!(state.position, None);
    assert!(
        read_model
            .query("SELECT id FROM seen", &[])
            .await
            .unwrap()
            .is_empty()
    );

    let undeclared = Projector::new(
        store.clone(),
        read_model.clone(),
        Faulty { undeclared: true },
    )
    .batch_size(2);
    match undeclared.run_until(2).await {
        Err(ProjectionError::Invalid(message)) => assert!(message.contains("{other}"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(read_model.state("faulty").await.unwrap().position, None);
    assert!(
        read_model
            .query("SELECT id FROM seen", &[])
            .await
            .unwrap()
            .is_empty()
    );

    // Up to the poison event the good projection goes through, and the checkpoint says so.
    let projector = Projector::new(
        store.clone(),
        read_model.clone(),
        Faulty { undeclared: false },
    )
    .batch_size(1);
    assert!(projector.run_until(store.head()).await.is_err());
    assert_eq!(read_model.state("faulty").await.unwrap().position, Some(2));
    assert_eq!(
        read_model
            .query("SELECT id FROM seen", &[])
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn bad_names_are_refused_before_anything_is_written() {
    struct Named(&'static str, &'static str);
    impl factum_projections::Projection for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn tables(&self) -> Vec<Table> {
            vec![Table::new(self.1, "id TEXT")]
        }
        fn apply(&self, _: &mut Tx, _: &RecordedEvent) -> Result<(), ApplyError> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let read_model = common::sqlite(&dir, "read.db").await;
    for (name, table) in [
        ("bad name", "t"),
        ("ok", "t; DROP TABLE x"),
        ("ok", "factum_projections"),
        ("", "t"),
    ] {
        let projector = Projector::new(store(), read_model.clone(), Named(name, table));
        assert!(
            matches!(projector.install().await, Err(ProjectionError::Invalid(_))),
            "{name} {table}"
        );
    }
    assert!(read_model.states().await.unwrap().is_empty());
}

on_both!(shadow_writes_and_swaps_without_a_rebuild_are_refused);
async fn shadow_writes_and_swaps_without_a_rebuild_are_refused(read_model: Arc<dyn ReadModel>) {
    let store = store();
    account_life(&*store, "a", 1).await;
    let projector = Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 });
    projector.run_until(store.head()).await.unwrap();
    let before = read_model.state("accounts").await.unwrap();

    assert!(matches!(
        read_model.swap("accounts", 2, 0).await,
        Err(ProjectionError::Invalid(message)) if message.contains("no rebuild")
    ));
    let stray = Commit {
        projection: "accounts".into(),
        target: ProjectionTarget::Shadow,
        expected: None,
        position: 0,
        recorded_at_us: 0,
        head: store.head(),
        changes: vec![factum_projections::TxChange::Sql(
            factum_projections::Statement {
                sql: "DELETE FROM {accounts}".into(),
                params: vec![],
            },
        )],
    };
    assert!(matches!(
        read_model.commit(stray.clone()).await,
        Err(ProjectionError::CheckpointMoved { .. })
    ));
    // A live batch that does not continue from the stored checkpoint is refused too.
    let stale = Commit {
        target: ProjectionTarget::Live,
        expected: None,
        ..stray
    };
    assert!(matches!(
        read_model.commit(stale).await,
        Err(ProjectionError::CheckpointMoved { expected: None, found, .. }) if found == before.position
    ));
    assert_eq!(read_model.state("accounts").await.unwrap(), before);
    assert_eq!(actual(&*read_model).await, expected(&*store).await);
}
