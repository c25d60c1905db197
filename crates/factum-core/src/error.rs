use std::path::PathBuf;

use crate::stream::{CurrentRevision, ExpectedState};

/// Everything a store operation can fail with. Each variant is one a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream was not in the expected state; nothing was written.
    #[error("wrong expected revision on stream '{stream}': expected {expected}, actual {actual}")]
    WrongExpectedRevision {
        /// The stream appended to.
        stream: String,
        /// What the caller expected.
        expected: ExpectedState,
        /// What the stream actually was.
        actual: CurrentRevision,
    },
    /// The stream was tombstoned and can never be read or written again.
    #[error("stream '{0}' is deleted for good (tombstoned)")]
    StreamDeleted(String),
    /// The stream does not exist (never written, or soft-deleted).
    #[error("stream '{0}' not found")]
    NotFound(String),
    /// Stored bytes failed their checksum or do not parse: the data is not served.
    #[error("corrupted data in {} at offset {offset}: {reason}", file.display())]
    Corrupted {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// Byte offset of the bad record inside the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The request is malformed; nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A checkpoint carried with an append would move backwards; nothing was written.
    #[error("checkpoint of '{consumer}' may only move forward: stored {stored}, given {given}")]
    CheckpointBehind {
        /// The consumer whose checkpoint it is.
        consumer: String,
        /// The checkpoint already stored.
        stored: u64,
        /// The checkpoint given with the append.
        given: u64,
    },
    /// The condition of a DCB append failed: an event matching its query was written after
    /// its position. Nothing was written.
    #[error(
        "the append condition failed: an event matching its query is at position {position}, after {}",
        after.map_or_else(|| "the start".to_owned(), |a| a.to_string())
    )]
    ConditionFailed {
        /// The condition's `after`.
        after: Option<u64>,
        /// The first matching event after it.
        position: u64,
    },
    /// Another runner holds the name (see [`crate::EventStore::claim`]): a second copy of a
    /// processor, relay or saga manager, or one of another kind with the same name.
    #[error(
        "'{0}' is claimed by another runner (a second copy of it, or a processor, relay or saga manager of the same name)"
    )]
    Claimed(String),
    /// The data directory is open already: by another process, or by this one (which should
    /// share the store it opened: its clones share one store).
    #[error(
        "the data directory {} is in use by {}",
        dir.display(),
        if *by_this_process {
            "this process already (open it once and share the store: its clones share one store)"
        } else {
            "another process"
        }
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// Whether this process holds it (an earlier open not closed yet).
        by_this_process: bool,
    },
    /// A write failed to become durable; the store refuses writes until it has recovered
    /// from what is on disk (the embedded store tries again by itself, with backoff; reads go
    /// on meanwhile).
    #[error("the store refuses writes after a failed write: {0}")]
    Poisoned(String),
    /// The database behind the store failed or could not be reached. Nothing is acknowledged
    /// that was not committed; an append that fails this way may or may not have been stored,
    /// and retrying it with the same event ids is safe (the re-append is recognised).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// No key for this subject: it never had personal data, or it was forgotten before.
    #[error("no key for subject '{0}': unknown, or forgotten before")]
    UnknownSubject(String),
    /// An operation that runs one at a time (a scavenge, a verification) is running already.
    #[error("{0}")]
    Busy(String),
    /// This store does not offer the operation (for instance scavenging the in-memory store).
    #[error("{0} is not supported by this store")]
    Unsupported(String),
    /// An operating-system I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Shorthand for [`StoreError::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        StoreError::InvalidInput(message.into())
    }
}
