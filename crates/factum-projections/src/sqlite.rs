//! Read models in a SQLite file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use factum_core::now_micros;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};
use tokio::sync::watch;

use crate::read_model::{META_DDL, Registry, check_continues, swap_check};
use crate::rows::{Step, fold, plan};
use crate::{
    Commit, ProjectionError, ProjectionState, ProjectionTarget, ReadModel, Row, SwapOutcome, Table,
    Value,
};

/// A read model in a SQLite file, in WAL mode: queries read while a projector writes, and
/// other processes (`factum projections status`) can open the same file.
///
/// A rebuild fills `{table}__rebuild` and renames it into place. Its indexes keep the name
/// they were built under (SQLite cannot rename an index), so a table's index is named either
/// as declared or with a `__rebuild` suffix.
#[derive(Clone)]
pub struct SqliteReadModel {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    registry: Registry,
    committed: watch::Sender<u64>,
}

fn open_connection(path: &Path) -> Result<Connection, ProjectionError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL with synchronous=NORMAL: a commit is atomic and survives the process being killed;
    // a power cut may lose the last commits, and then the checkpoint goes back with them, so
    // the projector applies those events again, exactly once.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // What is deleted or dropped is overwritten with zeros, so data a rebuild replaced (say
    // personal data of a forgotten subject) does not linger in free pages.
    conn.pragma_update(None, "secure_delete", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteReadModel {
    /// Opens (or creates) the read-model file.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, ProjectionError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let writer = open_connection(&path)?;
            writer.execute_batch(META_DDL)?;
            let reader = open_connection(&path)?;
            reader.pragma_update(None, "query_only", true)?;
            Ok(SqliteReadModel {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(writer),
                    reader: Mutex::new(reader),
                    registry: Registry::default(),
                    committed: watch::channel(0).0,
                }),
            })
        })
        .await
        .map_err(join_error)?
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, ProjectionError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, ProjectionError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(join_error)?
    }
}

fn join_error(e: tokio::task::JoinError) -> ProjectionError {
    ProjectionError::invalid(format!("a read-model task failed: {e}"))
}

fn shadow_name(table: &str) -> String {
    format!("{table}__rebuild")
}

/// The name a new copy of an index gets: the declared one unless the live table holds it.
fn free_index_name(conn: &Connection, index: &str) -> Result<String, ProjectionError> {
    let taken: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
        [index],
        |row| row.get(0),
    )?;
    Ok(if taken {
        format!("{index}__rebuild")
    } else {
        index.to_owned()
    })
}

fn create_table(
    conn: &Connection,
    table: &Table,
    physical: &str,
    rebuild: bool,
) -> Result<(), ProjectionError> {
    conn.execute_batch(&table.create_sql(physical))?;
    for index in &table.indexes {
        let name = if rebuild {
            // The shadow table was just created, so the live table may hold the declared
            // name: take the other one.
            free_index_name(conn, &index.name)?
        } else {
            let has_one: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' \
                 AND tbl_name = ?1 AND (name = ?2 OR name = ?3))",
                params![physical, index.name, format!("{}__rebuild", index.name)],
                |row| row.get(0),
            )?;
            if has_one {
                continue;
            }
            index.name.clone()
        };
        let unique = if index.unique { "UNIQUE " } else { "" };
        conn.execute_batch(&format!(
            "CREATE {unique}INDEX {name} ON {physical} ({})",
            index.columns
        ))?;
    }
    Ok(())
}

fn checkpoint(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    target: ProjectionTarget,
) -> Result<(Option<u64>, bool), ProjectionError> {
    let column = target.checkpoint_column();
    tx.query_row(
        &format!("SELECT {column}, rebuilding FROM factum_projections WHERE name = ?1"),
        [name],
        |row| Ok((row.get::<_, Option<i64>>(0)?.map(|p| p as u64), row.get(1)?)),
    )
    .optional()?
    .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
}

fn value_from_sqlite(value: rusqlite::types::ValueRef<'_>, boolean: bool) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) if boolean => Value::Bool(i != 0),
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    }
}

#[async_trait]
impl ReadModel for SqliteReadModel {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn install(
        &self,
        name: &str,
        version: u32,
        tables: &[Table],
    ) -> Result<ProjectionState, ProjectionError> {
        let registered = self.inner.registry.register(name, tables)?;
        let owned = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for table in &registered.tables {
                create_table(&tx, table, &table.name, false)?;
            }
            tx.execute(
                "INSERT INTO factum_projections (name, version) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO NOTHING",
                params![owned, version],
            )?;
            tx.execute(
                "UPDATE factum_projections SET version = ?2 \
                 WHERE name = ?1 AND position IS NULL AND NOT rebuilding",
                params![owned, version],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.state(name).await
    }

    async fn commit(&self, commit: Commit) -> Result<(), ProjectionError> {
        let registered = self.inner.registry.get(&commit.projection)?;
        self.blocking(move |inner| {
            let mut conn = inner.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (found, rebuilding) = checkpoint(&tx, &commit.projection, commit.target)?;
            check_continues(&commit, found, rebuilding)?;
            let physical = |table: &str| match commit.target {
                ProjectionTarget::Live => table.to_owned(),
                ProjectionTarget::Shadow => shadow_name(table),
            };
            for step in plan(&commit.changes) {
                match step {
                    Step::Sql(statement) => {
                        let sql = registered.sql(commit.target, &statement.sql, physical, true)?;
                        tx.prepare_cached(&sql)?
                            .execute(params_from_iter(statement.params.iter()))?;
                    }
                    Step::Rows(rows) => {
                        let Some(first) = rows.first() else { continue };
                        // Checked before its SQL is written.
                        let folded = fold(&rows)?;
                        let sql =
                            registered.sql(commit.target, &first.single_sql(), physical, true)?;
                        let mut prepared = tx.prepare_cached(&sql)?;
                        for row in folded {
                            prepared.execute(params_from_iter(row))?;
                        }
                    }
                }
            }
            let now = now_micros() as i64;
            let position = commit.position as i64;
            let head = commit.head as i64;
            match commit.target {
                ProjectionTarget::Live => tx.execute(
                    "UPDATE factum_projections SET position = ?2, recorded_at_us = ?3, \
                     updated_at_us = ?4, head = ?5 WHERE name = ?1",
                    params![
                        commit.projection,
                        position,
                        commit.recorded_at_us as i64,
                        now,
                        head
                    ],
                )?,
                ProjectionTarget::Shadow => tx.execute(
                    "UPDATE factum_projections SET rebuild_position = ?2, rebuild_target = ?3 \
                     WHERE name = ?1",
                    params![commit.projection, position, head],
                )?,
            };
            tx.commit()?;
            inner.committed.send_modify(|n| *n += 1);
            Ok(())
        })
        .await
    }

    async fn begin_rebuild(&self, name: &str, target: u64) -> Result<(), ProjectionError> {
        let registered = self.inner.registry.get(name)?;
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for table in &registered.tables {
                let shadow = shadow_name(&table.name);
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {shadow}"))?;
                create_table(&tx, table, &shadow, true)?;
            }
            let changed = tx.execute(
                "UPDATE factum_projections SET rebuilding = TRUE, rebuild_position = NULL, \
                 rebuild_target = ?2, rebuild_started_at_us = ?3 WHERE name = ?1",
                params![name, target as i64, now_micros() as i64],
            )?;
            if changed == 0 {
                return Err(ProjectionError::UnknownProjection(name));
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn swap(
        &self,
        name: &str,
        version: u32,
        recorded_at_us: u64,
    ) -> Result<SwapOutcome, ProjectionError> {
        let registered = self.inner.registry.get(name)?;
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (live, _) = checkpoint(&tx, &name, ProjectionTarget::Live)?;
            let (shadow, rebuilding) = checkpoint(&tx, &name, ProjectionTarget::Shadow)?;
            if let Some(wait) = swap_check(&name, live, shadow, rebuilding)? {
                return Ok(wait);
            }
            for table in &registered.tables {
                tx.execute_batch(&format!(
                    "DROP TABLE IF EXISTS {live}; ALTER TABLE {shadow} RENAME TO {live};",
                    live = table.name,
                    shadow = shadow_name(&table.name)
                ))?;
            }
            let now = now_micros() as i64;
            tx.execute(
                "UPDATE factum_projections SET version = ?2, position = rebuild_position, \
                 recorded_at_us = ?3, updated_at_us = ?4, rebuilding = FALSE, \
                 rebuild_position = NULL, rebuild_requested = FALSE, rebuilt_at_us = ?4 \
                 WHERE name = ?1",
                params![name, version, recorded_at_us as i64, now],
            )?;
            tx.commit()?;
            inner.committed.send_modify(|n| *n += 1);
            // The replaced tables' pages leave the write-ahead log too (when no reader holds
            // it; otherwise at a later checkpoint).
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::debug!(error = %e, "checkpointing the read model after a swap");
            }
            Ok(SwapOutcome::Swapped)
        })
        .await
    }

    async fn request_rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let changed = inner.writer.lock().execute(
                "UPDATE factum_projections SET rebuild_requested = TRUE WHERE name = ?1",
                [&name],
            )?;
            if changed == 0 {
                return Err(ProjectionError::UnknownProjection(name));
            }
            Ok(())
        })
        .await
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, ProjectionError> {
        let sql = crate::sql::rewrite(sql, |name| Some(name.to_owned()), true)?;
        let params = params.to_vec();
        self.blocking(move |inner| {
            let conn = inner.reader.lock();
            let mut statement = conn.prepare_cached(&sql)?;
            let columns: Arc<[String]> = statement
                .column_names()
                .iter()
                .map(|c| c.to_string())
                .collect();
            let boolean: Vec<bool> = statement
                .columns()
                .iter()
                .map(|c| {
                    c.decl_type().is_some_and(|t| {
                        t.eq_ignore_ascii_case("BOOLEAN") || t.eq_ignore_ascii_case("BOOL")
                    })
                })
                .collect();
            let mut rows = statement.query(params_from_iter(params.iter()))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut values = Vec::with_capacity(columns.len());
                for (i, is_bool) in boolean.iter().enumerate() {
                    values.push(value_from_sqlite(row.get_ref(i)?, *is_bool));
                }
                out.push(Row::new(columns.clone(), values));
            }
            Ok(out)
        })
        .await
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.inner.committed.subscribe()
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Float(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}
