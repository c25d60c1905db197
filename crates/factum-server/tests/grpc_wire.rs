//! The gRPC protocol at the wire: bad input gets a status naming the problem and writes
//! nothing; services Factum does not offer answer `UNIMPLEMENTED`; the features, gossip,
//! metrics and logs a client and an operator see; HTTP/2 without TLS reaches the HTTP API.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use factum_server::grpc::proto::event_store::client as shared;
use factum_server::grpc::proto::event_store::client::gossip::gossip_client::GossipClient;
use factum_server::grpc::proto::event_store::client::server_features::server_features_client::ServerFeaturesClient;
use factum_server::grpc::proto::event_store::client::streams::{
    AppendReq, BatchAppendReq, ReadReq, batch_append_req, batch_append_resp, read_req,
    streams_client::StreamsClient,
};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as Http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::Code;

mod common;
use common::grpc::{self, JSON, options, proposed};
use common::{Served, engine, serve};

/// A server on a fresh embedded store; the store's directory lives as long as the guard.
async fn serve_fresh(config: factum_server::Config) -> (Served, tempfile::TempDir) {
    let (store, dir) = engine();
    (serve(store, config).await, dir)
}

impl Served {
    fn origin(&self) -> http::Uri {
        grpc::origin(self.port)
    }

    fn streams(&self) -> StreamsClient<grpc::Channel> {
        grpc::streams(self.port)
    }

    /// A raw gRPC call: `frames` as the request body; the status from the headers or trailers.
    async fn raw(&self, path: &str, frames: &[Vec<u8>]) -> (Code, String) {
        let mut body = Vec::new();
        for frame in frames {
            body.push(0u8);
            body.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            body.extend_from_slice(frame);
        }
        let client: Http2<HttpConnector, http_body_util::Full<Bytes>> =
            Http2::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let request = http::Request::post(format!("http://localhost:{}{path}", self.port))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = |map: &http::HeaderMap| {
            map.get("grpc-status").map(|code| {
                let code = Code::from(code.to_str().unwrap().parse::<i32>().unwrap());
                let message = map
                    .get("grpc-message")
                    .map(|m| percent_decode(m.to_str().unwrap()))
                    .unwrap_or_default();
                (code, message)
            })
        };
        status(&headers)
            .or_else(|| status(&trailers))
            .expect("a grpc-status")
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

async fn append(served: &Served, messages: Vec<AppendReq>) -> Result<(), tonic::Status> {
    served
        .streams()
        .append(futures::stream::iter(messages))
        .await
        .map(|_| ())
}

fn read_request(direction: i32, filter: Option<read_req::options::FilterOptions>) -> ReadReq {
    use read_req::options;
    ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(options::StreamOption::All(options::AllOptions {
                all_option: Some(options::all_options::AllOption::Start(())),
            })),
            read_direction: direction,
            resolve_links: false,
            count_option: Some(options::CountOption::Count(10)),
            filter_option: Some(match filter {
                Some(filter) => options::FilterOption::Filter(filter),
                None => options::FilterOption::NoFilter(()),
            }),
            uuid_option: None,
            control_option: None,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_naming_the_problem_and_writes_nothing() {
    let (served, _dir) = serve_fresh(factum_server::Config {
        max_body_bytes: 64 << 10,
        ..factum_server::Config::default()
    })
    .await;
    let head = served.store.head();
    let cases: Vec<(&str, Vec<AppendReq>, Code, &str)> = vec![
        (
            "an empty stream name",
            vec![options(""), proposed(JSON, b"{}")],
            Code::InvalidArgument,
            "stream",
        ),
        (
            "a system stream",
            vec![options("$system"), proposed(JSON, b"{}")],
            Code::InvalidArgument,
            "$",
        ),
        (
            "no event type",
            vec![options("order-1"), proposed(&[], b"{}")],
            Code::InvalidArgument,
            "'type'",
        ),
        (
            "an unknown content type",
            vec![
                options("order-1"),
                proposed(&[("type", "Placed"), ("content-type", "text/plain")], b"x"),
            ],
            Code::InvalidArgument,
            "text/plain",
        ),
        (
            "JSON that is not",
            vec![options("order-1"), proposed(JSON, b"{not json")],
            Code::InvalidArgument,
            "JSON",
        ),
        (
            "events before the options",
            vec![proposed(JSON, b"{}")],
            Code::InvalidArgument,
            "options",
        ),
        (
            "an over-long event type",
            vec![
                options("order-1"),
                proposed(
                    &[
                        ("type", "T".repeat(300).as_str()),
                        ("content-type", "application/json"),
                    ],
                    b"{}",
                ),
            ],
            Code::InvalidArgument,
            "type",
        ),
    ];
    for (what, messages, code, names) in cases {
        let status = append(&served, messages).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(names),
            "{what}: '{}' should name {names}",
            status.message()
        );
    }
    // An oversized message: refused by its length.
    let big = vec![b'x'; 100 << 10];
    let status = append(
        &served,
        vec![
            options("order-1"),
            proposed(
                &[
                    ("type", "Blob"),
                    ("content-type", "application/octet-stream"),
                ],
                &big,
            ),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    // Bytes that are no protobuf message.
    let (code, message) = served
        .raw(
            "/event_store.client.streams.Streams/Append",
            &[vec![0xff, 0xff, 0xff, 0xff, 0x0f]],
        )
        .await;
    assert_eq!(code, Code::Internal, "{message}");
    assert!(message.contains("decode"), "{message}");
    // An unknown read direction, a read without options, a regex that does not parse.
    let mut streams = served.streams();
    let status = streams.read(read_request(7, None)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("read direction 7"), "{status:?}");
    let status = streams.read(ReadReq { options: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let filter = read_req::options::FilterOptions {
        filter: Some(read_req::options::filter_options::Filter::StreamIdentifier(
            read_req::options::filter_options::Expression {
                regex: "^(unclosed".into(),
                prefix: Vec::new(),
            },
        )),
        window: None,
        checkpoint_interval_multiplier: 1,
    };
    let status = streams
        .read(read_request(0, Some(filter)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("^(unclosed"), "{status:?}");
    // A batch with a bad event: its error names it, as a bad request.
    let correlation = shared::Uuid {
        value: Some(shared::uuid::Value::String(
            uuid::Uuid::new_v4().to_string(),
        )),
    };
    let batch = BatchAppendReq {
        correlation_id: Some(correlation),
        options: Some(batch_append_req::Options {
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: Bytes::from_static(b"order-1"),
            }),
            expected_stream_position: Some(batch_append_req::options::ExpectedStreamPosition::Any(
                (),
            )),
            deadline_option: None,
        }),
        proposed_messages: vec![batch_append_req::ProposedMessage {
            id: None,
            metadata: HashMap::new(),
            custom_metadata: Bytes::new(),
            data: Bytes::from_static(b"{}"),
        }],
        is_final: true,
    };
    let mut answers = streams
        .batch_append(futures::stream::iter(vec![batch]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    match answer.result {
        Some(batch_append_resp::Result::Error(status)) => {
            assert_eq!(status.code, Code::InvalidArgument as i32);
            let detail = status.details.unwrap();
            assert!(detail.type_url.ends_with("event_store.client.BadRequest"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(served.store.head(), head, "nothing was written");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_clients_call_around_the_streams() {
    let (served, _dir) = serve_fresh(factum_server::Config::default()).await;
    // The supported methods: exactly what Factum answers, lowercase.
    let methods = ServerFeaturesClient::with_origin(grpc::channel(), served.origin())
        .get_supported_methods(())
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(String, String)> = methods
        .methods
        .iter()
        .map(|m| (m.service_name.clone(), m.method_name.clone()))
        .collect();
    for method in ["read", "append", "batchappend", "delete", "tombstone"] {
        assert!(
            listed.contains(&("event_store.client.streams.streams".into(), method.into())),
            "{listed:?}"
        );
    }
    for method in [
        "create",
        "update",
        "delete",
        "read",
        "getinfo",
        "replayparked",
        "list",
        "restartsubsystem",
    ] {
        let persistent = "event_store.client.persistent_subscriptions.persistentsubscriptions";
        let found = methods
            .methods
            .iter()
            .find(|m| m.service_name == persistent && m.method_name == method)
            .unwrap_or_else(|| panic!("{method} in {listed:?}"));
        assert!(found.features.contains(&"all".to_owned()), "{found:?}");
    }
    // Gossip: one node, the leader, where the client reached it.
    let cluster = GossipClient::with_origin(grpc::channel(), served.origin())
        .read(())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cluster.members.len(), 1);
    let member = &cluster.members[0];
    assert!(member.is_alive);
    assert_eq!(member.state, 8, "Leader");
    let endpoint = member.http_end_point.as_ref().unwrap();
    assert_eq!(
        (endpoint.address.as_str(), endpoint.port),
        ("localhost", u32::from(served.port))
    );
    // Services Factum does not offer: UNIMPLEMENTED naming them, at once.
    // Persistent subscriptions: with no group, a listing is "not found", as on a node.
    let (code, _) = served
        .raw(
            "/event_store.client.persistent_subscriptions.PersistentSubscriptions/List",
            &[Vec::new()],
        )
        .await;
    assert_eq!(code, Code::NotFound);
    for path in [
        "/event_store.client.projections.Projections/Statistics",
        "/event_store.client.users.Users/Details",
        "/event_store.client.operations.Operations/StartScavenge",
        "/event_store.client.monitoring.Monitoring/Stats",
    ] {
        let (code, message) =
            tokio::time::timeout(Duration::from_secs(5), served.raw(path, &[Vec::new()]))
                .await
                .expect("an answer at once");
        assert_eq!(code, Code::Unimplemented, "{path}");
        assert!(message.contains(path.trim_start_matches('/')), "{message}");
    }
    // gRPC's health protocol: serving, for the server and for each service it has; a service
    // it does not have is NOT_FOUND to a check and SERVICE_UNKNOWN to a watch.
    {
        use factum_server::grpc::proto::grpc::health::v1::HealthCheckRequest;
        use factum_server::grpc::proto::grpc::health::v1::health_check_response::ServingStatus;
        use factum_server::grpc::proto::grpc::health::v1::health_client::HealthClient;
        let mut health = HealthClient::with_origin(grpc::channel(), served.origin());
        for service in ["", "event_store.client.streams.Streams"] {
            let answer = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.status, ServingStatus::Serving as i32, "{service}");
        }
        let unknown = HealthCheckRequest {
            service: "event_store.client.projections.Projections".into(),
        };
        let refused = health.check(unknown.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        assert!(refused.message().contains("Projections"), "{refused:?}");
        let mut watch = health.watch(unknown).await.unwrap().into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    }
    // HTTP/2 without TLS (prior knowledge) reaches the HTTP API too.
    let client: Http2<HttpConnector, http_body_util::Empty<Bytes>> =
        Http2::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let health = client
        .get(
            format!("http://localhost:{}/health", served.port)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), http::Version::HTTP_2);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_persistent_subscription_requests_are_refused_and_create_nothing() {
    use factum_server::grpc::proto::event_store::client::persistent_subscriptions::{
        AllStart, CreateReq, GroupOptions, ReadReq, ReplayParkedReq, Settings, all_start,
        group_options, read_req, replay_parked_req,
    };
    use prost::Message as _;
    const SERVICE: &str = "/event_store.client.persistent_subscriptions.PersistentSubscriptions";
    let (served, _dir) = serve_fresh(factum_server::Config::default()).await;
    let create = |settings: Settings| CreateReq {
        options: Some(GroupOptions {
            stream_identifier: None,
            group_name: "g".into(),
            settings: Some(settings),
            stream_option: Some(group_options::StreamOption::All(AllStart {
                all_option: Some(all_start::AllOption::Start(())),
                filter_option: Some(all_start::FilterOption::NoFilter(())),
            })),
        }),
    };
    let refused = [
        ("no options", CreateReq { options: None }),
        (
            "an unknown strategy",
            create(Settings {
                consumer_strategy: "Random".into(),
                ..Settings::default()
            }),
        ),
        (
            "a negative retry count",
            create(Settings {
                max_retry_count: -1,
                ..Settings::default()
            }),
        ),
        (
            "a batch larger than the buffer",
            create(Settings {
                live_buffer_size: 10,
                read_batch_size: 50,
                ..Settings::default()
            }),
        ),
    ];
    for (what, request) in refused {
        let (code, message) = served
            .raw(&format!("{SERVICE}/Create"), &[request.encode_to_vec()])
            .await;
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
    }
    // A read that does not start with its options.
    let ack = ReadReq {
        content: Some(read_req::Content::Ack(read_req::Ack::default())),
    };
    let (code, _) = served
        .raw(&format!("{SERVICE}/Read"), &[ack.encode_to_vec()])
        .await;
    assert_eq!(code, Code::InvalidArgument);
    // Nothing was created.
    let (code, _) = served.raw(&format!("{SERVICE}/List"), &[Vec::new()]).await;
    assert_eq!(code, Code::NotFound);
    // On a group that exists, a negative stop-at is refused too.
    let (code, message) = served
        .raw(
            &format!("{SERVICE}/Create"),
            &[create(Settings::default()).encode_to_vec()],
        )
        .await;
    assert_eq!(code, Code::Ok, "{message}");
    let replay = ReplayParkedReq {
        options: Some(replay_parked_req::Options {
            group_name: "g".into(),
            stream_option: Some(replay_parked_req::options::StreamOption::All(())),
            stop_at_option: Some(replay_parked_req::options::StopAtOption::StopAt(-1)),
        }),
    };
    let (code, _) = served
        .raw(
            &format!("{SERVICE}/ReplayParked"),
            &[replay.encode_to_vec()],
        )
        .await;
    assert_eq!(code, Code::InvalidArgument);
    served.stop().await;
}
