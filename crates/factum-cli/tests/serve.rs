//! `factum serve` as a user runs it: it says where it listens, answers HTTP, stops with exit 0
//! on SIGTERM leaving the store closed and its events readable, and refuses to listen beyond
//! loopback without auth.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One HTTP/1.1 request; returns the status code and the body.
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    let mut server = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("FACTUM_DATA_DIR", dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("loopback only"), "{line}");
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();

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
fn refuses_to_listen_beyond_loopback_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("FACTUM_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback only"));
}
