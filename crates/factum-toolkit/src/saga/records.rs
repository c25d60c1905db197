//! What a saga manager stores: each instance's steps and the outcomes of its commands in
//! `$saga-{NAME}-{id}`, and the saga's index in `$sagas-{NAME}`; and what it rebuilds from them.

use std::collections::HashSet;

use factum_core::StreamName;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Saga, SagaError, SagaManager, SagaStep, now_ms};
use crate::CommandContext;
use crate::replay::replay_stream;

pub(super) const STEPPED: &str = "SagaStepped";
pub(super) const INDEXED: &str = "SagaIndexed";
pub(super) const SENT: &str = "SagaCommandSent";
pub(super) const REJECTED: &str = "SagaCommandRejected";

/// The saga's index, written now and then by its manager in `$sagas-{NAME}` so that a start
/// reads only the instances that may have something to do.
#[derive(Serialize, Deserialize)]
pub(super) struct Indexed {
    /// Every step stored after this index has a position at or after this one.
    pub(super) from: u64,
    /// The instances with deadlines pending. No instance had commands stored and not sent.
    pub(super) waiting: Vec<String>,
}

/// A stored command of a step.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct StoredCommand {
    pub(super) id: Uuid,
    pub(super) command: serde_json::Value,
}

/// A stored deadline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct StoredDeadline {
    pub(super) id: Uuid,
    pub(super) name: String,
    /// Milliseconds since the Unix epoch.
    pub(super) due_ms: u64,
}

/// A step as stored in the instance's stream.
#[derive(Serialize, Deserialize)]
pub(super) struct Stepped {
    /// What caused it: an event id, `rejected:{command id}` or `deadline:{deadline id}`.
    pub(super) cause: String,
    pub(super) correlation_id: String,
    pub(super) state: serde_json::Value,
    pub(super) commands: Vec<StoredCommand>,
    pub(super) scheduled: Vec<StoredDeadline>,
    pub(super) cancelled: Vec<String>,
    /// The deadline this step is the firing of.
    #[serde(default)]
    pub(super) fired: Option<Uuid>,
    /// The position in `$all` of the event that caused it (steps caused by events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) position: Option<u64>,
    /// The trace context the step's commands run in: a child of the causing event's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) traceparent: Option<String>,
    pub(super) done: bool,
}

impl Stepped {
    /// The step's commands, as sends to make for instance `instance`.
    pub(super) fn pending<'a>(&'a self, instance: &'a str) -> impl Iterator<Item = Pending> + 'a {
        self.commands.iter().map(move |c| Pending {
            instance: instance.to_owned(),
            id: c.id,
            command: c.command.clone(),
            correlation_id: self.correlation_id.clone(),
            cause: self.cause.clone(),
            traceparent: self.traceparent.clone(),
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct Outcome {
    pub(super) command_id: Uuid,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

/// A command waiting to be sent.
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) instance: String,
    pub(super) id: Uuid,
    pub(super) command: serde_json::Value,
    pub(super) correlation_id: String,
    pub(super) cause: String,
    pub(super) traceparent: Option<String>,
}

/// An instance as replayed from its stream.
pub(super) struct Instance<S> {
    pub(super) stream: StreamName,
    pub(super) revision: Option<u64>,
    pub(super) state: S,
    pub(super) correlation_id: String,
    pub(super) pending: Vec<Pending>,
    pub(super) deadlines: Vec<StoredDeadline>,
    pub(super) done: bool,
    /// The position of the last event a step of the instance was caused by.
    pub(super) taken: Option<u64>,
}

/// What caused a step.
pub(super) struct Cause {
    /// An event id, `rejected:{command id}` or `deadline:{deadline id}`.
    pub(super) text: String,
    pub(super) correlation_id: String,
    /// The deadline the step is the firing of.
    pub(super) fired: Option<Uuid>,
    /// The position of the event that caused it.
    pub(super) position: Option<u64>,
    /// The trace context of the event that caused it.
    pub(super) traceparent: Option<String>,
}

/// The deadlines of an instance that had `before` once `stepped` is stored.
pub(super) fn deadlines_after(before: &[StoredDeadline], stepped: &Stepped) -> Vec<StoredDeadline> {
    if stepped.done {
        return Vec::new();
    }
    before
        .iter()
        .filter(|d| Some(d.id) != stepped.fired && !stepped.cancelled.contains(&d.name))
        .chain(&stepped.scheduled)
        .cloned()
        .collect()
}

impl<G: Saga> SagaManager<G> {
    pub(super) fn decode_error(reason: impl std::fmt::Display) -> SagaError {
        SagaError::Decode {
            saga: G::NAME,
            reason: reason.to_string(),
        }
    }

    pub(super) async fn load(&self, id: &str) -> Result<Instance<G::State>, SagaError> {
        let stream = Self::instance_stream(id)?;
        let mut instance = Instance {
            stream: stream.clone(),
            revision: None,
            state: G::State::default(),
            correlation_id: String::new(),
            pending: Vec::new(),
            deadlines: Vec::new(),
            done: false,
            taken: None,
        };
        let mut finished: HashSet<Uuid> = HashSet::new();
        let mut state = None;
        replay_stream(self.store.as_ref(), &stream, 0, |record| {
            instance.revision = Some(record.revision);
            match record.event_type.as_str() {
                STEPPED => {
                    let step: Stepped =
                        serde_json::from_slice(&record.data).map_err(Self::decode_error)?;
                    instance.correlation_id = step.correlation_id.clone();
                    instance.deadlines = deadlines_after(&instance.deadlines, &step);
                    instance.pending.extend(step.pending(id));
                    instance.done = step.done;
                    instance.taken = step.position.or(instance.taken);
                    state = Some(step.state);
                }
                SENT | REJECTED => {
                    let outcome: Outcome =
                        serde_json::from_slice(&record.data).map_err(Self::decode_error)?;
                    finished.insert(outcome.command_id);
                }
                _ => {}
            }
            Ok::<_, SagaError>(())
        })
        .await?;
        instance.pending.retain(|p| !finished.contains(&p.id));
        if let Some(state) = state {
            instance.state = serde_json::from_value(state).map_err(Self::decode_error)?;
        }
        Ok(instance)
    }

    /// The stored form of `step`, caused by `cause`.
    pub(super) fn stepped(
        &self,
        instance: &str,
        cause: Cause,
        step: SagaStep<G::State, G::Command>,
    ) -> Result<Stepped, SagaError> {
        let source = format!("{instance}/{}", cause.text);
        let mut commands = Vec::new();
        for (n, command) in step.commands.iter().enumerate() {
            commands.push(StoredCommand {
                id: CommandContext::derived_id(&source, &format!("command/{n}")),
                command: serde_json::to_value(command).map_err(Self::decode_error)?,
            });
        }
        let due = now_ms();
        let scheduled = step
            .schedule
            .iter()
            .map(|(name, after)| StoredDeadline {
                id: CommandContext::derived_id(&source, &format!("deadline/{name}")),
                name: name.clone(),
                due_ms: due + after.as_millis() as u64,
            })
            .collect();
        Ok(Stepped {
            cause: cause.text,
            correlation_id: cause.correlation_id,
            state: serde_json::to_value(&step.state).map_err(Self::decode_error)?,
            commands,
            scheduled,
            cancelled: step.cancel,
            fired: cause.fired,
            position: cause.position,
            traceparent: cause
                .traceparent
                .as_deref()
                .and_then(crate::context::child_traceparent),
            done: step.done,
        })
    }
}
