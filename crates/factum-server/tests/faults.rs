//! A full disk under `factum serve`: the data directory on a small `tmpfs`. Appends that hit the
//! full disk get 503 and `/health` says the store refuses writes (with the reason) while reads
//! are served; once space is freed (the `tmpfs` remounted larger) the server takes appends
//! again by itself, without a restart, and every acknowledged event is there byte for byte.
//! gRPC's health protocol (`grpc.health.v1.Health`) tells the same as `/health` throughout.
//!
//! Mounting takes root (CI runs as root); where mounting is not allowed the test is skipped
//! with the reason printed.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_core::EventStore;
use factum_engine::{Engine, EngineOptions};
use factum_server::grpc::proto::grpc::health::v1::health_check_response::ServingStatus;
use factum_server::grpc::proto::grpc::health::v1::health_client::HealthClient;
use factum_server::grpc::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A `tmpfs` mounted at a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

async fn health(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(format!("{url}/health")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

type Health = HealthClient<common::grpc::Channel>;

/// The server's status by gRPC's health protocol.
async fn grpc_status(health: &mut Health) -> ServingStatus {
    let answer = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

/// The next status a watch tells.
async fn watched(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let answer = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the watch told the change")
        .unwrap()
        .unwrap();
    ServingStatus::try_from(answer.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_the_server_takes_writes_again_once_space_is_freed() {
    let disk = match Tmpfs::mount("1m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!(
                "skipping the full-disk test: mounting a tmpfs is not allowed here ({reason})"
            );
            return;
        }
    };
    let data = disk.dir.path().join("data");
    let engine = Engine::open(&data, EngineOptions::default()).unwrap();
    let served = common::serve(Arc::new(engine.clone()), factum_server::Config::default()).await;
    let url = format!("http://127.0.0.1:{}", served.port);
    let client = reqwest::Client::new();
    assert_eq!(health(&client, &url).await.0, StatusCode::OK);
    // gRPC's health protocol says the same, and a watch hears each change.
    let mut grpc_health =
        HealthClient::with_origin(common::grpc::channel(), common::grpc::origin(served.port));
    assert_eq!(grpc_status(&mut grpc_health).await, ServingStatus::Serving);
    let mut watch = grpc_health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watched(&mut watch).await, ServingStatus::Serving);

    // Append until the disk is full; keep what was acknowledged.
    let pad = "x".repeat(2000);
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..2000u64 {
        let body = json!([{"type": "Filled", "data": {"n": n, "pad": pad}}]);
        let response = client
            .post(format!("{url}/streams/fill-{}", n % 3))
            .json(&body)
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::CREATED => acknowledged.push(n),
            status => {
                refused = Some((status, response.text().await.unwrap()));
                break;
            }
        }
    }
    let (status, body) = refused.expect("the 1 MiB disk filled up");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        acknowledged.len() > 100,
        "{} appends fit",
        acknowledged.len()
    );

    // Not ready, with the reason, while reads are served and the fault lasts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = health(&client, &url).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "refusing-writes");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("No space left"), "{reason}");
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("factum_store_writable 0"), "{metrics}");
    assert_eq!(
        grpc_status(&mut grpc_health).await,
        ServingStatus::NotServing
    );
    assert_eq!(watched(&mut watch).await, ServingStatus::NotServing);
    let page: Value = client
        .get(format!("{url}/all?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), acknowledged.len());
    let response = client
        .post(format!("{url}/streams/fill-0"))
        .json(&json!([{"type": "Filled", "data": {"n": -1}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Space freed: the server takes writes again by itself.
    disk.resize("16m");
    let started = Instant::now();
    loop {
        let (status, body) = health(&client, &url).await;
        if status == StatusCode::OK {
            assert_eq!(body["status"], "ok");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still refusing 15 s after space was freed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(grpc_status(&mut grpc_health).await, ServingStatus::Serving);
    assert_eq!(watched(&mut watch).await, ServingStatus::Serving);
    drop(watch);
    for n in 5000..5010u64 {
        let response = client
            .post(format!("{url}/streams/fill-after"))
            .json(&json!([{"type": "Filled", "data": {"n": n, "pad": pad}}]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        acknowledged.push(n);
    }

    // Every acknowledged event is there, in order, byte for byte, and nothing else.
    let events = engine
        .read_all(0, factum_core::Direction::Forwards, usize::MAX)
        .await
        .unwrap();
    let found: Vec<u64> = events
        .iter()
        .map(|e| {
            serde_json::from_slice::<Value>(&e.data).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(found, acknowledged);
    assert!(events.iter().all(|e| {
        let data: Value = serde_json::from_slice(&e.data).unwrap();
        data["pad"] == pad.as_str()
    }));
    engine.verify(|_, _| {}).unwrap();
    served.stop().await;
    engine.close().unwrap();
    let reopened = Engine::open(&data, EngineOptions::default()).unwrap();
    assert_eq!(
        reopened
            .read_all(0, factum_core::Direction::Forwards, usize::MAX)
            .await
            .unwrap(),
        events
    );
    reopened.verify(|_, _| {}).unwrap();
    reopened.close().unwrap();
}
