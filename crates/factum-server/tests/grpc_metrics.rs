//! What an operator sees of gRPC calls: counted and timed in `/metrics` by method and status,
//! and logged with the client's `connection-name`. (A file of its own: its log subscriber is
//! the only one in the process.)
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::{Arc, Mutex};

use factum_server::grpc::proto::event_store::client::streams::AppendReq;

mod common;
use common::grpc::{self, JSON, options};
use common::{engine, serve};

fn proposed() -> AppendReq {
    grpc::proposed(JSON, b"{}")
}

/// Collects what the server logs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: the server's tasks log through this test's subscriber.
#[tokio::test]
async fn calls_are_counted_in_metrics_and_logged_with_the_connection_name() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (store, _dir) = engine();
    let served = serve(store, factum_server::Config::default()).await;
    let port = served.port;
    let mut streams = grpc::streams(port);
    let mut request =
        tonic::Request::new(futures::stream::iter(vec![options("order-1"), proposed()]));
    request
        .metadata_mut()
        .insert("connection-name", "checkout-7".parse().unwrap());
    streams.append(request).await.unwrap();
    let _ = streams
        .append(futures::stream::iter(vec![options("$nope"), proposed()]))
        .await;
    let metrics = reqwest::get(format!("http://localhost:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |line: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("{line} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(
        count(
            r#"factum_grpc_calls_total{method="/event_store.client.streams.Streams/Append",code="OK"}"#
        ),
        1
    );
    assert_eq!(
        count(
            r#"factum_grpc_calls_total{method="/event_store.client.streams.Streams/Append",code="INVALID_ARGUMENT"}"#
        ),
        1
    );
    assert_eq!(
        count(
            r#"factum_grpc_call_duration_seconds_count{method="/event_store.client.streams.Streams/Append"}"#
        ),
        2
    );
    served.stop().await;
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("connection=checkout-7") && l.contains("Streams/Append")),
        "{logged}"
    );
}
