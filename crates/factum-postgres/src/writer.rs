//! The writer: one task per store that takes the appends waiting at the moment, plans them
//! together with the rules every backend shares ([`factum_core::catalog`]) and commits them in
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

use factum_core::catalog::{
    self, Change, Overlay, Plan, PlannedRecord, StreamSummary, View, WriteKind, WriteRequest,
};
use factum_core::{
    AppendResult, ContentType, ExpectedState, RecordedEvent, StoreError, StreamMetadata,
    StreamName, now_micros,
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use uuid::Uuid;

use crate::conn::{Conn, Target};
use crate::head::{advance, channel};

/// Most requests one transaction takes.
const BATCH_REQUESTS_MAX: usize = 1024;
/// Most bytes of events one transaction takes (one request may be larger on its own).
const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

pub(crate) type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

pub(crate) enum Job {
    Write(WriteRequest, Reply),
    Import(Vec<RecordedEvent>, Reply),
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Write(request, _) => request.size_bytes(),
            Job::Import(events, _) => events
                .iter()
                .map(|e| e.event_type.len() + e.data.len() + e.metadata.len() + 32)
                .sum(),
        }
    }
}

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
}

impl View for &Committed {
    fn summary(&self, stream: &StreamName) -> StreamSummary {
        self.streams
            .get(stream)
            .map(StreamRow::summary)
            .unwrap_or_default()
    }

    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Uuid, StoreError> {
        // Only the revisions `windows` names are loaded, and only those are asked for.
        self.events
            .get(&(stream.clone(), revision))
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                StoreError::invalid(format!("revision {revision} of '{stream}' was not loaded"))
            })
    }

    fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.checkpoints.get(consumer).copied()
    }
}

pub(crate) struct Writer {
    pub target: Target,
    pub schema: String,
    pub head: Arc<watch::Sender<u64>>,
    pub hold_before_commit: Option<Arc<Semaphore>>,
    conn: Option<Conn>,
}

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
            target,
            schema,
            head,
            hold_before_commit,
            conn: None,
        }
    }

    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut bytes = first.bytes();
            let mut batch = vec![first];
            while batch.len() < BATCH_REQUESTS_MAX && bytes < BATCH_BYTES_MAX {
                match jobs.try_recv() {
                    Ok(job) => {
                        bytes += job.bytes();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
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
        conn.client
            .batch_execute("BEGIN")
            .await
            .map_err(crate::conn::unavailable)?;
        let row = conn
            .query_opt("SELECT next_position FROM head FOR UPDATE", &[])
            .await?
            .ok_or_else(|| StoreError::invalid("the head row is missing"))?;
        let first_position = to_u64(row.get::<_, i64>(0));
        let committed = load(conn, &jobs).await?;

        // Plan every job against what is committed plus what the batch planned before it.
        let mut overlay = Overlay::over(&committed);
        let mut records: Vec<PlannedRecord> = Vec::new();
        let mut times: Vec<Option<u64>> = Vec::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            let outcome = match job {
                JobKind::Write(request) => match catalog::plan(&overlay, request) {
                    Err(e) => Outcome::Failed(e),
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
        if !records.is_empty() {
            let now = now_micros();
            write_events(conn, &records, &times, first_position, now).await?;
            write_streams(conn, &committed, &records, first_position).await?;
            conn.execute(
                "UPDATE head SET next_position = $1",
                &[&to_i64(next_position)],
            )
            .await?;
            conn.execute(
                "SELECT pg_notify($1, $2)",
                &[&channel, &next_position.to_string()],
            )
            .await?;
        }
        if let Some(hold) = hold {
            hold.acquire()
                .await
                .map_err(|_| StoreError::Closed)?
                .forget();
        }
        conn.client
            .batch_execute("COMMIT")
            .await
            .map_err(crate::conn::unavailable)?;
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

/// Loads the committed state the batch's plans need, under the lock.
async fn load(conn: &Conn, jobs: &[JobKind]) -> Result<Committed, StoreError> {
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
    let mut committed = Committed::default();
    for row in conn
        .query(
            "SELECT name, next_revision, deleted_before, tombstoned, last_id, last_position, metadata
             FROM streams WHERE name = ANY($1)",
            &[&names],
        )
        .await?
    {
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
    if !consumers.is_empty() {
        for row in conn
            .query(
                "SELECT consumer, position FROM checkpoints WHERE consumer = ANY($1)",
                &[&consumers],
            )
            .await?
        {
            committed.checkpoints.insert(row.get(0), to_u64(row.get(1)));
        }
    }
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
    Ok(committed)
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
        let count = events.len() as u64;
        let len = row.next_revision;
        let low = match request.expected {
            ExpectedState::Exact(revision) => revision.saturating_add(1),
            ExpectedState::NoStream => row.deleted_before,
            ExpectedState::Any | ExpectedState::StreamExists => {
                let shared = appended_in_batch.get(&request.stream).copied().unwrap_or(0) > 1;
                if row.last_id != Some(last.id) && !shared {
                    continue;
                }
                len.saturating_sub(count)
            }
        };
        let high = low.saturating_add(count).min(len);
        if low < high {
            out.0.push(request.stream.as_str().to_owned());
            out.1.push(to_i64(low));
            out.2.push(to_i64(high));
        }
    }
    out
}

async fn write_events(
    conn: &Conn,
    records: &[PlannedRecord],
    times: &[Option<u64>],
    first_position: u64,
    now: u64,
) -> Result<(), StoreError> {
    let count = records.len();
    let mut positions = Vec::with_capacity(count);
    let mut streams = Vec::with_capacity(count);
    let mut revisions = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    let mut types = Vec::with_capacity(count);
    let mut content_types = Vec::with_capacity(count);
    let mut data = Vec::with_capacity(count);
    let mut metadata = Vec::with_capacity(count);
    let mut recorded = Vec::with_capacity(count);
    for (offset, record) in records.iter().enumerate() {
        positions.push(to_i64(first_position + offset as u64));
        streams.push(record.stream.as_str());
        revisions.push(to_i64(record.revision));
        ids.push(record.event.id);
        types.push(record.event.event_type.as_str());
        content_types.push(content_type_code(record.event.content_type));
        data.push(record.event.data.as_ref());
        metadata.push(record.event.metadata.as_ref());
        recorded.push(to_i64(times[offset].unwrap_or(now)));
    }
    conn.execute(
        "INSERT INTO events (position, stream, revision, id, type, content_type, data, metadata, recorded_at_us)
         SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::uuid[], $5::text[], $6::int2[], $7::bytea[], $8::bytea[], $9::int8[])",
        &[&positions, &streams, &revisions, &ids, &types, &content_types, &data, &metadata, &recorded],
    )
    .await?;
    Ok(())
}

/// Applies the records' changes to the rows of their streams and checkpoints, and stores them.
async fn write_streams(
    conn: &Conn,
    committed: &Committed,
    records: &[PlannedRecord],
    first_position: u64,
) -> Result<(), StoreError> {
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
    let mut names = Vec::with_capacity(rows.len());
    let mut next_revisions = Vec::with_capacity(rows.len());
    let mut deleted = Vec::with_capacity(rows.len());
    let mut tombstoned = Vec::with_capacity(rows.len());
    let mut last_ids = Vec::with_capacity(rows.len());
    let mut last_positions = Vec::with_capacity(rows.len());
    let mut metadata = Vec::with_capacity(rows.len());
    for (name, row) in &rows {
        names.push(name.as_str());
        next_revisions.push(to_i64(row.next_revision));
        deleted.push(to_i64(row.deleted_before));
        tombstoned.push(row.tombstoned);
        last_ids.push(row.last_id);
        last_positions.push(row.last_position.map(to_i64));
        metadata.push(row.metadata.as_deref());
    }
    conn.execute(
        "INSERT INTO streams (name, next_revision, deleted_before, tombstoned, last_id, last_position, metadata)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bool[], $5::uuid[], $6::int8[], $7::text[])
         ON CONFLICT (name) DO UPDATE SET next_revision = excluded.next_revision,
             deleted_before = excluded.deleted_before, tombstoned = excluded.tombstoned,
             last_id = excluded.last_id, last_position = excluded.last_position,
             metadata = excluded.metadata",
        &[&names, &next_revisions, &deleted, &tombstoned, &last_ids, &last_positions, &metadata],
    )
    .await?;
    if !checkpoints.is_empty() {
        let (consumers, positions): (Vec<&str>, Vec<i64>) = checkpoints
            .iter()
            .map(|(c, p)| (c.as_str(), to_i64(*p)))
            .unzip();
        conn.execute(
            "INSERT INTO checkpoints (consumer, position) SELECT * FROM unnest($1::text[], $2::int8[])
             ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
            &[&consumers, &positions],
        )
        .await?;
    }
    Ok(())
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
