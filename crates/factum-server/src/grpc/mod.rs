//! KurrentDB's gRPC client protocol (the v1 API, `event_store.client.*`) on the server's port,
//! so that KurrentDB's own clients work against `factum serve` unchanged (docs/kurrentdb.md).
//!
//! A request whose content type is `application/grpc…` goes to the services here; any other
//! goes to the HTTP API. The services: streams (`streams.rs`, `read.rs`), persistent
//! subscriptions (`persistent.rs`, over the server's groups), server features and gossip
//! (`features.rs`), and gRPC's standard health checking protocol (`health.rs`); every other
//! service a client may call answers `UNIMPLEMENTED`
//! naming what Factum does not offer. Calls are checked with the HTTP API's tokens and rights
//! (`auth.rs`), counted and timed in `/metrics`, and logged with the client's
//! `connection-name`.
//!
//! [`proto`] holds Factum's definitions of the protocol's messages with their server and
//! client stubs, for programs that speak it to a Factum server (`factum bench` does).

mod auth;
mod convert;
mod features;
mod health;
mod metadata;
mod persistent;
pub mod proto;
mod read;
mod streams;
pub mod wire;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::Status;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::AppState;
use crate::metrics::Metrics;
use proto::event_store::client::gossip::gossip_server::GossipServer;
use proto::event_store::client::persistent_subscriptions::persistent_subscriptions_server::PersistentSubscriptionsServer;
use proto::event_store::client::server_features::server_features_server::ServerFeaturesServer;
use proto::event_store::client::streams::streams_server::StreamsServer;
use proto::grpc::health::v1::health_server::HealthServer;

/// The authority (host and port) a client reached the server by, for `Gossip.Read`.
#[derive(Clone, Debug)]
pub(crate) struct Reached(pub(crate) Option<http::uri::Authority>);

/// The gRPC services as one router, and what the dispatch needs to count calls.
#[derive(Clone)]
pub(crate) struct Grpc {
    routes: axum::Router,
    metrics: Arc<Metrics>,
}

impl Grpc {
    pub(crate) fn new(state: &AppState) -> Self {
        let limit = state.config.max_body_bytes;
        let streams = StreamsServer::new(streams::Streams {
            state: state.clone(),
        })
        .max_decoding_message_size(limit);
        let routes = tonic::service::Routes::new(streams)
            .add_service(
                PersistentSubscriptionsServer::new(persistent::Persistent {
                    state: state.clone(),
                })
                .max_decoding_message_size(limit),
            )
            .add_service(ServerFeaturesServer::new(features::Features))
            .add_service(GossipServer::new(features::Gossip {
                instance: uuid::Uuid::new_v4(),
            }))
            .add_service(HealthServer::new(health::Health {
                state: state.clone(),
            }))
            .into_axum_router()
            .fallback(not_offered);
        Grpc {
            routes,
            metrics: state.metrics.clone(),
        }
    }
}

/// A service or method Factum does not offer (projections, users,
/// operations, monitoring, …): `UNIMPLEMENTED`, naming it.
async fn not_offered(request: Request) -> Response {
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let status = Status::unimplemented(format!(
        "Factum does not offer {path}; docs/kurrentdb.md lists what it answers"
    ));
    status.into_http::<axum::body::Body>().into_response()
}

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The outermost layer of the server: gRPC requests to the services here, the rest on to
/// the HTTP API.
pub(crate) async fn dispatch(State(grpc): State<Grpc>, request: Request, next: Next) -> Response {
    if !is_grpc(request.headers()) {
        return next.run(request).await;
    }
    call(grpc, request).await
}

/// A gRPC call: answered by the services here, counted, timed and logged. The server's
/// connections call it straight for gRPC requests, past the HTTP API's router and layers.
pub(crate) async fn call(grpc: Grpc, mut request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = if features::is_offered(&path) {
        path.clone()
    } else {
        "not offered".to_owned()
    };
    let connection = request
        .headers()
        .get("connection-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let reached = Reached(request.uri().authority().cloned().or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
    }));
    request.extensions_mut().insert(reached);
    let span = tracing::info_span!("grpc", method = %path, connection = %connection);
    crate::metrics::join_trace(&span, request.headers());
    let started = Instant::now();
    let response = match grpc.routes.oneshot(request).instrument(span.clone()).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    grpc.metrics.grpc_answered(&method, started.elapsed());
    let (parts, body) = response.into_parts();
    let finish = Finish {
        metrics: grpc.metrics,
        method,
        span,
    };
    // A status in the headers is a call refused before it answered anything.
    if let Some(code) = status_code(&parts.headers) {
        finish.record(code);
        return Response::from_parts(parts, body);
    }
    Response::from_parts(
        parts,
        axum::body::Body::new(Counted {
            inner: body,
            finish: Some(finish),
        }),
    )
}

fn status_code(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// Counts a call by its status once the status is known.
struct Finish {
    metrics: Arc<Metrics>,
    method: String,
    span: tracing::Span,
}

impl Finish {
    fn record(self, code: tonic::Code) {
        self.metrics.grpc_finished(&self.method, code);
        let _entered = self.span.enter();
        tracing::debug!(code = ?code, "gRPC call finished");
    }
}

/// A call's answer, read for the status in its trailers.
struct Counted {
    inner: axum::body::Body,
    finish: Option<Finish>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| status_code(trailers).unwrap_or(tonic::Code::Unknown)),
            Poll::Ready(Some(Err(_))) => Some(tonic::Code::Internal),
            Poll::Ready(None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(finish) = self.finish.take()
        {
            finish.record(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The client went away before the call ended (a subscription closed, say).
        if let Some(finish) = self.finish.take() {
            finish.record(tonic::Code::Cancelled);
        }
    }
}

/// The answers a task sends on `receiver`, as a call's answer stream.
pub(crate) fn stream_of<T: Send + 'static>(
    receiver: mpsc::Receiver<Result<T, Status>>,
) -> streams::Answers<T> {
    Box::pin(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}
