//! Given / when / then for deciders and DCB decisions: given past events, when a command
//! arrives, then these events (or this rejection). No I/O.
//!
//! ```
//! # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
//! # use factum::Decider;
//! # #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! # enum Event { Opened, Closed }
//! # #[derive(Debug, PartialEq, thiserror::Error)] #[error("already closed")] struct AlreadyClosed;
//! # struct Door;
//! # impl Decider for Door {
//! #     type State = bool; type Command = (); type Event = Event; type Error = AlreadyClosed;
//! #     const CATEGORY: &'static str = "door";
//! #     fn initial_state(&self) -> bool { true }
//! #     fn decide(&self, open: &bool, _: &()) -> Result<Vec<Event>, AlreadyClosed> {
//! #         if *open { Ok(vec![Event::Closed]) } else { Err(AlreadyClosed) }
//! #     }
//! #     fn evolve(&self, _: bool, e: &Event) -> bool { *e == Event::Opened }
//! # }
//! use factum::testing::given;
//! given(Door, [Event::Opened]).when(()).then([Event::Closed]);
//! given(Door, [Event::Closed]).when(()).then_rejected(AlreadyClosed);
//! ```
#![allow(clippy::panic)]

use std::fmt::Debug;

use crate::{Decider, Decision};

/// The past of an aggregate, for a test.
pub struct Given<D: Decider> {
    decider: D,
    state: D::State,
}

/// Starts a test: the decider, and the events that already happened.
pub fn given<D: Decider>(decider: D, events: impl IntoIterator<Item = D::Event>) -> Given<D> {
    let mut state = decider.initial_state();
    for event in events {
        state = decider.evolve(state, &event);
    }
    Given { decider, state }
}

impl<D: Decider> Given<D> {
    /// The command that arrives.
    pub fn when(self, command: D::Command) -> Then<D> {
        let outcome = self.decider.decide(&self.state, &command);
        Then {
            outcome,
            decider: self.decider,
            state: self.state,
        }
    }
}

/// The outcome of a command, to check.
pub struct Then<D: Decider> {
    outcome: Result<Vec<D::Event>, D::Error>,
    decider: D,
    state: D::State,
}

impl<D: Decider> Then<D>
where
    D::Event: PartialEq + Debug,
{
    /// Asserts the command produced exactly these events; returns the state after them, for
    /// further checks.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> D::State {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                for event in &events {
                    state = self.decider.evolve(state, event);
                }
                state
            }
            Err(error) => panic!("expected events {expected:?}, the command was rejected: {error}"),
        }
    }

    /// Asserts the command was rejected with this error.
    #[track_caller]
    pub fn then_rejected(self, expected: D::Error)
    where
        D::Error: PartialEq,
    {
        rejected(self.outcome, expected);
    }

    /// Asserts the command was rejected, for a reason the predicate accepts.
    #[track_caller]
    pub fn then_rejected_with(self, accept: impl FnOnce(&D::Error) -> bool) {
        rejected_with(self.outcome, accept);
    }
}

/// What a DCB decision's query found, for a test.
pub struct GivenDecision<D: Decision> {
    decision: D,
    events: Vec<D::Event>,
}

/// Starts a test of a [`Decision`]: the events its query matches (checked with
/// [`ThenDecision::then`] against the query's types where they name any).
pub fn given_decision<D: Decision>(
    decision: D,
    events: impl IntoIterator<Item = D::Event>,
) -> GivenDecision<D> {
    GivenDecision {
        decision,
        events: events.into_iter().collect(),
    }
}

impl<D: Decision> GivenDecision<D> {
    /// The command that arrives: its state is folded from the given events.
    pub fn when(self, command: D::Command) -> ThenDecision<D> {
        let mut state = self.decision.initial_state(&command);
        for event in &self.events {
            state = self.decision.evolve(state, event);
        }
        let outcome = self.decision.decide(&state, &command);
        ThenDecision {
            outcome,
            decision: self.decision,
            command,
        }
    }
}

/// The outcome of a DCB decision, to check.
pub struct ThenDecision<D: Decision> {
    outcome: Result<Vec<D::Event>, D::Error>,
    decision: D,
    command: D::Command,
}

impl<D: Decision> ThenDecision<D>
where
    D::Event: PartialEq + Debug,
{
    /// Asserts the command produced exactly these events, and that each carries tags its own
    /// command's query finds it by (so that the next decision sees it); returns the events'
    /// tags, for further checks.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> Vec<Vec<String>> {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let query = self.decision.query(&self.command);
                let dcb = factum_core::dcb::default_stream();
                events
                    .iter()
                    .map(|event| {
                        let tags = self.decision.tags(event);
                        let event_type = crate::codec::split_variant(event)
                            .map(|(t, _)| t)
                            .unwrap_or_default();
                        let stream = self.decision.stream(event).unwrap_or_else(|| dcb.clone());
                        assert!(
                            query.matches(&stream, &event_type, &tags),
                            "the event {event:?} (tags {tags:?}) does not match the query of the command that made it, so the next decision would not see it"
                        );
                        tags
                    })
                    .collect()
            }
            Err(error) => panic!("expected events {expected:?}, the command was rejected: {error}"),
        }
    }

    /// Asserts the command was rejected with this error.
    #[track_caller]
    pub fn then_rejected(self, expected: D::Error)
    where
        D::Error: PartialEq,
    {
        rejected(self.outcome, expected);
    }

    /// Asserts the command was rejected, for a reason the predicate accepts.
    #[track_caller]
    pub fn then_rejected_with(self, accept: impl FnOnce(&D::Error) -> bool) {
        rejected_with(self.outcome, accept);
    }
}

#[track_caller]
fn rejected<E: std::error::Error + PartialEq, V: Debug>(outcome: Result<Vec<V>, E>, expected: E) {
    match outcome {
        Ok(events) => panic!("expected rejection '{expected}', got events {events:?}"),
        Err(error) => assert_eq!(error, expected, "rejected for another reason"),
    }
}

#[track_caller]
fn rejected_with<E: std::error::Error, V: Debug>(
    outcome: Result<Vec<V>, E>,
    accept: impl FnOnce(&E) -> bool,
) {
    match outcome {
        Ok(events) => panic!("expected a rejection, got events {events:?}"),
        Err(error) => assert!(accept(&error), "rejected for another reason: {error}"),
    }
}
