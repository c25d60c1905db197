//! What a backend's writer takes.

use tokio::sync::oneshot;

use crate::backend::catalog::WriteRequest;
use crate::{AppendResult, RecordedEvent, StoreError};

/// Where the answer to a [`Job`] goes.
pub type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// One job for a backend's writer: a write to plan against the catalog, or recorded events to
/// store as they are (ids, revisions, times), from an export.
pub enum Job {
    /// An append, metadata, a delete, a tombstone or a checkpoint.
    Write(WriteRequest, Reply),
    /// An import.
    Import(Vec<RecordedEvent>, Reply),
}

impl Job {
    /// About how many bytes the job writes, to bound what one commit takes.
    pub fn size_bytes(&self) -> usize {
        match self {
            Job::Write(request, _) => request.size_bytes(),
            Job::Import(events, _) => events.iter().map(RecordedEvent::size_bytes).sum(),
        }
    }

    /// Answers the job.
    pub fn reply(self, result: Result<AppendResult, StoreError>) {
        let (Job::Write(_, reply) | Job::Import(_, reply)) = self;
        let _ = reply.send(result);
    }
}

/// The jobs one commit takes: `first`, then what `more` has ready, up to `requests_max` jobs
/// and about `bytes_max` bytes (a larger job still goes, alone).
pub fn group(
    first: Job,
    mut more: impl FnMut() -> Option<Job>,
    requests_max: usize,
    bytes_max: usize,
) -> Vec<Job> {
    let mut bytes = first.size_bytes();
    let mut group = vec![first];
    while group.len() < requests_max && bytes < bytes_max {
        let Some(job) = more() else { break };
        bytes += job.size_bytes();
        group.push(job);
    }
    group
}
