//! The writer: one task per store that takes the appends waiting at the moment, plans them
//! together with the rules every backend shares ([`factum_core::backend::catalog`]) and commits them in
//! one transaction.
//!
//! The transaction first locks the single row of `head`, which holds the next position. So
//! writers in every process take positions one transaction at a time, and a transaction that
//! took later positions commits only after the one before it has committed and become visible:
//! a reader that sees a position has seen every position below it. The expected revisions are
//! checked under the same lock, before any position is taken, so a writer that loses takes none;
//! a failed transaction rolls back its positions with everything else.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use factum_core::backend::catalog::{
    self, Change, Overlay, Plan, PlannedRecord, StreamSummary, View, WriteKind, WriteRequest,
};
use factum_core::backend::{Job, group};
use factum_core::{
    AppendResult, ContentType, Direction, ExpectedState, Query, RecordedEvent, StoreError,
    StreamMetadata, StreamName, now_micros,
};
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

use tokio_postgres::types::ToSql;

use crate::conn::{Conn, Target, unavailable};
use crate::head::{advance, channel};

/// Most requests one transaction takes.
const BATCH_REQUESTS_MAX: usize = 1024;
/// Most bytes of events one transaction takes (one request may be larger on its own).
const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One stream's row in `streams`.
#[derive(Clone, Debug, Default)]
struct StreamRow {
    next_revision: u64,
    deleted_before: u64,
    tombstoned: bool,
    last_id: Option<Uuid>,
    last_position: Option<u64>,
    metadata: Option<String>,
}

impl StreamRow {
    fn summary(&self) -> StreamSummary {
        StreamSummary {
            next_revision: self.next_revision,
            deleted_before: self.deleted_before,
            tombstoned: self.tombstoned,
            last_id: self.last_id,
        }
    }
}

/// The committed state a batch is planned against: the rows of the streams it touches, the
/// checkpoints it moves, and the ids of the events an idempotent re-append may repeat.
#[derive(Default)]
struct Committed {
    streams: HashMap<StreamName, StreamRow>,
    checkpoints: HashMap<String, u64>,
    /// (stream, revision) → (id, position).
    events: HashMap<(StreamName, u64), (Uuid, u64)>,
    /// The position the batch's first record gets.
    next_position: u64,
    /// For the DCB appends of the batch: (query, after) → the first committed match.
    matches: HashMap<(Query, Option<u64>), Option<u64>>,
    /// Ids of committed events where a DCB append's retry may have written its events.
    ids: HashMap<u64, Uuid>,
}

impl View for &Committed {
    fn summary(&self, stream: &StreamName) -> StreamSummary {
        self.streams
            .get(stream)
            .map(StreamRow::summary)
            .unwrap_or_default()
    }

    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Option<Uuid>, StoreError> {
        // Only the revisions `windows` names are loaded, and only those are asked for: one
        // that was not found was removed by a scavenge.
        Ok(self
            .events
            .get(&(stream.clone(), revision))
            .map(|(id, _)| *id))
    }

    fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.checkpoints.get(consumer).copied()
    }

    fn next_position(&self) -> u64 {
        self.next_position
    }

    fn last_position(&self, stream: &StreamName) -> Option<u64> {
        self.streams.get(stream)?.last_position
    }

    fn id_at_position(&self, position: u64) -> Result<Option<Uuid>, StoreError> {
        if position >= self.next_position {
            return Ok(None);
        }
        // Every position a retry may match is loaded: one that was not found was removed by
        // a scavenge.
        Ok(self.ids.get(&position).copied())
    }

    fn first_match(&self, query: &Query, after: Option<u64>) -> Result<Option<u64>, StoreError> {
        self.matches
            .get(&(query.clone(), after))
            .copied()
            .ok_or_else(|| StoreError::invalid("a DCB condition was not loaded"))
    }
}

pub(crate) struct Writer {
    pub target: Target,
    pub schema: String,
    pub head: Arc<watch::Sender<u64>>,
    pub hold_before_commit: Option<Arc<Semaphore>>,
    conn: Option<Conn>,
    /// Why writes fail now: the database cannot be reached (what `write_refusal` reports);
    /// cleared by the next commit, or by a reconnection the writer tries by itself.
    pub refusal: Arc<std::sync::Mutex<Option<String>>>,
}

/// How often the writer tries to reach the database again while it cannot.
const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What became of one job of a batch.
enum Outcome {
    Failed(StoreError),
    /// Already appended, at this result.
    Done(AppendResult),
    /// Written as records `range` of the batch, `primary` of them its own.
    Planned {
        first: usize,
        count: usize,
        primary: usize,
    },
}

impl Writer {
    pub fn new(
        target: Target,
        schema: String,
        head: Arc<watch::Sender<u64>>,
        hold_before_commit: Option<Arc<Semaphore>>,
    ) -> Self {
        Writer {
            target: target.for_writes(),
            schema,
            head,
            hold_before_commit,
            conn: None,
            refusal: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    fn set_refusal(&self, reason: Option<String>) {
        let mut refusal = self
            .refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*refusal, &reason) {
            (None, Some(reason)) => {
                tracing::warn!(%reason, "the PostgreSQL store cannot write; it reconnects by itself");
            }
            (Some(_), None) => tracing::info!("the PostgreSQL store writes again"),
            _ => {}
        }
        *refusal = reason;
    }

    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        loop {
            let refusing = self
                .refusal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some();
            let first = if refusing {
                tokio::select! {
                    job = jobs.recv() => job,
                    () = tokio::time::sleep(RECONNECT_EVERY) => {
                        // Reach the database again without waiting for an append.
                        match self.conn().await {
                            Ok(conn) => match conn.client.batch_execute("SELECT 1").await {
                                Ok(()) => self.set_refusal(None),
                                Err(_) => self.conn = None,
                            },
                            Err(_) => self.conn = None,
                        }
                        continue;
                    }
                }
            } else {
                jobs.recv().await
            };
            let Some(first) = first else { break };
            let batch = group(
                first,
                || jobs.try_recv().ok(),
                BATCH_REQUESTS_MAX,
                BATCH_BYTES_MAX,
            );
            self.commit(batch).await;
        }
    }

    async fn commit(&mut self, batch: Vec<Job>) {
        let (jobs, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|job| match job {
                Job::Write(request, reply) => (JobKind::Write(request), reply),
                Job::Import(events, reply) => (JobKind::Import(events), reply),
            })
            .unzip();
        match self.transaction(jobs).await {
            Ok(outcomes) => {
                self.set_refusal(None);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                // The connection may be broken, or the transaction half done: start afresh.
                if let Some(conn) = self.conn.take()
                    && !conn.client.is_closed()
                {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    self.conn = Some(conn);
                }
                if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                    self.set_refusal(Some(e.to_string()));
                }
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
                }
            }
        }
    }

    async fn conn(&mut self) -> Result<&Conn, StoreError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = Some(Conn::open(&self.target).await?);
        }
        self.conn.as_ref().ok_or(StoreError::Closed)
    }

    /// Runs one batch in one transaction. `Err` means the transaction did not commit (or may
    /// not have): every job of the batch fails.
    async fn transaction(
        &mut self,
        mut jobs: Vec<JobKind>,
    ) -> Result<Vec<Result<AppendResult, StoreError>>, StoreError> {
        let hold = self.hold_before_commit.clone();
        let channel = channel(&self.schema);
        let conn = self.conn().await?;
        let (first_position, committed) = lock_and_load(conn, &jobs).await?;

        // Plan every job against what is committed plus what the batch planned before it.
        let dcb = jobs
            .iter()
            .any(|job| matches!(job, JobKind::Write(r) if matches!(r.kind, WriteKind::Dcb(_))));
        let mut overlay = Overlay::over(&committed).with_matching(dcb);
        let mut records: Vec<PlannedRecord> = Vec::new();
        let mut times: Vec<Option<u64>> = Vec::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            let outcome = match job {
                JobKind::Write(request) => match catalog::plan(&overlay, request) {
                    Err(e) => Outcome::Failed(e),
                    Ok(Plan::AlreadyWritten(result)) => Outcome::Done(result),
                    Ok(Plan::AlreadyAppended {
                        first_revision,
                        last_revision,
                    }) => {
                        let position = committed
                            .events
                            .get(&(request.stream.clone(), last_revision))
                            .map(|(_, position)| *position)
                            .or_else(|| {
                                records
                                    .iter()
                                    .position(|r| {
                                        r.stream == request.stream && r.revision == last_revision
                                    })
                                    .map(|index| first_position + index as u64)
                            });
                        match position {
                            Some(position) => Outcome::Done(AppendResult {
                                first_revision,
                                last_revision,
                                position,
                            }),
                            None => Outcome::Failed(StoreError::invalid(
                                "idempotent append lost its original",
                            )),
                        }
                    }
                    Ok(Plan::Write {
                        records: planned,
                        primary,
                    }) => match overlay.record(&planned) {
                        Err(e) => Outcome::Failed(e),
                        Ok(()) => {
                            let first = records.len();
                            let count = planned.len();
                            times.extend(std::iter::repeat_n(None, count));
                            records.extend(planned);
                            Outcome::Planned {
                                first,
                                count,
                                primary,
                            }
                        }
                    },
                },
                JobKind::Import(events) => {
                    match catalog::import_plan(&overlay, std::mem::take(events)) {
                        Err(e) => Outcome::Failed(e),
                        Ok((planned, recorded)) => match overlay.record(&planned) {
                            Err(e) => Outcome::Failed(e),
                            Ok(()) => {
                                let first = records.len();
                                let count = planned.len();
                                times.extend(recorded.into_iter().map(Some));
                                records.extend(planned);
                                Outcome::Planned {
                                    first,
                                    count,
                                    primary: count,
                                }
                            }
                        },
                    }
                }
            };
            outcomes.push(outcome);
        }

        let next_position = first_position + records.len() as u64;
        if records.is_empty() {
            commit(conn, hold).await?;
        } else {
            let events = EventColumns::new(&records, &times, first_position, now_micros());
            let streams = StreamColumns::new(&committed, &records, first_position)?;
            write(conn, &events, &streams, next_position, &channel, hold).await?;
        }
        advance(&self.head, next_position);

        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Failed(e) => Err(e),
                Outcome::Done(result) => Ok(result),
                Outcome::Planned {
                    first,
                    count,
                    primary,
                } => Ok(catalog::append_result(
                    &records[first..first + count],
                    primary,
                    first_position + first as u64,
                )),
            })
            .collect())
    }
}

enum JobKind {
    Write(WriteRequest),
    Import(Vec<RecordedEvent>),
}

const LOCK_HEAD: &str = "SELECT next_position FROM head FOR UPDATE";
const LOAD_STREAMS: &str =
    "SELECT name, next_revision, deleted_before, tombstoned, last_id, last_position, metadata
     FROM streams WHERE name = ANY($1)";
const LOAD_CHECKPOINTS: &str =
    "SELECT consumer, position FROM checkpoints WHERE consumer = ANY($1)";

/// Begins the transaction, locks the head and loads the committed state the batch's plans need,
/// under the lock: the first position the batch takes, and that state.
///
/// `BEGIN`, the lock and the loads are sent together, without waiting for each answer
/// (pipelined). The server runs them in the order sent, so the loads still run under the lock.
async fn lock_and_load(conn: &Conn, jobs: &[JobKind]) -> Result<(u64, Committed), StoreError> {
    let mut names: HashSet<String> = HashSet::new();
    let mut consumers: Vec<String> = Vec::new();
    let add = |names: &mut HashSet<String>, stream: &StreamName| {
        names.insert(stream.as_str().to_owned());
        match stream.described_stream() {
            Some(described) => names.insert(described.as_str().to_owned()),
            None => names.insert(stream.metadata_stream().as_str().to_owned()),
        };
    };
    for job in jobs {
        match job {
            JobKind::Write(request) => {
                add(&mut names, &request.stream);
                if let WriteKind::Dcb(append) = &request.kind {
                    for event in &append.events {
                        add(&mut names, &event.stream);
                    }
                    for (stream, _) in &append.expected {
                        add(&mut names, stream);
                    }
                }
                if let Some(checkpoint) = &request.checkpoint {
                    add(
                        &mut names,
                        &StreamName::checkpoint_stream(&checkpoint.consumer)?,
                    );
                    consumers.push(checkpoint.consumer.clone());
                }
            }
            JobKind::Import(events) => {
                for event in events {
                    add(&mut names, &event.stream);
                    if let Some(consumer) = event.stream.checkpoint_consumer() {
                        consumers.push(consumer.to_owned());
                    }
                }
            }
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    // Prepared first (once per connection), so that nothing waits between the sends below.
    let [lock, streams, checkpoints] = conn
        .prepared([LOCK_HEAD, LOAD_STREAMS, LOAD_CHECKPOINTS])
        .await?;
    let client = &conn.client;
    let stream_params: [&(dyn ToSql + Sync); 1] = [&names];
    let (begun, head, streams, checkpoints) = futures::join!(
        client.batch_execute("BEGIN"),
        client.query_opt(&lock, &[]),
        client.query(&streams, &stream_params),
        async {
            if consumers.is_empty() {
                Ok(Vec::new())
            } else {
                client.query(&checkpoints, &[&consumers]).await
            }
        },
    );
    begun.map_err(unavailable)?;
    let first_position = head
        .map_err(unavailable)?
        .ok_or_else(|| StoreError::invalid("the head row is missing"))?
        .get::<_, i64>(0);
    let mut committed = Committed::default();
    for row in streams.map_err(unavailable)? {
        let name = stream_name(row.get(0))?;
        committed.streams.insert(
            name,
            StreamRow {
                next_revision: to_u64(row.get(1)),
                deleted_before: to_u64(row.get(2)),
                tombstoned: row.get(3),
                last_id: row.get(4),
                last_position: row.get::<_, Option<i64>>(5).map(to_u64),
                metadata: row.get(6),
            },
        );
    }
    for row in checkpoints.map_err(unavailable)? {
        committed.checkpoints.insert(row.get(0), to_u64(row.get(1)));
    }
    committed.next_position = to_u64(first_position);
    load_dcb(conn, jobs, &mut committed).await?;
    let (streams, lows, highs) = windows(&committed, jobs);
    if !streams.is_empty() {
        for row in conn
            .query(
                "SELECT e.stream, e.revision, e.id, e.position
                 FROM unnest($1::text[], $2::int8[], $3::int8[]) AS w(stream, low, high)
                 JOIN events e ON e.stream = w.stream AND e.revision >= w.low AND e.revision < w.high",
                &[&streams, &lows, &highs],
            )
            .await?
        {
            committed
                .events
                .insert((stream_name(row.get(0))?, to_u64(row.get(1))), (row.get(2), to_u64(row.get(3))));
        }
    }
    Ok((to_u64(first_position), committed))
}

/// What the DCB appends of the batch are planned against, under the lock: the first committed
/// match of each condition, and the ids where a retry may find its events written (the last
/// ones of its last event's stream; where its condition first matches).
async fn load_dcb(
    conn: &Conn,
    jobs: &[JobKind],
    committed: &mut Committed,
) -> Result<(), StoreError> {
    let end = to_i64(committed.next_position);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for job in jobs {
        let JobKind::Write(request) = job else {
            continue;
        };
        let WriteKind::Dcb(append) = &request.kind else {
            continue;
        };
        let count = append.events.len() as u64;
        let tail = append.events.last().and_then(|last| {
            let row = committed.streams.get(&last.stream)?;
            Some((row.last_id, row.last_position?))
        });
        let found = match &append.condition {
            None => None,
            Some(condition) => {
                let query = &condition.fail_if_events_match;
                let key = (query.clone(), condition.after);
                match committed.matches.get(&key) {
                    Some(found) => *found,
                    None => {
                        let sql = crate::dcb::QuerySql::new(query, Direction::Forwards);
                        let after = condition.after.map_or(-1, to_i64);
                        let one = 1i64;
                        let params = sql.params([&after, &end, &one]);
                        let rows = conn.query(&sql.sql, &params).await?;
                        let found = rows.first().map(|row| to_u64(row.get(0)));
                        committed.matches.insert(key, found);
                        found
                    }
                }
            }
        };
        for start in catalog::dcb_retry_starts(append, tail, found) {
            ranges.push((start, start + count));
        }
    }
    if ranges.is_empty() {
        return Ok(());
    }
    let lows: Vec<i64> = ranges.iter().map(|r| to_i64(r.0)).collect();
    let highs: Vec<i64> = ranges.iter().map(|r| to_i64(r.1)).collect();
    for row in conn
        .query(
            "SELECT e.position, e.id FROM unnest($1::int8[], $2::int8[]) AS w(low, high)
             JOIN events e ON e.position >= w.low AND e.position < w.high",
            &[&lows, &highs],
        )
        .await?
    {
        committed.ids.insert(to_u64(row.get(0)), row.get(1));
    }
    Ok(())
}

/// The committed revisions whose ids an idempotent re-append in the batch may compare: for an
/// exact expected revision the ones right after it, for "no stream" the first ones after the
/// latest soft delete, for "any" and "exists" the stream's last ones — and for "any" only when
/// the stream (or the batch) ends with the append's last event.
fn windows(committed: &Committed, jobs: &[JobKind]) -> (Vec<String>, Vec<i64>, Vec<i64>) {
    let mut appended_in_batch: HashMap<&StreamName, usize> = HashMap::new();
    for job in jobs {
        if let JobKind::Write(request) = job
            && matches!(request.kind, WriteKind::Append(_))
        {
            *appended_in_batch.entry(&request.stream).or_default() += 1;
        }
    }
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for job in jobs {
        let JobKind::Write(request) = job else {
            continue;
        };
        let WriteKind::Append(events) = &request.kind else {
            continue;
        };
        let (Some(last), Some(row)) = (events.last(), committed.streams.get(&request.stream))
        else {
            continue;
        };
        if matches!(
            request.expected,
            ExpectedState::Any | ExpectedState::StreamExists
        ) {
            let shared = appended_in_batch.get(&request.stream).copied().unwrap_or(0) > 1;
            if row.last_id != Some(last.id) && !shared {
                continue;
            }
        }
        // Of the window, what is committed; the overlay holds what the batch planned before.
        let window =
            catalog::idempotency_window(&row.summary(), request.expected, events.len() as u64);
        let (low, high) = (window.start, window.end.min(row.next_revision));
        if low < high {
            out.0.push(request.stream.as_str().to_owned());
            out.1.push(to_i64(low));
            out.2.push(to_i64(high));
        }
    }
    out
}

const INSERT_EVENTS: &str = "INSERT INTO events (position, stream, revision, id, type, content_type, data, metadata, recorded_at_us, tags)
     SELECT p, s, r, i, t, c, d, m, a,
            CASE WHEN g IS NULL THEN '{}'::text[] ELSE ARRAY(SELECT json_array_elements_text(g::json)) END
     FROM unnest($1::int8[], $2::text[], $3::int8[], $4::uuid[], $5::text[], $6::int2[], $7::bytea[], $8::bytea[], $9::int8[], $10::text[])
         AS u(p, s, r, i, t, c, d, m, a, g)";
const INSERT_TAGS: &str =
    "INSERT INTO event_tags (tag, position) SELECT * FROM unnest($1::text[], $2::int8[])";
const UPSERT_STREAMS: &str = "INSERT INTO streams (name, next_revision, deleted_before, tombstoned, last_id, last_position, metadata)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bool[], $5::uuid[], $6::int8[], $7::text[])
     ON CONFLICT (name) DO UPDATE SET next_revision = excluded.next_revision,
         deleted_before = excluded.deleted_before, tombstoned = excluded.tombstoned,
         last_id = excluded.last_id, last_position = excluded.last_position,
         metadata = excluded.metadata";
const UPSERT_CHECKPOINTS: &str =
    "INSERT INTO checkpoints (consumer, position) SELECT * FROM unnest($1::text[], $2::int8[])
     ON CONFLICT (consumer) DO UPDATE SET position = excluded.position";
const MOVE_HEAD: &str = "UPDATE head SET next_position = $1";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Writes the batch's events, its streams' rows, its checkpoints and the head, announces the
/// new head, and commits (after `hold`, a test's hook, when there is one).
///
/// The statements and `COMMIT` are sent together, without waiting for each answer
/// (pipelined); the server runs them in order. If one fails, the transaction is aborted, the
/// statements after it fail, and `COMMIT` rolls back (PostgreSQL answers it without an error),
/// so every answer is checked: the batch counts as committed only if all of them succeeded.
async fn write(
    conn: &Conn,
    events: &EventColumns<'_>,
    streams: &StreamColumns,
    next_position: u64,
    channel: &str,
    hold: Option<Arc<Semaphore>>,
) -> Result<(), StoreError> {
    // Prepared first (once per connection), so that nothing waits between the sends below.
    let [
        insert_events,
        insert_tags,
        upsert_streams,
        upsert_checkpoints,
        move_head,
        notify,
    ] = conn
        .prepared([
            INSERT_EVENTS,
            INSERT_TAGS,
            UPSERT_STREAMS,
            UPSERT_CHECKPOINTS,
            MOVE_HEAD,
            NOTIFY,
        ])
        .await?;
    let client = &conn.client;
    let e = events;
    let event_params: [&(dyn ToSql + Sync); 10] = [
        &e.positions,
        &e.streams,
        &e.revisions,
        &e.ids,
        &e.types,
        &e.content_types,
        &e.data,
        &e.metadata,
        &e.recorded,
        &e.tags,
    ];
    let tag_params: [&(dyn ToSql + Sync); 2] = [&e.tag_rows.0, &e.tag_rows.1];
    let s = streams;
    let stream_params: [&(dyn ToSql + Sync); 7] = [
        &s.names,
        &s.next_revisions,
        &s.deleted,
        &s.tombstoned,
        &s.last_ids,
        &s.last_positions,
        &s.metadata,
    ];
    let checkpoint_params: [&(dyn ToSql + Sync); 2] = [&s.consumers, &s.positions];
    let next = to_i64(next_position);
    let next_text = next_position.to_string();
    let head_params: [&(dyn ToSql + Sync); 1] = [&next];
    let notify_params: [&(dyn ToSql + Sync); 2] = [&channel, &next_text];
    let commit_now = hold.is_none();
    let (inserted, tagged, upserted, checkpointed, moved, notified, committed) = futures::join!(
        client.execute(&insert_events, &event_params),
        async {
            if e.tag_rows.0.is_empty() {
                Ok(0)
            } else {
                client.execute(&insert_tags, &tag_params).await
            }
        },
        client.execute(&upsert_streams, &stream_params),
        async {
            if s.consumers.is_empty() {
                Ok(0)
            } else {
                client
                    .execute(&upsert_checkpoints, &checkpoint_params)
                    .await
            }
        },
        client.execute(&move_head, &head_params),
        client.execute(&notify, &notify_params),
        async {
            if commit_now {
                client.batch_execute("COMMIT").await
            } else {
                Ok(())
            }
        },
    );
    for result in [inserted, tagged, upserted, checkpointed, moved, notified] {
        result.map_err(unavailable)?;
    }
    committed.map_err(unavailable)?;
    if !commit_now {
        commit(conn, hold).await?;
    }
    Ok(())
}

/// Commits, after `hold` (a test's hook) when there is one.
async fn commit(conn: &Conn, hold: Option<Arc<Semaphore>>) -> Result<(), StoreError> {
    if let Some(hold) = hold {
        hold.acquire()
            .await
            .map_err(|_| StoreError::Closed)?
            .forget();
    }
    conn.client
        .batch_execute("COMMIT")
        .await
        .map_err(unavailable)
}

/// The batch's events as the columns of `INSERT_EVENTS`.
struct EventColumns<'a> {
    positions: Vec<i64>,
    streams: Vec<&'a str>,
    revisions: Vec<i64>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    content_types: Vec<i16>,
    data: Vec<&'a [u8]>,
    metadata: Vec<&'a [u8]>,
    recorded: Vec<i64>,
    /// Each event's tags as a JSON array, or none.
    tags: Vec<Option<String>>,
    /// (tag, position) of every tag of an event of a user stream: the rows of `event_tags`.
    tag_rows: (Vec<&'a str>, Vec<i64>),
}

impl<'a> EventColumns<'a> {
    fn new(
        records: &'a [PlannedRecord],
        times: &[Option<u64>],
        first_position: u64,
        now: u64,
    ) -> Self {
        let count = records.len();
        let mut columns = EventColumns {
            positions: Vec::with_capacity(count),
            streams: Vec::with_capacity(count),
            revisions: Vec::with_capacity(count),
            ids: Vec::with_capacity(count),
            types: Vec::with_capacity(count),
            content_types: Vec::with_capacity(count),
            data: Vec::with_capacity(count),
            metadata: Vec::with_capacity(count),
            recorded: Vec::with_capacity(count),
            tags: Vec::with_capacity(count),
            tag_rows: (Vec::new(), Vec::new()),
        };
        for (offset, record) in records.iter().enumerate() {
            columns
                .positions
                .push(to_i64(first_position + offset as u64));
            columns.streams.push(record.stream.as_str());
            columns.revisions.push(to_i64(record.revision));
            columns.ids.push(record.event.id);
            columns.types.push(record.event.event_type.as_str());
            columns
                .content_types
                .push(content_type_code(record.event.content_type));
            columns.data.push(record.event.data.as_ref());
            columns.metadata.push(record.event.metadata.as_ref());
            columns.recorded.push(to_i64(times[offset].unwrap_or(now)));
            let tags = &record.event.tags;
            columns.tags.push(
                (!tags.is_empty())
                    .then(|| serde_json::to_string(tags).unwrap_or_else(|_| "[]".to_owned())),
            );
            if !record.stream.is_system() {
                for tag in tags {
                    columns.tag_rows.0.push(tag.as_str());
                    columns
                        .tag_rows
                        .1
                        .push(to_i64(first_position + offset as u64));
                }
            }
        }
        columns
    }
}

/// The rows of the streams and checkpoints the batch changes, as the columns of
/// `UPSERT_STREAMS` and `UPSERT_CHECKPOINTS`.
struct StreamColumns {
    names: Vec<String>,
    next_revisions: Vec<i64>,
    deleted: Vec<i64>,
    tombstoned: Vec<bool>,
    last_ids: Vec<Option<Uuid>>,
    last_positions: Vec<Option<i64>>,
    metadata: Vec<Option<String>>,
    consumers: Vec<String>,
    positions: Vec<i64>,
}

impl StreamColumns {
    /// Applies the records' changes to the rows of their streams and checkpoints.
    fn new(
        committed: &Committed,
        records: &[PlannedRecord],
        first_position: u64,
    ) -> Result<Self, StoreError> {
        let mut rows: HashMap<StreamName, StreamRow> = HashMap::new();
        let mut checkpoints: HashMap<String, u64> = HashMap::new();
        let mut changes = Vec::new();
        for (offset, record) in records.iter().enumerate() {
            changes.clear();
            catalog::push_changes(
                &mut changes,
                &record.stream,
                record.revision,
                first_position + offset as u64,
                record.event.id,
                &record.event.event_type,
                &record.event.data,
            )?;
            for change in changes.drain(..) {
                match change {
                    Change::Appended {
                        stream,
                        revision,
                        position,
                        id,
                    } => {
                        let row = row_of(&mut rows, committed, &stream);
                        if revision != row.next_revision {
                            return Err(StoreError::invalid(format!(
                                "record of '{stream}' has revision {revision}, expected {}",
                                row.next_revision
                            )));
                        }
                        row.next_revision = revision + 1;
                        row.last_id = Some(id);
                        row.last_position = Some(position);
                    }
                    Change::Deleted { stream, before } => {
                        let row = row_of(&mut rows, committed, &stream);
                        row.deleted_before = row.deleted_before.max(before);
                    }
                    Change::Tombstoned { stream } => {
                        row_of(&mut rows, committed, &stream).tombstoned = true;
                    }
                    Change::Metadata { stream, metadata } => {
                        row_of(&mut rows, committed, &stream).metadata =
                            Some(metadata_json(&metadata)?);
                    }
                    Change::Checkpoint { consumer, position } => {
                        checkpoints.insert(consumer, position);
                    }
                }
            }
        }
        let mut columns = StreamColumns {
            names: Vec::with_capacity(rows.len()),
            next_revisions: Vec::with_capacity(rows.len()),
            deleted: Vec::with_capacity(rows.len()),
            tombstoned: Vec::with_capacity(rows.len()),
            last_ids: Vec::with_capacity(rows.len()),
            last_positions: Vec::with_capacity(rows.len()),
            metadata: Vec::with_capacity(rows.len()),
            consumers: Vec::with_capacity(checkpoints.len()),
            positions: Vec::with_capacity(checkpoints.len()),
        };
        for (name, row) in rows {
            columns.names.push(name.as_str().to_owned());
            columns.next_revisions.push(to_i64(row.next_revision));
            columns.deleted.push(to_i64(row.deleted_before));
            columns.tombstoned.push(row.tombstoned);
            columns.last_ids.push(row.last_id);
            columns.last_positions.push(row.last_position.map(to_i64));
            columns.metadata.push(row.metadata);
        }
        for (consumer, position) in checkpoints {
            columns.consumers.push(consumer);
            columns.positions.push(to_i64(position));
        }
        Ok(columns)
    }
}

fn row_of<'a>(
    rows: &'a mut HashMap<StreamName, StreamRow>,
    committed: &Committed,
    stream: &StreamName,
) -> &'a mut StreamRow {
    rows.entry(stream.clone())
        .or_insert_with(|| committed.streams.get(stream).cloned().unwrap_or_default())
}

pub(crate) fn metadata_json(metadata: &StreamMetadata) -> Result<String, StoreError> {
    serde_json::to_string(metadata)
        .map_err(|e| StoreError::invalid(format!("metadata does not serialise: {e}")))
}

pub(crate) fn content_type_code(content_type: ContentType) -> i16 {
    match content_type {
        ContentType::Json => 0,
        ContentType::Binary => 1,
    }
}

/// Positions and revisions are stored as `bigint`; every one the store writes is below 2^63.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn stream_name(name: String) -> Result<StreamName, StoreError> {
    StreamName::new(name)
}
