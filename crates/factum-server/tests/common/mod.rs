//! What the server tests share: a real server on any store or on a fresh embedded one, the
//! PostgreSQL store the tests use, and an SSE reader.
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use factum_core::EventStore;
use factum_engine::{Engine, EngineOptions};
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub mod grpc;

/// `factum serve` on a store, on a free loopback port.
pub struct Served {
    pub port: u16,
    pub store: Arc<dyn EventStore>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn serve(store: Arc<dyn EventStore>, config: factum_server::Config) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(factum_server::serve(
        listener,
        store.clone(),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    Served {
        port,
        store,
        stop: Some(stop),
        task,
    }
}

impl Served {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within 10 s (subscriptions end)")
            .unwrap()
            .unwrap();
    }
}

/// A fresh embedded store, as the servers take it; the directory lives as long as the guard.
pub fn engine() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("data"), EngineOptions::default()).unwrap();
    (Arc::new(engine), dir)
}

pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn postgres_url() -> String {
    std::env::var("FACTUM_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// A PostgreSQL store in a schema of its own (named after `label` and the process), or
/// `None` (with the reason printed) where PostgreSQL is not reachable outside CI; under
/// `CI=true` it must be.
pub async fn postgres(label: &str) -> Option<(Arc<dyn EventStore>, String)> {
    let url = postgres_url();
    let schema = format!("fgrpc_{label}_{}", std::process::id());
    let options = factum_postgres::PgOptions {
        schema: schema.clone(),
        ..factum_postgres::PgOptions::default()
    };
    match factum_postgres::PgStore::connect(&url, options).await {
        Ok(store) => Some((Arc::new(store), schema)),
        Err(e) if !in_ci() => {
            eprintln!("skipping the PostgreSQL test: {url} is not reachable ({e})");
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is needed under CI=true: {e}"),
    }
}

pub async fn drop_schema(schema: &str) {
    let (client, connection) = factum_pgconnect::PgConnect::parse(&postgres_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

/// The tokens of the KurrentDB client tests: `orders` writes and reads `order-` streams,
/// `reader` reads everything.
pub const CLIENT_TOKENS: &str = r#"
[[token]]
name = "orders"
secret = "orders-0123456789"
write = ["order-"]
read = ["order-"]

[[token]]
name = "reader"
secret = "reader-0123456789"
read = [""]
"#;

/// A self-signed certificate for `localhost`, written as PEM files in `dir`: the certificate's
/// and the key's path, and the certificate's PEM.
pub fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    (cert_path, key_path, cert.pem())
}

/// A server on a fresh embedded store, with a reqwest client for its HTTP API.
pub struct Server {
    pub url: String,
    pub store: Engine,
    pub client: Client,
    served: Served,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Server {
    start_with(factum_server::Config::default()).await
}

pub async fn start_with(config: factum_server::Config) -> Server {
    start_with_client(config, "http", Client::new()).await
}

/// A server with `config`, reached at `scheme://localhost:port` by `client`.
pub async fn start_with_client(
    config: factum_server::Config,
    scheme: &str,
    client: Client,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path().join("data"), EngineOptions::default()).unwrap();
    let served = serve(Arc::new(store.clone()), config).await;
    Server {
        url: format!("{scheme}://localhost:{}", served.port),
        store,
        client,
        served,
        _dir: dir,
    }
}

impl Server {
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn append(
        &self,
        stream: &str,
        expected: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(self.at(&format!("/streams/{stream}")))
            .json(&body);
        if let Some(expected) = expected {
            request = request.header("Expected-Revision", expected);
        }
        let response = request.send().await.unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.at(path)).send().await.unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    pub async fn stop(self) {
        self.served.stop().await;
        self.store.close().unwrap();
    }
}

pub fn events(n: usize, kind: &str) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"type": kind, "data": {"n": i}, "metadata": {"by": "test"}}))
            .collect(),
    )
}

/// A server-sent-events reader: (id, data) pairs as they arrive.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Sse {
    pub async fn open(server: &Server, path: &str, last_event_id: Option<u64>) -> Sse {
        Sse::open_url(&server.client, &server.at(path), last_event_id).await
    }

    /// [`Sse::open`] at a whole URL, with any client.
    pub async fn open_url(client: &Client, url: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<(u64, Value)> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) =
                        line.strip_prefix("data: ").or(line.strip_prefix("data:"))
                    {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    return Some((id, data));
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")?
                .ok()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// A projection that counts events in one table.
pub struct Counting;

impl factum_projections::Projection for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn tables(&self) -> Vec<factum_projections::Table> {
        vec![factum_projections::Table::new(
            "seen",
            "id TEXT PRIMARY KEY",
        )]
    }
    fn apply(
        &self,
        tx: &mut factum_projections::Tx,
        event: &factum_core::RecordedEvent,
    ) -> Result<(), factum_projections::ApplyError> {
        tx.insert("seen").key("id", event.id.to_string());
        Ok(())
    }
}

/// A client that sends `token` as its bearer token with every request.
pub fn bearer(token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    Client::builder().default_headers(headers).build().unwrap()
}
