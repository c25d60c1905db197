use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Upcasters;

/// A consistency boundary written as two pure functions (the decider pattern):
/// [`decide`](Decider::decide) turns a command into events or a rejection, given the current
/// state; [`evolve`](Decider::evolve) folds one event into the state. The state is rebuilt by
/// replaying the stream's events from [`initial_state`](Decider::initial_state).
///
/// Events are a plain `serde` enum in its default (externally tagged) representation: each
/// variant's name is the stored event type (`ItemAdded`), and its fields are the stored data.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use factum::{CommandContext, Decider, MemoryStore, Repository};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// enum CounterEvent { Incremented { by: u64 } }
///
/// #[derive(Debug, thiserror::Error, PartialEq)]
/// #[error("the counter would pass {0}")]
/// struct TooHigh(u64);
///
/// struct Counter { max: u64 }
///
/// impl Decider for Counter {
///     type State = u64;
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = TooHigh;
///     const CATEGORY: &'static str = "counter";
///     fn initial_state(&self) -> u64 { 0 }
///     fn decide(&self, state: &u64, by: &u64) -> Result<Vec<CounterEvent>, TooHigh> {
///         if state + by > self.max { return Err(TooHigh(self.max)); }
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
///     fn evolve(&self, state: u64, event: &CounterEvent) -> u64 {
///         match event { CounterEvent::Incremented { by } => state + by }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let repository = Repository::new(MemoryStore::new(), Counter { max: 10 });
/// let context = CommandContext::new();
/// repository.execute("c-1", 4, &context).await.unwrap();
/// repository.execute("c-1", 5, &context).await.unwrap();
/// assert!(repository.execute("c-1", 2, &context).await.is_err());
/// assert_eq!(repository.load("c-1").await.unwrap().state, 9);
/// # });
/// ```
pub trait Decider: Send + Sync + 'static {
    /// What the decider knows of one aggregate.
    type State: Send + Sync;
    /// What can be asked of it.
    type Command: Send + Sync + 'static;
    /// What it records.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The stream category: aggregate `id` lives in stream `{CATEGORY}-{id}`.
    const CATEGORY: &'static str;

    /// The state of an aggregate that has no events yet.
    fn initial_state(&self) -> Self::State;

    /// Decides what happens when `command` arrives in `state`. Pure: no I/O.
    fn decide(
        &self,
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `event`. Pure, and total: every recorded event must fold.
    fn evolve(&self, state: Self::State, event: &Self::Event) -> Self::State;

    /// The schema version today's code writes for an event type (1 unless it changed).
    fn event_version(&self, event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The schema version of [`State`](Decider::State) as snapshots store it (1 unless it
    /// changed). Raise it whenever the state's serialised shape changes: snapshots of other
    /// versions are ignored, and the stream is replayed instead.
    fn state_version(&self) -> u32 {
        1
    }

    /// How stored events of older versions become today's.
    fn upcasters(&self) -> Upcasters {
        Upcasters::default()
    }
}
