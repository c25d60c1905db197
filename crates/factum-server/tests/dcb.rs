//! Dynamic consistency boundaries over HTTP, on the embedded store and PostgreSQL: tags on
//! stream appends, `POST /dcb/read`, `POST /dcb/append` with a condition and expected states
//! (409 naming the failed condition, nothing written), `GET /dcb/subscribe` live and resumed,
//! bad input, and the rights each takes.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::{Sse, serve};
use factum_server::auth::Auth;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = client
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

fn positions(read: &Value) -> Vec<u64> {
    read["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

/// The checks, against a server at `base` on an empty store.
async fn dcb_over_http(base: &str) {
    let client = reqwest::Client::new();
    let empty = post(&client, base, "/dcb/read", json!({})).await;
    assert_eq!(empty, (StatusCode::OK, json!({"events": [], "head": null})));
    // Tags on a stream append.
    let (status, body) = post(
        &client,
        base,
        "/streams/course-c1",
        json!([
            {"type": "CourseDefined", "data": {"capacity": 2}, "tags": ["course:c1"]},
            {"type": "Noted", "data": {}}
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let course = json!({"items": [{"types": ["StudentEnrolled"], "tags": ["course:c1"]}]});
    let (status, read) = post(&client, base, "/dcb/read", json!({"query": course})).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["events"], json!([]));
    assert_eq!(read["head"], 1);
    // An append conditioned on that read.
    let enrol = |student: &str, after: Value| {
        json!({
            "events": [{"type": "StudentEnrolled", "data": {"student": student},
                        "tags": ["course:c1", format!("student:{student}")]}],
            "condition": {"fail_if_events_match": course, "after": after}
        })
    };
    let (status, body) = post(&client, base, "/dcb/append", enrol("s1", json!(1))).await;
    assert_eq!(
        (status, body.clone()),
        (StatusCode::CREATED, json!({"position": 2})),
        "{body}"
    );
    // The same decision again: the condition fails, naming itself and the event.
    let (status, body) = post(&client, base, "/dcb/append", enrol("s2", json!(1))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["position"], 2, "{body}");
    assert_eq!(body["condition"]["after"], 1, "{body}");
    assert_eq!(body["condition"]["fail_if_events_match"], course, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("condition"),
        "{body}"
    );
    let (_, all) = common_get(&client, base, "/all").await;
    assert_eq!(
        all["events"].as_array().unwrap().len(),
        3,
        "nothing written"
    );
    // Reads: every item, after, limit, backwards; events carry their tags and stream.
    let (_, read) = post(&client, base, "/dcb/read", json!({"query": course})).await;
    assert_eq!(positions(&read), [2]);
    let event = &read["events"][0];
    assert_eq!(event["stream"], "dcb", "no stream named: the dcb stream");
    assert_eq!(event["tags"], json!(["course:c1", "student:s1"]));
    let any_c1 = json!({"items": [{"tags": ["course:c1"]}]});
    let (_, read) = post(
        &client,
        base,
        "/dcb/read",
        json!({"query": any_c1, "backwards": true, "limit": 1}),
    )
    .await;
    assert_eq!(positions(&read), [2]);
    let (_, read) = post(
        &client,
        base,
        "/dcb/read",
        json!({"query": any_c1, "after": 0}),
    )
    .await;
    assert_eq!(positions(&read), [2]);
    // Events in named streams, binary data, expected states.
    let (status, body) = post(
        &client,
        base,
        "/dcb/append",
        json!({
            "events": [
                {"type": "Invoiced", "data": {"n": 1}, "tags": ["invoice:1"], "stream": "invoice-1",
                 "id": "0190d7a0-0000-7000-8000-000000000001", "metadata": {"$correlationId": "r-1"}},
                {"type": "Blob", "data": "00ff10", "content_type": "application/octet-stream", "stream": "invoice-1"}
            ],
            "expected": [{"stream": "invoice-1", "state": "no-stream"}, {"stream": "course-c1", "state": 1}]
        }),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::CREATED, json!({"position": 4}))
    );
    let (_, stream) = common_get(&client, base, "/streams/invoice-1").await;
    assert_eq!(stream["events"][0]["tags"], json!(["invoice:1"]));
    assert_eq!(stream["events"][1]["data"], "00ff10");
    assert_eq!(
        stream["events"][1]["content_type"],
        "application/octet-stream"
    );
    let (status, body) = post(
        &client,
        base,
        "/dcb/append",
        json!({"events": [{"type": "Late", "data": 1, "stream": "invoice-1"}],
               "expected": [{"stream": "invoice-1", "state": "no-stream"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["actual"], 1, "{body}");
    // The same ids again: the original position.
    let retried = json!({"events": [{"type": "Once", "data": 1,
                          "id": "0190d7a0-0000-7000-8000-0000000000aa"}]});
    let first = post(&client, base, "/dcb/append", retried.clone()).await;
    let again = post(&client, base, "/dcb/append", retried).await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(first, again);

    // A subscription by query: what is there, then live; resumed after Last-Event-ID.
    let query = serde_json::to_string(&any_c1).unwrap();
    let path = format!("/dcb/subscribe?query={}", urlencode(&query));
    let open = |path: String, last: Option<u64>| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move { Sse::open_url(&client, &url, last).await }
    };
    let mut live = open(path.clone(), None).await;
    assert_eq!(live.next().await.unwrap().0, 0);
    assert_eq!(live.next().await.unwrap().0, 2);
    let (status, body) = post(&client, base, "/dcb/append", enrol("s3", json!(2))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let position = body["position"].as_u64().unwrap();
    let (id, event) = live.next().await.unwrap();
    assert_eq!(id, position);
    assert_eq!(event["tags"], json!(["course:c1", "student:s3"]));
    let mut resumed = open(path.clone(), Some(2)).await;
    assert_eq!(resumed.next().await.unwrap().0, position);
    let mut after = open(format!("{path}&after=0"), None).await;
    assert_eq!(after.next().await.unwrap().0, 2);

    // Bad input: a clear error, nothing written.
    let (_, before) = common_get(&client, base, "/all?limit=1000").await;
    let head = before["events"].as_array().unwrap().len();
    for (path, body) in [
        ("/dcb/read", json!({"query": {"items": [{"tags": [""]}]}})),
        ("/dcb/read", json!({"query": {"items": [{"typs": ["A"]}]}})),
        ("/dcb/read", json!({"query": [], "extra": 1})),
        ("/dcb/read", json!({"after": -1})),
        ("/dcb/append", json!({"events": []})),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1, "tags": ["a", "a"]}]}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1, "tags": ["x".repeat(129)]}]}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1, "tags": (0..33).map(|i| format!("t{i}")).collect::<Vec<_>>()}]}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1, "stream": "$system"}]}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1}], "condition": {"after": 1}}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1}], "condition": {"fail_if_events_match": {"items": [{"tags": [""]}]}}}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1}], "condition": {"fail_if_events_match": {}, "after": -1}}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1}], "expected": [{"stream": "s", "state": "sometimes"}]}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1}], "expected": [{"stream": "$s", "state": "any"}]}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1}], "expected": {"s": "any"}}),
        ),
        (
            "/dcb/append",
            json!({"events": [{"type": "A", "data": 1, "content_type": "text/plain"}]}),
        ),
    ] {
        let (status, answer) = post(&client, base, path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, answer) = post(
        &client,
        base,
        "/dcb/append",
        json!({"events": [{"type": "A", "data": "zz", "content_type": "application/octet-stream"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let (_, after_bad) = common_get(&client, base, "/all?limit=1000").await;
    assert_eq!(after_bad["events"].as_array().unwrap().len(), head);
    let bad = client
        .get(format!("{base}/dcb/subscribe?query=%7B"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn common_get(client: &reqwest::Client, base: &str, path: &str) -> (StatusCode, Value) {
    let response = client.get(format!("{base}{path}")).send().await.unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcb_over_http_on_the_embedded_store() {
    let (store, _dir) = common::engine();
    let served = serve(store, factum_server::Config::default()).await;
    dcb_over_http(&format!("http://127.0.0.1:{}", served.port)).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcb_over_http_on_postgres() {
    let Some((store, schema)) = common::postgres("dcb_http").await else {
        return;
    };
    let served = serve(store, factum_server::Config::default()).await;
    dcb_over_http(&format!("http://127.0.0.1:{}", served.port)).await;
    served.stop().await;
    common::drop_schema(&schema).await;
}

const TOKENS: &str = r#"
[[token]]
name = "orders-service"
secret = "orders-0123456789"
write = ["order-"]

[[token]]
name = "reader"
secret = "reader-0123456789"
read = [""]

[[token]]
name = "writer-reader"
secret = "both-0123456789x"
read = [""]
write = ["order-"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcb_endpoints_take_the_rights_of_the_streams_they_touch() {
    let (store, _dir) = common::engine();
    let config = factum_server::Config {
        auth: Some(Arc::new(Auth::from_toml(TOKENS).unwrap())),
        ..factum_server::Config::default()
    };
    let served = serve(store.clone(), config).await;
    let base = format!("http://127.0.0.1:{}", served.port);
    let as_token = |token: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    let writer = as_token("orders-0123456789");
    let reader = as_token("reader-0123456789");
    let both = as_token("both-0123456789x");
    let in_orders = json!({"events": [{"type": "Placed", "data": 1, "tags": ["order:1"], "stream": "order-1"}]});
    let conditioned = json!({
        "events": [{"type": "Placed", "data": 1, "tags": ["order:2"], "stream": "order-2"}],
        "condition": {"fail_if_events_match": {"items": [{"tags": ["order:2"]}]}}
    });
    let in_dcb = json!({"events": [{"type": "Placed", "data": 1}]});
    // Write on the event's stream is enough without a condition; tags give no right.
    assert_eq!(
        post(&writer, &base, "/dcb/append", in_orders.clone())
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        post(&writer, &base, "/dcb/append", in_dcb).await.0,
        StatusCode::FORBIDDEN
    );
    // A condition reads every stream.
    assert_eq!(
        post(&writer, &base, "/dcb/append", conditioned.clone())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&reader, &base, "/dcb/append", conditioned.clone())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&both, &base, "/dcb/append", conditioned).await.0,
        StatusCode::CREATED
    );
    // Expected states of streams take write on them.
    let expecting = json!({"events": [{"type": "Placed", "data": 1, "stream": "order-3"}],
                           "expected": [{"stream": "cart-1", "state": "any"}]});
    assert_eq!(
        post(&both, &base, "/dcb/append", expecting).await.0,
        StatusCode::FORBIDDEN
    );
    // Reads and subscriptions read every stream.
    assert_eq!(
        post(&writer, &base, "/dcb/read", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, read) = post(&reader, &base, "/dcb/read", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(positions(&read), [0, 1]);
    let subscribe = writer
        .get(format!("{base}/dcb/subscribe"))
        .send()
        .await
        .unwrap();
    assert_eq!(subscribe.status(), StatusCode::FORBIDDEN);
    let anonymous = reqwest::Client::new();
    assert_eq!(
        post(&anonymous, &base, "/dcb/read", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(store.head(), 2, "refused appends wrote nothing");
    served.stop().await;
}
