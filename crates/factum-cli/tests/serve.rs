//! `factum serve` as a user runs it: it says where it listens, answers HTTP, stops with exit 0
//! on SIGTERM leaving the store closed and its events readable, and refuses to listen beyond
//! loopback without auth.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// One HTTP/1.1 request; returns the status code and the body.
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_as(address, method, path, body, "")
}

/// One HTTP/1.1 request with extra header lines (each ending in `\r\n`).
fn http_as(address: &str, method: &str, path: &str, body: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serves_http_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut stderr, line, port) =
        common::spawn_serve(&["--listen", "127.0.0.1:0"], dir.path());
    assert!(line.contains("loopback only"), "{line}");
    let address = format!("127.0.0.1:{port}");

    let (status, body) = http(
        &address,
        "POST",
        "/streams/cart-1",
        r#"[{"type": "ItemAdded", "data": {"sku": "apple"}}]"#,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(&address, "GET", "/health", "");
    assert_eq!(status, 200);
    assert!(body.contains("\"head\":1"), "{body}");

    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
    assert!(
        rest.contains(&format!("factum --server http://127.0.0.1:{port} read")),
        "{rest}"
    );

    // The store was closed: another process opens it and reads the event.
    let read = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["read", "cart-1"])
        .env("FACTUM_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(read.status.success());
    assert!(String::from_utf8_lossy(&read.stdout).contains("apple"));
}

#[test]
fn refuses_bad_settings_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("FACTUM_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback only"));

    // A read model that is not there is refused before anything listens.
    let output = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--listen", "127.0.0.1:0", "--read-model"])
        .arg(dir.path().join("missing.db"))
        .env("FACTUM_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no read model"));
}

#[test]
fn with_auth_it_listens_beyond_loopback_and_asks_for_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let auth = common::write_auth(dir.path());
    let (mut server, _stderr, line, port) = common::spawn_serve(
        &["--listen", "0.0.0.0:0", "--auth", auth.to_str().unwrap()],
        &dir.path().join("data"),
    );
    assert!(
        line.contains("http://0.0.0.0:") && line.contains("1 tokens"),
        "{line}"
    );
    let address = format!("127.0.0.1:{port}");
    let event = r#"[{"type": "ItemAdded", "data": {}}]"#;
    assert_eq!(http(&address, "POST", "/streams/cart-1", event).0, 401);
    let bearer = "Authorization: Bearer app-secret-0123456789\r\n";
    assert_eq!(
        http_as(&address, "POST", "/streams/cart-1", event, bearer).0,
        201
    );
    assert_eq!(
        http_as(&address, "POST", "/streams/order-1", event, bearer).0,
        403
    );
    assert_eq!(http(&address, "GET", "/health", "").0, 200);
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());

    // A bad auth file is refused before anything listens.
    std::fs::write(&auth, "[[token]]\nname = \"app\"\nsecret = \"short\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--listen", "127.0.0.1:0", "--auth"])
        .arg(&auth)
        .env("FACTUM_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("shorter than 16"));
}
