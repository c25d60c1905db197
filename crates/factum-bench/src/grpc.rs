//! gRPC scenarios of `factum bench`: KurrentDB's client protocol on `factum serve`, on a fresh
//! embedded store served in this process on a loopback port, through the protocol's generated
//! clients over HTTP/2 without TLS (what KurrentDB's clients use with `tls=false`).
//!
//! - `grpc`: concurrent clients (`--writers`, default 64), each on an HTTP/2 connection of its
//!   own, append one event per `Streams.Append` call (`--concurrent-events` in all) with the
//!   stream's exact expected revision, over 10,000 streams like the `http` scenario; latency is
//!   each call's, from send to the durable success. Run it beside `http` to compare. Each call
//!   goes out as a client that has both of its messages at hand sends it: one HEADERS frame
//!   and one DATA frame holding the options and the event, with the end of the stream — so
//!   the client in this process costs the machine no more writes per call than the `http`
//!   scenario's (a streaming request body costs two more, for the data and its end).
//! - `grpc-catch-up`: a `Streams.Read` subscription to `$all` from the start over a store of
//!   1,000,000 events (written before the clock starts): the rate the subscription delivers
//!   them at until it reports caught up. Latency is the time per 10,000 events.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use factum::server::grpc::proto::event_store::client::StreamIdentifier;
use factum::server::grpc::proto::event_store::client::streams::{
    AppendReq, AppendResp, ReadReq, append_req, append_resp, read_req, read_resp,
    streams_client::StreamsClient,
};
use factum::{Engine, EngineOptions, StreamName};
use futures::StreamExt;
use hyper_util::client::legacy::Client as Http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;

use crate::kit::{Payloads, Row, bar, row};

type Channel = Http2<HttpConnector, tonic::body::Body>;
/// A connection for calls whose request is all there when they start.
type Whole = h2::client::SendRequest<Bytes>;

/// Streams the appends go to, as in the `http` scenario.
const STREAMS: u64 = 10_000;
/// Events in the store the catch-up subscription reads.
const CATCH_UP_EVENTS: u64 = 1_000_000;

pub async fn run(
    scenario: &str,
    work: &Path,
    events: u64,
    writers: usize,
    payloads: &Arc<Payloads>,
) -> Result<Vec<Row>> {
    let dir = tempfile::Builder::new().prefix("grpc-").tempdir_in(work)?;
    let engine = Engine::open(dir.path().join("store"), EngineOptions::default())?;
    if scenario == "grpc-catch-up" {
        crate::toolkit::fill(
            &engine,
            |chunk| Ok(StreamName::new(format!("order-{}", chunk % STREAMS))?),
            CATCH_UP_EVENTS,
            payloads,
        )
        .await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin: http::Uri = format!("http://{}", listener.local_addr()?).parse()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(factum::server::serve(
        listener,
        Arc::new(engine.clone()),
        factum::server::Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let result = match scenario {
        "grpc" => appends(&origin, events, writers, payloads).await,
        _ => {
            // The reader runs on a thread of its own with its connection, as a client in
            // another process would: its decoding and its HTTP/2 connection do not hand
            // each chunk across threads.
            let origin = origin.clone();
            tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(catch_up(&origin))
            })
            .await?
        }
    };
    let _ = stop.send(());
    server.await??;
    engine.close()?;
    Ok(vec![result?])
}

/// An HTTP/2 connection of its own, without a pool in front (one per client).
async fn whole(origin: &http::Uri) -> Result<Whole> {
    let authority = origin.authority().context("the origin has no host")?;
    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
    // As KurrentDB's clients do: small requests go out at once, not after a delayed ACK.
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);
    Ok(send)
}

/// A client of the generated stubs on an HTTP/2 connection of its own.
fn client(origin: &http::Uri) -> StreamsClient<Channel> {
    // As KurrentDB's clients do: small requests go out at once, not after a delayed ACK.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let channel = Http2::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    StreamsClient::with_origin(channel, origin.clone())
}

/// Messages as a gRPC request body: each uncompressed, after its length.
fn framed<M: Message>(messages: &[M]) -> Bytes {
    let mut body = BytesMut::new();
    for message in messages {
        body.put_u8(0);
        body.put_u32(message.encoded_len() as u32);
        message.encode_raw(&mut body);
    }
    body.freeze()
}

/// A call whose request is `body` and whose answer is one message: the answer, or the
/// status the server ended the call with.
async fn call<M: Message + Default>(connection: &Whole, uri: &http::Uri, body: Bytes) -> Result<M> {
    let request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())?;
    let mut ready = connection.clone().ready().await?;
    // The body is sent at once, ending the stream: the connection writes the headers and
    // the data together.
    let (response, mut send) = ready.send_request(request, false)?;
    send.send_data(body, true)?;
    let response = response.await?;
    ensure!(
        response.status() == http::StatusCode::OK,
        "a call to {uri} answered HTTP {}",
        response.status()
    );
    let headers = response.headers().clone();
    let mut answer = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk?;
        let _ = answer.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = answer.trailers().await?.unwrap_or(headers);
    let status =
        tonic::Status::from_header_map(&trailers).context("a call ended without a grpc-status")?;
    if status.code() != tonic::Code::Ok {
        bail!("a call to {uri} ended with {status}");
    }
    ensure!(
        data.len() >= 5 && data[0] == 0,
        "a call to {uri} answered no uncompressed message"
    );
    Ok(M::decode(&data[5..])?)
}

/// One event appended to `stream`, expected at `revision` (`None`: the stream is new); the
/// stream's revision after it.
async fn append_one(
    connection: &Whole,
    uri: &http::Uri,
    stream: &str,
    revision: Option<u64>,
    data: String,
) -> Result<u64> {
    use append_req::options::ExpectedStreamRevision;
    let options = AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: Some(StreamIdentifier {
                stream_name: Bytes::copy_from_slice(stream.as_bytes()),
            }),
            expected_stream_revision: Some(match revision {
                Some(revision) => ExpectedStreamRevision::Revision(revision),
                None => ExpectedStreamRevision::NoStream(()),
            }),
        })),
    };
    let event = AppendReq {
        content: Some(append_req::Content::ProposedMessage(
            append_req::ProposedMessage {
                id: None,
                metadata: [
                    ("type".to_owned(), "OrderPlaced".to_owned()),
                    ("content-type".to_owned(), "application/json".to_owned()),
                ]
                .into(),
                custom_metadata: Bytes::new(),
                data: Bytes::from(data),
            },
        )),
    };
    let body = framed(&[options, event]);
    let answer: AppendResp = call(connection, uri, body).await?;
    match answer.result {
        Some(append_resp::Result::Success(success)) => match success.current_revision_option {
            Some(append_resp::success::CurrentRevisionOption::CurrentRevision(r)) => Ok(r),
            other => bail!("an append to {stream} answered {other:?}"),
        },
        other => bail!("an append to {stream} answered {other:?}"),
    }
}

async fn appends(
    origin: &http::Uri,
    events: u64,
    writers: usize,
    payloads: &Arc<Payloads>,
) -> Result<Row> {
    let progress = bar(events, format!("grpc ({writers} clients)"));
    let next = Arc::new(AtomicU64::new(0));
    let writers = writers as u64;
    let uri: http::Uri = format!("{origin}event_store.client.streams.Streams/Append").parse()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (origin, uri, next, payloads, progress) = (
                origin.clone(),
                uri.clone(),
                next.clone(),
                payloads.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                // Writer `w` owns the streams w, w + writers, …, so it knows each one's
                // revision and appends with it exactly.
                let mine = STREAMS.div_ceil(writers) as usize;
                let mut revisions: Vec<Option<u64>> = vec![None; mine];
                let mut latencies = Vec::new();
                let mut turn = 0usize;
                let connection = whole(&origin).await?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= events {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let slot = turn % mine;
                    turn += 1;
                    let stream = format!("order-{}", w + slot as u64 * writers);
                    let sent = Instant::now();
                    let revision =
                        append_one(&connection, &uri, &stream, revisions[slot], payloads.get(n))
                            .await?;
                    latencies.push(sent.elapsed().as_micros() as u64);
                    revisions[slot] = Some(revision);
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
    Ok(row("grpc", "factum", events, elapsed, latencies))
}

async fn catch_up(origin: &http::Uri) -> Result<Row> {
    use read_req::options::{self, all_options::AllOption};
    let request = ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(options::StreamOption::All(options::AllOptions {
                all_option: Some(AllOption::Start(())),
            })),
            read_direction: options::ReadDirection::Forwards as i32,
            resolve_links: false,
            count_option: Some(options::CountOption::Subscription(
                options::SubscriptionOptions {},
            )),
            filter_option: Some(options::FilterOption::NoFilter(())),
            uuid_option: Some(options::UuidOption {
                content: Some(options::uuid_option::Content::String(())),
            }),
            control_option: Some(options::ControlOption { compatibility: 1 }),
        }),
    };
    let progress = bar(CATCH_UP_EVENTS, "grpc catch-up of $all".to_owned());
    let started = Instant::now();
    let mut answers = client(origin).read(request).await?.into_inner();
    let (mut seen, mut last_position) = (0u64, None::<u64>);
    let (mut window, mut latencies) = (Instant::now(), Vec::new());
    while let Some(answer) = answers.next().await {
        match answer?.content.context("a read answer without content")? {
            read_resp::Content::Event(event) => {
                let event = event.event.context("an event answer without its event")?;
                ensure!(
                    last_position.is_none_or(|p| p < event.commit_position),
                    "events out of order"
                );
                last_position = Some(event.commit_position);
                seen += 1;
                if seen % 10_000 == 0 {
                    latencies.push(window.elapsed().as_micros() as u64);
                    window = Instant::now();
                    progress.set_position(seen);
                }
            }
            read_resp::Content::CaughtUp(_) => break,
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    ensure!(
        seen == CATCH_UP_EVENTS,
        "the subscription caught up after {seen} of {CATCH_UP_EVENTS} events"
    );
    Ok(row("grpc-catch-up", "factum", seen, elapsed, latencies))
}
