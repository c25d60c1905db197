//! Persistent subscription scenarios of `factum bench`: one group on `$all` of a store of
//! 200,000 events (written before the clock starts), four consumers sharing it, each
//! acknowledging every message it gets, on `factum serve` on a loopback port of this process.
//!
//! - `persistent-grpc`: KurrentDB's `PersistentSubscriptions.Read` through the protocol's
//!   generated client, each consumer on an HTTP/2 connection of its own with a buffer of 200;
//!   each consumer acknowledges what one read of its answer stream brought, in one `Ack`.
//! - `persistent-http`: the HTTP API's server-sent events (`capacity=200`), and
//!   `POST …/ack` with the ids of what one chunk brought.
//!
//! The rate is messages acknowledged per second, from the consumers' connecting to the last
//! acknowledgement; latency is the time per 10,000 messages acknowledged.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use factum::server::grpc::proto::event_store::client::persistent_subscriptions::{
    AllStart, CreateReq, GroupOptions, ReadReq, Settings, all_start, group_options,
    persistent_subscriptions_client::PersistentSubscriptionsClient, read_req, read_resp,
};
use factum::server::grpc::proto::event_store::client::{Uuid as ProtoUuid, uuid};
use factum::{Engine, EngineOptions, StreamName};
use futures::StreamExt;
use hyper_util::client::legacy::Client as Http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

use crate::kit::{Payloads, Row, bar, row};

/// Events in the store the group delivers.
const EVENTS: u64 = 200_000;
/// Consumers sharing the group.
const CONSUMERS: usize = 4;
/// Messages a consumer may hold unacknowledged.
const BUFFER: usize = 200;

/// Messages acknowledged in all, and the time of each 10,000th.
struct Tally {
    acked: AtomicU64,
    windows: Mutex<(Instant, Vec<u64>)>,
    progress: indicatif::ProgressBar,
}

impl Tally {
    async fn add(&self, n: u64) {
        let before = self.acked.fetch_add(n, Ordering::SeqCst);
        let after = before + n;
        self.progress.set_position(after.min(EVENTS));
        if after / 10_000 > before / 10_000 {
            let mut windows = self.windows.lock().await;
            let took = windows.0.elapsed().as_micros() as u64;
            windows.1.push(took);
            windows.0 = Instant::now();
        }
    }

    fn done(&self) -> bool {
        self.acked.load(Ordering::SeqCst) >= EVENTS
    }
}

pub async fn run(scenario: &str, work: &Path, payloads: &Arc<Payloads>) -> Result<Vec<Row>> {
    let dir = tempfile::Builder::new()
        .prefix("persistent-")
        .tempdir_in(work)?;
    let engine = Engine::open(dir.path().join("store"), EngineOptions::default())?;
    crate::toolkit::fill(
        &engine,
        |chunk| Ok(StreamName::new(format!("order-{}", chunk % 1000))?),
        EVENTS,
        payloads,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(factum::server::serve(
        listener,
        Arc::new(engine.clone()),
        factum::server::Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let tally = Arc::new(Tally {
        acked: AtomicU64::new(0),
        windows: Mutex::new((Instant::now(), Vec::new())),
        progress: bar(EVENTS, format!("{scenario}: 4 consumers")),
    });
    let result = match scenario {
        "persistent-grpc" => grpc(&format!("http://{address}").parse()?, &tally).await,
        _ => http(&format!("http://{address}"), &tally).await,
    };
    tally.progress.finish_and_clear();
    let _ = stop.send(());
    server.await??;
    engine.close()?;
    let elapsed = result?;
    let latencies = tally.windows.lock().await.1.clone();
    Ok(vec![row(
        scenario,
        "factum",
        tally.acked.load(Ordering::SeqCst),
        elapsed,
        latencies,
    )])
}

type Client = PersistentSubscriptionsClient<Http2<HttpConnector, tonic::body::Body>>;

fn client(origin: &http::Uri) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let channel = Http2::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    PersistentSubscriptionsClient::with_origin(channel, origin.clone())
}

async fn grpc(origin: &http::Uri, tally: &Arc<Tally>) -> Result<std::time::Duration> {
    client(origin)
        .create(CreateReq {
            options: Some(GroupOptions {
                stream_identifier: None,
                group_name: "bench".into(),
                settings: Some(Settings {
                    max_retry_count: 10,
                    live_buffer_size: 2000,
                    read_batch_size: 500,
                    max_checkpoint_count: 10_000,
                    min_checkpoint_count: 100,
                    consumer_strategy: "RoundRobin".into(),
                    message_timeout: Some(
                        factum::server::grpc::proto::event_store::client::persistent_subscriptions::settings::MessageTimeout::MessageTimeoutMs(30_000),
                    ),
                    ..Settings::default()
                }),
                stream_option: Some(group_options::StreamOption::All(AllStart {
                    all_option: Some(all_start::AllOption::Start(())),
                    filter_option: Some(all_start::FilterOption::NoFilter(())),
                })),
            }),
        })
        .await?;
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let (acks, requests) = tokio::sync::mpsc::channel::<ReadReq>(64);
        let tally = tally.clone();
        let mut client = client(origin);
        consumers.push(tokio::spawn(async move {
            acks.send(ReadReq {
                content: Some(read_req::Content::Options(read_req::Options {
                    stream_option: Some(read_req::options::StreamOption::All(())),
                    group_name: "bench".into(),
                    buffer_size: BUFFER as i32,
                    uuid_option: Some(read_req::UuidForm {
                        content: Some(read_req::uuid_form::Content::Structured(())),
                    }),
                })),
            })
            .await?;
            let requests = tokio_stream(requests);
            let mut answers = client.read(requests).await?.into_inner();
            let mut ids = Vec::with_capacity(BUFFER);
            while !tally.done() {
                let answer = tokio::select! {
                    answer = answers.next() => answer,
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue,
                };
                let Some(answer) = answer else { break };
                collect(answer?, &mut ids);
                // What else this read brought, acknowledged together.
                while let Some(Some(more)) = answers.next().now_or_never() {
                    collect(more?, &mut ids);
                    if ids.len() >= BUFFER {
                        break;
                    }
                }
                if ids.is_empty() {
                    continue;
                }
                let n = ids.len() as u64;
                acks.send(ReadReq {
                    content: Some(read_req::Content::Ack(read_req::Ack {
                        id: Default::default(),
                        ids: std::mem::take(&mut ids),
                    })),
                })
                .await?;
                tally.add(n).await;
            }
            // A goodbye: the requests end (the acks sent go first) and the server ends the
            // call; what this consumer still held goes to the others.
            drop(acks);
            while let Some(answer) = answers.next().await {
                collect(answer?, &mut ids);
            }
            anyhow::Ok(ids.len() as u64)
        }));
    }
    let mut unacked = 0;
    for consumer in consumers {
        unacked += consumer.await??;
    }
    let elapsed = started.elapsed();
    ensure!(tally.done(), "the consumers stopped before every message");
    ensure!(
        tally.acked.load(Ordering::SeqCst) + unacked == EVENTS,
        "{} messages acknowledged and {unacked} held at the end, of {EVENTS}: some came twice",
        tally.acked.load(Ordering::SeqCst)
    );
    Ok(elapsed)
}

fn collect(
    answer: factum::server::grpc::proto::event_store::client::persistent_subscriptions::ReadResp,
    ids: &mut Vec<ProtoUuid>,
) {
    if let Some(read_resp::Content::Event(event)) = answer.content
        && let Some(event) = event.event
    {
        let (high, low) = event.id.as_u64_pair();
        ids.push(ProtoUuid {
            value: Some(uuid::Value::Structured(uuid::Structured {
                most_significant_bits: high as i64,
                least_significant_bits: low as i64,
            })),
        });
    }
}

fn tokio_stream(
    mut requests: tokio::sync::mpsc::Receiver<ReadReq>,
) -> impl futures::Stream<Item = ReadReq> + Send + 'static {
    futures::stream::poll_fn(move |cx| requests.poll_recv(cx))
}

use futures::FutureExt as _;

async fn http(base: &str, tally: &Arc<Tally>) -> Result<std::time::Duration> {
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{base}/subscriptions/%24all/bench"))
        .json(&serde_json::json!({"settings": {
            "live_buffer_size": 2000, "read_batch_size": 500,
            "checkpoint_max_count": 10000, "checkpoint_min_count": 100
        }}))
        .send()
        .await?;
    ensure!(
        created.status() == reqwest::StatusCode::CREATED,
        "creating the group answered {}",
        created.status()
    );
    let started = Instant::now();
    let mut consumers = Vec::new();
    for n in 0..CONSUMERS {
        let tally = tally.clone();
        let client = client.clone();
        let base = base.to_owned();
        consumers.push(tokio::spawn(async move {
            let response = client
                .get(format!(
                    "{base}/subscriptions/%24all/bench/messages?consumer=c{n}&capacity={BUFFER}"
                ))
                .send()
                .await?;
            let mut body = response.bytes_stream();
            let mut text = String::new();
            while !tally.done() {
                let chunk = tokio::select! {
                    chunk = body.next() => chunk,
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue,
                };
                let Some(chunk) = chunk else { break };
                text.push_str(std::str::from_utf8(&chunk?).context("a frame not UTF-8")?);
                let mut ids = Vec::new();
                while let Some(end) = text.find("\n\n") {
                    let frame: String = text.drain(..end + 2).collect();
                    if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id: ")) {
                        ids.push(id.to_owned());
                    }
                }
                if ids.is_empty() {
                    continue;
                }
                let n = ids.len() as u64;
                let acked = client
                    .post(format!("{base}/subscriptions/%24all/bench/ack"))
                    .json(&serde_json::json!({ "ids": ids }))
                    .send()
                    .await?;
                ensure!(
                    acked.status().is_success(),
                    "an ack answered {}",
                    acked.status()
                );
                tally.add(n).await;
            }
            anyhow::Ok(())
        }));
    }
    for consumer in consumers {
        consumer.await??;
    }
    let elapsed = started.elapsed();
    ensure!(tally.done(), "the consumers stopped before every message");
    Ok(elapsed)
}
