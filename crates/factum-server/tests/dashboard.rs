//! What the web UI's dashboard and operator pages ask the server: the stats stream (snapshots
//! of the counters, latency, head, size on disk and every consumer's lag), the search of `$all`
//! by event id and correlation id, and the operators' actions, which only an admin may take.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::Counting;

use std::sync::Arc;
use std::time::Duration;

use common::{events, serve, start, start_with_client};
use factum_core::{EventStore, NewEvent, StreamName};
use factum_server::auth::Auth;
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKENS: &str = r#"
[[token]]
name = "orders-reader"
secret = "orders-0123456789"
read = ["order-"]

[[token]]
name = "viewer"
secret = "viewer-0123456789"
read = [""]

[[token]]
name = "operator"
secret = "operator-0123456789"
admin = [""]
"#;

/// The server-sent events of `/stats/subscribe`: (kind, data).
struct Stats {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Stats {
    async fn open(client: &reqwest::Client, url: &str) -> Stats {
        let response = client
            .get(format!("{url}/stats/subscribe"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stats {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = Value::Null;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        kind = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(v).unwrap();
                    }
                }
                return (kind, data);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("a snapshot within 10 s")
                .expect("the stream goes on")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next snapshot that satisfies `until`.
    async fn until(&mut self, until: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..30 {
            let (kind, snapshot) = self.next().await;
            assert_eq!(kind, "stats");
            if until(&snapshot) {
                return snapshot;
            }
        }
        panic!("no snapshot in 30 s satisfied the condition");
    }
}

fn consumer<'a>(snapshot: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    snapshot["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_stream_sends_history_then_a_snapshot_a_second() {
    let server = start().await;
    server.append("order-1", None, events(4, "Placed")).await;
    let store: Arc<dyn EventStore> = Arc::new(server.store.clone());
    // A relay or processor that has handled the first event only.
    store.save_checkpoint("mailer", 0).await.unwrap();

    let mut stats = Stats::open(&server.client, &server.url).await;
    let (kind, history) = stats.next().await;
    assert_eq!(kind, "history");
    assert!(history.is_array(), "{history}");
    let first = stats
        .until(|s| consumer(s, "checkpoint", "mailer").is_some())
        .await;
    assert_eq!(first["store"], "embedded");
    assert!(first["disk_bytes"].as_u64().unwrap() > 0, "{first}");
    let mailer = consumer(&first, "checkpoint", "mailer").unwrap();
    let head = first["head"].as_u64().unwrap();
    assert_eq!(mailer["behind"], head - 1, "{first}");
    assert_eq!(mailer["checkpoint"], 0, "{first}");
    assert!(mailer["behind_seconds"].as_f64().is_some(), "{first}");

    // Appends show in the totals and in the latency of the second they happened in.
    let events_before = first["events"].as_u64().unwrap();
    for _ in 0..5 {
        server.append("order-2", None, events(2, "Placed")).await;
    }
    let (status, _) = server.get("/all?limit=5").await;
    assert_eq!(status, StatusCode::OK);
    let after = stats
        .until(|s| s["events"].as_u64().unwrap() >= events_before + 10)
        .await;
    assert!(after["appends"].as_u64().unwrap() >= 5);
    assert!(after["reads"].as_u64().unwrap() >= 1, "{after}");
    assert!(after["t"].as_u64().unwrap() > first["t"].as_u64().unwrap());
    // The second whose snapshot counted the appends has their latency; a quiet one has none.
    let quiet = stats.until(|s| s["append_p50_us"].is_null()).await;
    assert!(quiet["append_p99_us"].is_null());

    // Subscription deliveries count the events sent to followers.
    let mut follower = common::Sse::open(&server, "/all/subscribe?from=0", None).await;
    for _ in 0..14 {
        follower.next().await.unwrap();
    }
    let delivered = stats
        .until(|s| s["deliveries"].as_u64().unwrap() >= 14 && s["subscribers"] == 1)
        .await;
    assert!(delivered["uptime_seconds"].as_f64().unwrap() > 0.0);
    drop(follower);

    // A dashboard that opens later gets the last minutes at once.
    let mut late = Stats::open(&server.client, &server.url).await;
    let (kind, history) = late.next().await;
    assert_eq!(kind, "history");
    let history = history.as_array().unwrap();
    assert!(history.len() >= 3, "{history:?}");
    assert!(
        history
            .windows(2)
            .all(|w| w[0]["t"].as_u64() < w[1]["t"].as_u64()),
        "oldest first"
    );
    drop((stats, late));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_stream_reports_the_postgresql_store() {
    let Some((store, schema)) = common::postgres("stats").await else {
        return;
    };
    let served = serve(store.clone(), factum_server::Config::default()).await;
    let url = format!("http://127.0.0.1:{}", served.port);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}/streams/order-1"))
        .json(&events(3, "Placed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut stats = Stats::open(&client, &url).await;
    stats.next().await;
    let snapshot = stats.until(|s| !s["disk_bytes"].is_null()).await;
    assert_eq!(snapshot["store"], "postgresql");
    assert_eq!(snapshot["head"], 3);
    assert!(
        snapshot["disk_bytes"].as_u64().unwrap() > 8192,
        "{snapshot}"
    );
    drop(stats);
    served.stop().await;
    drop(store);
    common::drop_schema(&schema).await;
}

async fn get(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(url).send().await.unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn post(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client.post(url).send().await.unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_an_event_by_id_and_a_request_by_correlation_id() {
    let server = start_with_client(
        factum_server::Config {
            auth: Some(Arc::new(Auth::from_toml(TOKENS).unwrap())),
            ..factum_server::Config::default()
        },
        "http",
        common::bearer("operator-0123456789"),
    )
    .await;
    let request = |stream: &str, correlation: &str, causation: &str| {
        json!([{"type": "Happened", "data": {"stream": stream},
                "metadata": {"$correlationId": correlation, "$causationId": causation}}])
    };
    server
        .append("order-1", None, request("order-1", "req-1", "req-1"))
        .await;
    server.append("other-1", None, events(3, "Noise")).await;
    server
        .append("cart-1", None, request("cart-1", "req-1", "cmd-9"))
        .await;
    server
        .append("order-2", None, request("order-2", "req-1", "cmd-9"))
        .await;
    server
        .append("order-3", None, request("order-3", "req-2", "req-2"))
        .await;
    // An event whose data, not metadata, holds the text: not related.
    server
        .append(
            "order-4",
            None,
            json!([{"type": "Noted", "data": {"note": "req-1"}}]),
        )
        .await;
    let url = |q: &str| format!("{}/search?q={q}", server.url);

    let (status, found) = server.get("/search?q=req-1").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let streams: Vec<&str> = found["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["order-2", "cart-1", "order-1"], "newest first");
    assert_eq!(found["next"], Value::Null, "all of $all was searched");
    assert_eq!(found["scanned"], 8);
    // By causation id.
    let (_, found) = server.get("/search?q=cmd-9").await;
    assert_eq!(found["events"].as_array().unwrap().len(), 2);
    // By event id.
    let id = found["events"][1]["id"].as_str().unwrap().to_owned();
    let (_, by_id) = server.get(&format!("/search?q={id}")).await;
    assert_eq!(by_id["events"].as_array().unwrap().len(), 1);
    assert_eq!(by_id["events"][0]["stream"], "cart-1");
    // Page by page: `next` is where to go on.
    let (_, page) = server.get("/search?q=req-1&limit=2").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next"].as_u64().unwrap();
    let (_, rest) = server
        .get(&format!("/search?q=req-1&limit=2&before={next}"))
        .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    assert_eq!(rest["events"][0]["stream"], "order-1");
    // A token sees only what it may read.
    let (status, mine) = get(&common::bearer("orders-0123456789"), &url("req-1")).await;
    assert_eq!(status, StatusCode::OK);
    let streams: Vec<&str> = mine["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["order-2", "order-1"]);
    // Without a token: 401. Bad input: 400.
    let (status, _) = get(&reqwest::Client::new(), &url("req-1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server.get(&format!("/search?q={}", "x".repeat(201))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = server.get("/search").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get("/search?q=a&limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_replays_dead_letters_and_rebuilds_projections() {
    use factum_projections::{Projector, ReadModel, SqliteReadModel};

    let dir = tempfile::tempdir().unwrap();
    let read_model: Arc<dyn ReadModel> = Arc::new(
        SqliteReadModel::open(dir.path().join("read.db"))
            .await
            .unwrap(),
    );
    let server = start_with_client(
        factum_server::Config {
            auth: Some(Arc::new(Auth::from_toml(TOKENS).unwrap())),
            read_model: Some(read_model.clone()),
            ..factum_server::Config::default()
        },
        "http",
        common::bearer("operator-0123456789"),
    )
    .await;
    server.append("order-1", None, events(3, "Placed")).await;
    let store: Arc<dyn EventStore> = Arc::new(server.store.clone());
    Projector::new(store.clone(), read_model.clone(), Counting)
        .run_until(3)
        .await
        .unwrap();
    let (viewer, operator) = (common::bearer("viewer-0123456789"), server.client.clone());
    let at = |path: &str| server.at(path);

    // Dead letters: nothing to replay yet.
    let (status, body) = post(&operator, &at("/processors/billing/replay")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let letters = factum_toolkit::DeadLetters::of(store.as_ref(), "billing").unwrap();
    letters
        .park(NewEvent::json(factum_toolkit::DEAD_LETTERED, &json!({"why": "no price"})).unwrap())
        .await
        .unwrap();
    let stream = StreamName::new("$deadletter-billing").unwrap();
    let length = || async {
        store
            .read_stream(&stream, 0, factum_core::Direction::Forwards, 100)
            .await
            .unwrap()
            .len()
    };
    let before = length().await;
    let (status, body) = post(&viewer, &at("/processors/billing/replay")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(length().await, before, "a refused request writes nothing");
    let (status, body) = post(&operator, &at("/processors/billing/replay")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dead_letters"], 1);
    assert!(letters.replay_requested().await.unwrap());

    // Projections: a rebuild is asked of the projector.
    let (status, body) = post(&viewer, &at("/projections/counting/rebuild")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!read_model.states().await.unwrap()[0].rebuild_requested);
    let (status, body) = post(&operator, &at("/projections/nothing/rebuild")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = post(&operator, &at("/projections/counting/rebuild")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["projection"], "counting");
    assert!(read_model.states().await.unwrap()[0].rebuild_requested);
    server.stop().await;

    // A server without a read model has no projection to rebuild.
    let plain = start().await;
    let (status, body) = post(&plain.client, &plain.at("/projections/counting/rebuild")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    plain.stop().await;
}
