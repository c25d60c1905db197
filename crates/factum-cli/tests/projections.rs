//! `factum projections status` and `rebuild` against an application that runs a projection.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use factum::{
    ApplyError, Engine, EngineOptions, EventStore, ExpectedState, NewEvent, Projection, Projector,
    ReadModel, RecordedEvent, SqliteReadModel, StreamName, Table, Tx,
};

/// Counts events per stream.
struct Counts;

impl Projection for Counts {
    fn name(&self) -> &str {
        "counts"
    }
    fn tables(&self) -> Vec<Table> {
        vec![Table::new(
            "counts",
            "stream TEXT PRIMARY KEY, n BIGINT NOT NULL",
        )]
    }
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        tx.execute(
            "INSERT INTO {counts} (stream, n) VALUES ($1, 1) \
             ON CONFLICT (stream) DO UPDATE SET n = n + 1",
            [event.stream.as_str().into()],
        );
        Ok(())
    }
}

async fn factum(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_factum"));
    command.args(args).env("FACTUM_DATA_DIR", dir.join("data"));
    command.env("FACTUM_READ_MODEL", dir.join("read.db"));
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_lag_and_rebuild_is_carried_out_by_the_running_projector() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("data"), EngineOptions::default()).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    for i in 0..10 {
        let stream = StreamName::user(format!("s-{}", i % 3)).unwrap();
        let event = NewEvent::json("Happened", &serde_json::json!({"i": i})).unwrap();
        store
            .append(&stream, ExpectedState::Any, vec![event])
            .await
            .unwrap();
    }
    let read_model: Arc<dyn ReadModel> = Arc::new(
        SqliteReadModel::open(dir.path().join("read.db"))
            .await
            .unwrap(),
    );
    let projector = Projector::new(store.clone(), read_model.clone(), Counts);
    projector.run_until(5).await.unwrap();
    engine.close().unwrap();
    drop(store);

    // The store is free: lag against its real head.
    let out = factum(dir.path(), &["projections", "status"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = &lines(&out)[0];
    assert_eq!(status["name"], "counts");
    assert_eq!(status["position"], 4);
    assert_eq!(
        (status["head"].as_u64(), status["behind"].as_u64()),
        (Some(10), Some(5))
    );
    assert!(status["behind_seconds"].as_f64().unwrap() >= 0.0);

    // The application runs the projection and holds the store; the CLI asks for a rebuild and
    // follows it to the end.
    let engine = Engine::open(dir.path().join("data"), EngineOptions::default()).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let projector = Projector::new(store.clone(), read_model.clone(), Counts);
    let running = projector.spawn();
    read_model
        .wait_for("counts", 9, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let out = factum(
        dir.path(),
        &["projections", "rebuild", "counts", "--timeout", "30s"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&out),
        [serde_json::json!({"projection": "counts", "rebuilt": true, "position": 9})]
    );
    let state = read_model.state("counts").await.unwrap();
    assert!(state.rebuilt_at_us > 0 && !state.rebuild_requested);
    let rows = read_model
        .query("SELECT SUM(n) AS total FROM counts", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get("total"), Some(&factum::Value::Int(10)));

    // With the store held open, status uses the head the projector last saw, and says so.
    let out = factum(dir.path(), &["projections", "status"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("open in another process"));
    assert_eq!(lines(&out)[0]["behind"], 0);

    // An unknown projection is not found (exit 4); a missing read model is bad input (exit 2).
    let out = factum(dir.path(), &["projections", "rebuild", "nope"]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = factum(
        dir.path(),
        &[
            "projections",
            "status",
            "--read-model",
            "/nonexistent/read.db",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no read model"));

    running.stop().await.unwrap();
    engine.close().unwrap();
}
