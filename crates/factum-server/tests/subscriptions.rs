//! Persistent subscription groups over HTTP: create, receive as server-sent events, ack and
//! nack in batches, park and replay, describe, metrics, rights, bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Server, events, start, start_with};
use factum_core::EventStore;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A group consumer over server-sent events: the messages as they arrive.
struct Messages {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Messages {
    async fn open(server: &Server, group: &str, query: &str) -> Messages {
        let response = server
            .client
            .get(server.at(&format!("/subscriptions/{group}/messages?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Messages {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message's data, within 10 s; `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data: Option<Value> = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    assert_eq!(data["id"], id.as_str(), "the frame's id is the message id");
                    return Some(data);
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("a message within 10 s")?
                .ok()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn send(server: &Server, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let request = server
        .client
        .request(method.parse().unwrap(), server.at(path))
        .json(&body);
    let response = request.send().await.unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

fn quick() -> Value {
    json!({"message_timeout_ms": 400, "max_retry_count": 1, "checkpoint_after_ms": 50, "checkpoint_min_count": 1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_http_shares_acks_nacks_parks_and_replays() {
    let server = start().await;
    server
        .append("order-1", None, events(6, "OrderPlaced"))
        .await;
    let (status, created) = send(
        &server,
        "POST",
        "/subscriptions/order-1/billing",
        json!({"settings": quick()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["settings"]["max_retry_count"], 1);
    assert_eq!(
        created["settings"]["read_batch_size"], 20,
        "defaults for the rest"
    );

    let mut one = Messages::open(&server, "order-1/billing", "consumer=one&capacity=3").await;
    let mut two = Messages::open(&server, "order-1/billing", "consumer=two&capacity=3").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(one.next().await.unwrap());
    }
    for _ in 0..3 {
        got.push(two.next().await.unwrap());
    }
    let mut revisions: Vec<u64> = got
        .iter()
        .map(|m| m["event"]["revision"].as_u64().unwrap())
        .collect();
    revisions.sort();
    assert_eq!(revisions, [0, 1, 2, 3, 4, 5], "disjoint, and none missing");
    assert!(got.iter().all(|m| m["retry_count"] == 0));
    let id = |m: &Value| m["id"].as_str().unwrap().to_owned();
    let by_revision = |r: u64| {
        got.iter()
            .find(|m| m["event"]["revision"] == r)
            .map(id)
            .unwrap()
    };

    // The description while they are out.
    let (status, info) = server.get("/subscriptions/order-1/billing").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["in_flight"], 6, "{info}");
    assert_eq!(info["consumers"].as_array().unwrap().len(), 2);

    // Acks in a batch; a nack to park; one nack to retry.
    let acked: Vec<String> = [0, 1, 3, 4].iter().map(|r| by_revision(*r)).collect();
    let (status, body) = send(
        &server,
        "POST",
        "/subscriptions/order-1/billing/ack",
        json!({"ids": acked}),
    )
    .await;
    assert_eq!(
        (status, body["settled"].clone()),
        (StatusCode::OK, json!(4))
    );
    let (status, _) = send(
        &server,
        "POST",
        "/subscriptions/order-1/billing/nack",
        json!({"ids": [by_revision(2)], "action": "park", "reason": "bad address"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        &server,
        "POST",
        "/subscriptions/order-1/billing/nack",
        json!({"ids": [by_revision(5)], "action": "retry", "reason": "busy"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The retried one comes again to whoever has room, with its retry count.
    let again = tokio::select! {
        m = one.next() => m.unwrap(),
        m = two.next() => m.unwrap(),
    };
    assert_eq!(
        (
            again["event"]["revision"].clone(),
            again["retry_count"].clone()
        ),
        (json!(5), json!(1))
    );
    let (status, _) = send(
        &server,
        "POST",
        "/subscriptions/order-1/billing/ack",
        json!({"ids": [id(&again)]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The parked one is in the parked stream, readable as any stream.
    let (status, parked) = server
        .get("/streams/$persistentsubscription-order-1::billing-parked")
        .await;
    assert_eq!(status, StatusCode::OK, "{parked}");
    let parked = parked["events"].as_array().unwrap().clone();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["type"], "MessageParked");
    let record: Value = parked[0]["data"].clone();
    assert_eq!(record["revision"], 2);
    assert!(record["reason"].as_str().unwrap().contains("bad address"));

    // An ack of an id not in flight changes nothing.
    let (status, error) = send(
        &server,
        "POST",
        "/subscriptions/order-1/billing/ack",
        json!({"ids": [by_revision(0)]}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error["error"].as_str().unwrap().contains("in flight"),
        "{error}"
    );

    // Replayed, the parked message comes again, first try.
    let (status, replayed) = send(
        &server,
        "POST",
        "/subscriptions/order-1/billing/replay-parked",
        json!(null),
    )
    .await;
    assert_eq!(
        (status, replayed["replayed"].clone()),
        (StatusCode::OK, json!(1))
    );
    let back = tokio::select! {
        m = one.next() => m.unwrap(),
        m = two.next() => m.unwrap(),
    };
    assert_eq!(
        (
            back["event"]["revision"].clone(),
            back["retry_count"].clone()
        ),
        (json!(2), json!(0))
    );
    send(
        &server,
        "POST",
        "/subscriptions/order-1/billing/ack",
        json!({"ids": [id(&back)]}),
    )
    .await;

    // Metrics per group.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = server
        .client
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "subscription_group_consumers{source=\"order-1\",group=\"billing\"} 2",
        "subscription_group_in_flight{source=\"order-1\",group=\"billing\"} 0",
        "subscription_group_parked{source=\"order-1\",group=\"billing\"} 0",
        "subscription_group_retries{source=\"order-1\",group=\"billing\"} 1",
        "subscription_group_lag_events{source=\"order-1\",group=\"billing\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // Listed; deleted; gone.
    let (_, list) = server.get("/subscriptions").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    drop((one, two));
    let response = server
        .client
        .delete(server.at("/subscriptions/order-1/billing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = server.get("/subscriptions/order-1/billing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_are_refused_and_write_nothing() {
    let server = start().await;
    server.append("cart-1", None, events(1, "Added")).await;
    let (status, _) = send(&server, "POST", "/subscriptions/cart-1/g", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let head = server.store.head();
    for (method, path, body, expected) in [
        (
            "POST",
            "/subscriptions/cart-1/g",
            json!({}),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            "/subscriptions/cart-1/h",
            json!({"settings": {"read_batch_size": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/subscriptions/cart-1/h",
            json!({"settings": {"no_such_setting": 1}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/subscriptions/cart-1/h",
            json!({"filter": {"stream_prefixes": ["x"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/subscriptions/cart-1/h",
            json!({"settings": {"strategy": "random"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/subscriptions/cart-1/nope",
            json!({}),
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            "/subscriptions/cart-1/nope",
            json!(null),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/subscriptions/cart-1/g/ack",
            json!({"ids": []}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/subscriptions/cart-1/g/ack",
            json!({"ids": ["not-a-uuid"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/subscriptions/cart-1/g/nack",
            json!({"ids": [uuid::Uuid::now_v7()], "action": "explode"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/subscriptions/cart-1/g/ack",
            json!({"ids": [uuid::Uuid::now_v7()]}),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            "/subscriptions/cart-1/h",
            json!({"settings": {"read_batch_size": 50, "live_buffer_size": 10}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/subscriptions/$all/h",
            json!({"filter": {"stream_regex": "(unclosed"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/subscriptions/cart-1/a::b",
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/subscriptions/cart-1/h",
            json!({"settings": {"live_buffer_size": 20.0, "read_batch_size": 1e3}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/subscriptions/cart-1/h",
            json!({"settings": {"live_buffer_size": 2.5}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/subscriptions/cart-1/g/replay-parked?stop_at=9223372036854775808",
            json!(null),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/subscriptions/cart-1/nope/ack",
            json!({"ids": [uuid::Uuid::now_v7()]}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = send(&server, method, path, body).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    let response = server
        .client
        .get(server.at("/subscriptions/cart-1/g/messages?capacity=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A create or update needs a body (`{}` for every default).
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let response = server
            .client
            .request(method.clone(), server.at("/subscriptions/cart-1/g"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{method}");
    }
    assert_eq!(server.store.head(), head, "nothing written");
    server.stop().await;
}

const TOKENS: &str = r#"
[[token]]
name = "admin"
secret = "admin-0123456789"
admin = [""]

[[token]]
name = "orders"
secret = "orders-0123456789"
read = ["order-"]

[[token]]
name = "carts"
secret = "carts-0123456789"
admin = ["cart-"]
"#;

fn client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_group_takes_read_on_its_source_and_managing_it_admin() {
    let config = factum_server::Config {
        auth: Some(Arc::new(
            factum_server::auth::Auth::from_toml(TOKENS).unwrap(),
        )),
        ..Default::default()
    };
    let mut server = start_with(config).await;
    server.client = client("admin-0123456789");
    server.append("order-1", None, events(2, "Placed")).await;
    let (status, _) = send(&server, "POST", "/subscriptions/order-1/g", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(
        &server,
        "POST",
        "/subscriptions/$all/everything",
        json!({"filter": {"exclude_system": true}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Read on order- streams: reads and acks the order group, manages nothing, sees no $all group.
    server.client = client("orders-0123456789");
    let (status, _) = server.get("/subscriptions/order-1/g").await;
    assert_eq!(status, StatusCode::OK);
    let mut messages = Messages::open(&server, "order-1/g", "").await;
    let first = messages.next().await.unwrap();
    let (status, _) = send(
        &server,
        "POST",
        "/subscriptions/order-1/g/ack",
        json!({"ids": [first["id"]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for (method, path) in [
        ("PUT", "/subscriptions/order-1/g"),
        ("DELETE", "/subscriptions/order-1/g"),
        ("POST", "/subscriptions/order-1/g/replay-parked"),
        ("POST", "/subscriptions/order-1/other"),
        ("GET", "/subscriptions/$all/everything"),
        ("GET", "/subscriptions/$all/everything/messages"),
    ] {
        let (status, body) = send(&server, method, path, json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    let (_, list) = server.get("/subscriptions").await;
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["g"]);

    // Admin on cart- streams manages cart groups only.
    server.client = client("carts-0123456789");
    let (status, _) = send(&server, "POST", "/subscriptions/cart-9/c", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(&server, "POST", "/subscriptions/$all/c", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(
        &server,
        "POST",
        "/subscriptions/$all/c",
        json!({"filter": {"stream_prefixes": ["cart-"]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "a filter inside its rights");
    // Without a token, nothing.
    server.client = reqwest::Client::new();
    let (status, _) = server.get("/subscriptions").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    drop(messages);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_has_the_group_endpoints() {
    let server = start().await;
    let (_, doc) = server.get("/openapi.json").await;
    for path in [
        "/subscriptions",
        "/subscriptions/{source}/{group}",
        "/subscriptions/{source}/{group}/messages",
        "/subscriptions/{source}/{group}/ack",
        "/subscriptions/{source}/{group}/nack",
        "/subscriptions/{source}/{group}/replay-parked",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    server.stop().await;
}
