//! Factum's event store on PostgreSQL: the same [`EventStore`] as the embedded engine, passing
//! the same conformance suite, for when several application instances share one store or the
//! store should live in a managed PostgreSQL with the backups and replicas already run there.
//!
//! ```no_run
//! # mod factum { pub use factum_core::*; pub use factum_postgres::*; }
//! use factum::{EventStore, ExpectedState, NewEvent, StreamName};
//! use factum::{PgOptions, PgStore};
//! # async fn run() -> Result<(), factum::StoreError> {
//! let store = PgStore::connect("postgres://postgres@127.0.0.1/test", PgOptions::default()).await?;
//! let cart = StreamName::new("cart-1")?;
//! let event = NewEvent::json("ItemAdded", &serde_json::json!({"sku": "apple"}))?;
//! store.append(&cart, ExpectedState::NoStream, vec![event]).await?;
//! # Ok(()) }
//! ```
//!
//! The tables live in their own schema (`factum` unless [`PgOptions::schema`] says otherwise),
//! created and migrated by [`PgStore::connect`]. Appends from every process are committed one
//! transaction at a time in position order, so no reader or subscriber ever skips a committed
//! event; concurrent appends of one process share a transaction. New events are announced with
//! `LISTEN/NOTIFY`, and the head is also polled, so subscriptions follow other processes'
//! appends and survive a restart of PostgreSQL.

mod claim;
mod conn;
mod dcb;
mod head;
mod keys;
mod scavenge;
mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use factum_core::backend::catalog::{self, StreamSummary, WriteRequest};
use factum_core::{
    AppendResult, ContentType, CurrentRevision, Direction, EventStore, RecordedEvent, StoreError,
    StreamInfo, StreamMetadata, StreamName, now_micros,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_postgres::Row;

pub use claim::PG_CLAIM_HOLDER_SQL;
pub use keys::PgKeyStore;
pub use scavenge::PgVerifyReport;
pub use schema::VERSION as PG_SCHEMA_VERSION;

use conn::{Pool, Target};
use factum_core::backend::{Job, Reply};
use writer::{Writer, to_i64, to_u64};

/// How a [`PgStore`] connects and behaves.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The schema holding the store's tables: lower-case letters, digits and `_`.
    pub schema: String,
    /// Connections used for reads.
    pub readers: usize,
    /// How often the head is polled besides the notifications.
    pub poll_interval: Duration,
    /// For tests: when set, the writer takes a permit from it before every commit, holding its
    /// transaction (and the lock on the head) open until the test adds one.
    #[doc(hidden)]
    pub hold_before_commit: Option<Arc<Semaphore>>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "factum".into(),
            readers: 4,
            poll_interval: Duration::from_millis(500),
            hold_before_commit: None,
        }
    }
}

/// An event store in PostgreSQL. Cheap to clone; clones share connections and the writer.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    schema: String,
    /// Why the writer cannot write now (the database cannot be reached), while it cannot.
    refusal: Arc<std::sync::Mutex<Option<String>>>,
    claims: claim::Claims,
    readers: Pool,
    /// For connections of their own (a scavenge's).
    target: Target,
    keys: Arc<PgKeyStore>,
    jobs: mpsc::Sender<Job>,
    head: Arc<watch::Sender<u64>>,
    head_rx: watch::Receiver<u64>,
    _stop_following: oneshot::Sender<()>,
}

impl PgStore {
    /// Connects, creates or migrates the schema, and starts the writer and the head follower.
    /// `connection` is a URL (`postgres://user@host/db`) or key-value pairs
    /// (`host=… user=… dbname=…`).
    pub async fn connect(connection: &str, options: PgOptions) -> Result<Self, StoreError> {
        schema::check_name(&options.schema)?;
        let target = Target::new(connection, &options.schema)?;
        let mut client = target.connect().await?;
        schema::migrate(&mut client, &options.schema).await?;
        let row = client
            .query_one("SELECT next_position FROM head", &[])
            .await
            .map_err(conn::unavailable)?;
        drop(client);
        let (head, head_rx) = watch::channel(to_u64(row.get(0)));
        let head = Arc::new(head);
        let (jobs, receiver) = mpsc::channel(4096);
        let writer = Writer::new(
            target.clone(),
            options.schema.clone(),
            head.clone(),
            options.hold_before_commit.clone(),
        );
        let refusal = writer.refusal.clone();
        tokio::spawn(writer.run(receiver));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(head::follow(
            target.clone(),
            options.schema.clone(),
            head.clone(),
            options.poll_interval,
            stopped,
        ));
        Ok(PgStore {
            inner: Arc::new(Inner {
                refusal,
                readers: Pool::new(target.clone(), options.readers),
                claims: claim::Claims::new(target.clone(), options.schema.clone()),
                keys: Arc::new(PgKeyStore::new(target.clone())),
                target,
                schema: options.schema,
                jobs,
                head,
                head_rx,
                _stop_following: stop,
            }),
        })
    }

    /// Reads every event below the head and checks the log's shape (positions, revisions,
    /// and that every position without an event is one a scavenge removed). `progress` gets
    /// (positions done, head).
    pub async fn verify(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<PgVerifyReport, StoreError> {
        scavenge::verify(&self.inner.target, self.head(), &mut progress).await
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    async fn send(&self, job: impl FnOnce(Reply) -> Job) -> Result<AppendResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(job(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores recorded events as they are — ids, revisions, types, data, metadata and recorded
    /// times — in one transaction. Each event must continue its stream (its revision is the
    /// stream's next one). Used by `factum import`.
    pub async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        factum_core::backend::validate_import(&events)?;
        self.send(|reply| Job::Import(events, reply))
            .await
            .map(|_| ())
    }

    /// Where a row that does not decode came from, for [`StoreError::Corrupted`].
    fn corrupted(&self, table: &str, offset: u64, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupted {
            file: PathBuf::from(format!("postgresql:{}.{table}", self.inner.schema)),
            offset,
            reason: reason.into(),
        }
    }

    fn event(&self, row: &Row) -> Result<RecordedEvent, StoreError> {
        let position: i64 = row.get(0);
        let bad = |reason: String| self.corrupted("events", to_u64(position), reason);
        let unsigned = |value: i64, what: &str| {
            u64::try_from(value).map_err(|_| bad(format!("negative {what} {value}")))
        };
        let content_type = match row.get::<_, i16>(5) {
            0 => ContentType::Json,
            1 => ContentType::Binary,
            other => return Err(bad(format!("unknown content type {other}"))),
        };
        Ok(RecordedEvent {
            position: unsigned(position, "position")?,
            stream: StreamName::new(row.get::<_, String>(1))
                .map_err(|e| bad(format!("bad stream name: {e}")))?,
            revision: unsigned(row.get(2), "revision")?,
            id: row.get(3),
            event_type: row.get(4),
            content_type,
            data: Bytes::from(row.get::<_, Vec<u8>>(6)),
            metadata: Bytes::from(row.get::<_, Vec<u8>>(7)),
            recorded_at_us: unsigned(row.get(8), "recorded time")?,
            tags: row.get(9),
        })
    }

    /// A stream's row: its summary and metadata (`None` when nothing was recorded about it).
    async fn stream_row(
        &self,
        conn: &conn::Conn,
        stream: &StreamName,
    ) -> Result<Option<(StreamSummary, Option<StreamMetadata>)>, StoreError> {
        let Some(row) = conn
            .query_opt(
                "SELECT next_revision, deleted_before, tombstoned, last_id, metadata
                 FROM streams WHERE name = $1",
                &[&stream.as_str()],
            )
            .await?
        else {
            return Ok(None);
        };
        self.stream_columns(&row, 0, stream).map(Some)
    }

    /// A stream's summary and metadata from the five columns of its row that start at `first`.
    fn stream_columns(
        &self,
        row: &Row,
        first: usize,
        stream: &StreamName,
    ) -> Result<(StreamSummary, Option<StreamMetadata>), StoreError> {
        let summary = StreamSummary {
            next_revision: to_u64(row.get(first)),
            deleted_before: to_u64(row.get(first + 1)),
            tombstoned: row.get(first + 2),
            last_id: row.get(first + 3),
        };
        let metadata = match row.get::<_, Option<String>>(first + 4) {
            None => None,
            Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                self.corrupted(
                    "streams",
                    0,
                    format!("metadata of '{stream}' does not parse: {e}"),
                )
            })?),
        };
        Ok((summary, metadata))
    }
}

macro_rules! events_query {
    ($rest:literal) => {
        concat!(
            "SELECT position, stream, revision, id, type, content_type, data, metadata, recorded_at_us, tags FROM events ",
            $rest
        )
    };
}

/// A stream's row (columns 10 to 14) with up to `$3` of its events (columns 0 to 9) that
/// `$where` picks, in `$order`; the row alone when none is picked. `$1` is the stream.
macro_rules! stream_and_events {
    ($where:literal, $order:literal) => {
        concat!(
            "SELECT e.position, e.stream, e.revision, e.id, e.type, e.content_type, e.data, e.metadata, e.recorded_at_us, e.tags,
                    s.next_revision, s.deleted_before, s.tombstoned, s.last_id, s.metadata
             FROM streams s LEFT JOIN LATERAL (
                 SELECT * FROM events WHERE stream = s.name AND ",
            $where,
            " LIMIT $3) e ON true
             WHERE s.name = $1 ORDER BY ",
            $order
        )
    };
}

#[async_trait]
impl EventStore for PgStore {
    async fn write(&self, request: WriteRequest) -> Result<AppendResult, StoreError> {
        self.send(|reply| Job::Write(request, reply)).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let conn = self.inner.readers.get().await?;
        // One statement reads the stream's row and, past its soft delete, up to `limit` of its
        // events: one round trip and one snapshot. When the metadata hides more (truncate
        // before, max count), the events are read again for exactly the visible range.
        let from = to_i64(from_revision);
        let limit_sql = to_i64(limit as u64);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&stream.as_str(), &from, &limit_sql];
        let rows = match direction {
            Direction::Forwards => conn.query(stream_and_events!(
                "revision >= GREATEST($2, s.deleted_before) AND revision < s.next_revision ORDER BY revision",
                "e.revision"
            ), &params).await?,
            Direction::Backwards => conn.query(stream_and_events!(
                "revision <= LEAST($2, s.next_revision - 1) AND revision >= s.deleted_before ORDER BY revision DESC",
                "e.revision DESC"
            ), &params).await?,
        };
        let first = rows
            .first()
            .ok_or_else(|| StoreError::NotFound(stream.to_string()))?;
        let (summary, metadata) = self.stream_columns(first, 10, stream)?;
        if summary.tombstoned {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        let range = catalog::read_range(
            stream,
            summary.next_revision,
            summary.deleted_before,
            metadata.as_ref(),
            from_revision,
            direction,
        )?;
        if range.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let read = catalog::read_range(
            stream,
            summary.next_revision,
            summary.deleted_before,
            None,
            from_revision,
            direction,
        )?;
        let rows = if read == range {
            rows
        } else {
            // The range is fixed by the row read above; events are never changed once
            // written, so reading it now is the same as reading it at that moment.
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                &stream.as_str(),
                &to_i64(range.start),
                &to_i64(range.end),
                &limit_sql,
            ];
            match direction {
                Direction::Forwards => {
                    conn.query(
                        events_query!("WHERE stream = $1 AND revision >= $2 AND revision < $3 ORDER BY revision LIMIT $4"),
                        &params,
                    )
                    .await?
                }
                Direction::Backwards => {
                    conn.query(
                        events_query!("WHERE stream = $1 AND revision >= $2 AND revision < $3 ORDER BY revision DESC LIMIT $4"),
                        &params,
                    )
                    .await?
                }
            }
        };
        let max_age = metadata.as_ref().and_then(|m| m.max_age_secs);
        let now = now_micros();
        let mut events = Vec::with_capacity(rows.len());
        let mut taken = 0;
        // A stream with no event in the range comes as its row alone, with no event columns.
        for row in rows
            .iter()
            .filter(|row| row.get::<_, Option<i64>>(0).is_some())
        {
            let event = self.event(row)?;
            taken += 1;
            if catalog::visible_by_age(max_age, event.recorded_at_us, now) {
                events.push(event);
            }
        }
        // The age hid the oldest events of a full page: later ones may be visible. Read the
        // first `limit` of the range recorded since the age's cut.
        if let Some(max_age) = max_age
            && direction == Direction::Forwards
            && taken == limit
            && events.len() < limit
        {
            let cut = now.saturating_sub(max_age.saturating_mul(1_000_000));
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &stream.as_str(),
                &to_i64(range.start),
                &to_i64(range.end),
                &to_i64(cut),
                &limit_sql,
            ];
            let rows = conn
                .query(
                    events_query!("WHERE stream = $1 AND revision >= $2 AND revision < $3 AND recorded_at_us >= $4 ORDER BY revision LIMIT $5"),
                    &params,
                )
                .await?;
            events = rows
                .iter()
                .map(|row| self.event(row))
                .collect::<Result<_, _>>()?;
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conn = self.inner.readers.get().await?;
        let from = to_i64(from_position);
        let limit = to_i64(limit as u64);
        let rows = match direction {
            Direction::Forwards => {
                conn.query(
                    events_query!("WHERE position >= $1 ORDER BY position LIMIT $2"),
                    &[&from, &limit],
                )
                .await?
            }
            Direction::Backwards => {
                conn.query(
                    events_query!("WHERE position <= $1 ORDER BY position DESC LIMIT $2"),
                    &[&from, &limit],
                )
                .await?
            }
        };
        rows.iter().map(|row| self.event(row)).collect()
    }

    async fn read_query(
        &self,
        query: &factum_core::Query,
        after: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<factum_core::QueryRead, StoreError> {
        query.validate()?;
        // Every position below the head is committed and visible.
        let end = self.head();
        let head = end.checked_sub(1);
        if limit == 0 || after.is_some_and(|a| a.saturating_add(1) >= end) {
            return Ok(factum_core::QueryRead {
                events: Vec::new(),
                head,
            });
        }
        let positions = dcb::QuerySql::new(query, direction);
        let sql = format!(
            "{} WHERE position IN ({}) ORDER BY position {}",
            events_query!(""),
            positions.sql,
            positions.order
        );
        let after = after.map_or(-1, to_i64);
        let end_sql = to_i64(end);
        let limit_sql = to_i64(limit as u64);
        let params = positions.params([&after, &end_sql, &limit_sql]);
        let conn = self.inner.readers.get().await?;
        let rows = conn.query(&sql, &params).await?;
        let events = rows
            .iter()
            .map(|row| self.event(row))
            .collect::<Result<_, _>>()?;
        Ok(factum_core::QueryRead { events, head })
    }

    fn head(&self) -> u64 {
        *self.inner.head_rx.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn stream_revision(&self, stream: &StreamName) -> Result<CurrentRevision, StoreError> {
        let conn = self.inner.readers.get().await?;
        match self.stream_row(&conn, stream).await? {
            None => Ok(CurrentRevision(None)),
            Some((summary, _)) if summary.tombstoned => {
                Err(StoreError::StreamDeleted(stream.to_string()))
            }
            Some((summary, _)) => Ok(summary.current()),
        }
    }

    async fn get_metadata(
        &self,
        stream: &StreamName,
    ) -> Result<Option<StreamMetadata>, StoreError> {
        let conn = self.inner.readers.get().await?;
        match self.stream_row(&conn, stream).await? {
            None => Ok(None),
            Some((summary, _)) if summary.tombstoned => {
                Err(StoreError::StreamDeleted(stream.to_string()))
            }
            Some((_, metadata)) => Ok(metadata),
        }
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        let conn = self.inner.readers.get().await?;
        let rows = conn
            .query(
                "SELECT name, next_revision, last_position, deleted_before, tombstoned FROM streams
                 WHERE next_revision > 0 AND name >= $1 AND starts_with(name, $1)
                   AND ($2::text IS NULL OR name > $2) AND ($3 OR NOT starts_with(name, '$'))
                 ORDER BY name LIMIT $4",
                &[
                    &prefix,
                    &after.map(StreamName::as_str),
                    &prefix.starts_with('$'),
                    &to_i64(limit as u64),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let next_revision = to_u64(row.get(1));
                let deleted_before = to_u64(row.get(3));
                Ok(StreamInfo {
                    name: StreamName::new(row.get::<_, String>(0)).map_err(|e| {
                        self.corrupted("streams", 0, format!("bad stream name: {e}"))
                    })?,
                    last_revision: next_revision - 1,
                    last_position: row.get::<_, Option<i64>>(2).map(to_u64).unwrap_or(0),
                    deleted: next_revision <= deleted_before,
                    tombstoned: row.get(4),
                })
            })
            .collect()
    }

    async fn read_checkpoint(&self, consumer: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.inner.readers.get().await?;
        Ok(conn
            .query_opt(
                "SELECT position FROM checkpoints WHERE consumer = $1",
                &[&consumer],
            )
            .await?
            .map(|row| to_u64(row.get(0))))
    }

    async fn claim(&self, name: &str) -> Result<Option<factum_core::Claim>, StoreError> {
        self.inner.claims.claim(name).await
    }

    fn keys(&self) -> Option<Arc<dyn factum_core::KeyStore>> {
        Some(self.inner.keys.clone())
    }

    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn write_refusal(&self) -> Option<String> {
        self.inner
            .refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn disk_usage(&self) -> Result<Option<u64>, StoreError> {
        let conn = self.inner.readers.get().await?;
        let row = conn
            .query_opt(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind = 'r'",
                &[&self.inner.schema],
            )
            .await?;
        Ok(row.map(|row| to_u64(row.get(0))))
    }

    async fn scavenge(
        &self,
        options: factum_core::ScavengeOptions,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<factum_core::ScavengeReport, StoreError> {
        scavenge::scavenge(&self.inner.target, &options, progress).await
    }
}
