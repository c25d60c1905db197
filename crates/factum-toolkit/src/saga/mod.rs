//! Sagas (process managers, SPEC R5.4): an event of one aggregate becomes a command to
//! another, with durable state, compensation when a step is refused, and deadlines. The saga
//! API is here; [`SagaManager`] (in `manager.rs`) runs one, keeping each instance in the
//! records of `records.rs`, its index (`index.rs`) and its deadlines (`deadlines.rs`).

mod deadlines;
mod index;
mod manager;
mod records;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use factum_core::{RecordedEvent, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CommandContext;
use crate::bus::BusError;

pub use manager::SagaManager;

/// A process manager, as pure functions of an instance's state. One instance per correlation
/// id ([`Saga::correlate`]); its state starts at `State::default()`.
///
/// A [`Saga`] is written as pure functions, like a [`Decider`](crate::Decider): given an
/// instance's state and what happened (an event, a refused command, a deadline), it returns a
/// [`SagaStep`]: the next state, the commands to send, the deadlines to set or cancel. A
/// [`SagaManager`] runs it:
///
/// - **Exactly once per event.** Each instance lives in its own stream `$saga-{name}-{id}`.
///   A step caused by an event is appended there in one atomic write that records the event's
///   position: after a crash the event is either fully taken into account or not at all, and
///   an instance never takes an event at or before the last one it took.
/// - **Instances at the same time.** The events that arrived together (up to 1,024) are taken
///   as a batch: each instance's in order, up to 64 instances at once, so their appends share
///   the store's durable writes. The checkpoint is saved once the batch is taken (with the
///   step itself when the batch holds only one event to take); a restart reads again from it
///   and skips what each instance already took. Deadlines that come due together, and the
///   commands a restart finds unsent, are handled the same way.
/// - **A start reads what may have something to do.** Now and then (every 65,536 positions of
///   `$all`, at most every 5 s) and when it stops, the manager writes the saga's index in
///   `$sagas-{name}`: the instances waiting for a deadline, as of a moment when no command was
///   stored and not sent. A start reads those instances and the ones written after the index
///   (found in `$all`), not the finished ones; without an index it reads every instance.
/// - **Commands are an outbox.** A step's commands are stored with it, each with an id derived
///   from its cause, and sent afterwards; sending is recorded (`SagaCommandSent`). Commands
///   stored but not recorded as sent are sent again after a restart, with the same ids, so a
///   [`Repository`](crate::Repository) executes each once (see [`CommandContext::with_id`]).
/// - **Compensation.** A command the bus refuses (rejected by the domain, invalid, forbidden)
///   is handed to [`Saga::on_rejected`], whose step (compensating commands) is stored together
///   with the record of the refusal.
/// - **Deadlines** are stored in the step that sets them, as wall-clock times, and fire after a
///   restart too: [`Saga::on_deadline`] decides what a deadline that was not cancelled does.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use std::sync::Arc;
/// use std::time::Duration;
/// use factum::{Saga, SagaManager, SagaStep};
/// use factum::{EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StreamName};
/// use serde::{Deserialize, Serialize};
///
/// /// Reminds a customer who has not paid an order within the deadline.
/// struct PaymentReminder;
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// enum Reminder { Send { order: String } }
///
/// impl Saga for PaymentReminder {
///     const NAME: &'static str = "payment-reminder";
///     type State = bool; // paid
///     type Command = Reminder;
///     fn correlate(&self, event: &RecordedEvent) -> Option<String> {
///         event.stream.as_str().strip_prefix("order-").map(str::to_owned)
///     }
///     fn on_event(&self, _paid: &bool, event: &RecordedEvent) -> Option<SagaStep<bool, Reminder>> {
///         match event.event_type.as_str() {
///             "OrderPlaced" => Some(SagaStep::to(false).schedule("remind", Duration::from_millis(50))),
///             "OrderPaid" => Some(SagaStep::to(true).cancel("remind").done()),
///             _ => None,
///         }
///     }
///     fn on_deadline(&self, paid: &bool, _deadline: &str, instance: &str)
///         -> Option<SagaStep<bool, Reminder>> {
///         Some(SagaStep::to(*paid).send(Reminder::Send { order: instance.to_owned() }).done())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
/// for (order, events) in [("order-1", vec!["OrderPlaced", "OrderPaid"]), ("order-2", vec!["OrderPlaced"])] {
///     let events = events.into_iter()
///         .map(|t| NewEvent::json(t, &serde_json::json!({})).unwrap()).collect();
///     store.append(&StreamName::user(order).unwrap(), ExpectedState::Any, events).await.unwrap();
/// }
/// let sent = Arc::new(parking_lot::Mutex::new(Vec::new()));
/// let outbox = sent.clone();
/// let manager = SagaManager::new(PaymentReminder, store.clone(), move |command, _context| {
///     outbox.lock().push(command);
///     async { Ok(()) }
/// });
/// let mut status = manager.status();
/// let running = tokio::spawn(async move { manager.run(std::future::pending()).await });
/// status.wait_for(|s| s.deadlines_fired == 1 && s.commands_sent == 1).await.unwrap();
/// assert!(matches!(&sent.lock()[..], [Reminder::Send { order }] if order == "2"));
/// running.abort();
/// # });
/// ```
pub trait Saga: Send + Sync + 'static {
    /// The saga's name: its checkpoint is `saga-{NAME}`, its instances live in
    /// `$saga-{NAME}-{id}`.
    const NAME: &'static str;
    /// What an instance knows. Stored with every step, as JSON.
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync;
    /// What it asks of others. Stored with the step that sends it, as JSON, until sent.
    type Command: Serialize + DeserializeOwned + Clone + Send + Sync + std::fmt::Debug;

    /// The instance an event belongs to; `None`: not this saga's business.
    fn correlate(&self, event: &RecordedEvent) -> Option<String>;

    /// What an instance does about one of its events; `None`: nothing.
    fn on_event(
        &self,
        state: &Self::State,
        event: &RecordedEvent,
    ) -> Option<SagaStep<Self::State, Self::Command>>;

    /// One of the instance's commands was refused (`reason`): what it does to compensate.
    /// By default, nothing.
    fn on_rejected(
        &self,
        state: &Self::State,
        command: &Self::Command,
        reason: &str,
    ) -> Option<SagaStep<Self::State, Self::Command>> {
        let _ = (state, command, reason);
        None
    }

    /// A deadline of instance `instance` came without being cancelled. By default, nothing.
    fn on_deadline(
        &self,
        state: &Self::State,
        deadline: &str,
        instance: &str,
    ) -> Option<SagaStep<Self::State, Self::Command>> {
        let _ = (state, deadline, instance);
        None
    }
}

/// What a saga instance does next: its new state, the commands it sends, the deadlines it sets
/// or cancels, and whether it is finished (a finished instance takes no more events, and its
/// deadlines are dropped).
#[derive(Clone, Debug, PartialEq)]
pub struct SagaStep<S, C> {
    state: S,
    commands: Vec<C>,
    schedule: Vec<(String, Duration)>,
    cancel: Vec<String>,
    done: bool,
}

impl<S, C> SagaStep<S, C> {
    /// Moves to `state`.
    pub fn to(state: S) -> Self {
        SagaStep {
            state,
            commands: Vec::new(),
            schedule: Vec::new(),
            cancel: Vec::new(),
            done: false,
        }
    }

    /// Sends `command` (after the step is stored).
    pub fn send(mut self, command: C) -> Self {
        self.commands.push(command);
        self
    }

    /// Sets the deadline `name`, `after` from now.
    pub fn schedule(mut self, name: impl Into<String>, after: Duration) -> Self {
        self.schedule.push((name.into(), after));
        self
    }

    /// Cancels every pending deadline called `name`.
    pub fn cancel(mut self, name: impl Into<String>) -> Self {
        self.cancel.push(name.into());
        self
    }

    /// The instance is finished.
    pub fn done(mut self) -> Self {
        self.done = true;
        self
    }
}

/// What a saga manager has done since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaStatus {
    /// The last position of `$all` taken into account.
    pub checkpoint: Option<u64>,
    /// Steps stored.
    pub steps: u64,
    /// Commands sent and accepted.
    pub commands_sent: u64,
    /// Commands refused (and handed to [`Saga::on_rejected`]).
    pub commands_rejected: u64,
    /// Deadlines fired.
    pub deadlines_fired: u64,
    /// Deadlines waiting.
    pub deadlines_pending: usize,
    /// Failures (a command that could not be sent yet, the store), each retried.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Instance streams read when the manager started: those its index names as waiting for
    /// a deadline and those written since the index, or every one when there is no index.
    pub loaded_at_start: usize,
    /// Waiting while another manager of the saga holds its claim (see [`SagaManager::run`]).
    pub standby: bool,
    /// Times the manager lost its claim while it worked (its PostgreSQL connection failed).
    pub claims_lost: u64,
}

/// What the manager sends a command with: usually the command bus, e.g.
/// `bus.send(ToAggregate::<Stock>::new(..), context)`. The context carries the command's id,
/// derived from its cause, and is idempotent.
pub type SagaDispatch<C> = Arc<
    dyn Fn(C, CommandContext) -> Pin<Box<dyn Future<Output = Result<(), BusError>> + Send>>
        + Send
        + Sync,
>;

/// Why a saga manager stopped.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored step or command no longer decodes with today's types.
    #[error("saga {saga}: a stored step does not decode: {reason}")]
    Decode {
        /// The saga.
        saga: &'static str,
        /// Why.
        reason: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_collects_what_it_does() {
        let step: SagaStep<u8, &str> = SagaStep::to(1)
            .send("a")
            .send("b")
            .schedule("pay", Duration::from_secs(1))
            .cancel("remind")
            .done();
        assert_eq!(step.commands, vec!["a", "b"]);
        assert_eq!(
            step.schedule,
            vec![("pay".to_owned(), Duration::from_secs(1))]
        );
        assert_eq!(step.cancel, vec!["remind".to_owned()]);
        assert!(step.done);
    }
}
