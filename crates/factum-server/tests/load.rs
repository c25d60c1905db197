//! Load the server sheds: subscriptions are capped overall (503) and per token (429), both with
//! `Retry-After`, over gRPC too (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`); a subscriber that takes
//! nothing for the stall timeout is dropped and its connection closed; connections that send
//! nothing are closed after the idle timeout, requests in flight never; all of it counted in
//! `/metrics`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::start_with_client;
use factum_server::auth::Auth;
use factum_server::grpc::proto::event_store::client::streams::{
    ReadReq, ReadResp, read_req, read_resp,
};
use factum_server::grpc::proto::grpc::health::v1::HealthCheckRequest;
use factum_server::grpc::proto::grpc::health::v1::health_client::HealthClient;
use reqwest::StatusCode;

const TOKENS: &str = r#"
[[token]]
name = "a"
secret = "a-0123456789abcdef"
read = [""]
write = [""]

[[token]]
name = "b"
secret = "b-0123456789abcdef"
read = [""]
"#;

async fn metric(server: &common::Server, name: &str) -> f64 {
    let text = server
        .client
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_overall_and_per_token_with_retry_after() {
    let server = start_with_client(
        factum_server::Config {
            auth: Some(Arc::new(Auth::from_toml(TOKENS).unwrap())),
            max_subscriptions: 3,
            max_subscriptions_per_token: 2,
            ..factum_server::Config::default()
        },
        "http",
        common::bearer("a-0123456789abcdef"),
    )
    .await;
    let (a, b) = (
        common::bearer("a-0123456789abcdef"),
        common::bearer("b-0123456789abcdef"),
    );
    let open = |c: &reqwest::Client, path: &str| {
        let (c, url) = (c.clone(), server.at(path));
        async move { c.get(url).send().await.unwrap() }
    };
    let first = open(&a, "/all/subscribe").await;
    let second = open(&a, "/streams/order-1/subscribe").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    // The token's third: 429.
    let refused = open(&a, "/all/subscribe").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(refused.text().await.unwrap().contains("token 'a'"));
    // Another token's first fits; the server's fourth does not: 503.
    let third = open(&b, "/dcb/subscribe").await;
    assert_eq!(third.status(), StatusCode::OK);
    let refused = open(&b, "/all/subscribe").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        metric(&server, "factum_subscriptions_refused_total").await,
        2.0
    );
    // One ends: there is room again.
    drop(first);
    let started = Instant::now();
    loop {
        let again = open(&a, "/all/subscribe").await;
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            again.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((second, third));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_after_the_stall_timeout() {
    let server = common::start_with(factum_server::Config {
        stall_timeout: Duration::from_secs(1),
        ..factum_server::Config::default()
    })
    .await;
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    // A client that subscribes and then reads nothing more.
    let mut stalled = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    stalled
        .write_all(b"GET /all/subscribe HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 64];
    let _ = stalled.read(&mut head).unwrap();
    assert!(
        std::str::from_utf8(&head)
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    // Far more than the socket buffers hold.
    let big = "x".repeat(4000);
    for round in 0..40 {
        let body: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"type": "Filled", "data": {"n": round * 100 + i, "pad": big}}))
            .collect();
        let (status, _) = server
            .append("fill-1", None, serde_json::Value::Array(body))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let started = Instant::now();
    while metric(&server, "factum_subscribers_stalled_total").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stalled subscriber was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&server, "factum_subscribers").await, 0.0);
    // Its connection is closed: reading what is left ends.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let ended = stalled.read_to_end(&mut sink);
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{ended:?}"
    );
    // A subscriber that reads is served as ever.
    let mut sse = common::Sse::open(&server, "/all/subscribe?from=3990", None).await;
    for position in 3990..4000 {
        assert_eq!(sse.next().await.unwrap().0, position);
    }
    server.stop().await;
}

/// A gRPC subscription to `$all` from the start.
fn subscribe_all() -> ReadReq {
    use read_req::options;
    ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(options::StreamOption::All(options::AllOptions {
                all_option: Some(options::all_options::AllOption::Start(())),
            })),
            read_direction: 0,
            resolve_links: false,
            count_option: Some(options::CountOption::Subscription(
                options::SubscriptionOptions {},
            )),
            filter_option: Some(options::FilterOption::NoFilter(())),
            uuid_option: None,
            control_option: None,
        }),
    }
}

type Answers = tonic::Streaming<ReadResp>;

async fn grpc_subscribe(port: u16, secret: Option<&str>) -> Result<Answers, tonic::Status> {
    let mut request = tonic::Request::new(subscribe_all());
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    }
    let mut answers = common::grpc::streams(port)
        .read(request)
        .await?
        .into_inner();
    // The confirmation comes first.
    let first = answers.message().await?.unwrap();
    assert!(matches!(
        first.content,
        Some(read_resp::Content::Confirmation(_))
    ));
    Ok(answers)
}

fn port_of(server: &common::Server) -> u16 {
    server.url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_subscriptions_count_against_the_same_caps() {
    let server = start_with_client(
        factum_server::Config {
            auth: Some(Arc::new(Auth::from_toml(TOKENS).unwrap())),
            max_subscriptions: 3,
            max_subscriptions_per_token: 2,
            ..factum_server::Config::default()
        },
        "http",
        common::bearer("a-0123456789abcdef"),
    )
    .await;
    let port = port_of(&server);
    let (a, b) = ("a-0123456789abcdef", "b-0123456789abcdef");
    let first = grpc_subscribe(port, Some(a)).await.unwrap();
    let second = grpc_subscribe(port, Some(a)).await.unwrap();
    assert_eq!(metric(&server, "factum_subscribers").await, 2.0);
    // The token's third: RESOURCE_EXHAUSTED, with when to try again.
    let refused = grpc_subscribe(port, Some(a)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("token 'a'"), "{refused:?}");
    assert_eq!(
        refused.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "5000"
    );
    // Another token's first, over HTTP, fits; the server's fourth, over gRPC, does not.
    let third = common::bearer(b)
        .get(server.at("/all/subscribe"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    let refused = grpc_subscribe(port, Some(b)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("most subscriptions (3)"),
        "{refused:?}"
    );
    // A health watch is held open too: refused as well.
    let mut health = HealthClient::with_origin(common::grpc::channel(), common::grpc::origin(port));
    let watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(watch.code(), tonic::Code::Unavailable);
    assert_eq!(
        metric(&server, "factum_subscriptions_refused_total").await,
        3.0
    );
    // One ends: there is room again.
    drop(first);
    let started = Instant::now();
    let again = loop {
        match grpc_subscribe(port, Some(a)).await {
            Ok(again) => break again,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop((second, third, again));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_subscriber_that_stops_reading_is_dropped_after_the_stall_timeout() {
    let server = common::start_with(factum_server::Config {
        stall_timeout: Duration::from_secs(1),
        ..factum_server::Config::default()
    })
    .await;
    let mut stalled = grpc_subscribe(port_of(&server), None).await.unwrap();
    // Far more than the connection's windows and buffers hold.
    let big = "x".repeat(4000);
    for round in 0..40 {
        let body: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"type": "Filled", "data": {"n": round * 100 + i, "pad": big}}))
            .collect();
        let (status, _) = server
            .append("fill-1", None, serde_json::Value::Array(body))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let started = Instant::now();
    while metric(&server, "factum_subscribers_stalled_total").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stalled gRPC subscriber was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&server, "factum_subscribers").await, 0.0);
    // What was sent before arrives in order, then the status that says why it ended.
    let mut next_revision = 0;
    let ended = loop {
        match stalled.message().await {
            Ok(Some(answer)) => {
                if let Some(read_resp::Content::Event(event)) = answer.content {
                    assert_eq!(event.event.unwrap().stream_revision, next_revision);
                    next_revision += 1;
                }
            }
            Ok(None) => panic!("the subscription ended without a status"),
            Err(status) => break status,
        }
    };
    assert!(next_revision > 0 && next_revision < 4000, "{next_revision}");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("took nothing"), "{ended:?}");
    // A subscriber that reads is served as ever.
    let mut reading = grpc_subscribe(port_of(&server), None).await.unwrap();
    let mut events = 0;
    while events < 4000 {
        if let Some(read_resp::Content::Event(_)) =
            reading.message().await.unwrap().unwrap().content
        {
            events += 1;
        }
    }
    server.stop().await;
}

/// Reads from `connection` until the server closes it; how long that took.
fn closed_within(connection: &mut std::net::TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    connection.set_read_timeout(Some(limit)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match connection.read(&mut sink) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("the connection was not closed within {limit:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_requests_in_flight_are_not() {
    let server = common::start_with(factum_server::Config {
        idle_timeout: Duration::from_secs(1),
        ..factum_server::Config::default()
    })
    .await;
    let port = port_of(&server);
    let connect = || std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    let limit = Duration::from_secs(5);
    // A client that sends nothing at all.
    let mut silent = connect();
    let took = tokio::task::spawn_blocking(move || closed_within(&mut silent, limit))
        .await
        .unwrap();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // A keep-alive connection after its answer.
    let mut kept = connect();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let took = tokio::task::spawn_blocking(move || closed_within(&mut kept, limit))
        .await
        .unwrap();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // A request head that trickles in, a byte now and then: cut though bytes keep coming.
    let mut trickle = connect();
    trickle.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let mut writer = trickle.try_clone().unwrap();
    let trickling = std::thread::spawn(move || {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(200));
            if writer.write_all(b"X").is_err() {
                return;
            }
        }
    });
    let took = tokio::task::spawn_blocking(move || closed_within(&mut trickle, limit))
        .await
        .unwrap();
    assert!(took < Duration::from_secs(3), "{took:?}");
    trickling.join().unwrap();
    // A subscription over HTTP/1.1 and one over HTTP/2 (gRPC) quiet for longer than the idle
    // timeout stay open and get the next event.
    let mut sse = common::Sse::open(&server, "/all/subscribe", None).await;
    let mut grpc = grpc_subscribe(port, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = server
        .append(
            "quiet-1",
            None,
            serde_json::json!([{"type": "Spoke", "data": {}}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(sse.next().await.unwrap().0, 0);
    let answer = loop {
        let answer = grpc.message().await.unwrap().unwrap();
        if let Some(read_resp::Content::Event(event)) = answer.content {
            break event;
        }
    };
    assert_eq!(answer.event.unwrap().stream_revision, 0);
    server.stop().await;
}
