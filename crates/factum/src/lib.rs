//! The Factum toolkit: write the domain as plain Rust — a [`Decider`] of commands and events —
//! and get optimistic concurrency, retries, correlation and causation, and schema evolution from
//! the [`Repository`], over any [`EventStore`] (the embedded engine, PostgreSQL, or the in-memory
//! store in tests).
//!
//! ```
//! use factum::{CommandContext, Decider, MemoryStore, Repository};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! enum CounterEvent { Incremented { by: u64 } }
//!
//! #[derive(Debug, thiserror::Error, PartialEq)]
//! #[error("the counter would pass {0}")]
//! struct TooHigh(u64);
//!
//! struct Counter { max: u64 }
//!
//! impl Decider for Counter {
//!     type State = u64;
//!     type Command = u64;
//!     type Event = CounterEvent;
//!     type Error = TooHigh;
//!     const CATEGORY: &'static str = "counter";
//!     fn initial_state(&self) -> u64 { 0 }
//!     fn decide(&self, state: &u64, by: &u64) -> Result<Vec<CounterEvent>, TooHigh> {
//!         if state + by > self.max { return Err(TooHigh(self.max)); }
//!         Ok(vec![CounterEvent::Incremented { by: *by }])
//!     }
//!     fn evolve(&self, state: u64, event: &CounterEvent) -> u64 {
//!         match event { CounterEvent::Incremented { by } => state + by }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let repository = Repository::new(MemoryStore::new(), Counter { max: 10 });
//! let context = CommandContext::new();
//! repository.execute("c-1", 4, &context).await.unwrap();
//! repository.execute("c-1", 5, &context).await.unwrap();
//! assert!(repository.execute("c-1", 2, &context).await.is_err());
//! assert_eq!(repository.load("c-1").await.unwrap().state, 9);
//! # });
//! ```

pub mod bus;
mod codec;
mod context;
mod decider;
mod inbox;
pub mod processor;
mod replay;
mod repository;
pub mod saga;
pub mod snapshot;
pub mod testing;

pub use bus::{BusError, Command, CommandBus, Envelope};
pub use codec::{CodecError, EventCodec, Upcasters};
pub use context::CommandContext;
pub use decider::Decider;
pub use inbox::Inbox;
pub use processor::{EventHandler, EventProcessor, HandlerError, RetryPolicy, handler_fn};
pub use replay::replay_stream;
pub use repository::{
    DUPLICATE_WINDOW, Executed, Loaded, Repository, RepositoryError, ToAggregate,
};
pub use snapshot::SnapshotPolicy;

/// The toolkit's own stream `${kind}-{name}` (`$deadletter-…`, `$inbox-…`, `$saga-…`, `$snapshot-…`): an
/// empty name would make a stream that is not one of the toolkit's, so it is refused.
pub(crate) fn toolkit_stream(kind: &str, name: &str) -> Result<StreamName, StoreError> {
    if name.is_empty() {
        return Err(StoreError::invalid(format!(
            "a '${kind}-' stream needs a name after the prefix"
        )));
    }
    StreamName::new(format!("${kind}-{name}"))
}

pub use factum_core::{
    AppendResult, Direction, EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent,
    StoreError, StreamName, Subscription, SubscriptionFilter,
};
