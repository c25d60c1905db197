//! Prometheus metrics: requests and their latency by route, appends, events and bytes written,
//! subscribers, the store's head, and how far event processors and projections are behind.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use factum_projections::ProjectionStatus;
use factum_toolkit::ProcessorStatus;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcMethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessorLabels {
    processor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    source: String,
    group: String,
}

/// A persistent subscription group's gauges.
#[derive(Default)]
struct GroupGauges {
    consumers: Family<GroupLabels, Gauge>,
    in_flight: Family<GroupLabels, Gauge>,
    parked: Family<GroupLabels, Gauge>,
    retries: Family<GroupLabels, Gauge>,
    lag: Family<GroupLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ≈ 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    grpc_calls: Family<GrpcLabels, Counter>,
    grpc_latency: Family<GrpcMethodLabels, Histogram, fn() -> Histogram>,
    pub(crate) appends: Counter,
    pub(crate) events: Counter,
    pub(crate) bytes: Counter,
    pub(crate) subscribers: Gauge,
    /// Subscriptions refused at the caps.
    pub(crate) refused: Counter,
    /// Subscribers dropped because they took nothing for the stall timeout.
    pub(crate) stalled: Counter,
    /// Open connections.
    pub(crate) connections: Gauge,
    head: Gauge,
    writable: Gauge,
    processor_lag: Family<ProcessorLabels, Gauge>,
    processor_dead_letters: Family<ProcessorLabels, Gauge>,
    projection_lag: Family<ProjectionLabels, Gauge>,
    projection_lag_seconds: Family<ProjectionLabels, Gauge<f64, AtomicU64>>,
    groups: GroupGauges,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("factum");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let appends = Counter::default();
        let events = Counter::default();
        let bytes = Counter::default();
        let subscribers = Gauge::default();
        let head = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route (for subscriptions: until the \
             stream opens)",
            latency.clone(),
        );
        let grpc_calls = Family::<GrpcLabels, Counter>::default();
        let grpc_latency =
            Family::<GrpcMethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "grpc_calls",
            "gRPC calls (KurrentDB's client protocol) by method and status code",
            grpc_calls.clone(),
        );
        registry.register(
            "grpc_call_duration_seconds",
            "Time to answer a gRPC call, by method (for reads and subscriptions: until the \
             answer stream opens)",
            grpc_latency.clone(),
        );
        registry.register("appends", "Appends that were recorded", appends.clone());
        registry.register(
            "appended_events",
            "Events recorded by appends",
            events.clone(),
        );
        registry.register(
            "appended_bytes",
            "Bytes of data and metadata recorded by appends",
            bytes.clone(),
        );
        registry.register(
            "subscribers",
            "Open subscriptions: server-sent events and gRPC (of streams, $all and groups)",
            subscribers.clone(),
        );
        registry.register(
            "head_position",
            "The position the next event will get",
            head.clone(),
        );
        let refused = Counter::default();
        let stalled = Counter::default();
        let connections = Gauge::default();
        registry.register(
            "subscriptions_refused",
            "Subscriptions refused because the server or the token held its most (HTTP 503 and 429; gRPC UNAVAILABLE and RESOURCE_EXHAUSTED)",
            refused.clone(),
        );
        registry.register(
            "subscribers_stalled",
            "Subscribers dropped because they took nothing for the stall timeout",
            stalled.clone(),
        );
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let writable = Gauge::default();
        registry.register(
            "store_writable",
            "1 while the store takes writes, 0 while it refuses them after a fault (see /health)",
            writable.clone(),
        );
        let processor_lag = Family::<ProcessorLabels, Gauge>::default();
        let processor_dead_letters = Family::<ProcessorLabels, Gauge>::default();
        let projection_lag = Family::<ProjectionLabels, Gauge>::default();
        let projection_lag_seconds = Family::<ProjectionLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "processor_lag_events",
            "Events in the log after an event processor's checkpoint",
            processor_lag.clone(),
        );
        registry.register(
            "processor_dead_letters",
            "An event processor's dead letters that no replay has resolved",
            processor_dead_letters.clone(),
        );
        registry.register(
            "projection_lag_events",
            "Events in the log a projection has not applied (with --read-model)",
            projection_lag.clone(),
        );
        registry.register(
            "projection_lag_seconds",
            "Seconds between the newest event and the last one a projection applied",
            projection_lag_seconds.clone(),
        );
        let groups = GroupGauges::default();
        for (name, help, family) in [
            (
                "subscription_group_consumers",
                "Consumers connected to a persistent subscription group",
                &groups.consumers,
            ),
            (
                "subscription_group_in_flight",
                "A group's messages sent and not yet settled",
                &groups.in_flight,
            ),
            (
                "subscription_group_parked",
                "A group's parked messages not replayed",
                &groups.parked,
            ),
            (
                "subscription_group_retries",
                "A group's messages tried again since the server started (timeouts, nacks, lost consumers)",
                &groups.retries,
            ),
            (
                "subscription_group_lag_events",
                "How far a group's checkpoint is behind the end of its source (revisions or positions)",
                &groups.lag,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        Metrics {
            groups,
            registry,
            processor_lag,
            processor_dead_letters,
            projection_lag,
            projection_lag_seconds,
            requests,
            latency,
            grpc_calls,
            grpc_latency,
            appends,
            events,
            bytes,
            subscribers,
            head,
            writable,
            refused,
            stalled,
            connections,
        }
    }

    /// The metrics in Prometheus' text format, with the head and the consumers' lag as they
    /// are now.
    pub(crate) fn render(
        &self,
        head: u64,
        writable: bool,
        processors: &[ProcessorStatus],
        projections: &[ProjectionStatus],
        groups: &[factum_toolkit::GroupInfo],
    ) -> String {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.head.set(gauge(head));
        self.writable.set(i64::from(writable));
        self.processor_lag.clear();
        self.processor_dead_letters.clear();
        for p in processors {
            let labels = ProcessorLabels {
                processor: p.name.clone(),
            };
            self.processor_lag
                .get_or_create(&labels)
                .set(gauge(p.behind));
            self.processor_dead_letters
                .get_or_create(&labels)
                .set(gauge(p.dead_letters as u64));
        }
        self.projection_lag.clear();
        self.projection_lag_seconds.clear();
        for p in projections {
            let labels = ProjectionLabels {
                projection: p.state.name.clone(),
            };
            self.projection_lag
                .get_or_create(&labels)
                .set(gauge(p.behind));
            if let Some(seconds) = p.behind_seconds {
                self.projection_lag_seconds
                    .get_or_create(&labels)
                    .set(seconds);
            }
        }
        let g = &self.groups;
        for family in [&g.consumers, &g.in_flight, &g.parked, &g.retries, &g.lag] {
            family.clear();
        }
        for info in groups {
            let labels = GroupLabels {
                source: info.source.clone(),
                group: info.group.clone(),
            };
            g.consumers
                .get_or_create(&labels)
                .set(gauge(info.consumers.len() as u64));
            g.in_flight
                .get_or_create(&labels)
                .set(gauge(info.in_flight as u64));
            g.parked.get_or_create(&labels).set(gauge(info.parked));
            g.retries.get_or_create(&labels).set(gauge(info.retried));
            g.lag.get_or_create(&labels).set(gauge(info.lag));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Makes `span` a child of the trace a request's `traceparent` header names, if any.
pub(crate) fn join_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    factum_toolkit::trace::enter_trace(
        span,
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
    );
}

/// Counts each request and times it, by the route it matched, in a span of its own.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // The request as a span, in the trace its `traceparent` header names.
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        status = tracing::field::Empty
    );
    join_trace(&span, request.headers());
    let response = {
        use tracing::Instrument as _;
        next.run(request).instrument(span.clone()).await
    };
    span.record("status", response.status().as_u16());
    if response.status().is_success()
        && matches!(
            (method.as_str(), route.as_str()),
            ("GET", "/streams/{stream}" | "/all") | ("POST", "/dcb/read")
        )
    {
        state.stats.read();
    }
    let metrics: &Arc<Metrics> = &state.metrics;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

impl Metrics {
    /// A gRPC call has its answer headers: time it.
    pub(crate) fn grpc_answered(&self, method: &str, took: std::time::Duration) {
        self.grpc_latency
            .get_or_create(&GrpcMethodLabels {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A gRPC call ended with `code`: count it.
    pub(crate) fn grpc_finished(&self, method: &str, code: tonic::Code) {
        self.grpc_calls
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: code_name(code).to_owned(),
            })
            .inc();
    }
}

/// A status code's canonical name, as gRPC's documentation writes it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts a subscriber while it lives.
pub(crate) struct Subscribed(pub(crate) Arc<Metrics>);

impl Subscribed {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        metrics.subscribers.inc();
        Subscribed(metrics)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}
