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
