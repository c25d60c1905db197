//! A consumer of a group in Rust: an event handler that shares the group's messages with the
//! group's other consumers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{GroupError, GroupKey, Groups, NackAction};
use crate::EventHandler;

/// What a [`PersistentConsumer`] did so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistentConsumerStats {
    /// Messages its handler handled (and it acknowledged).
    pub handled: u64,
    /// Messages its handler failed on (nacked to be tried again, or parked in the end).
    pub failed: u64,
    /// Times it connected to the group.
    pub connections: u64,
}

/// Runs an [`EventHandler`] on the messages of one group. Several consumers, in this
/// process or in others connected to the same server, share the group's messages by its
/// strategy. A message the handler handles is acknowledged; one it fails on is nacked to be
/// tried again, and the group parks it when its retries are used up.
pub struct PersistentConsumer {
    groups: Groups,
    key: GroupKey,
    name: String,
    capacity: usize,
    handler: Arc<dyn EventHandler>,
    stats: watch::Sender<PersistentConsumerStats>,
}

/// How long a consumer waits before connecting again after its group stopped.
const RECONNECT: Duration = Duration::from_millis(200);

impl PersistentConsumer {
    /// A consumer of `key` running `handler`, named after the handler, holding up to 10
    /// messages at a time.
    pub fn new(groups: &Groups, key: GroupKey, handler: Arc<dyn EventHandler>) -> Self {
        PersistentConsumer {
            groups: groups.clone(),
            key,
            name: handler.name().to_owned(),
            capacity: 10,
            handler,
            stats: watch::channel(PersistentConsumerStats::default()).0,
        }
    }

    /// The name the group lists it under.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many messages the group may send it ahead of its acknowledgements.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Follows what it did.
    pub fn stats(&self) -> watch::Receiver<PersistentConsumerStats> {
        self.stats.subscribe()
    }

    /// Handles the group's messages until `shutdown` completes; connects again when the group
    /// restarts (an update, a restart of the groups). Fails when the group does not exist.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<PersistentConsumerStats, GroupError> {
        tokio::pin!(shutdown);
        loop {
            let mut connection = tokio::select! {
                () = &mut shutdown => return Ok(self.stats.borrow().clone()),
                connected = self.groups.connect(&self.key, &self.name, self.capacity) => match connected {
                    Ok(connection) => connection,
                    Err(GroupError::NotFound(key)) => return Err(GroupError::NotFound(key)),
                    Err(GroupError::Invalid(why)) => return Err(GroupError::Invalid(why)),
                    Err(e) => {
                        tracing::debug!(group = %self.key, error = %e, "cannot connect yet");
                        tokio::time::sleep(RECONNECT).await;
                        continue;
                    }
                },
            };
            self.stats.send_modify(|s| s.connections += 1);
            loop {
                let delivery = tokio::select! {
                    () = &mut shutdown => return Ok(self.stats.borrow().clone()),
                    delivery = connection.next() => delivery,
                };
                let Some(delivery) = delivery else { break };
                let outcome = self.handler.handle(&delivery.event).await;
                let settled = match outcome {
                    Ok(()) => {
                        self.stats.send_modify(|s| s.handled += 1);
                        connection.ack(&[delivery.id]).await
                    }
                    Err(e) => {
                        self.stats.send_modify(|s| s.failed += 1);
                        connection
                            .nack(&[delivery.id], NackAction::Retry, &e.to_string())
                            .await
                    }
                };
                // A message timed out meanwhile is the group's again: nothing to settle.
                if let Err(e) = settled {
                    tracing::debug!(group = %self.key, error = %e, "could not settle a message");
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }
}
