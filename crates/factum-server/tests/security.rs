//! Bearer tokens with rights on stream prefixes (401 without a valid token, 403 without the
//! right, and nothing written either way), and HTTPS with rustls.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::{Sse, certificate, events, start_with, start_with_client};
use factum_core::EventStore;
use factum_server::auth::Auth;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[[token]]
name = "orders-service"
secret = "orders-0123456789"
write = ["order-"]

[[token]]
name = "reader"
secret = "reader-0123456789"
read = [""]

[[token]]
name = "carts-reader"
secret = "carts-0123456789"
read = ["cart-"]

[[token]]
name = "operator"
secret = "operator-0123456789"
admin = [""]
"#;

/// A client that sends `token` with every request (for the SSE reader, which takes none).
fn bearer_client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn call(
    server: &common::Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server.client.request(method, server.at(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"factum\""
        );
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grant_rights_on_stream_prefixes() {
    let server = start_with(factum_server::Config {
        auth: Some(Arc::new(Auth::from_toml(CONFIG).unwrap())),
        ..factum_server::Config::default()
    })
    .await;
    const ORDERS: Option<&str> = Some("orders-0123456789");
    const READER: Option<&str> = Some("reader-0123456789");
    const CARTS: Option<&str> = Some("carts-0123456789");
    const OPERATOR: Option<&str> = Some("operator-0123456789");

    // Open without a token: health (and the UI, the API description).
    assert_eq!(
        call(&server, Method::GET, "/health", None, None).await.0,
        StatusCode::OK
    );
    // Everything else: 401 without a token or with an unknown one, and nothing is written.
    for token in [None, Some("orders-012345678X"), Some("")] {
        for (method, path) in [
            (Method::POST, "/streams/order-1"),
            (Method::GET, "/streams/order-1"),
            (Method::GET, "/streams"),
            (Method::GET, "/all"),
            (Method::GET, "/all/subscribe"),
            (Method::GET, "/metrics"),
            (Method::DELETE, "/streams/order-1"),
            (Method::GET, "/no-such-endpoint"),
        ] {
            let (status, body) =
                call(&server, method.clone(), path, token, Some(events(1, "E"))).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        }
    }
    assert_eq!(server.store.head(), 0);

    // The orders service writes (and so reads) order streams, and nothing else.
    let (status, body) = call(
        &server,
        Method::POST,
        "/streams/order-1",
        ORDERS,
        Some(events(2, "Placed")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        call(&server, Method::GET, "/streams/order-1", ORDERS, None)
            .await
            .0,
        StatusCode::OK
    );
    for (method, path) in [
        (Method::POST, "/streams/cart-1"),
        (Method::GET, "/streams/cart-1"),
        (Method::GET, "/all"),
        (Method::GET, "/all/subscribe"),
        (Method::DELETE, "/streams/order-1"),
        (Method::PUT, "/streams/order-1/metadata"),
        (Method::GET, "/streams/cart-1/subscribe"),
    ] {
        let body = if method == Method::PUT {
            json!({"max_count": 1})
        } else {
            events(1, "E")
        };
        let (status, body) = call(&server, method.clone(), path, ORDERS, Some(body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("orders-service"),
            "{body}"
        );
    }
    assert_eq!(server.store.head(), 2);
    // Metrics take any valid token.
    assert_eq!(
        call(&server, Method::GET, "/metrics", ORDERS, None).await.0,
        StatusCode::OK
    );

    // The operator administers every stream.
    let (status, body) = call(
        &server,
        Method::POST,
        "/streams/cart-1",
        OPERATOR,
        Some(events(1, "Added")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        &server,
        Method::PUT,
        "/streams/cart-1/metadata",
        OPERATOR,
        Some(json!({"max_count": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A reader of every stream reads $all and follows it, but writes nothing.
    let (status, body) = call(&server, Method::GET, "/all", READER, None).await;
    // Two orders, a cart, and the cart's metadata.
    assert_eq!(
        (status, body["events"].as_array().unwrap().len()),
        (StatusCode::OK, 4)
    );
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/streams/order-2",
            READER,
            Some(events(1, "E"))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let mut server = server;
    let plain = std::mem::replace(&mut server.client, bearer_client(READER));
    let mut all = Sse::open(&server, "/all/subscribe", None).await;
    assert_eq!(all.next().await.unwrap().0, 0);
    drop(all);
    server.client = plain;

    // A reader of carts follows $all filtered to carts (or narrower), and no wider.
    for (path, status) in [
        ("/all/subscribe", StatusCode::FORBIDDEN),
        ("/all/subscribe?stream_prefix=car", StatusCode::FORBIDDEN),
        (
            "/all/subscribe?stream_prefix=cart-&stream_prefix=order-",
            StatusCode::FORBIDDEN,
        ),
        ("/all/subscribe?type=Added", StatusCode::FORBIDDEN),
    ] {
        let (got, body) = call(&server, Method::GET, path, CARTS, None).await;
        assert_eq!(got, status, "{path}: {body}");
    }
    let plain = std::mem::replace(&mut server.client, bearer_client(CARTS));
    let mut cart_events = Sse::open(&server, "/all/subscribe?stream_prefix=cart-", None).await;
    let (id, event) = cart_events.next().await.unwrap();
    assert_eq!((id, event["stream"].as_str()), (2, Some("cart-1")));
    drop(cart_events);
    server.client = plain;

    // A reader of carts sees only cart streams in a listing.
    let (status, body) = call(&server, Method::GET, "/streams", CARTS, None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cart-1"]);
    let (_, body) = call(&server, Method::GET, "/streams", OPERATOR, None).await;
    assert_eq!(body["streams"].as_array().unwrap().len(), 2);

    // The operator deletes.
    assert_eq!(
        call(&server, Method::DELETE, "/streams/order-1", OPERATOR, None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&server, Method::GET, "/streams/order-1", OPERATOR, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // The description is open, and says which operations need a token.
    let (status, doc) = call(&server, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["security"], serde_json::json!([{ "token": [] }]));
    assert_eq!(
        doc["components"]["securitySchemes"]["token"]["scheme"],
        "bearer"
    );
    for (path, method, open) in [
        ("/", "get", true),
        ("/health", "get", true),
        ("/openapi.json", "get", true),
        ("/metrics", "get", false),
        ("/streams/{stream}", "post", false),
        ("/all", "get", false),
    ] {
        let operation = &doc["paths"][path][method];
        if open {
            assert_eq!(operation["security"], serde_json::json!([{}]), "{path}");
            assert!(operation["responses"]["401"].is_null(), "{path}");
        } else {
            assert!(operation["security"].is_null(), "{path}");
            assert!(operation["responses"]["401"].is_object(), "{path}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(dir.path());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let server = start_with_client(
        factum_server::Config {
            tls: Some(factum_server::tls::load(&cert, &key).unwrap()),
            ..factum_server::Config::default()
        },
        "https",
        client,
    )
    .await;
    assert!(server.url.starts_with("https://"));
    let (status, body) = server.append("order-1", None, events(2, "Placed")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.get("/streams/order-1").await;
    assert_eq!(
        (status, body["events"].as_array().unwrap().len()),
        (StatusCode::OK, 2)
    );
    // Plain HTTP to the TLS port gets no answer; a client that does not trust the certificate
    // fails its handshake; the server goes on serving.
    let plain = server.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/health")).await.is_err());
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting.get(server.at("/health")).send().await.is_err());
    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    server.stop().await;
}

#[test]
fn bad_tls_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = certificate(other.path());
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.path().join("missing.pem");
    for (cert, key, reason) in [
        (&empty, &key, "no CERTIFICATE"),
        (&missing, &key, "certificate"),
        (&cert, &empty, "key"),
        (&cert, &other_key, "TLS"),
    ] {
        let error = factum_server::tls::load(cert, key).unwrap_err().to_string();
        assert!(error.contains(reason), "{}: {error}", cert.display());
    }
}
