//! The Factum toolkit: the domain as plain Rust — [`Decider`]s of commands and events — with
//! the [`Repository`] (optimistic concurrency, retries, correlation and causation, snapshots,
//! schema evolution), the [`CommandBus`] and its middleware, [`EventProcessor`]s with retries
//! and [`DeadLetters`], the [`Inbox`], and [`SagaManager`]s, over any `EventStore`.
//!
//! Applications use it through the `factum` crate, which re-exports every item here at its
//! root; its documentation (`cargo doc -p factum --all-features`) is the one to read.

mod bus;
mod codec;
mod context;
mod dcb;
mod dead_letters;
mod decider;
mod inbox;
mod persistent;
mod personal;
mod processor;
mod replay;
mod repository;
mod saga;
mod scavenge;
mod snapshot;
mod status;
pub mod testing;
pub mod trace;

pub use bus::{
    AuditEntry, AuditLayer, AuditSink, Audited, AuthorizationLayer, AuthorizationPolicy,
    Authorized, BusError, Command, CommandBus, CommandBusBuilder, Envelope, MemoryAuditLog,
    StoreAuditLog, Traced, TracingLayer, Validated, ValidationLayer,
};
pub use codec::{CodecError, EventCodec, Upcasters};
pub use context::{CommandContext, TRACEPARENT_KEY, child_traceparent, valid_traceparent};
pub use dcb::{Decided, Decision, DecisionError, Decisions};
pub use dead_letters::{
    DEAD_LETTERED, DeadLetter, DeadLetters, MESSAGE_DEAD_LETTERED, REPLAY_REQUESTED, ReplayReport,
    dead_letter_stream,
};
pub use decider::Decider;
pub use inbox::Inbox;
pub use persistent::{
    ConsumerInfo, ConsumerStrategy, FilterSpec, GROUP_CREATED, GROUP_DELETED, GROUP_NAME_CHARS_MAX,
    GROUP_UPDATED, GROUPS_STREAM, GroupConnection, GroupError, GroupInfo, GroupKey, GroupMessage,
    GroupSettings, GroupSource, Groups, MESSAGE_PARKED, NackAction, PersistentConsumer,
    PersistentConsumerStats, StartFrom,
};
pub use personal::{
    OpenPersonalData, PERSONAL_KEY, Personal, PersonalError, forget_subject, open_personal,
};
pub use processor::{
    EventHandler, EventProcessor, EventProcessorBuilder, HandlerError, ProcessorStats, RetryPolicy,
    handler_fn,
};
pub use replay::replay_stream;
pub use repository::{
    DUPLICATE_WINDOW_EVENTS, Executed, Loaded, Repository, RepositoryError, ToAggregate,
};
pub use saga::{Saga, SagaDispatch, SagaError, SagaManager, SagaStatus, SagaStep};
pub use scavenge::{scavenge, scavenge_bound};
pub use snapshot::{SNAPSHOT_EVENT_TYPE, SnapshotPolicy, snapshot_stream};
pub use status::{ProcessorStatus, processor_statuses};

use factum_core::{StoreError, StreamName};

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
