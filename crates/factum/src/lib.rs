//! Factum: an event store and an event-sourcing / CQRS toolkit.
//!
//! Services record facts — orders, carts, accounts, stock — as events in streams, read them
//! back in order, follow the whole log live, keep read models for queries, and hand events
//! reliably to other services. This is the one crate an application adds; its features choose
//! the parts, and every item has one path, at the root (modules only where names would clash:
//! [`testing`], [`headers`], [`server`], [`backend`], [`limits`]).
//!
//! ```toml
//! [dependencies]
//! factum = { version = "0.1", features = ["postgres", "sqlite", "nats"] }
//! ```
//!
//! | feature | what it adds |
//! |---|---|
//! | `engine` (default) | [`Engine`]: the embedded store, one directory, no server |
//! | `postgres` | [`PgStore`]: the same store on PostgreSQL; with `projections`, [`PgReadModel`] |
//! | `projections` | [`Projection`], [`Projector`], [`ReadModel`]: read models kept up to date from the log |
//! | `sqlite` | [`SqliteReadModel`] (and `projections`) |
//! | `relay` | [`Relay`], [`Consumer`]: the store as outbox, and messages back in as commands |
//! | `nats`, `rabbitmq` | [`NatsPublisher`] / [`NatsSource`], [`RabbitPublisher`] / [`RabbitSource`] (and `relay`) |
//! | `server` | [`server`]: the HTTP API, server-sent events, metrics and web UI of `factum serve` |
//! | `testkit` | `backend::testkit`: the conformance suite every backend passes |
//! | `full` | all of them |
//!
//! Always there: the event model and the [`EventStore`] trait, the in-memory [`MemoryStore`]
//! for tests, and the toolkit — [`Decider`], [`Repository`], snapshots, the [`CommandBus`],
//! [`EventProcessor`]s with [`DeadLetters`], the [`Inbox`] and [`SagaManager`]s. Every
//! constructor takes its store the same way ([`IntoStore`]): a backend, an `Arc` of one, or an
//! `Arc<dyn EventStore>`.
//!
//! # The store
//!
//! An append names a stream and the state it expects the stream in; the events are durable
//! when it returns, each with a revision in its stream and a position in `$all`, the one log.
//!
//! ```
//! use factum::{Direction, Engine, EngineOptions, EventStore, ExpectedState, NewEvent, StreamName};
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
//! let cart = StreamName::user("cart-42").unwrap();
//! let added = NewEvent::json("ItemAdded", &serde_json::json!({"sku": "pear"})).unwrap();
//! let written = store.append(&cart, ExpectedState::NoStream, vec![added]).await.unwrap();
//! assert_eq!(written.last_revision, 0);
//!
//! // Another writer that expected the stream not to exist loses, and writes nothing.
//! let late = NewEvent::json("ItemAdded", &serde_json::json!({"sku": "fig"})).unwrap();
//! assert!(store.append(&cart, ExpectedState::NoStream, vec![late]).await.is_err());
//!
//! let events = store.read_stream(&cart, 0, Direction::Forwards, 10).await.unwrap();
//! assert_eq!(events[0].event_type, "ItemAdded");
//! let mut live = store.subscribe_all(0, Default::default()); // catch-up, then live
//! assert_eq!(live.next().await.unwrap().position, 0);
//! store.close().unwrap();
//! # });
//! ```
//!
//! The same code runs on PostgreSQL (`PgStore::connect("postgres://…", PgOptions::default())`),
//! and on [`MemoryStore`] in tests; every backend passes the same conformance suite.
//!
//! # Aggregates
//!
//! A [`Decider`] is the domain as pure functions; a [`Repository`] loads an aggregate,
//! decides, and appends with the revision it loaded, deciding again on a conflict (see the
//! [`Decider`] example). A [`CommandBus`] puts tracing, validation, authorisation and audit
//! around every command; [`EventProcessor`]s react to committed events with retries and dead
//! letters; a [`SagaManager`] drives a process across aggregates.
//!
//! # Read models
//!
//! ```
//! use factum::{ApplyError, Projection, RecordedEvent, Table, Tx};
//!
//! struct Balances;
//!
//! impl Projection for Balances {
//!     fn name(&self) -> &str { "balances" }
//!     fn tables(&self) -> Vec<Table> {
//!         vec![Table::new("balances", "id TEXT PRIMARY KEY, balance BIGINT NOT NULL")
//!             .index("balances_by_balance", "balance")]
//!     }
//!     fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
//!         let data: serde_json::Value = serde_json::from_slice(&event.data)?;
//!         let id = event.stream.as_str().to_owned();
//!         match event.event_type.as_str() {
//!             "Opened" => {
//!                 tx.insert("balances").set("id", id).set("balance", 0);
//!             }
//!             "Deposited" => {
//!                 let amount = data["amount"].as_i64().unwrap_or(0);
//!                 tx.update("balances").key("id", id).add("balance", amount);
//!             }
//!             "Closed" => tx.execute("DELETE FROM {balances} WHERE id = $1", [id.into()]),
//!             _ => {}
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! A [`Projector`] runs it against a [`ReadModel`] (SQLite or PostgreSQL): batches of events
//! commit together with the projection's checkpoint, so every event takes effect once.
//!
//! # Other services
//!
//! ```no_run
//! use factum::{MemoryStore, NatsConfig, NatsPublisher, Payload, Relay, TypeMap};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let relay = Relay::builder("orders-out", store)
//!     .stream_prefixes(["order-"])
//!     .translator(TypeMap::new().map("OrderPlaced", "order.placed.v1", Payload::Data))
//!     .build()?;
//! let mut nats = NatsPublisher::new(NatsConfig {
//!     jetstream_stream: Some("ORDERS".into()),
//!     ..NatsConfig::new("nats://127.0.0.1:4222")
//! });
//! relay.run(&mut nats, std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! A [`Consumer`] takes the other side's messages in as commands, each executed once however
//! often the broker delivers it.

#[doc(inline)]
pub use factum_core::*;
#[cfg(feature = "engine")]
#[doc(inline)]
pub use factum_engine::*;
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use factum_postgres::*;
#[cfg(feature = "projections")]
#[doc(inline)]
pub use factum_projections::*;
#[cfg(feature = "relay")]
#[doc(inline)]
pub use factum_relay::*;
#[doc(inline)]
pub use factum_toolkit::*;

/// `factum serve` as a library: the HTTP/JSON API of an event store, server-sent events,
/// metrics, tokens and TLS, and the web UI.
///
/// ```no_run
/// # async fn run(store: factum::MemoryStore) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:2113").await?;
/// factum::server::serve(listener, store, factum::server::Config::default(), async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await
/// # }
/// ```
#[cfg(feature = "server")]
pub mod server {
    #[doc(inline)]
    pub use factum_server::*;
}

/// The README's Rust blocks, compiled (and, but for those marked `no_run`, run) with the doc
/// tests, so that they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
