//! What the gRPC tests share: a client of the streams service over HTTP/2 without TLS, and
//! the two messages of an append.

use std::collections::HashMap;

use bytes::Bytes;
use factum_server::grpc::proto::event_store::client as shared;
use factum_server::grpc::proto::event_store::client::streams::{
    AppendReq, append_req, streams_client::StreamsClient,
};
use hyper_util::client::legacy::Client as Http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Channel = Http2<HttpConnector, tonic::body::Body>;

/// An HTTP/2 connection with prior knowledge (h2c), as the clients open with `tls=false`.
pub fn channel() -> Channel {
    Http2::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn origin(port: u16) -> http::Uri {
    format!("http://localhost:{port}").parse().unwrap()
}

pub fn streams(port: u16) -> StreamsClient<Channel> {
    StreamsClient::with_origin(channel(), origin(port))
}

/// An append's options: `stream`, any expected revision.
pub fn options(stream: &str) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: Bytes::copy_from_slice(stream.as_bytes()),
            }),
            expected_stream_revision: Some(append_req::options::ExpectedStreamRevision::Any(())),
        })),
    }
}

/// An append's event: `metadata` (type, content type) and `data`.
pub fn proposed(metadata: &[(&str, &str)], data: &[u8]) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::ProposedMessage(
            append_req::ProposedMessage {
                id: None,
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<HashMap<_, _>>(),
                custom_metadata: Bytes::new(),
                data: Bytes::copy_from_slice(data),
            },
        )),
    }
}

/// The metadata of a JSON event of type `Placed`.
pub const JSON: &[(&str, &str)] = &[("type", "Placed"), ("content-type", "application/json")];
