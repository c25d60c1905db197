//! What a read-model database does for projectors and queries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::sql::check_identifier;
use crate::{ProjectionError, Row, Table, TxChange, Value};

/// Which copy of a projection's tables a batch writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProjectionTarget {
    /// The tables queries read.
    Live,
    /// The copy a rebuild fills, swapped in when it has caught up.
    Shadow,
}

impl ProjectionTarget {
    /// The column of `factum_projections` that holds this target's checkpoint.
    pub(crate) fn checkpoint_column(self) -> &'static str {
        match self {
            ProjectionTarget::Live => "position",
            ProjectionTarget::Shadow => "rebuild_position",
        }
    }
}

/// One batch of a projection: changes plus the checkpoint they move, in one transaction.
#[derive(Clone, Debug)]
pub struct Commit {
    /// The projection.
    pub projection: String,
    /// Live tables or the rebuild's shadow tables.
    pub target: ProjectionTarget,
    /// The checkpoint the batch continues from; the commit is refused, writing nothing, when
    /// the stored one differs.
    pub expected: Option<u64>,
    /// The last position the batch covers: the new checkpoint.
    pub position: u64,
    /// When the event at `position` was recorded (µs since the epoch).
    pub recorded_at_us: u64,
    /// The store's head when the batch was read.
    pub head: u64,
    /// The changes, in order.
    pub changes: Vec<TxChange>,
}

/// What a swap did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapOutcome {
    /// The rebuilt tables are live.
    Swapped,
    /// The live projection has gone past the rebuild's checkpoint: catch up more, then swap.
    LiveAhead {
        /// The live checkpoint.
        live: u64,
    },
}

/// A projection's row in `factum_projections`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectionState {
    /// The projection.
    pub name: String,
    /// The version the live tables were built with.
    pub version: u32,
    /// The last position applied to the live tables.
    pub position: Option<u64>,
    /// When the event at `position` was recorded (µs since the epoch, 0 if none).
    pub recorded_at_us: u64,
    /// When the live tables last committed (µs since the epoch).
    pub updated_at_us: u64,
    /// The store's head as the projector last saw it (`projector_head` in JSON: a
    /// [`ProjectionStatus`] has its own `head`).
    #[serde(rename = "projector_head")]
    pub head: u64,
    /// A rebuild is filling shadow tables.
    pub rebuilding: bool,
    /// The last position applied to the shadow tables.
    pub rebuild_position: Option<u64>,
    /// The head the rebuild is catching up to.
    pub rebuild_target: u64,
    /// When the rebuild started (µs since the epoch).
    pub rebuild_started_at_us: u64,
    /// Someone asked for a rebuild (`factum projections rebuild`); a running projector takes
    /// it up.
    pub rebuild_requested: bool,
    /// When a rebuild was last swapped in (µs since the epoch, 0 if never).
    pub rebuilt_at_us: u64,
}

impl ProjectionState {
    /// The first position the live tables have not seen.
    pub fn next_position(&self) -> u64 {
        self.position.map_or(0, |p| p + 1)
    }

    /// How far behind a head the projection is. `head_recorded_at_us` is when the newest event
    /// (the one before `head`) was recorded.
    pub fn status(&self, head: u64, head_recorded_at_us: u64) -> ProjectionStatus {
        let behind = head.saturating_sub(self.next_position());
        let behind_seconds = if behind == 0 {
            Some(0.0)
        } else if self.position.is_some() {
            Some(head_recorded_at_us.saturating_sub(self.recorded_at_us) as f64 / 1e6)
        } else {
            None
        };
        ProjectionStatus {
            state: self.clone(),
            head,
            behind,
            behind_seconds,
        }
    }
}

/// A projection's lag.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectionStatus {
    /// The stored state.
    #[serde(flatten)]
    pub state: ProjectionState,
    /// The store's head the lag is measured against.
    pub head: u64,
    /// Events in the log the projection has not seen yet.
    pub behind: u64,
    /// Seconds between the newest event and the last one projected (`None` when nothing has
    /// been projected yet).
    pub behind_seconds: Option<f64>,
}

/// A read-model database: it keeps projections' tables and checkpoints and answers queries.
/// Queries read only the read model, never the event store.
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Creates the projection's tables (if missing) and its checkpoint row, and registers its
    /// tables for statements. The stored version is left as it is once something has been
    /// projected: the projector compares it and rebuilds.
    async fn install(
        &self,
        name: &str,
        version: u32,
        tables: &[Table],
    ) -> Result<ProjectionState, ProjectionError>;

    /// Commits a batch and its checkpoint in one transaction, or nothing.
    async fn commit(&self, commit: Commit) -> Result<(), ProjectionError>;

    /// Creates empty shadow tables for a rebuild that will catch up to `target`.
    async fn begin_rebuild(&self, name: &str, target: u64) -> Result<(), ProjectionError>;

    /// Swaps the shadow tables in, in one transaction, if the live checkpoint is not past
    /// the shadow's.
    async fn swap(
        &self,
        name: &str,
        version: u32,
        recorded_at_us: u64,
    ) -> Result<SwapOutcome, ProjectionError>;

    /// Asks the running projector of `name` for a rebuild.
    async fn request_rebuild(&self, name: &str) -> Result<(), ProjectionError>;

    /// Runs a query against the read model. Parameters are `$1`, `$2`, ….
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, ProjectionError>;

    /// Changes each time this handle commits a batch or swaps.
    fn committed(&self) -> watch::Receiver<u64>;

    /// Every projection's stored state, by name.
    async fn states(&self) -> Result<Vec<ProjectionState>, ProjectionError> {
        let rows = self.query(STATE_SQL, &[]).await?;
        rows.iter().map(state_from_row).collect()
    }

    /// One projection's stored state.
    async fn state(&self, name: &str) -> Result<ProjectionState, ProjectionError> {
        let rows = self.query(STATE_SQL_ONE, &[Value::from(name)]).await?;
        match rows.first() {
            Some(row) => state_from_row(row),
            None => Err(ProjectionError::UnknownProjection(name.to_owned())),
        }
    }

    /// Waits until the projection has applied `position` (for read-your-writes: the
    /// position a command returned), at most `timeout`.
    async fn wait_for(
        &self,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<ProjectionState, ProjectionError> {
        let deadline = Instant::now() + timeout;
        let mut committed = self.committed();
        loop {
            let state = self.state(name).await?;
            if state.position.is_some_and(|p| p >= position) {
                return Ok(state);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProjectionError::Timeout {
                    projection: name.to_owned(),
                    position,
                    reached: state.position,
                });
            }
            // Commits of this handle wake the wait at once; another process's are seen by
            // polling.
            tokio::select! {
                _ = committed.changed() => {}
                _ = tokio::time::sleep(left.min(Duration::from_millis(20))) => {}
            }
        }
    }
}

/// The file a read-model URL names, or `None` when it is a PostgreSQL URL
/// (`postgres://…`, `postgresql://…` or `host=…`). A SQLite URL is `sqlite:PATH` or a path.
pub fn sqlite_path(url: &str) -> Option<&str> {
    let postgres =
        url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains("host=");
    (!postgres).then(|| url.strip_prefix("sqlite:").unwrap_or(url))
}

/// Opens a read model from a URL (see [`sqlite_path`]); a PostgreSQL one keeps its tables in
/// `pg_schema`.
pub async fn open_read_model(
    url: &str,
    pg_schema: &str,
) -> Result<Arc<dyn ReadModel>, ProjectionError> {
    match sqlite_path(url) {
        None => open_postgres(url, pg_schema).await,
        Some("") => Err(ProjectionError::invalid("the read-model URL names no file")),
        Some(path) => open_sqlite(path).await,
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, schema: &str) -> Result<Arc<dyn ReadModel>, ProjectionError> {
    Ok(Arc::new(crate::PgReadModel::connect(url, schema).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &str, _: &str) -> Result<Arc<dyn ReadModel>, ProjectionError> {
    Err(ProjectionError::invalid(
        "a PostgreSQL read model needs Factum's `postgres` feature",
    ))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(path: &str) -> Result<Arc<dyn ReadModel>, ProjectionError> {
    Ok(Arc::new(crate::SqliteReadModel::open(path).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_: &str) -> Result<Arc<dyn ReadModel>, ProjectionError> {
    Err(ProjectionError::invalid(
        "a SQLite read model needs Factum's `sqlite` feature",
    ))
}

/// The checkpoint table, the same in both databases.
pub(crate) const META_DDL: &str = "CREATE TABLE IF NOT EXISTS factum_projections (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    position BIGINT,
    recorded_at_us BIGINT NOT NULL DEFAULT 0,
    updated_at_us BIGINT NOT NULL DEFAULT 0,
    head BIGINT NOT NULL DEFAULT 0,
    rebuilding BOOLEAN NOT NULL DEFAULT FALSE,
    rebuild_position BIGINT,
    rebuild_target BIGINT NOT NULL DEFAULT 0,
    rebuild_started_at_us BIGINT NOT NULL DEFAULT 0,
    rebuild_requested BOOLEAN NOT NULL DEFAULT FALSE,
    rebuilt_at_us BIGINT NOT NULL DEFAULT 0
)";

macro_rules! state_select {
    ($rest:literal) => {
        concat!(
            "SELECT name, version, position, recorded_at_us, updated_at_us, head, rebuilding, ",
            "rebuild_position, rebuild_target, rebuild_started_at_us, rebuild_requested, ",
            "rebuilt_at_us FROM factum_projections ",
            $rest
        )
    };
}
const STATE_SQL: &str = state_select!("ORDER BY name");
const STATE_SQL_ONE: &str = state_select!("WHERE name = $1");

fn state_from_row(row: &Row) -> Result<ProjectionState, ProjectionError> {
    let int = |column: &str| -> Result<Option<u64>, ProjectionError> {
        match row.get(column) {
            Some(Value::Int(i)) => Ok(Some(*i as u64)),
            Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(u64::from(*b))),
            other => Err(ProjectionError::invalid(format!(
                "factum_projections.{column} holds {other:?}"
            ))),
        }
    };
    let name = match row.get("name") {
        Some(Value::Text(name)) => name.clone(),
        other => {
            return Err(ProjectionError::invalid(format!(
                "factum_projections.name holds {other:?}"
            )));
        }
    };
    Ok(ProjectionState {
        name,
        version: int("version")?.unwrap_or(1) as u32,
        position: int("position")?,
        recorded_at_us: int("recorded_at_us")?.unwrap_or(0),
        updated_at_us: int("updated_at_us")?.unwrap_or(0),
        head: int("head")?.unwrap_or(0),
        rebuilding: int("rebuilding")?.unwrap_or(0) != 0,
        rebuild_position: int("rebuild_position")?,
        rebuild_target: int("rebuild_target")?.unwrap_or(0),
        rebuild_started_at_us: int("rebuild_started_at_us")?.unwrap_or(0),
        rebuild_requested: int("rebuild_requested")?.unwrap_or(0) != 0,
        rebuilt_at_us: int("rebuilt_at_us")?.unwrap_or(0),
    })
}

/// A batch commits only if the stored checkpoint is the one it continued from, and a batch for
/// shadow tables only while a rebuild is under way.
pub(crate) fn check_continues(
    commit: &Commit,
    found: Option<u64>,
    rebuilding: bool,
) -> Result<(), ProjectionError> {
    if found != commit.expected || (commit.target == ProjectionTarget::Shadow && !rebuilding) {
        return Err(ProjectionError::CheckpointMoved {
            projection: commit.projection.clone(),
            expected: commit.expected,
            found,
        });
    }
    Ok(())
}

/// Whether shadow tables may be swapped in: `None` to go ahead, `LiveAhead` when the live
/// checkpoint is past the shadow's (swapping then would move the read model back in time).
pub(crate) fn swap_check(
    name: &str,
    live: Option<u64>,
    shadow: Option<u64>,
    rebuilding: bool,
) -> Result<Option<SwapOutcome>, ProjectionError> {
    if !rebuilding {
        return Err(ProjectionError::invalid(format!(
            "projection '{name}' has no rebuild to swap in"
        )));
    }
    Ok(match live {
        Some(live) if shadow.is_none_or(|s| s < live) => Some(SwapOutcome::LiveAhead { live }),
        _ => None,
    })
}

/// The tables of the projections a handle has installed, and their statements made concrete.
#[derive(Default)]
pub(crate) struct Registry {
    projections: parking_lot::RwLock<HashMap<String, Arc<Registered>>>,
}

pub(crate) struct Registered {
    pub(crate) tables: Vec<Table>,
    rewrites: parking_lot::Mutex<[HashMap<String, Arc<str>>; 2]>,
}

impl Registry {
    /// Checks the names and registers a projection's tables.
    pub(crate) fn register(
        &self,
        name: &str,
        tables: &[Table],
    ) -> Result<Arc<Registered>, ProjectionError> {
        check_identifier("projection name", name)?;
        if tables.is_empty() {
            return Err(ProjectionError::invalid(format!(
                "projection '{name}' declares no table"
            )));
        }
        for table in tables {
            check_identifier("table name", &table.name)?;
            if table.name.starts_with("factum_") {
                return Err(ProjectionError::invalid(format!(
                    "table name '{}' is reserved (factum_…)",
                    table.name
                )));
            }
            for index in &table.indexes {
                check_identifier("index name", &index.name)?;
            }
        }
        let registered = Arc::new(Registered {
            tables: tables.to_vec(),
            rewrites: parking_lot::Mutex::new([HashMap::new(), HashMap::new()]),
        });
        self.projections
            .write()
            .insert(name.to_owned(), registered.clone());
        Ok(registered)
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Registered>, ProjectionError> {
        self.projections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
    }
}

impl Registered {
    /// The statement's SQL for one target, rewritten once and then cached.
    pub(crate) fn sql(
        &self,
        target: ProjectionTarget,
        sql: &str,
        physical: impl Fn(&str) -> String,
        question_params: bool,
    ) -> Result<Arc<str>, ProjectionError> {
        let slot = usize::from(target == ProjectionTarget::Shadow);
        if let Some(done) = self.rewrites.lock()[slot].get(sql) {
            return Ok(done.clone());
        }
        let rewritten: Arc<str> = crate::sql::rewrite(
            sql,
            |name| {
                self.tables
                    .iter()
                    .any(|t| t.name == name)
                    .then(|| physical(name))
            },
            question_params,
        )?
        .into();
        self.rewrites.lock()[slot].insert(sql.to_owned(), rewritten.clone());
        Ok(rewritten)
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn read_model_urls_name_a_file_or_postgresql() {
        assert_eq!(sqlite_path("sqlite:read.db"), Some("read.db"));
        assert_eq!(sqlite_path("./read.db"), Some("./read.db"));
        for postgres in [
            "postgres://u@h/db",
            "postgresql://u@h/db",
            "host=127.0.0.1 user=postgres",
        ] {
            assert_eq!(sqlite_path(postgres), None, "{postgres}");
        }
    }
}
