//! The HTTP API against a real server on the embedded store: every endpoint, every error status
//! with the input that causes it (and that nothing was written), server-sent events that resume
//! without gap or duplicate, metrics, and shutdown.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::Counting;

use common::{Sse, events, start, start_with};

use std::sync::Arc;
use std::time::Duration;

use factum_core::EventStore;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_reads_streams() {
    let server = start().await;
    let (status, body) = server
        .append("order-1", Some("no-stream"), events(3, "Placed"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"first_revision": 0, "last_revision": 2, "position": 2})
    );
    let id = uuid::Uuid::now_v7();
    let (status, body) = server
        .append(
            "order-1",
            Some("2"),
            json!([{"type": "Paid", "data": {"cents": 5}, "id": id}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_revision"], 3);

    let (status, page) = server.get("/streams/order-1?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["events"][0]["data"], json!({"n": 0}));
    assert_eq!(page["events"][0]["metadata"], json!({"by": "test"}));
    assert_eq!(page["events"][0]["type"], "Placed");
    assert_eq!(page["events"][0]["stream"], "order-1");
    assert_eq!(page["next"], 2);
    let (_, page) = server.get("/streams/order-1?from=2").await;
    assert_eq!(page["events"][1]["id"], id.to_string());
    assert_eq!(page["next"], 4);
    let (_, page) = server
        .get("/streams/order-1?direction=backwards&limit=3")
        .await;
    let revisions: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, [3, 2, 1]);
    assert_eq!(page["next"], 0);
    let (_, page) = server
        .get("/streams/order-1?direction=backwards&from=0")
        .await;
    assert_eq!(page["next"], Value::Null);

    // Data comes back as it was sent, byte for byte (key order and spacing kept).
    let response = server
        .client
        .post(server.at("/streams/raw-1"))
        .body(r#"[{"type": "T", "data": {"zeta":1,"alpha":2}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    for path in ["/streams/raw-1", "/all?from=0"] {
        let text = server
            .client
            .get(server.at(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains(r#""data":{"zeta":1,"alpha":2}"#),
            "{path}: {text}"
        );
    }

    let (status, body) = server.get("/streams/order-404").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("order-404"));

    // An idempotent retry: the same id again returns the original result and writes nothing.
    let head = server.store.head();
    let (status, body) = server
        .append(
            "order-1",
            Some("2"),
            json!([{"type": "Paid", "data": {"cents": 5}, "id": id}]),
        )
        .await;
    assert_eq!(
        (status, body["first_revision"].clone()),
        (StatusCode::CREATED, json!(3))
    );
    assert_eq!(server.store.head(), head);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expected_revisions_are_conflicts_and_write_nothing() {
    let server = start().await;
    server.append("cart-1", None, events(2, "Added")).await;
    let head = server.store.head();
    for (expected, want_expected, actual) in [
        ("no-stream", json!("no-stream"), json!(1)),
        ("0", json!(0), json!(1)),
        ("7", json!(7), json!(1)),
    ] {
        let (status, body) = server
            .append("cart-1", Some(expected), events(1, "Added"))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{expected}: {body}");
        assert_eq!(body["expected"], want_expected);
        assert_eq!(body["actual"], actual);
    }
    let (status, body) = server
        .append("cart-2", Some("exists"), events(1, "Added"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["actual"], Value::Null);
    assert_eq!(server.store.head(), head);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_and_writes_nothing() {
    let server = start_with(factum_server::Config {
        max_body_bytes: 64 * 1024,
        ..factum_server::Config::default()
    })
    .await;
    server.append("s-1", None, events(1, "A")).await;
    let head = server.store.head();
    let raw = |stream: &str, headers: Vec<(&'static str, &'static str)>, body: String| {
        let mut request = server
            .client
            .post(server.at(&format!("/streams/{stream}")))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request
    };
    let huge = format!(
        "[{{\"type\":\"A\",\"data\":\"{}\"}}]",
        "x".repeat(100 * 1024)
    );
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            raw("s-1", vec![], "[{\"type\":".into()),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            raw("s-1", vec![], "{\"type\":\"A\",\"data\":1}".into()),
            StatusCode::BAD_REQUEST,
            "expected a sequence",
        ),
        (
            raw("s-1", vec![], "[]".into()),
            StatusCode::BAD_REQUEST,
            "no event",
        ),
        (
            raw("s-1", vec![], "[{\"type\":5,\"data\":1}]".into()),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            raw("s-1", vec![], "[{\"data\":1}]".into()),
            StatusCode::BAD_REQUEST,
            "missing field `type`",
        ),
        (
            raw("s-1", vec![], "[{\"type\":\"\",\"data\":1}]".into()),
            StatusCode::BAD_REQUEST,
            "event 0",
        ),
        (
            raw(
                "s-1",
                vec![],
                "[{\"type\":\"A\",\"data\":1},{\"type\":\"B\",\"data\":1,\"metadata\":[1]}]".into(),
            ),
            StatusCode::BAD_REQUEST,
            "event 1: invalid input: metadata must be a JSON object",
        ),
        (
            raw(
                "s-1",
                vec![],
                "[{\"type\":\"A\",\"data\":1,\"id\":\"nope\"}]".into(),
            ),
            StatusCode::BAD_REQUEST,
            "UUID",
        ),
        (
            raw(
                "s-1",
                vec![],
                "[{\"type\":\"A\",\"data\":1,\"extra\":true}]".into(),
            ),
            StatusCode::BAD_REQUEST,
            "unknown field `extra`",
        ),
        (
            raw(
                "s-1",
                vec![("Expected-Revision", "soon")],
                "[{\"type\":\"A\",\"data\":1}]".into(),
            ),
            StatusCode::BAD_REQUEST,
            "Expected-Revision",
        ),
        (
            raw(
                "s-1?validate=true",
                vec![],
                "[{\"type\":\"A\",\"data\":1}]".into(),
            ),
            StatusCode::BAD_REQUEST,
            "unknown field `validate`",
        ),
        (
            raw("%24system", vec![], "[{\"type\":\"A\",\"data\":1}]".into()),
            StatusCode::BAD_REQUEST,
            "reserved",
        ),
        (
            raw("s-1", vec![], huge),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too large",
        ),
        // serde would take an event as an array of its fields; the API takes objects only.
        (
            raw("s-1", vec![], "[[\"A\", 1, null, null]]".into()),
            StatusCode::BAD_REQUEST,
            "expected a JSON object",
        ),
        (
            raw(
                "s-1",
                vec![("Expected-Revision", "+0")],
                "[{\"type\":\"A\",\"data\":1}]".into(),
            ),
            StatusCode::BAD_REQUEST,
            "1 to 18 digits",
        ),
        (
            raw(
                "s-1",
                vec![("Expected-Revision", "1234567890123456789")],
                "[{\"type\":\"A\",\"data\":1}]".into(),
            ),
            StatusCode::BAD_REQUEST,
            "1 to 18 digits",
        ),
        (
            raw(
                "s-1",
                vec![],
                format!("[{{\"type\":\"{}\",\"data\":1}}]", "é".repeat(257)),
            ),
            StatusCode::BAD_REQUEST,
            "257 characters, the limit is 256",
        ),
    ];
    for (request, status, message) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{message}");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(message), "expected '{message}' in: {error}");
        assert_eq!(
            server.store.head(),
            head,
            "{message}: something was written"
        );
    }

    // Bad query parameters of reads.
    for (path, message) in [
        ("/streams/s-1?limit=0", "limit 0"),
        ("/streams/s-1?limit=5000", "limit 5000"),
        ("/streams/s-1?direction=sideways", "unknown variant"),
        ("/streams/s-1?from=-1", "from"),
        ("/streams/s-1?colour=red", "unknown field `colour`"),
        ("/all?limit=abc", "limit"),
        ("/streams?after=", "stream name"),
        ("/health?x=1", "unknown field"),
        ("/all/subscribe?from=x", "from"),
        ("/all/subscribe?from=1&from=2", "from is given twice"),
        ("/all/subscribe?from=9223372036854775808", "from"),
        ("/all/subscribe?stream=a-", "unknown parameter 'stream'"),
        (
            "/all?from=9223372036854775808",
            "beyond the largest position",
        ),
        ("/streams/s-1?from=18446744073709551616", "from"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{path}: expected '{message}' in {body}"
        );
    }
    let last_event_id = server
        .client
        .get(server.at("/all/subscribe"))
        .header("Last-Event-ID", "1234567890123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(last_event_id.status(), StatusCode::BAD_REQUEST);
    for metadata in [
        "[null, null]",
        "{\"max_count\": 1.5}",
        "{\"max_count\": 1e19}",
    ] {
        let response = server
            .client
            .put(server.at("/streams/s-1/metadata"))
            .header("content-type", "application/json")
            .body(metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{metadata}");
    }
    let (status, _) = server.get("/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(server.store.head(), head);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route_and_the_index_is_made_from_it() {
    let config = factum_server::Config {
        max_page: 250,
        ..factum_server::Config::default()
    };
    let server = start_with(config.clone()).await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        serde_json::to_value(factum_server::openapi(&config)).unwrap()
    );
    // Without tokens the description asks for none.
    assert!(doc.get("security").is_none(), "{}", doc["security"]);
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            assert!(operation["summary"].is_string(), "{method} {path}");
            assert!(operation["responses"]["400"].is_object(), "{method} {path}");
            assert!(operation.get("security").is_none(), "{method} {path}");
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["name"] == "limit" {
                    assert_eq!(parameter["schema"]["maximum"], 250, "{method} {path}");
                }
            }
        }
    }
    operations.sort();
    for expected in [
        "DELETE /streams/{stream}",
        "GET /",
        "GET /all",
        "GET /all/subscribe",
        "GET /health",
        "GET /metrics",
        "GET /openapi.json",
        "GET /processors",
        "GET /projections",
        "GET /streams",
        "GET /streams/{stream}",
        "GET /streams/{stream}/metadata",
        "GET /streams/{stream}/subscribe",
        "POST /streams/{stream}",
        "PUT /streams/{stream}/metadata",
    ] {
        assert!(
            operations.contains(&expected.to_owned()),
            "{expected} is not described"
        );
    }
    // Every described operation is routed: none answers "no such endpoint" or 405.
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        if path.ends_with("/subscribe") {
            continue;
        }
        let path = path.replace("{stream}", "described");
        let response = server
            .client
            .request(method.parse().unwrap(), server.at(&path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_ne!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{operation}"
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains("no such endpoint"), "{operation}: {body}");
    }
    // The index at / (for clients that are not browsers) lists the same operations.
    let (status, index) = server.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index["openapi"], "/openapi.json");
    let mut listed: Vec<String> = index["endpoints"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    listed.sort();
    assert_eq!(listed, operations);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_is_paged_in_log_order() {
    let server = start().await;
    for i in 0..5 {
        server.append(&format!("s-{i}"), None, events(3, "E")).await;
    }
    let mut from = 0;
    let mut positions = Vec::new();
    loop {
        let (status, page) = server.get(&format!("/all?from={from}&limit=4")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["head"], 15);
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(page["next"], from);
            break;
        }
        positions.extend(events.iter().map(|e| e["position"].as_u64().unwrap()));
        from = page["next"].as_u64().unwrap();
    }
    assert_eq!(positions, (0..15).collect::<Vec<_>>());

    // Newest first, from the end or from a position, until `next` runs out.
    let mut from = String::new();
    let mut positions = Vec::new();
    loop {
        let (status, page) = server
            .get(&format!("/all?direction=backwards&limit=4{from}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        positions.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["position"].as_u64().unwrap()),
        );
        match page["next"].as_u64() {
            Some(next) => from = format!("&from={next}"),
            None => break,
        }
    }
    assert_eq!(positions, (0..15).rev().collect::<Vec<_>>());
    let (_, page) = server.get("/all?direction=backwards&from=6&limit=3").await;
    let positions: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!((positions, page["next"].as_u64()), (vec![6, 5, 4], Some(3)));
    let (status, page) = server.get("/all?direction=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_tombstones_metadata_and_listing() {
    let server = start().await;
    for name in ["acc-1", "acc-2", "acc-3", "other-1"] {
        server.append(name, None, events(1, "Opened")).await;
    }
    let (_, listing) = server.get("/streams?prefix=acc-&limit=2").await;
    let names: Vec<&str> = listing["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acc-1", "acc-2"]);
    assert_eq!(listing["next"], "acc-2");
    let (_, listing) = server.get("/streams?prefix=acc-&after=acc-2").await;
    assert_eq!(listing["streams"][0]["name"], "acc-3");
    assert_eq!(listing["next"], Value::Null);

    // Soft delete: not found, then written again.
    let response = server
        .client
        .delete(server.at("/streams/acc-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.get("/streams/acc-1").await.0, StatusCode::NOT_FOUND);
    let (status, body) = server
        .append("acc-1", Some("no-stream"), events(1, "Reopened"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["first_revision"], 1);

    // A delete with a wrong expected revision is a conflict.
    let response = server
        .client
        .delete(server.at("/streams/acc-2"))
        .header("Expected-Revision", "9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);

    // Tombstone: gone for good.
    let response = server
        .client
        .delete(server.at("/streams/acc-2?tombstone=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let head = server.store.head();
    assert_eq!(server.get("/streams/acc-2").await.0, StatusCode::GONE);
    assert_eq!(
        server.append("acc-2", None, events(1, "A")).await.0,
        StatusCode::GONE
    );
    assert_eq!(
        server.get("/streams/acc-2/subscribe").await.0,
        StatusCode::GONE
    );
    assert_eq!(server.store.head(), head);

    // Metadata.
    assert_eq!(
        server.get("/streams/acc-3/metadata").await,
        (StatusCode::OK, json!({}))
    );
    let response = server
        .client
        .put(server.at("/streams/acc-3/metadata"))
        .json(&json!({"max_count": 1, "custom": {"owner": "ann"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        server.get("/streams/acc-3/metadata").await.1,
        json!({"max_count": 1, "custom": {"owner": "ann"}})
    );
    server.append("acc-3", None, events(2, "More")).await;
    let (_, page) = server.get("/streams/acc-3").await;
    assert_eq!(
        page["events"].as_array().unwrap().len(),
        1,
        "max_count hides older events"
    );
    let head = server.store.head();
    let response = server
        .client
        .put(server.at("/streams/acc-3/metadata"))
        .json(&json!({"max_cuont": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(server.store.head(), head);
    server.stop().await;
}

/// The next `count` events of a subscription: their ids and streams.
async fn ids_and_streams(sse: &mut Sse, count: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let (id, event) = sse.next().await.unwrap();
        seen.push((id, event["stream"].as_str().unwrap().to_owned()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_live_and_resume_without_gap_or_duplicate() {
    let server = start().await;
    server.append("a-1", None, events(5, "E")).await;
    server.append("b-1", None, events(5, "E")).await;

    // $all: catch up, then live; drop after 7 events and resume from the last id.
    let mut all = Sse::open(&server, "/all/subscribe", None).await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        let (id, event) = all.next().await.unwrap();
        assert_eq!(event["position"], id);
        seen.push(id);
    }
    drop(all);
    server.append("a-1", None, events(3, "Later")).await;
    let mut all = Sse::open(&server, "/all/subscribe", seen.last().copied()).await;
    while seen.len() < 13 {
        seen.push(all.next().await.unwrap().0);
    }
    assert_eq!(seen, (0..13).collect::<Vec<_>>());
    // Live: an event appended now arrives.
    server.append("b-1", None, events(1, "Live")).await;
    assert_eq!(all.next().await.unwrap().0, 13);

    // $all filtered on the server: by stream prefix, by type, or both (each repeatable);
    // resuming goes on after the last id sent, past the events the filter skipped.
    let mut b_only = Sse::open(&server, "/all/subscribe?stream_prefix=b-", None).await;
    let seen = ids_and_streams(&mut b_only, 6).await;
    assert!(seen.iter().all(|(_, stream)| stream == "b-1"), "{seen:?}");
    assert_eq!(
        seen.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9, 13]
    );
    let mut later = Sse::open(&server, "/all/subscribe?type=Later&type=Live", Some(10)).await;
    let seen = ids_and_streams(&mut later, 3).await;
    assert_eq!(
        seen.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![11, 12, 13]
    );
    let mut both = Sse::open(
        &server,
        "/all/subscribe?stream_prefix=a-&stream_prefix=c-&type=Later&from=0",
        None,
    )
    .await;
    server.append("c-1", None, events(1, "Later")).await;
    server.append("c-1", None, events(1, "Other")).await;
    server.append("a-1", None, events(1, "Later")).await;
    let seen = ids_and_streams(&mut both, 5).await;
    assert_eq!(
        seen,
        vec![
            (10, "a-1".to_owned()),
            (11, "a-1".to_owned()),
            (12, "a-1".to_owned()),
            (14, "c-1".to_owned()),
            (16, "a-1".to_owned()),
        ]
    );
    drop((b_only, later, both));

    // One stream: ids are positions; resuming from one goes on at the next revision.
    let mut stream = Sse::open(&server, "/streams/a-1/subscribe?from=1", None).await;
    let (first, event) = stream.next().await.unwrap();
    assert_eq!((first, event["revision"].clone()), (1, json!(1)));
    let (second, _) = stream.next().await.unwrap();
    drop(stream);
    let mut stream = Sse::open(&server, "/streams/a-1/subscribe", Some(second)).await;
    let revisions: Vec<u64> = {
        let mut revisions = Vec::new();
        for _ in 0..5 {
            revisions.push(stream.next().await.unwrap().1["revision"].as_u64().unwrap());
        }
        revisions
    };
    assert_eq!(revisions, [3, 4, 5, 6, 7]);
    // A Last-Event-ID that is not an event of the stream is refused.
    let response = server
        .client
        .get(server.at("/streams/a-1/subscribe"))
        .header("Last-Event-ID", "6")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Nor is a Last-Event-ID that is not a position.
    for path in ["/streams/a-1/subscribe", "/all/subscribe"] {
        let response = server
            .client
            .get(server.at(path))
            .header("Last-Event-ID", "abc")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"));
    }

    // A stream that does not exist yet is waited for.
    let mut later = Sse::open(&server, "/streams/c-1/subscribe", None).await;
    server.append("c-1", None, events(1, "Born")).await;
    assert_eq!(later.next().await.unwrap().1["stream"], "c-1");
    server.stop().await;
}

/// Followers of `$all` share one reader. One that stops reading falls far behind the shared
/// buffer (16 events here), and must fill the gap from the store; one that joins late, or
/// while nobody else follows, catches up alone. Each still receives every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_that_lag_or_join_late_receive_every_event_once() {
    let server = start_with(factum_server::Config {
        sse_buffer: 16,
        ..factum_server::Config::default()
    })
    .await;
    server.append("x-0", None, events(5, "E")).await;
    let mut steady = Sse::open(&server, "/all/subscribe", None).await;
    let mut stalled = Sse::open(&server, "/all/subscribe?from=2", None).await;
    let mut expected = 5;
    for round in 0..40 {
        let stream = format!("x-{}", round % 7);
        server.append(&stream, None, events(25, "E")).await;
        expected += 25;
        // The steady follower keeps up; the stalled one reads nothing yet.
        for _ in 0..25 {
            steady.next().await.unwrap();
        }
    }
    let mut late = Sse::open(&server, "/all/subscribe?from=990", None).await;
    server.append("x-last", None, events(10, "E")).await;
    expected += 10;
    let mut got = Vec::new();
    while got.len() < (2..expected).collect::<Vec<u64>>().len() {
        let (id, event) = stalled.next().await.unwrap();
        assert_eq!(event["position"], id);
        got.push(id);
    }
    assert_eq!(got, (2..expected).collect::<Vec<u64>>());
    let mut got = Vec::new();
    while got.len() < (990..expected).collect::<Vec<u64>>().len() {
        got.push(late.next().await.unwrap().0);
    }
    assert_eq!(got, (990..expected).collect::<Vec<u64>>());
    // Nobody follows for a while; then a new follower still gets everything from its start.
    drop((steady, stalled, late));
    server.append("x-gap", None, events(30, "E")).await;
    expected += 30;
    let mut again = Sse::open(&server, "/all/subscribe?from=1000", None).await;
    server.append("x-gap", None, events(5, "E")).await;
    expected += 5;
    let mut got = Vec::new();
    while got.len() < (1000..expected).collect::<Vec<u64>>().len() {
        got.push(again.next().await.unwrap().0);
    }
    assert_eq!(got, (1000..expected).collect::<Vec<u64>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let server = start().await;
    server.append("m-1", None, events(4, "E")).await;
    assert_eq!(
        server.get("/health").await,
        (StatusCode::OK, json!({"status": "ok", "head": 4}))
    );
    let _subscriber = Sse::open(&server, "/all/subscribe", None).await;
    let text = server
        .client
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "factum_appends_total 1",
        "factum_appended_events_total 4",
        "factum_subscribers 1",
        "factum_head_position 4",
        "factum_http_requests_total{method=\"POST\",route=\"/streams/{stream}\",status=\"201\"} 1",
        "factum_http_request_duration_seconds_bucket{",
    ] {
        assert!(
            text.contains(expected),
            "'{expected}' missing from:\n{text}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_appends_in_flight_and_ends_subscriptions() {
    let server = start().await;
    let mut subscriber = Sse::open(&server, "/all/subscribe", None).await;
    let appends: Vec<_> = (0..20)
        .map(|i| {
            let client = server.client.clone();
            let url = server.at(&format!("/streams/in-flight-{i}"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&events(1, "E"))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    // Let the appends reach the server, then stop it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let store = server.store.clone();
    server.stop().await;
    let mut created = 0u64;
    for append in appends {
        // Each append either completed (and is durable) or never reached the server.
        if let Ok(status) = append.await.unwrap() {
            assert_eq!(status, StatusCode::CREATED);
            created += 1;
        }
    }
    assert_eq!(store.head(), created);
    // The subscription delivered what it saw, then ended.
    let mut delivered = 0;
    while subscriber.next().await.is_some() {
        delivered += 1;
    }
    assert!(delivered <= created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_answers_503_and_writes_nothing() {
    let server = start().await;
    server.append("s-1", None, events(1, "E")).await;
    server.store.close().unwrap();
    let (status, body) = server.append("s-1", None, events(1, "E")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("closed"));
    assert_eq!(server.store.head(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_and_projections_report_their_lag_and_dead_letters() {
    use factum_projections::{Projector, ReadModel, SqliteReadModel};
    use factum_toolkit::{EventProcessor, RetryPolicy, handler_fn};

    let dir = tempfile::tempdir().unwrap();
    let read_model: Arc<dyn ReadModel> = Arc::new(
        SqliteReadModel::open(dir.path().join("read.db"))
            .await
            .unwrap(),
    );
    let server = start_with(factum_server::Config {
        read_model: Some(read_model.clone()),
        ..factum_server::Config::default()
    })
    .await;
    let store: Arc<dyn EventStore> = Arc::new(server.store.clone());
    server.append("order-1", None, events(3, "Placed")).await;
    server.append("order-2", None, events(1, "Broken")).await;

    // A processor whose handler fails on one event type: it parks a dead letter.
    let processor = EventProcessor::builder("billing", store.clone())
        .on(
            "Broken",
            handler_fn("bill", |_event| async { Err("no price".into()) }),
        )
        .retry(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    processor.run_until(4).await.unwrap();
    // A projection that has applied the first 2 events.
    Projector::new(store.clone(), read_model.clone(), Counting)
        .run_until(2)
        .await
        .unwrap();
    server.append("order-3", None, events(2, "Placed")).await;
    let head = server.store.head();

    let (status, body) = server.get("/processors").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let billing = &body["processors"][0];
    assert_eq!(billing["name"], "billing");
    assert_eq!(billing["dead_letters"], 1);
    let checkpoint = billing["checkpoint"].as_u64().unwrap();
    assert_eq!(billing["behind"], head - checkpoint - 1);
    assert!(billing["behind"].as_u64().unwrap() >= 2);

    let (status, body) = server.get("/projections").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["read_model"], "sqlite");
    let counting = &body["projections"][0];
    assert_eq!(counting["name"], "counting");
    assert_eq!(counting["behind"], head - 2);

    let text = server
        .client
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        format!(
            "factum_processor_lag_events{{processor=\"billing\"}} {}",
            head - checkpoint - 1
        ),
        "factum_processor_dead_letters{processor=\"billing\"} 1".to_owned(),
        format!(
            "factum_projection_lag_events{{projection=\"counting\"}} {}",
            head - 2
        ),
    ] {
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    assert!(text.contains("factum_projection_lag_seconds{projection=\"counting\"}"));

    // Without a read model the server lists no projections.
    let plain = start().await;
    assert_eq!(
        plain.get("/projections").await,
        (
            StatusCode::OK,
            json!({"read_model": null, "projections": []})
        )
    );
    plain.stop().await;
    drop(processor);
    server.stop().await;
}
