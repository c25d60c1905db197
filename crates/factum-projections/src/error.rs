use factum_core::StoreError;

/// What a projection's `apply` returns when it cannot fold an event.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of projections and read models.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// The SQLite read model failed.
    #[cfg(feature = "sqlite")]
    #[error("read model (SQLite): {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL read model failed.
    #[cfg(feature = "postgres")]
    #[error("read model (PostgreSQL): {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Bad input: an unknown table in a statement, a bad name, an unsupported column type.
    #[error("{0}")]
    Invalid(String),
    /// The projection could not fold an event; nothing of its batch was committed.
    #[error("projection '{projection}' failed on the event at position {position}: {message}")]
    Apply {
        /// The projection.
        projection: String,
        /// Position of the event.
        position: u64,
        /// What went wrong.
        message: String,
    },
    /// The stored checkpoint is not the one this batch continues from: another projector of
    /// the same projection committed, or a rebuild was swapped in. Nothing was written.
    #[error(
        "the checkpoint of projection '{projection}' moved (expected {expected:?}, found {found:?}); nothing was written"
    )]
    CheckpointMoved {
        /// The projection.
        projection: String,
        /// The checkpoint the batch continued from.
        expected: Option<u64>,
        /// The checkpoint stored.
        found: Option<u64>,
    },
    /// The projection is not installed in this read model.
    #[error("no projection named '{0}' in this read model")]
    UnknownProjection(String),
    /// A query waited for a projection to reach a position, and it did not in time.
    #[error(
        "projection '{projection}' did not reach position {position} in time (it is at {reached:?})"
    )]
    Timeout {
        /// The projection.
        projection: String,
        /// The position waited for.
        position: u64,
        /// Its checkpoint when the time ran out.
        reached: Option<u64>,
    },
}

impl ProjectionError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ProjectionError::Invalid(message.into())
    }
}
