//! `factum serve` exports its spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: a
//! receiver on loopback gets the span of a request, in the trace the request's `traceparent`
//! named.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// An OTLP/HTTP receiver: answers every request 200 and sends on each request's path and body.
fn receiver() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (send, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            );
            let _ = send.send((path, body));
        }
    });
    (address, received)
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn serve_exports_the_span_of_a_request_in_the_trace_it_named() {
    let (address, received) = receiver();
    let data = tempfile::tempdir().unwrap();
    let mut server = common::factum_command()
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("FACTUM_DATA_DIR", data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{address}"))
        .env("OTEL_SERVICE_NAME", "factum-under-test")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let port: u16 = line
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /streams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         traceparent: 00-{TRACE_ID}-b7ad6b7169203331-01\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // SIGTERM: the server stops and sends what it has not sent yet.
    Command::new("kill")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    let trace = hex(TRACE_ID);
    let mut seen = Vec::new();
    while let Ok((path, body)) = received.recv_timeout(Duration::from_secs(10)) {
        let found = body.windows(trace.len()).any(|w| w == trace.as_slice());
        seen.push(path.clone());
        if found {
            assert_eq!(path, "/v1/traces");
            assert!(
                body.windows(b"factum-under-test".len())
                    .any(|w| w == b"factum-under-test"),
                "the service is named"
            );
            return;
        }
    }
    panic!("no span of trace {TRACE_ID} reached the receiver (requests: {seen:?})");
}

#[test]
fn a_bad_otlp_endpoint_is_refused_naming_the_variable() {
    let data = tempfile::tempdir().unwrap();
    let output = common::factum_command()
        .arg("serve")
        .env("FACTUM_DATA_DIR", data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");
}
