//! Projections: read models kept up to date from the log (CQRS).
//!
//! A [`Projection`] folds events into tables of a read-model database — SQLite
//! ([`SqliteReadModel`]) or PostgreSQL ([`PgReadModel`]). A [`Projector`] follows `$all` from
//! the projection's checkpoint and applies events in batches, each batch in one transaction of
//! the read-model database that also moves the checkpoint: after a crash at any moment every
//! event has taken effect exactly once. Queries read only the read model, and can wait until a
//! projection has reached the position a command returned (read-your-writes).
//!
//! A projection states its tables ([`Table`]) and, for each event, queues changes on a [`Tx`]:
//! row changes ([`Tx::insert`], [`Tx::upsert`], [`Tx::update`], [`Tx::delete`]), which the
//! read model turns into SQL — PostgreSQL runs a batch's like changes as one statement — or SQL
//! of its own ([`Tx::execute`]). Statements name tables in braces (`{accounts}`) so that a
//! rebuild can write the same statements into shadow tables, and take parameters as `$1`,
//! `$2`, … on both databases.
//!
//! ```
//! # mod factum { pub use factum_core::*; pub use factum_projections::*; }
//! use factum::{Projection, Table, Tx, ApplyError};
//! use factum::RecordedEvent;
//!
//! struct Balances;
//!
//! impl Projection for Balances {
//!     fn name(&self) -> &str { "balances" }
//!     fn tables(&self) -> Vec<Table> {
//!         vec![Table::new("balances", "id TEXT PRIMARY KEY, balance BIGINT NOT NULL")
//!             .index("balances_by_balance", "balance")]
//!     }
//!     fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
//!         let data: serde_json::Value = serde_json::from_slice(&event.data)?;
//!         let id = event.stream.as_str().to_owned();
//!         match event.event_type.as_str() {
//!             "Opened" => {
//!                 tx.insert("balances").set("id", id).set("balance", 0);
//!             }
//!             "Deposited" => {
//!                 let amount = data["amount"].as_i64().unwrap_or(0);
//!                 tx.update("balances").key("id", id).add("balance", amount);
//!             }
//!             "Closed" => tx.execute("DELETE FROM {balances} WHERE id = $1", [id.into()]),
//!             _ => {}
//!         }
//!         Ok(())
//!     }
//! }
//! ```

// The SQL both read models share is partly unused in a build with only one of them.
#![cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]

mod error;
#[cfg(feature = "postgres")]
mod postgres;
mod projector;
mod read_model;
mod rows;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod value;

pub use error::{ApplyError, ProjectionError};
#[cfg(feature = "postgres")]
pub use postgres::PgReadModel;
pub use projector::{
    Projector, RebuildProgress, RunStats, RunningProjector, log_head, projection_statuses,
};
pub use read_model::{
    Commit, ProjectionState, ProjectionStatus, ProjectionTarget, ReadModel, SwapOutcome,
    open_read_model, sqlite_path,
};
pub use rows::{Column, RowChange, RowKind, TxChange};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteReadModel;
pub use value::{Row, Value};

use std::borrow::Cow;

use factum_core::{RecordedEvent, SubscriptionFilter};

/// A read model built from events.
///
/// `apply` must be a pure function of the event and the tables' current contents (through the
/// SQL it queues): the projector calls it again for the same event after a crash or during a
/// rebuild, and relies on the result being the same.
pub trait Projection: Send + Sync + 'static {
    /// A stable name: the checkpoint is stored under it, and `factum projections` finds the
    /// projection by it.
    fn name(&self) -> &str;

    /// Bump it when `apply` or the tables change meaning: a projector that finds an older
    /// version stored rebuilds the read model before it goes on (default 1).
    fn version(&self) -> u32 {
        1
    }

    /// The tables this projection writes.
    fn tables(&self) -> Vec<Table>;

    /// Which events `apply` sees (default: every event of a user stream). The checkpoint moves
    /// past the others too.
    fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter {
            exclude_system: true,
            ..SubscriptionFilter::default()
        }
    }

    /// Queues the statements that fold one event into the tables. They run in order, in the
    /// transaction that also stores the checkpoint. An error stops the projector before the
    /// batch that holds the event commits.
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError>;
}

/// A table a projection writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its name in queries. Statements refer to it as `{name}`.
    pub name: String,
    /// The column definitions (and table constraints), as in `CREATE TABLE name (...)`. Use
    /// types both databases know: `TEXT`, `BIGINT`, `DOUBLE PRECISION`, `BOOLEAN`, `BYTEA`
    /// (SQLite stores it as a blob).
    pub columns: String,
    /// Secondary indexes.
    pub indexes: Vec<TableIndex>,
}

/// A secondary index of a [`Table`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableIndex {
    /// Its name, unique in the database.
    pub name: String,
    /// The indexed columns, as in `CREATE INDEX name ON table (...)`.
    pub columns: String,
    /// A unique index.
    pub unique: bool,
}

impl Table {
    /// A table with its column definitions.
    pub fn new(name: impl Into<String>, columns: impl Into<String>) -> Self {
        Table {
            name: name.into(),
            columns: columns.into(),
            indexes: Vec::new(),
        }
    }

    /// Adds a secondary index.
    pub fn index(mut self, name: impl Into<String>, columns: impl Into<String>) -> Self {
        self.indexes.push(TableIndex {
            name: name.into(),
            columns: columns.into(),
            unique: false,
        });
        self
    }

    /// Adds a unique index.
    pub fn unique_index(mut self, name: impl Into<String>, columns: impl Into<String>) -> Self {
        self.indexes.push(TableIndex {
            name: name.into(),
            columns: columns.into(),
            unique: true,
        });
        self
    }

    /// `CREATE TABLE` for the table under a physical name.
    pub(crate) fn create_sql(&self, physical: &str) -> String {
        format!("CREATE TABLE IF NOT EXISTS {physical} ({})", self.columns)
    }

    /// `CREATE INDEX` statements for the table under a physical name.
    pub(crate) fn index_sql(&self, physical: &str) -> Vec<String> {
        self.indexes
            .iter()
            .map(|index| {
                format!(
                    "CREATE {}INDEX IF NOT EXISTS {} ON {physical} ({})",
                    if index.unique { "UNIQUE " } else { "" },
                    index.name,
                    index.columns
                )
            })
            .collect()
    }
}

/// One statement a projection queued.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// SQL with `{table}` names and `$n` parameters.
    pub sql: Cow<'static, str>,
    /// The parameters, `$1` first.
    pub params: Vec<Value>,
}

/// The changes of one batch, in order. They run in one transaction with the checkpoint.
///
/// A projection states changes either as SQL of its own ([`Tx::execute`]) or as row changes
/// ([`Tx::insert`], [`Tx::upsert`], [`Tx::update`], [`Tx::delete`]). Row changes let the read
/// model write the SQL: PostgreSQL then runs a run of like changes as one statement, folding
/// repeated keys, which is several times faster than a statement per event. Row changes to one
/// table keep their order; between two SQL statements, row changes to different tables may run
/// in either order, so do not rely on foreign keys or triggers between a projection's tables.
#[derive(Debug, Default)]
pub struct Tx {
    changes: Vec<TxChange>,
}

impl Tx {
    /// An empty batch.
    pub fn new() -> Self {
        Tx::default()
    }

    /// Queues a statement. Name tables as `{table}` and parameters as `$1`, `$2`, ….
    pub fn execute(
        &mut self,
        sql: impl Into<Cow<'static, str>>,
        params: impl IntoIterator<Item = Value>,
    ) {
        self.changes.push(TxChange::Sql(Statement {
            sql: sql.into(),
            params: params.into_iter().collect(),
        }));
    }

    /// Queues an insert into `table`; give its columns with [`RowChange::set`].
    pub fn insert(&mut self, table: impl Into<Cow<'static, str>>) -> &mut RowChange {
        self.row(RowKind::Insert, table.into())
    }

    /// Queues an upsert into `table`: give the key with [`RowChange::key`], then columns to
    /// overwrite ([`RowChange::set`]) and to add to ([`RowChange::add`]).
    pub fn upsert(&mut self, table: impl Into<Cow<'static, str>>) -> &mut RowChange {
        self.row(RowKind::Upsert, table.into())
    }

    /// Queues an update of the row with a key ([`RowChange::key`]) in `table`, if there is one.
    pub fn update(&mut self, table: impl Into<Cow<'static, str>>) -> &mut RowChange {
        self.row(RowKind::Update, table.into())
    }

    /// Queues a delete of the row with a key ([`RowChange::key`]) in `table`, if there is one.
    pub fn delete(&mut self, table: impl Into<Cow<'static, str>>) -> &mut RowChange {
        self.row(RowKind::Delete, table.into())
    }

    fn row(&mut self, kind: RowKind, table: Cow<'static, str>) -> &mut RowChange {
        self.changes
            .push(TxChange::Row(RowChange::new(kind, table)));
        match self.changes.last_mut() {
            Some(TxChange::Row(row)) => row,
            _ => unreachable!("a row change was just pushed"),
        }
    }

    /// The changes queued so far.
    pub fn changes(&self) -> &[TxChange] {
        &self.changes
    }

    /// Takes the changes out.
    pub fn into_changes(self) -> Vec<TxChange> {
        self.changes
    }
}
