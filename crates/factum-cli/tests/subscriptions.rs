//! Persistent subscriptions when processes die: a consumer killed with SIGKILL while it holds
//! messages, and `factum serve` itself killed with SIGKILL and started again.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

/// A group consumer over server-sent events.
struct Messages {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Messages {
    /// Connects; a 503 (on PostgreSQL, the claim of a killed server's group is held until
    /// the database sees its connection end) is asked again for up to 10 s.
    async fn open(base: &str, query: &str) -> Messages {
        let url = format!("{base}/subscriptions/job-1/workers/messages?{query}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let response = loop {
            let response = reqwest::get(&url).await.unwrap();
            if response.status() != 503 || tokio::time::Instant::now() > deadline {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(response.status(), 200);
        Messages {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message, or `None` after `wait` without one.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Some(serde_json::from_str(data).unwrap());
                }
            }
            let chunk = tokio::time::timeout(wait, self.body.next())
                .await
                .ok()??
                .ok()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn ack(base: &str, ids: &[String]) {
    let (status, body) = post(
        base,
        "/subscriptions/job-1/workers/ack",
        json!({ "ids": ids }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A child process that is killed if the test fails before it stops it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn revision(message: &Value) -> u64 {
    message["event"]["revision"].as_u64().unwrap()
}

fn id(message: &Value) -> String {
    message["id"].as_str().unwrap().to_owned()
}

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Drops a schema of [`POSTGRES`]; an error where it is not reachable.
async fn drop_schema(schema: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumers_and_a_killed_server_lose_nothing_and_send_nothing_acknowledged_as_new() {
    killed_consumers_and_server(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_killed_consumers_and_a_killed_server_lose_nothing() {
    let schema = format!("fcli_groups_kill_{}", std::process::id());
    match drop_schema(&schema).await {
        Ok(()) => {}
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: PostgreSQL at {POSTGRES} is not reachable ({e})");
            return;
        }
        Err(e) => panic!("PostgreSQL at {POSTGRES} is needed under CI=true: {e}"),
    }
    killed_consumers_and_server(&["--store", POSTGRES, "--store-schema", &schema]).await;
    drop_schema(&schema).await.unwrap();
}

/// `store` names the store (global options before `serve`); none is the embedded store.
async fn killed_consumers_and_server(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let serve = |dir: &std::path::Path| {
        let mut args = store.to_vec();
        args.extend(["serve", "--listen", "127.0.0.1:0"]);
        common::spawn(&args, dir)
    };
    let (server, _stderr, _, port) = serve(dir.path());
    let mut server = KillOnDrop(server);
    let base = format!("http://127.0.0.1:{port}");
    let total = 120u64;
    let batch: Vec<Value> = (0..total)
        .map(|n| json!({"type": "JobQueued", "data": {"n": n}}))
        .collect();
    let (status, body) = post(&base, "/streams/job-1", Value::Array(batch)).await;
    assert_eq!(status, 201, "{body}");
    // A timeout well beyond the test's acks, which a loaded machine makes slow: a message
    // that timed out is for a moment in no one's hands, and an ack of it then is refused.
    // The killed consumer's messages come back at once, when its connection closes.
    let settings = json!({"settings": {
        "message_timeout_ms": 20000, "max_retry_count": 5,
        "checkpoint_after_ms": 100, "checkpoint_min_count": 1
    }});
    let (status, body) = post(&base, "/subscriptions/job-1/workers", settings).await;
    assert_eq!(status, 201, "{body}");

    // A consumer process (curl) takes ten messages and is killed with SIGKILL holding them.
    let curl = Command::new("curl")
        .args([
            "-sN",
            &format!("{base}/subscriptions/job-1/workers/messages?consumer=doomed&capacity=10"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl runs (the test uses it as a consumer process)");
    let mut curl = KillOnDrop(curl);
    let lines = common::lines_of(curl.0.stdout.take().unwrap());
    let mut held = HashSet::new();
    while held.len() < 10 {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the doomed consumer gets its messages");
        if let Some(data) = line.strip_prefix("data: ") {
            let message: Value = serde_json::from_str(data).unwrap();
            held.insert(revision(&message));
        }
    }
    curl.0.kill().unwrap();
    curl.0.wait().unwrap();

    // The next consumer gets them again (as retries) and the rest; it acknowledges 60 and
    // waits until the checkpoint is stored, then 30 more, and the server dies at once.
    let mut worker = Messages::open(&base, "consumer=worker&capacity=200").await;
    let mut first_run: HashMap<u64, Value> = HashMap::new();
    while (first_run.len() as u64) < total {
        let message = worker
            .next(Duration::from_secs(10))
            .await
            .expect("every message reaches the worker");
        first_run.insert(revision(&message), message);
    }
    for r in &held {
        assert!(
            first_run[r]["retry_count"].as_u64().unwrap() >= 1,
            "{r}: given back by the killed consumer, a retry"
        );
    }
    let ids_of = |range: std::ops::Range<u64>| -> Vec<String> {
        range.map(|r| id(&first_run[&r])).collect()
    };
    ack(&base, &ids_of(0..60)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let info: Value = reqwest::get(format!("{base}/subscriptions/job-1/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["checkpoint"], 60, "{info}");
    ack(&base, &ids_of(60..90)).await;
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(worker);

    // Started again on the same data: the group resumes from its checkpoint. Each message is
    // acknowledged as it comes, so none times out and comes twice.
    let (server, _stderr, _, port) = serve(dir.path());
    let mut server = KillOnDrop(server);
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = Messages::open(&base, "consumer=again&capacity=200").await;
    let mut second_run: HashMap<u64, Value> = HashMap::new();
    while let Some(message) = worker.next(Duration::from_secs(3)).await {
        let r = revision(&message);
        ack(&base, &[id(&message)]).await;
        assert!(second_run.insert(r, message).is_none(), "{r} twice");
    }
    for r in 0..60 {
        assert!(
            !second_run.contains_key(&r),
            "{r} was acknowledged before the checkpoint"
        );
    }
    for r in 60..90 {
        if let Some(message) = second_run.get(&r) {
            assert!(
                message["retry_count"].as_u64().unwrap() >= 1,
                "{r} was acknowledged: if it comes again, it comes as a retry, never as new"
            );
        }
    }
    for r in 90..total {
        assert!(
            second_run.contains_key(&r),
            "{r} was never acknowledged: not lost"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let info: Value = reqwest::get(format!("{base}/subscriptions/job-1/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["checkpoint"], total, "{info}");
    drop(worker);
    server.0.kill().unwrap();
    server.0.wait().unwrap();
}

fn factum(args: &[&str], data: &std::path::Path) -> (bool, String, String) {
    let output = common::factum_in(data, args, "");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factum_subscriptions_lists_describes_and_replays_parked_locally_and_on_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _stderr, _, port) = common::spawn_serve(&["--listen", "127.0.0.1:0"], dir.path());
    let mut server = KillOnDrop(server);
    let base = format!("http://127.0.0.1:{port}");
    let batch: Vec<Value> = (0..3)
        .map(|n| json!({"type": "JobQueued", "data": {"n": n}}))
        .collect();
    post(&base, "/streams/job-1", Value::Array(batch)).await;
    let settings = json!({"settings": {"checkpoint_after_ms": 50, "checkpoint_min_count": 1}});
    let (status, _) = post(&base, "/subscriptions/job-1/workers", settings).await;
    assert_eq!(status, 201);
    let mut worker = Messages::open(&base, "capacity=3").await;
    for _ in 0..3 {
        let message = worker.next(Duration::from_secs(10)).await.unwrap();
        let (status, _) = post(
            &base,
            "/subscriptions/job-1/workers/nack",
            json!({"ids": [id(&message)], "action": "park", "reason": "printer on fire"}),
        )
        .await;
        assert_eq!(status, 200);
    }
    drop(worker);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (ok, out, err) = factum(&["--server", &base, "subscriptions", "list"], dir.path());
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (listed["group"].clone(), listed["parked"].clone()),
        (json!("workers"), json!(3))
    );
    let (ok, out, err) = factum(
        &[
            "--server",
            &base,
            "subscriptions",
            "describe",
            "job-1",
            "workers",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let described: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(described["checkpoint"], 3, "{described}");
    assert_eq!(
        described["consumers"],
        json!([]),
        "the consumer that went away is gone"
    );
    let (ok, out, err) = factum(
        &[
            "--server",
            &base,
            "subscriptions",
            "replay-parked",
            "job-1",
            "workers",
            "--stop-at",
            "1",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"replayed\":1"), "{out}");
    let (ok, _, err) = factum(
        &[
            "--server",
            &base,
            "subscriptions",
            "describe",
            "job-1",
            "nope",
        ],
        dir.path(),
    );
    assert!(
        !ok && err.contains("no persistent subscription group"),
        "{err}"
    );

    // Stopped; where the store is, the same commands.
    let stopped = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    server.0.wait().unwrap();
    let (ok, out, err) = factum(&["subscriptions", "list", "--source", "job-1"], dir.path());
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed["parked"], 3, "{listed}");
    assert_eq!(
        listed["replaying"], true,
        "the replay asked for on the server goes on"
    );
    let (ok, out, err) = factum(&["subscriptions", "list", "--source", "other"], dir.path());
    assert!(
        ok && out.is_empty() && err.contains("no persistent"),
        "{out}{err}"
    );

    // Served again, the group delivers the replay asked for.
    let (server, _stderr, _, port) = common::spawn_serve(&["--listen", "127.0.0.1:0"], dir.path());
    let _server = KillOnDrop(server);
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = Messages::open(&base, "capacity=3").await;
    let again = worker.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (revision(&again), again["retry_count"].clone()),
        (0, json!(0))
    );
    assert!(
        worker.next(Duration::from_millis(500)).await.is_none(),
        "only the first"
    );
}
