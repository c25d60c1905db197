//! Read models in PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use factum_core::now_micros;
use factum_pgconnect::PgConnect;
use futures::future::try_join_all;
use tokio::sync::{Mutex, watch};
use tokio_postgres::Client;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::read_model::{META_DDL, Registry, check_continues, swap_check};
use crate::rows::{Step, columns, fold, plan};
use crate::sql::check_identifier;
use crate::{
    Commit, ProjectionError, ProjectionState, ProjectionTarget, ReadModel, Row, SwapOutcome, Table,
    Value,
};

/// A read model in a PostgreSQL schema. The statements of a batch are pipelined on one
/// connection and run in order in one transaction with the checkpoint.
///
/// A rebuild fills tables of the same names in the schema `{schema}__rebuild` and moves them
/// into `schema` when it swaps, indexes included.
pub struct PgReadModel {
    schema: String,
    writer: Mutex<Writer>,
    reader: Client,
    registry: Registry,
    committed: watch::Sender<u64>,
}

struct Writer {
    client: Client,
    /// Prepared statements by target and projection SQL.
    prepared: [HashMap<String, tokio_postgres::Statement>; 2],
}

async fn connect(config: &str, schema: &str) -> Result<Client, ProjectionError> {
    let (client, connection) = PgConnect::parse(config)
        .map_err(|e| ProjectionError::invalid(e.to_string()))?
        .connect()
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "read-model connection to PostgreSQL closed");
        }
    });
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await?;
    Ok(client)
}

impl PgReadModel {
    /// Connects (`postgres://…` or `host=… user=…`) and creates `schema` if it is missing.
    /// Queries see the schema's tables without qualifying them.
    pub async fn connect(config: &str, schema: &str) -> Result<Self, ProjectionError> {
        check_identifier("schema", schema)?;
        let schema = schema.to_ascii_lowercase();
        let client = connect(config, &schema).await?;
        create(
            &client,
            &format!("CREATE SCHEMA IF NOT EXISTS {schema}; {META_DDL}"),
        )
        .await?;
        let reader = connect(config, &schema).await?;
        // Queries read; they never write.
        reader
            .batch_execute("SET default_transaction_read_only = on")
            .await?;
        Ok(PgReadModel {
            schema,
            writer: Mutex::new(Writer {
                client,
                prepared: [HashMap::new(), HashMap::new()],
            }),
            reader,
            registry: Registry::default(),
            committed: watch::channel(0).0,
        })
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn shadow_schema(&self) -> String {
        format!("{}__rebuild", self.schema)
    }
}

/// Runs `CREATE … IF NOT EXISTS` statements. Two sessions creating the same object at once
/// may race to a unique violation; then the object exists, and running them again settles it.
async fn create(client: &Client, ddl: &str) -> Result<(), ProjectionError> {
    let mut attempts = 0;
    loop {
        match client.batch_execute(ddl).await {
            Ok(()) => return Ok(()),
            Err(e)
                if attempts < 3
                    && e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn checkpoint(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
    target: ProjectionTarget,
) -> Result<(Option<u64>, bool), ProjectionError> {
    let column = target.checkpoint_column();
    let row = tx
        .query_opt(
            &format!(
                "SELECT {column}, rebuilding FROM factum_projections WHERE name = $1 FOR UPDATE"
            ),
            &[&name],
        )
        .await?
        .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))?;
    Ok((row.get::<_, Option<i64>>(0).map(|p| p as u64), row.get(1)))
}

fn value_from_pg(row: &tokio_postgres::Row, i: usize) -> Result<Value, ProjectionError> {
    let column = &row.columns()[i];
    let ty = column.type_();
    let value = match *ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.into(),
        Type::INT2 => row.try_get::<_, Option<i16>>(i)?.into(),
        Type::INT4 => row.try_get::<_, Option<i32>>(i)?.into(),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.into(),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i)?.map(f64::from).into(),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.into(),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(i)?.into()
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.into(),
        Type::JSON | Type::JSONB => row
            .try_get::<_, Option<serde_json::Value>>(i)?
            .map(|v| v.to_string())
            .into(),
        _ => {
            return Err(ProjectionError::invalid(format!(
                "column '{}' has type {ty}, which queries cannot return yet; cast it (::text)",
                column.name()
            )));
        }
    };
    Ok(value)
}

fn param_refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// The parameters of one statement of a batch.
enum Args<'a> {
    /// A statement of the projection's own.
    Borrowed(&'a [Value]),
    /// One row change.
    Row(Vec<Value>),
    /// Many row changes: one array per column.
    Columns(Vec<Vec<Value>>),
}

impl Args<'_> {
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Args::Borrowed(params) => param_refs(params),
            Args::Row(params) => param_refs(params),
            Args::Columns(columns) => columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect(),
        }
    }
}

/// The prepared statement for SQL with `{table}` names, prepared on first use.
async fn prepare(
    tx: &tokio_postgres::Transaction<'_>,
    prepared: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
    physical: impl FnOnce() -> Result<Arc<str>, ProjectionError>,
) -> Result<tokio_postgres::Statement, ProjectionError> {
    if let Some(statement) = prepared.get(sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(&physical()?).await?;
    prepared.insert(sql.to_owned(), statement.clone());
    Ok(statement)
}

#[async_trait]
impl ReadModel for PgReadModel {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn install(
        &self,
        name: &str,
        version: u32,
        tables: &[Table],
    ) -> Result<ProjectionState, ProjectionError> {
        let registered = self.registry.register(name, tables)?;
        let mut writer = self.writer.lock().await;
        let tx = writer.client.transaction().await?;
        for table in &registered.tables {
            let mut ddl = table.create_sql(&table.name);
            for index in table.index_sql(&table.name) {
                ddl.push_str("; ");
                ddl.push_str(&index);
            }
            tx.batch_execute(&ddl).await?;
        }
        tx.execute(
            "INSERT INTO factum_projections (name, version) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
            &[&name, &i64::from(version)],
        )
        .await?;
        tx.execute(
            "UPDATE factum_projections SET version = $2 \
             WHERE name = $1 AND position IS NULL AND NOT rebuilding",
            &[&name, &i64::from(version)],
        )
        .await?;
        tx.commit().await?;
        drop(writer);
        self.state(name).await
    }

    async fn commit(&self, commit: Commit) -> Result<(), ProjectionError> {
        let registered = self.registry.get(&commit.projection)?;
        let shadow_schema = self.shadow_schema();
        let physical = |table: &str| match commit.target {
            ProjectionTarget::Live => table.to_owned(),
            ProjectionTarget::Shadow => format!("{shadow_schema}.{table}"),
        };
        let mut guard = self.writer.lock().await;
        let Writer { client, prepared } = &mut *guard;
        let prepared = &mut prepared[usize::from(commit.target == ProjectionTarget::Shadow)];
        let tx = client.transaction().await?;
        // The checkpoint first: a batch that does not continue from it fails the same way
        // whatever its statements name.
        let (found, rebuilding) = checkpoint(&tx, &commit.projection, commit.target).await?;
        check_continues(&commit, found, rebuilding)?;
        // Then what this batch needs prepared, before the pipeline (prepared statements
        // outlive the transaction).
        let mut runs = Vec::new();
        for step in plan(&commit.changes) {
            runs.push(match step {
                Step::Sql(statement) => {
                    let sql = statement.sql.as_ref();
                    let prepared = prepare(&tx, prepared, sql, || {
                        registered.sql(commit.target, sql, physical, false)
                    })
                    .await?;
                    (prepared, Args::Borrowed(&statement.params))
                }
                Step::Rows(rows) => {
                    let Some(first) = rows.first() else { continue };
                    // Checked before its SQL is written.
                    let folded = fold(&rows)?;
                    let single_sql = first.single_sql();
                    let single = prepare(&tx, prepared, &single_sql, || {
                        registered.sql(commit.target, &single_sql, physical, false)
                    })
                    .await?;
                    // Arrays of arrays would flatten in `unnest`: such tables take a statement
                    // per row.
                    let flat = single
                        .params()
                        .iter()
                        .all(|ty| !matches!(ty.kind(), Kind::Array(_)));
                    if folded.len() == 1 || !flat {
                        for row in folded {
                            runs.push((single.clone(), Args::Row(row)));
                        }
                        continue;
                    }
                    let types: Vec<String> = single
                        .params()
                        .iter()
                        .map(|ty| format!("\"{}\".\"{}\"", ty.schema(), ty.name()))
                        .collect();
                    let multi_sql = first.multi_sql(&types);
                    let multi = prepare(&tx, prepared, &multi_sql, || {
                        registered.sql(commit.target, &multi_sql, physical, false)
                    })
                    .await?;
                    (multi, Args::Columns(columns(folded, types.len())))
                }
            });
        }
        let mut pending = Vec::with_capacity(runs.len());
        for (prepared, args) in &runs {
            let params = args.refs();
            let tx = &tx;
            // Sent one after another on the connection without waiting: PostgreSQL runs them
            // in order.
            pending.push(async move { tx.execute(prepared, &params).await });
        }
        try_join_all(pending).await?;
        let now = now_micros() as i64;
        let position = commit.position as i64;
        let head = commit.head as i64;
        match commit.target {
            ProjectionTarget::Live => {
                tx.execute(
                    "UPDATE factum_projections SET position = $2, recorded_at_us = $3, \
                     updated_at_us = $4, head = $5 WHERE name = $1",
                    &[
                        &commit.projection,
                        &position,
                        &(commit.recorded_at_us as i64),
                        &now,
                        &head,
                    ],
                )
                .await?
            }
            ProjectionTarget::Shadow => {
                tx.execute(
                    "UPDATE factum_projections SET rebuild_position = $2, rebuild_target = $3 \
                     WHERE name = $1",
                    &[&commit.projection, &position, &head],
                )
                .await?
            }
        };
        tx.commit().await?;
        self.committed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn begin_rebuild(&self, name: &str, target: u64) -> Result<(), ProjectionError> {
        let registered = self.registry.get(name)?;
        let shadow_schema = self.shadow_schema();
        let mut writer = self.writer.lock().await;
        writer.prepared[1].clear();
        create(
            &writer.client,
            &format!("CREATE SCHEMA IF NOT EXISTS {shadow_schema}"),
        )
        .await?;
        let tx = writer.client.transaction().await?;
        for table in &registered.tables {
            let physical = format!("{shadow_schema}.{}", table.name);
            let mut ddl = format!("DROP TABLE IF EXISTS {physical}; ");
            ddl.push_str(&table.create_sql(&physical));
            for index in table.index_sql(&physical) {
                ddl.push_str("; ");
                ddl.push_str(&index);
            }
            tx.batch_execute(&ddl).await?;
        }
        let changed = tx
            .execute(
                "UPDATE factum_projections SET rebuilding = TRUE, rebuild_position = NULL, \
                 rebuild_target = $2, rebuild_started_at_us = $3 WHERE name = $1",
                &[&name, &(target as i64), &(now_micros() as i64)],
            )
            .await?;
        if changed == 0 {
            return Err(ProjectionError::UnknownProjection(name.to_owned()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn swap(
        &self,
        name: &str,
        version: u32,
        recorded_at_us: u64,
    ) -> Result<SwapOutcome, ProjectionError> {
        let registered = self.registry.get(name)?;
        let shadow_schema = self.shadow_schema();
        let mut writer = self.writer.lock().await;
        let tx = writer.client.transaction().await?;
        let (live, _) = checkpoint(&tx, name, ProjectionTarget::Live).await?;
        let (shadow, rebuilding) = checkpoint(&tx, name, ProjectionTarget::Shadow).await?;
        if let Some(wait) = swap_check(name, live, shadow, rebuilding)? {
            return Ok(wait);
        }
        for table in &registered.tables {
            tx.batch_execute(&format!(
                "DROP TABLE IF EXISTS {schema}.{table}; \
                 ALTER TABLE {shadow_schema}.{table} SET SCHEMA {schema}",
                schema = self.schema,
                table = table.name
            ))
            .await?;
        }
        let now = now_micros() as i64;
        tx.execute(
            "UPDATE factum_projections SET version = $2, position = rebuild_position, \
             recorded_at_us = $3, updated_at_us = $4, rebuilding = FALSE, \
             rebuild_position = NULL, rebuild_requested = FALSE, rebuilt_at_us = $4 \
             WHERE name = $1",
            &[&name, &i64::from(version), &(recorded_at_us as i64), &now],
        )
        .await?;
        tx.commit().await?;
        writer.prepared = [HashMap::new(), HashMap::new()];
        self.committed.send_modify(|n| *n += 1);
        Ok(SwapOutcome::Swapped)
    }

    async fn request_rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let changed = self
            .writer
            .lock()
            .await
            .client
            .execute(
                "UPDATE factum_projections SET rebuild_requested = TRUE WHERE name = $1",
                &[&name],
            )
            .await?;
        if changed == 0 {
            return Err(ProjectionError::UnknownProjection(name.to_owned()));
        }
        Ok(())
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, ProjectionError> {
        let sql = crate::sql::rewrite(sql, |name| Some(name.to_owned()), false)?;
        let rows = self.reader.query(&sql, &param_refs(params)).await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let columns: Arc<[String]> = first
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        rows.iter()
            .map(|row| {
                let values = (0..columns.len())
                    .map(|i| value_from_pg(row, i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Row::new(columns.clone(), values))
            })
            .collect()
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

type PgResult = Result<IsNull, Box<dyn std::error::Error + Sync + Send>>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> PgResult {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Float(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            Value::Text(s) => match *ty {
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSON => {
                    out.extend_from_slice(s.as_bytes());
                    Ok(IsNull::No)
                }
                Type::UUID => {
                    let uuid: [u8; 16] = parse_uuid(s)?;
                    out.extend_from_slice(&uuid);
                    Ok(IsNull::No)
                }
                _ => s.as_str().to_sql(ty, out),
            },
            Value::Bytes(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn parse_uuid(s: &str) -> Result<[u8; 16], Box<dyn std::error::Error + Sync + Send>> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return Err(format!("'{s}' is not a UUID").into());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("'{s}' is not a UUID"))?;
    }
    Ok(out)
}
