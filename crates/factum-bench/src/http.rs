//! HTTP scenarios of `factum bench`, each against `factum serve`'s API on a fresh embedded store,
//! served in this process on a loopback port:
//!
//! - `http`: concurrent clients (`--writers`, default 64) each appending one event per request
//!   (`--concurrent-events` in all); latency is each request's, from send to `201 Created`
//!   (durable).
//! - `http-sse`: 100 clients follow `$all` as server-sent events while 64 clients append
//!   10,000 events/s for 5 s; every subscriber must receive every event, in order. Events/s is
//!   the rate the appends were made at (below 10,000 when appends fall behind); latency is the
//!   delivery delay: from the moment the append was sent until a subscriber has the event.
//! - `http-dashboards`: `http` twice in one run, each on a fresh store: without a dashboard,
//!   and with 64 dashboards following the stats stream (`/stats/subscribe`) all along; what
//!   the dashboards cost the append path.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use factum::{Engine, EngineOptions};
use futures::StreamExt;

use crate::kit::{Payloads, Row, bar, row};

pub async fn run(
    scenario: &str,
    work: &Path,
    events: u64,
    writers: usize,
    payloads: &Arc<Payloads>,
) -> Result<Vec<Row>> {
    if scenario == "http-dashboards" {
        return Ok(vec![
            serve_and_run("http", work, events, writers, payloads, 0).await?,
            serve_and_run(
                "http-dashboards",
                work,
                events,
                writers,
                payloads,
                DASHBOARDS,
            )
            .await?,
        ]);
    }
    Ok(vec![
        serve_and_run(scenario, work, events, writers, payloads, 0).await?,
    ])
}

/// How many dashboards follow the stats stream in `http-dashboards`.
const DASHBOARDS: usize = 64;

/// Runs `scenario` against a server on a fresh store, with `dashboards` following its stats.
async fn serve_and_run(
    scenario: &str,
    work: &Path,
    events: u64,
    writers: usize,
    payloads: &Arc<Payloads>,
    dashboards: usize,
) -> Result<Row> {
    let dir = tempfile::Builder::new().prefix("http-").tempdir_in(work)?;
    let engine = Engine::open(dir.path().join("store"), EngineOptions::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(factum::server::serve(
        listener,
        Arc::new(engine.clone()),
        factum::server::Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut followers = Vec::new();
    for _ in 0..dashboards {
        followers.push(follow_stats(&client, &url).await?);
    }
    let result = match scenario {
        "http" | "http-dashboards" => {
            appends(scenario, &client, &url, events, writers, payloads).await
        }
        _ => subscribers(&client, &url).await,
    };
    let _ = stop.send(());
    server.await??;
    engine.close()?;
    for follower in followers {
        let snapshots = follower.await??;
        // A dashboard gets a snapshot a second: every one of them was served all along.
        ensure!(
            snapshots > 0 || result.as_ref().is_ok_and(|r| r.seconds < 2.0),
            "a dashboard got no snapshot"
        );
    }
    result
}

/// A dashboard: follows the stats stream until the server ends it; how many snapshots it got.
async fn follow_stats(
    client: &reqwest::Client,
    url: &str,
) -> Result<tokio::task::JoinHandle<Result<u64>>> {
    let response = client.get(format!("{url}/stats/subscribe")).send().await?;
    ensure!(
        response.status().is_success(),
        "the stats stream answered {}",
        response.status()
    );
    Ok(tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut snapshots = 0;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // The server ended the stream as it shut down.
                Err(_) => break,
            };
            snapshots += occurrences(&chunk, b"event: stats") as u64;
        }
        Ok(snapshots)
    }))
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

async fn append_one(client: &reqwest::Client, url: &str, stream: u64, data: &str) -> Result<()> {
    let body = format!("[{{\"type\":\"OrderPlaced\",\"data\":{data}}}]");
    let response = client
        .post(format!("{url}/streams/order-{stream}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::CREATED {
        bail!(
            "append answered {}: {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}

async fn appends(
    scenario: &str,
    client: &reqwest::Client,
    url: &str,
    events: u64,
    writers: usize,
    payloads: &Arc<Payloads>,
) -> Result<Row> {
    let progress = bar(events, format!("{scenario} ({writers} clients)"));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (client, url, next, payloads, progress) = (
                client.clone(),
                url.to_owned(),
                next.clone(),
                payloads.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= events {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let sent = Instant::now();
                    append_one(&client, &url, n % 10_000, &payloads.get(n)).await?;
                    latencies.push(sent.elapsed().as_micros() as u64);
                    progress.inc(1);
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(events as usize);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row(scenario, "factum", events, elapsed, latencies))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn subscribers(client: &reqwest::Client, url: &str) -> Result<Row> {
    const SUBSCRIBERS: usize = 100;
    const APPENDS_PER_SEC: u64 = 10_000;
    const SECONDS: u64 = 5;
    // Enough appenders that 10,000 events/s are offered even when a durable append takes a
    // few milliseconds (each waits for its answer before the next).
    const APPENDERS: u64 = 64;
    let events = APPENDS_PER_SEC * SECONDS;
    let progress = bar(
        events * SUBSCRIBERS as u64,
        format!("http-sse ({SUBSCRIBERS} subscribers)"),
    );
    let mut followers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let response = client.get(format!("{url}/all/subscribe")).send().await?;
        ensure!(
            response.status().is_success(),
            "subscribe answered {}",
            response.status()
        );
        let progress = progress.clone();
        followers.push(tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = Vec::new();
            let mut delays = Vec::with_capacity(events as usize);
            let mut expected = 0u64;
            while expected < events {
                let chunk = body
                    .next()
                    .await
                    .context("the subscription ended early")??;
                buffer.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(end) = buffer[start..].windows(2).position(|w| w == b"\n\n") {
                    let block = &buffer[start..start + end];
                    start += end + 2;
                    let text = std::str::from_utf8(block)?;
                    let Some(id) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("id: ").or(l.strip_prefix("id:")))
                    else {
                        continue; // a keep-alive comment
                    };
                    ensure!(id.parse::<u64>()? == expected, "event {id} out of order");
                    let sent = text
                        .split("\"sent_us\":")
                        .nth(1)
                        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                        .context("no sent_us in the event")?
                        .parse::<u64>()?;
                    delays.push(now_us().saturating_sub(sent));
                    expected += 1;
                    progress.inc(1);
                }
                buffer.drain(..start);
            }
            Ok::<_, anyhow::Error>(delays)
        }));
    }
    let started = Instant::now();
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|a| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                // Appender `a` sends events a, a + APPENDERS, a + 2 × APPENDERS, … below
                // `events`, so together they send every one once.
                let every = Duration::from_micros(1_000_000 * APPENDERS / APPENDS_PER_SEC);
                let mut tick = tokio::time::interval(every);
                for n in (a..events).step_by(APPENDERS as usize) {
                    tick.tick().await;
                    let data = format!("{{\"sent_us\":{},\"n\":{n}}}", now_us());
                    append_one(&client, &url, n, &data).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for appender in appenders {
        appender.await??;
    }
    // The rate the appends were made at (what the scenario offers the subscribers); the time
    // the subscribers then take to receive the last events shows in the delays.
    let appended_in = started.elapsed();
    let mut delays = Vec::new();
    for follower in followers {
        let received = follower.await??;
        ensure!(
            received.len() as u64 == events,
            "a subscriber missed events"
        );
        delays.extend(received);
    }
    progress.finish_and_clear();
    Ok(row("http-sse", "factum", events, appended_in, delays))
}
