//! What an operator sees of gRPC calls: counted and timed in `/metrics` by method and status,
//! and logged with the client's `connection-name`. (A file of its own: its log subscriber is
//! the only one in the process.)
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use factum_server::grpc::proto::event_store::client as shared;
use factum_server::grpc::proto::event_store::client::streams::{
    AppendReq, append_req, streams_client::StreamsClient,
};
use hyper_util::client::legacy::Client as Http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

fn options(stream: &str) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: Bytes::copy_from_slice(stream.as_bytes()),
            }),
            expected_stream_revision: Some(append_req::options::ExpectedStreamRevision::Any(())),
        })),
    }
}

fn proposed() -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::ProposedMessage(
            append_req::ProposedMessage {
                id: None,
                metadata: HashMap::from([
                    ("type".to_owned(), "Placed".to_owned()),
                    ("content-type".to_owned(), "application/json".to_owned()),
                ]),
                custom_metadata: Bytes::new(),
                data: Bytes::from_static(b"{}"),
            },
        )),
    }
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
    let dir = tempfile::tempdir().unwrap();
    let store = factum_engine::Engine::open(dir.path().join("data"), Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(factum_server::serve(
        listener,
        Arc::new(store),
        factum_server::Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let channel: Http2<HttpConnector, tonic::body::Body> = Http2::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut streams =
        StreamsClient::with_origin(channel, format!("http://localhost:{port}").parse().unwrap());
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
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("connection=checkout-7") && l.contains("Streams/Append")),
        "{logged}"
    );
}
