//! `factum serve`: the event store over HTTP.
//!
//! A JSON API to append, read, list, delete and describe streams; pages of `$all` for
//! consumers that keep their own position (the event-provider API); server-sent events that
//! follow a stream or `$all` live and resume from `Last-Event-ID` without gap or duplicate;
//! `/health` and Prometheus `/metrics`. The same port speaks KurrentDB's gRPC client protocol
//! ([`grpc`]), so KurrentDB's own clients work against it unchanged.
//!
//! ```no_run
//! # mod factum { pub use factum_core::*; pub mod server { pub use factum_server::*; } }
//! # async fn run(store: std::sync::Arc<dyn factum::EventStore>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2113").await?;
//! factum::server::serve(listener, store, factum::server::Config::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! The routes and their OpenAPI 3.1 description are declared together (each handler carries
//! its description); a running server serves it at `GET /openapi.json`, and [`openapi`] gives
//! it to a program. `GET /` serves the web UI to a browser and the list of endpoints to any
//! other client.

mod admin;
mod api;
pub mod auth;
mod connections;
mod consumers;
mod dashboard;
pub mod dcb;
mod error;
mod groups;
pub mod grpc;
pub mod json;
mod metrics;
mod openapi;
mod sse;
mod stats;
pub mod tls;

use factum_core::IntoStore;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use factum_core::EventStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;

/// Limits of the server.
#[derive(Clone)]
pub struct Config {
    /// The largest request body accepted (413 beyond it). Default 4 MiB.
    pub max_body_bytes: usize,
    /// The most events or streams one page returns (`limit`). Default 1000.
    pub max_page: usize,
    /// How many events the shared reader of `$all` keeps for SSE followers that fall behind;
    /// one further behind reads the store until it has caught up. Default 8192.
    pub sse_buffer: usize,
    /// Bearer tokens and their rights; `None` lets every request through (loopback use).
    pub auth: Option<Arc<auth::Auth>>,
    /// TLS (see [`tls::load`]); `None` serves plain HTTP.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The read model whose projections `/projections` and `/metrics` report on.
    pub read_model: Option<Arc<dyn factum_projections::ReadModel>>,
    /// The most subscriptions (server-sent events of streams, `$all`, DCB queries and group
    /// consumers) open at once; beyond it a new one is answered 503 with `Retry-After`.
    /// Default 4096.
    pub max_subscriptions: usize,
    /// The most subscriptions one token holds at once; beyond it 429 with `Retry-After`.
    /// Default 1024.
    pub max_subscriptions_per_token: usize,
    /// The most client connections open at once; further ones wait to be accepted. Default
    /// 16384.
    pub max_connections: usize,
    /// A subscriber that takes nothing for this long while events wait for it is dropped and
    /// its connection closed. Default 60 s.
    pub stall_timeout: std::time::Duration,
    /// A connection that sends nothing for this long is closed: one that sends nothing at
    /// all, an HTTP/1.1 connection whose next request's head has not arrived (idle keep-alive
    /// included; a request in flight is never cut), an HTTP/2 connection that does not answer
    /// the ping sent after half of it of quiet. Default 60 s.
    pub idle_timeout: std::time::Duration,
    /// The kernel's send buffer of each accepted connection (`SO_SNDBUF`), in bytes; `None`
    /// leaves it to the kernel's autotuning. Bounded, a client that stops reading holds at
    /// most about twice this in the kernel, and a thousand of them fill their buffers quickly
    /// instead of taking gigabytes of copying; a consumer far away (a long round trip) reads
    /// at most about this much per round trip. Default 64 KiB.
    pub send_buffer: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 4 << 20,
            max_page: 1000,
            sse_buffer: 8192,
            auth: None,
            tls: None,
            read_model: None,
            max_subscriptions: 4096,
            max_subscriptions_per_token: 1024,
            max_connections: 16384,
            stall_timeout: std::time::Duration::from_secs(60),
            idle_timeout: std::time::Duration::from_secs(60),
            send_buffer: Some(64 * 1024),
        }
    }
}

/// What the caps count: subscriptions overall and by token.
pub(crate) struct Limits {
    pub(crate) subscriptions: Arc<tokio::sync::Semaphore>,
    by_token: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Limits {
    fn new(config: &Config) -> Self {
        Limits {
            subscriptions: Arc::new(tokio::sync::Semaphore::new(config.max_subscriptions)),
            by_token: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Counts one more subscription of `token`, unless it holds `most` already.
    pub(crate) fn enter(&self, token: &str, most: usize) -> bool {
        let mut by_token = self
            .by_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = by_token.entry(token.to_owned()).or_default();
        if *held >= most {
            return false;
        }
        *held += 1;
        true
    }

    /// Counts one subscription of `token` less.
    pub(crate) fn leave(&self, token: &str) {
        let mut by_token = self
            .by_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = by_token.get_mut(token) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                by_token.remove(token);
            }
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// What the dashboard's stats stream reads besides the metrics.
    pub(crate) stats: Arc<stats::Stats>,
    /// The caps on subscriptions.
    pub(crate) limits: Arc<Limits>,
    /// Becomes `true` when the server shuts down: subscriptions end.
    pub(crate) closing: watch::Receiver<bool>,
    /// The one reader of `$all` that feeds every SSE follower of it.
    pub(crate) fanout: Arc<sse::Fanout>,
    /// The OpenAPI description and the endpoint index.
    pub(crate) docs: Arc<openapi::Docs>,
    /// The persistent subscription groups, opened with the server (or on first use).
    pub(crate) groups: Arc<tokio::sync::OnceCell<factum_toolkit::Groups>>,
}

impl AppState {
    /// An append of `count` events and `bytes` bytes was acknowledged after `took`.
    pub(crate) fn appended(&self, count: u64, bytes: u64, took: std::time::Duration) {
        self.metrics.appends.inc();
        self.metrics.events.inc_by(count);
        self.metrics.bytes.inc_by(bytes);
        self.stats.append_latency.observe(took);
    }
}

/// The OpenAPI description of the API as a server with `config` serves it (its page limit;
/// security requirements only when it has tokens).
pub fn openapi(config: &Config) -> utoipa::openapi::OpenApi {
    let mut doc = openapi::routes().into_openapi();
    openapi::complete(&mut doc, config);
    doc
}

/// The API as a router, and the switch that ends its subscriptions (send `true`).
pub fn router(store: impl IntoStore, config: Config) -> (Router, watch::Sender<bool>) {
    let (router, close, _, _, _) = build(store.into_store(), config);
    (router, close)
}

type GroupsCell = Arc<tokio::sync::OnceCell<factum_toolkit::Groups>>;

type Built = (
    Router,
    watch::Sender<bool>,
    GroupsCell,
    Arc<metrics::Metrics>,
    grpc::Grpc,
);

fn build(store: Arc<dyn EventStore>, config: Config) -> Built {
    let (close, closing) = watch::channel(false);
    let (routes, mut doc) = openapi::routes().split_for_parts();
    openapi::complete(&mut doc, &config);
    let state = AppState {
        store,
        fanout: Arc::new(sse::Fanout::new(config.sse_buffer.max(1))),
        limits: Arc::new(Limits::new(&config)),
        config: Arc::new(config),
        metrics: Arc::new(metrics::Metrics::new()),
        stats: Arc::new(stats::Stats::new()),
        closing,
        docs: Arc::new(openapi::Docs::new(&doc)),
        groups: Arc::new(tokio::sync::OnceCell::new()),
    };
    let groups = state.groups.clone();
    let metrics = state.metrics.clone();
    let grpc = grpc::Grpc::new(&state);
    let router = routes
        .fallback(api::no_such_endpoint)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            grpc.clone(),
            grpc::dispatch,
        ))
        .with_state(state);
    (router, close, groups, metrics, grpc)
}

/// Serves the API on `listener` (over TLS when the config has it) until `shutdown` completes;
/// then stops accepting connections, ends the subscriptions, lets requests in flight (appends
/// included) finish, and returns.
pub async fn serve(
    listener: TcpListener,
    store: impl IntoStore,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = config.tls.clone();
    let most = config.max_connections;
    let idle_timeout = config.idle_timeout;
    let send_buffer = config.send_buffer;
    let store = store.into_store();
    let (router, close, groups, metrics, grpc) = build(store.clone(), config);
    // The groups start with the server, so that they resume before anyone asks.
    if let Err(e) = groups
        .get_or_try_init(|| factum_toolkit::Groups::open(store))
        .await
    {
        tracing::warn!(error = %e, "the persistent subscription groups could not be opened yet");
    }
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = close.send(true);
    };
    match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls, send_buffer)?;
            let listener = connections::Capped::new(listener, most, metrics);
            connections::serve(listener, router, grpc, idle_timeout, shutdown).await;
        }
        None => {
            // TCP_NODELAY and the send buffer on each connection (`connections::tune`).
            let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
                connections::tune(tcp, send_buffer);
            });
            let listener = connections::Capped::new(listener, most, metrics);
            connections::serve(listener, router, grpc, idle_timeout, shutdown).await;
        }
    }
    // Each group stores its checkpoint before the server returns.
    if let Some(groups) = groups.get() {
        groups.close().await;
    }
    Ok(())
}
