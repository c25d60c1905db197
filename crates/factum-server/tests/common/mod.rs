//! What the server tests share: a real server on a fresh embedded store, and an SSE reader.
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use factum_engine::{Engine, EngineOptions};
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub struct Server {
    pub url: String,
    pub store: Engine,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "{scheme}://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(factum_server::serve(
        listener,
        Arc::new(store.clone()),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        url,
        store,
        client,
        stop: Some(stop),
        task,
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

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
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
        let mut request = server.client.get(server.at(path));
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
