//! Load the server sheds: subscriptions are capped overall (503) and per token (429), both with
//! `Retry-After`; a subscriber that takes nothing for the stall timeout is dropped and its
//! connection closed; all of it counted in `/metrics`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::start_with_client;
use factum_server::auth::Auth;
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
