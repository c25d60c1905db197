//! A projecting process killed with SIGKILL at random moments, many times, while it appends
//! and projects (and, in some rounds, rebuilds): after every round the read model equals the
//! one computed from scratch, each event applied exactly once.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Accounts, account_life, actual, expected};
use factum_core::EventStore;
use factum_engine::{Engine, EngineOptions};
use factum_projections::{PgReadModel, Projector, ReadModel, SqliteReadModel};
use rand::Rng;

const WORKER: &str = "FACTUM_PROJECTION_WORKER";

async fn open_read_model(spec: &str) -> Arc<dyn ReadModel> {
    match spec.strip_prefix("pg:") {
        Some(schema) => Arc::new(PgReadModel::connect(common::PG, schema).await.unwrap()),
        None => Arc::new(SqliteReadModel::open(spec).await.unwrap()),
    }
}

/// The process the test kills: it appends accounts and projects them until it dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker() {
    let Ok(data) = std::env::var(WORKER) else {
        return; // Only a run of the crash test below starts it for real.
    };
    let spec = std::env::var("FACTUM_WORKER_READ_MODEL").unwrap();
    let round: u32 = std::env::var("FACTUM_WORKER_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let engine = Engine::open(&data, EngineOptions::default()).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(engine);
    let read_model = open_read_model(&spec).await;
    let batch = rand::rng().random_range(1..300);
    let projector = Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 })
        .batch_size(batch);
    projector.install().await.unwrap();
    if round % 3 == 1 {
        read_model.request_rebuild("accounts").await.unwrap();
    }
    tokio::spawn(async move { projector.run(std::future::pending()).await });
    for i in 0.. {
        account_life(&*store, &format!("r{round}-{i}"), i % 9).await;
        if i == 0 {
            println!("worker ready");
        }
        if i % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn kill_rounds(spec: &str, rounds: u32) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut head_before = 0;
    let mut rounds_that_projected = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "worker", "--nocapture", "--test-threads", "1"])
            .env(WORKER, &data)
            .env("FACTUM_WORKER_READ_MODEL", spec)
            .env("FACTUM_WORKER_ROUND", round.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Kill it at a random moment once it is appending and projecting.
        let stdout = child.stdout.take().unwrap();
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut ready = Some(ready);
            // Reads to the end, so the worker never writes into a closed pipe.
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("worker ready") {
                    ready.take().map(|ready| ready.send(()));
                }
            }
        });
        is_ready.await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..500))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // After each kill: finish projecting in this process and compare with the model
        // computed from every event.
        let engine = Engine::open(&data, EngineOptions::default()).unwrap();
        let store: Arc<dyn EventStore> = Arc::new(engine.clone());
        let read_model = open_read_model(spec).await;
        let projector = Projector::new(store.clone(), read_model.clone(), Accounts { version: 1 });
        assert!(store.head() > head_before, "round {round} appended nothing");
        if read_model.state("accounts").await.unwrap().next_position() > head_before {
            rounds_that_projected += 1;
        }
        projector.run_until(store.head()).await.unwrap();
        head_before = store.head();
        let want = expected(&*store).await;
        assert!(!want.is_empty() || round == 0);
        assert_eq!(actual(&*read_model).await, want, "round {round}");
        assert_eq!(
            read_model.state("accounts").await.unwrap().next_position(),
            store.head()
        );
        engine.close().unwrap();
    }
    // The kills hit a process that was projecting, not one still starting up.
    assert!(
        rounds_that_projected >= rounds / 2,
        "{rounds_that_projected} of {rounds}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_projecting_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("read.db");
    kill_rounds(file.to_str().unwrap(), 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_projecting_into_postgres() {
    let Some(schema) = common::postgres_schema("sigkill").await else {
        return;
    };
    kill_rounds(&format!("pg:{schema}"), 12).await;
}
