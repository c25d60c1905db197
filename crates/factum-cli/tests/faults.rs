//! `factum serve` through faults and load, as a process: killed with SIGKILL while HTTP clients
//! and gRPC clients (KurrentDB's Rust client) append (every acknowledged append survives, five
//! rounds in a row), and a thousand
//! subscribers that stop reading while appends go on (memory stays bounded, appends keep at
//! least half their rate, and subscribers that read again get every event).
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `writers` clients append one event a request until `stop`; the ids of the appends that
/// were acknowledged (201), with their stream.
async fn append_until(
    url: String,
    writers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pad: usize,
) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = uuid_v4(w as u64, n);
                    let stream = format!("w-{w}");
                    let body = json!([{"type": "Wrote", "id": id, "data": {"w": w, "n": n, "pad": "x".repeat(pad)}}]);
                    n += 1;
                    match client
                        .post(format!("{url}/streams/{stream}"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(response) if response.status() == 201 => acknowledged.push((stream, id)),
                        // Refused, or no answer (the server was killed): not acknowledged.
                        Ok(_) | Err(_) => {
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// `writers` KurrentDB clients append one event a call over gRPC until `stop`; the ids of the
/// appends that were acknowledged, with their stream.
async fn append_over_grpc_until(
    port: u16,
    writers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(String, String)> {
    // The client looks for the node again every 50 ms (500 ms by default) when it connects.
    let settings: kurrentdb::ClientSettings =
        format!("kurrentdb://127.0.0.1:{port}?tls=false&discoveryInterval=50")
            .parse()
            .unwrap();
    let client = kurrentdb::Client::new(settings).unwrap();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = uuid::Uuid::new_v4();
                    let stream = format!("g-{w}");
                    let event = kurrentdb::EventData::json("Wrote", &json!({"w": w, "n": n}))
                        .unwrap()
                        .id(id);
                    n += 1;
                    let options = kurrentdb::AppendToStreamOptions::default();
                    match client
                        .append_to_stream(stream.as_str(), &options, event)
                        .await
                    {
                        Ok(_) => acknowledged.push((stream, id.to_string())),
                        // Refused, or no answer (the server was killed): not acknowledged.
                        Err(_) => {
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// A UUID made of a writer's number and a counter (unique across rounds with the round in it).
fn uuid_v4(writer: u64, n: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nanos >> 32) as u32,
        (nanos >> 16) as u16,
        writer & 0xfff,
        (n >> 48) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

#[test]
fn every_acknowledged_append_survives_sigkill_five_rounds_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut acknowledged = Vec::new();
    for round in 0..5u64 {
        let (mut server, _stderr, _line, port) =
            common::spawn_serve(&["--listen", "127.0.0.1:0"], dir.path());
        let url = format!("http://127.0.0.1:{port}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = rt.spawn(append_until(url, 8, stop.clone(), 100));
        let grpc_writers = rt.spawn(append_over_grpc_until(port, 4, stop.clone()));
        // Kill it at a moment that differs from round to round, appends in flight.
        std::thread::sleep(Duration::from_millis(400 + 170 * round));
        server.kill().unwrap();
        server.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let acked = rt.block_on(writers).unwrap();
        let grpc_acked = rt.block_on(grpc_writers).unwrap();
        assert!(
            !acked.is_empty() && !grpc_acked.is_empty(),
            "round {round}: some appends were acknowledged over HTTP ({}) and over gRPC ({})",
            acked.len(),
            grpc_acked.len()
        );
        acknowledged.extend(acked);
        acknowledged.extend(grpc_acked);
    }
    // Every acknowledged append is there, once.
    let out = common::factum_in(dir.path(), &["read-all"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stored: HashMap<String, (String, u32)> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let entry = stored
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_insert((event["stream"].as_str().unwrap().to_owned(), 0));
        entry.1 += 1;
    }
    for (stream, id) in &acknowledged {
        let found = stored.get(id);
        assert!(
            found.is_some_and(|(s, count)| s == stream && *count == 1),
            "acknowledged {id} in {stream}: {found:?}"
        );
    }
    let out = common::factum_in(dir.path(), &["verify"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server's resident memory now and at its highest, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What 1,000 subscribers that stop reading may cost the server, at most, in MiB of resident
/// memory (see the README).
const STALLED_MEMORY_MIB_MAX: f64 = 512.0;

#[test]
fn a_thousand_stalled_subscribers_cost_bounded_memory_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _stderr, _line, port) = common::spawn_serve(
        &["--listen", "127.0.0.1:0", "--max-subscriptions", "2000"],
        dir.path(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let rt = rt();
    let rate = |label: &str| {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = rt.spawn(append_until(url.clone(), 16, stop.clone(), 400));
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let acked = rt.block_on(writers).unwrap().len();
        let rate = acked as f64 / 3.0;
        eprintln!("{label}: {rate:.0} appends/s");
        rate
    };
    let alone = rate("appends alone");
    let (before, _) = memory_mib(server.id());
    let head_of = |rt: &tokio::runtime::Runtime| -> u64 {
        let health: Value = rt.block_on(async {
            reqwest::get(format!("{url}/health"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        health["head"].as_u64().unwrap()
    };
    let from = head_of(&rt);
    let request = format!("GET /all/subscribe?from={from} HTTP/1.1\r\nHost: localhost\r\n\r\n");

    // Subscribers that read nothing after the response's head.
    let mut stalled = Vec::new();
    for _ in 0..1000 {
        // A small receive buffer, as a slow client's: it is full after a few events.
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        let mut socket: std::net::TcpStream = socket.into();
        socket.write_all(request.as_bytes()).unwrap();
        stalled.push(socket);
    }
    for socket in &mut stalled {
        let mut head = [0u8; 15];
        socket.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 OK");
    }
    // A few that pause for a while and then read again, up to the head at the end.
    let target = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let go_on = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (url, target, go_on) = (url.clone(), target.clone(), go_on.clone());
            rt.spawn(async move {
                let response = reqwest::get(format!("{url}/all/subscribe?from={from}"))
                    .await
                    .unwrap();
                let mut body = response.bytes_stream();
                while !go_on.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let (mut text, mut next) = (String::new(), from);
                while next < target.load(std::sync::atomic::Ordering::Relaxed) {
                    let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
                        .await
                        .expect("events within 20 s")
                        .unwrap()
                        .unwrap();
                    text.push_str(std::str::from_utf8(&chunk).unwrap());
                    while let Some(end) = text.find("\n\n") {
                        let block: String = text.drain(..end + 2).collect();
                        if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                            assert_eq!(id.parse::<u64>().unwrap(), next, "in order, none missed");
                            next += 1;
                        }
                    }
                }
                next
            })
        })
        .collect();
    // Appends fill what the stalled subscribers' connections hold; then they wait.
    rate("appends while the subscribers stall");
    rate("appends while the subscribers stall");
    let loaded = rate("appends with 1,000 stalled subscribers");
    // The paused readers read again.
    go_on.store(true, std::sync::atomic::Ordering::Relaxed);
    let (after, highest) = memory_mib(server.id());
    eprintln!(
        "resident memory: {before:.0} MiB before, {after:.0} MiB with 1,000 stalled subscribers (highest {highest:.0} MiB)"
    );
    assert!(
        loaded >= alone / 2.0,
        "appends kept {loaded:.0}/s of {alone:.0}/s"
    );
    assert!(
        highest < STALLED_MEMORY_MIB_MAX,
        "{highest:.0} MiB resident with 1,000 stalled subscribers"
    );
    let head = head_of(&rt);
    target.store(head, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert_eq!(
            rt.block_on(reader).unwrap(),
            head,
            "a reader got every event"
        );
    }
    drop(stalled);
    server.kill().unwrap();
    server.wait().unwrap();
}
