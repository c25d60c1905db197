//! Decisions over dynamic consistency boundaries: the DCB counterpart of the [`Decider`] and
//! the [`Repository`](crate::Repository). A [`Decision`] names the events a command depends on
//! with a query, folds them into a state and decides; [`Decisions`] reads the query, decides,
//! and appends the new events on the condition that no event matching the query came after
//! the read — trying again, from a fresh read, when one did.
//!
//! [`Decider`]: crate::Decider

use std::sync::Arc;

use factum_core::{
    AppendCondition, DcbAppend, DcbEvent, Direction, EventStore, IntoStore, NewEvent, Query,
    RecordedEvent, StoreError, StreamName,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CommandContext;

/// A rule that may cross aggregates, written as pure functions: [`query`](Decision::query)
/// names the events a command's decision depends on (by types and tags),
/// [`evolve`](Decision::evolve) folds each of them into a state, and
/// [`decide`](Decision::decide) turns the command into new events or a rejection. Each new
/// event carries the [`tags`](Decision::tags) that later queries find it by.
///
/// Events are a plain `serde` enum, as for a [`Decider`](crate::Decider): each variant's name
/// is the stored event type, its fields the stored data. Every event the query matches must be
/// one of them, so a query names the enum's types (or only tags that only its events carry).
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use factum::{CommandContext, Decision, Decisions, MemoryStore, Query};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// enum UserEvent { UsernameClaimed { name: String } }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the user name {0} is taken")]
/// struct Taken(String);
///
/// struct ClaimUsername;
///
/// impl Decision for ClaimUsername {
///     type State = bool;
///     type Command = String;
///     type Event = UserEvent;
///     type Error = Taken;
///     fn query(&self, name: &String) -> Query {
///         Query::item(["UsernameClaimed"], [format!("username:{name}")])
///     }
///     fn initial_state(&self, _: &String) -> bool { false }
///     fn evolve(&self, _: bool, _: &UserEvent) -> bool { true }
///     fn decide(&self, taken: &bool, name: &String) -> Result<Vec<UserEvent>, Taken> {
///         if *taken { return Err(Taken(name.clone())); }
///         Ok(vec![UserEvent::UsernameClaimed { name: name.clone() }])
///     }
///     fn tags(&self, event: &UserEvent) -> Vec<String> {
///         match event { UserEvent::UsernameClaimed { name } => vec![format!("username:{name}")] }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let decisions = Decisions::new(MemoryStore::new(), ClaimUsername);
/// let context = CommandContext::new();
/// decisions.execute(&"ada".to_owned(), &context).await.unwrap();
/// assert!(decisions.execute(&"ada".to_owned(), &context).await.is_err());
/// # });
/// ```
pub trait Decision: Send + Sync + 'static {
    /// What the decision needs to know, folded from the events its query matches.
    type State: Send + Sync;
    /// What can be asked.
    type Command: Send + Sync + 'static;
    /// What it records.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The events a decision on `command` depends on.
    fn query(&self, command: &Self::Command) -> Query;

    /// The state before any of them.
    fn initial_state(&self, command: &Self::Command) -> Self::State;

    /// The state after `event`. Pure, and total: every event the query matches must fold.
    fn evolve(&self, state: Self::State, event: &Self::Event) -> Self::State;

    /// Decides what happens when `command` arrives in `state`. Pure: no I/O.
    fn decide(
        &self,
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// The tags of a new event: what later queries find it by.
    fn tags(&self, event: &Self::Event) -> Vec<String>;

    /// The stream a new event goes to; by default `dcb`.
    fn stream(&self, event: &Self::Event) -> Option<StreamName> {
        let _ = event;
        None
    }
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError<E: std::error::Error + 'static> {
    /// The decision refused it; nothing was written.
    #[error("the command was rejected: {0}")]
    Rejected(#[source] E),
    /// An event the query matched does not decode into the decision's events, or a new one
    /// does not encode.
    #[error("{}: {reason}", position.map_or_else(|| "a new event".to_owned(), |p| format!("the event at position {p}")))]
    Codec {
        /// Its position (none for a new event).
        position: Option<u64>,
        /// What went wrong.
        reason: String,
    },
    /// Every attempt met a matching event written after its read.
    #[error("{attempts} attempts in a row met a conflicting append; nothing was written")]
    Conflict {
        /// How many were made.
        attempts: usize,
    },
    /// The store failed or refused the append.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an executed command came to.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided<E> {
    /// The events recorded (none when the decision had nothing to add).
    pub events: Vec<E>,
    /// The position of the last of them.
    pub position: Option<u64>,
    /// The head of the read the decision was made on: the condition's `after`.
    pub after: Option<u64>,
    /// Reads and decisions it took (more than 1 after conflicts).
    pub attempts: usize,
}

/// How many events a read of a decision's query takes at a time.
const READ_PAGE: usize = 1024;

/// Runs a [`Decision`] against a store: read its query, fold, decide, append on the
/// condition that nothing matching came since; on a conflict, again from a fresh read.
pub struct Decisions<D: Decision> {
    store: Arc<dyn EventStore>,
    decision: D,
    attempts_max: usize,
}

impl<D: Decision> Decisions<D> {
    /// Decisions on `store`, tried up to 16 times on conflicts.
    pub fn new(store: impl IntoStore, decision: D) -> Self {
        Decisions {
            store: store.into_store(),
            decision,
            attempts_max: 16,
        }
    }

    /// Tries up to `attempts` times (at least once) before giving up on conflicts.
    pub fn with_attempts_max(mut self, attempts: usize) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }

    /// The decision.
    pub fn decision(&self) -> &D {
        &self.decision
    }

    /// The state a decision on `command` would be made in now, and the head of its read.
    pub async fn load(
        &self,
        command: &D::Command,
    ) -> Result<(D::State, Option<u64>), DecisionError<D::Error>> {
        let query = self.decision.query(command);
        let mut state = self.decision.initial_state(command);
        let mut after = None;
        loop {
            let read = self
                .store
                .read_query(&query, after, Direction::Forwards, READ_PAGE)
                .await?;
            for recorded in &read.events {
                let event = decode::<D::Event, D::Error>(recorded)?;
                state = self.decision.evolve(state, &event);
            }
            if read.events.len() < READ_PAGE {
                return Ok((state, read.head));
            }
            after = read.events.last().map(|e| e.position);
        }
    }

    /// Executes `command`: its new events carry the context's correlation and causation ids
    /// and their tags, and are appended only if no event matching the query was written after
    /// the read they were decided on. A rejection writes nothing.
    pub async fn execute(
        &self,
        command: &D::Command,
        context: &CommandContext,
    ) -> Result<Decided<D::Event>, DecisionError<D::Error>> {
        let query = self.decision.query(command);
        for attempt in 1..=self.attempts_max {
            let (state, after) = self.load(command).await?;
            let events = self
                .decision
                .decide(&state, command)
                .map_err(DecisionError::Rejected)?;
            if events.is_empty() {
                return Ok(Decided {
                    events,
                    position: None,
                    after,
                    attempts: attempt,
                });
            }
            let mut new = Vec::with_capacity(events.len());
            for event in &events {
                let encoded = encode(event, context)?.with_tags(self.decision.tags(event));
                let dcb = DcbEvent::new(encoded);
                new.push(match self.decision.stream(event) {
                    Some(stream) => dcb.in_stream(stream),
                    None => dcb,
                });
            }
            let append =
                DcbAppend::new(new).on_condition(AppendCondition::new(query.clone(), after));
            match self.store.append_conditional(append).await {
                Ok(position) => {
                    return Ok(Decided {
                        events,
                        position: Some(position),
                        after,
                        attempts: attempt,
                    });
                }
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DecisionError::Conflict {
            attempts: self.attempts_max,
        })
    }
}

fn encode<E: Serialize, R: std::error::Error>(
    event: &E,
    context: &CommandContext,
) -> Result<NewEvent, DecisionError<R>> {
    let (event_type, data) =
        crate::codec::split_variant(event).map_err(|e| DecisionError::Codec {
            position: None,
            reason: e.to_string(),
        })?;
    NewEvent::json(event_type, &data)
        .and_then(|e| e.with_metadata(&context.metadata(1)))
        .map_err(|e| DecisionError::Codec {
            position: None,
            reason: e.to_string(),
        })
}

pub(crate) fn decode<E: DeserializeOwned, R: std::error::Error>(
    recorded: &RecordedEvent,
) -> Result<E, DecisionError<R>> {
    let data: serde_json::Value =
        serde_json::from_slice(&recorded.data).map_err(|e| DecisionError::Codec {
            position: Some(recorded.position),
            reason: e.to_string(),
        })?;
    let value = if data.is_null() {
        serde_json::Value::String(recorded.event_type.clone())
    } else {
        serde_json::json!({ recorded.event_type.clone(): data })
    };
    serde_json::from_value(value).map_err(|e| DecisionError::Codec {
        position: Some(recorded.position),
        reason: format!("'{}' does not decode: {e}", recorded.event_type),
    })
}
