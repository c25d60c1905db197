//! `factum bench --scenarios dcb`: dynamic consistency boundaries.
//!
//! - `dcb` (append): 64 writers, each appending one event at a time tagged with its own tag,
//!   conditional on no event of that tag since its last read (its own last append), on the
//!   embedded engine, on Factum's PostgreSQL store (its tag table, conditions checked under its
//!   head lock), and on PostgreSQL done by hand the way the Python `eventsourcing` library
//!   does it (an events table and a tag table; each append one transaction that locks the
//!   events table, checks the tag table for a later event of the tag, and inserts the event
//!   and its tags).
//! - `dcb-read`: a store of 1,000,000 events over 1,000 tags (written before the clock
//!   starts), then reads of one tag's 1,000 events, on the engine: latency per read.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, ensure};
use factum::{
    AppendCondition, DcbAppend, DcbEvent, Direction, Engine, EngineOptions, EventStore, PgOptions,
    PgStore, Query, RecordedEvent, StreamName,
};

use crate::kit::{Payloads, Row, bar, json_event, pg_client, row, timed};

/// Writers appending at once.
const WRITERS: u64 = 64;

/// Events of the read scenario's store, and tags over them.
const READ_EVENTS: u64 = 1_000_000;
const READ_TAGS: u64 = 1_000;

/// Runs `dcb` (the appends, on each store) or `dcb-read`.
pub async fn run(
    scenario: &str,
    work: &Path,
    postgres: &str,
    events: u64,
    payloads: &Arc<Payloads>,
) -> Result<Vec<Row>> {
    if scenario == "dcb-read" {
        return read(work, payloads).await.map(|r| vec![r]);
    }
    let mut rows = Vec::new();
    let dir = tempfile::Builder::new().prefix("dcb-").tempdir_in(work)?;
    let engine = Engine::open(dir.path().join("store"), EngineOptions::default())?;
    rows.push(appends("factum", Arc::new(engine.clone()), events, payloads).await?);
    engine.close()?;
    match pg_client(postgres).await {
        Ok(admin) => {
            admin
                .batch_execute("DROP SCHEMA IF EXISTS factum_bench_dcb CASCADE")
                .await?;
            let options = PgOptions {
                schema: "factum_bench_dcb".into(),
                ..PgOptions::default()
            };
            let store = PgStore::connect(postgres, options).await?;
            // PostgreSQL is far slower here: a tenth of the events gives its rate as well.
            rows.push(appends("factum-pg", Arc::new(store), events / 10, payloads).await?);
            rows.push(by_hand(postgres, events / 10, payloads).await?);
            admin
                .batch_execute("DROP SCHEMA IF EXISTS factum_bench_dcb CASCADE; DROP SCHEMA IF EXISTS factum_bench_dcb_sql CASCADE")
                .await?;
        }
        Err(e) => eprintln!("skipping PostgreSQL in the dcb scenario: {e:#}"),
    }
    Ok(rows)
}

/// The tag of writer `w`.
fn tag(w: u64) -> String {
    format!("writer:{w}")
}

/// Runs [`WRITERS`] writers, each started by `writer` with its number and the counter of
/// appends done, and each giving back the latency of each of its appends; timed with a
/// progress bar from the first writer's start to the last one's end.
async fn writers<F, Fut>(store_name: &str, per_writer: u64, mut writer: F) -> Result<Row>
where
    F: FnMut(u64, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<u64>>> + Send + 'static,
{
    let total = per_writer * WRITERS;
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let work = {
        let done = done.clone();
        let latencies = latencies.clone();
        async move {
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| tokio::spawn(writer(w, done.clone())))
                .collect();
            for task in tasks {
                let mine = task.await??;
                latencies
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a writer panicked"))?
                    .extend(mine);
            }
            Ok(())
        }
    };
    let (elapsed, _) = timed(&format!("dcb on {store_name}"), total, work, || {
        done.load(Ordering::Relaxed)
    })
    .await?;
    let latencies = std::mem::take(
        &mut *latencies
            .lock()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))?,
    );
    Ok(row("dcb", store_name, total, elapsed, latencies))
}

async fn appends(
    store_name: &str,
    store: Arc<dyn EventStore>,
    events: u64,
    payloads: &Arc<Payloads>,
) -> Result<Row> {
    let per_writer = (events / WRITERS).max(1);
    let payloads = payloads.clone();
    writers(store_name, per_writer, move |w, done| {
        let store = store.clone();
        let payloads = payloads.clone();
        async move {
            let query = Query::item(Vec::<String>::new(), [tag(w)]);
            let mut after = store
                .read_query(&query, None, Direction::Backwards, 1)
                .await?
                .head;
            let mut mine = Vec::with_capacity(per_writer as usize);
            for n in 0..per_writer {
                let event =
                    json_event("Noted", payloads.get(w * per_writer + n)).with_tags([tag(w)]);
                let append = DcbAppend::new([DcbEvent::new(event)])
                    .on_condition(AppendCondition::new(query.clone(), after));
                let t = Instant::now();
                let position = store.append_conditional(append).await?;
                mine.push(t.elapsed().as_micros() as u64);
                // Its own event is the last of its tag: the next condition is after it.
                after = Some(position);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(mine)
        }
    })
    .await
}

/// The same appends on PostgreSQL, by hand: an events table, a tag table, and per append a
/// transaction that locks the events table, looks for an event of the tag after the writer's
/// last position, and inserts the event and its tag.
async fn by_hand(postgres: &str, events: u64, payloads: &Arc<Payloads>) -> Result<Row> {
    let admin = pg_client(postgres).await?;
    admin
        .batch_execute(
            "DROP SCHEMA IF EXISTS factum_bench_dcb_sql CASCADE;
             CREATE SCHEMA factum_bench_dcb_sql;
             CREATE TABLE factum_bench_dcb_sql.events (
               position bigserial PRIMARY KEY,
               type text NOT NULL,
               data jsonb NOT NULL);
             CREATE TABLE factum_bench_dcb_sql.tags (
               tag text NOT NULL,
               position bigint NOT NULL,
               PRIMARY KEY (tag, position));",
        )
        .await?;
    let per_writer = (events / WRITERS).max(1);
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(pg_client(postgres).await?);
    }
    let mut clients = clients.into_iter();
    let payloads = payloads.clone();
    writers("postgres", per_writer, move |w, done| {
        let client = clients.next();
        let payloads = payloads.clone();
        async move {
            let mut client = client.ok_or_else(|| anyhow::anyhow!("a connection per writer"))?;
            let tag = tag(w);
            let mut after: i64 = 0;
            let mut mine = Vec::with_capacity(per_writer as usize);
            for n in 0..per_writer {
                let data: serde_json::Value =
                    serde_json::from_str(&payloads.get(w * per_writer + n))?;
                let t = Instant::now();
                let tx = client.transaction().await?;
                tx.batch_execute("LOCK TABLE factum_bench_dcb_sql.events IN EXCLUSIVE MODE")
                    .await?;
                let conflict = tx
                    .query_opt(
                        "SELECT 1 FROM factum_bench_dcb_sql.tags WHERE tag = $1 AND position > $2 LIMIT 1",
                        &[&tag, &after],
                    )
                    .await?;
                ensure!(conflict.is_none(), "a writer's own tag changed under it");
                let position: i64 = tx
                    .query_one(
                        "INSERT INTO factum_bench_dcb_sql.events (type, data) VALUES ('Noted', $1) RETURNING position",
                        &[&data],
                    )
                    .await?
                    .get(0);
                tx.execute(
                    "INSERT INTO factum_bench_dcb_sql.tags (tag, position) VALUES ($1, $2)",
                    &[&tag, &position],
                )
                .await?;
                tx.commit().await?;
                mine.push(t.elapsed().as_micros() as u64);
                after = position;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(mine)
        }
    })
    .await
}

/// A store of [`READ_EVENTS`] events, each with one of [`READ_TAGS`] tags, then 200 reads of
/// one tag's events (1,000 of them): the latency of a read.
async fn read(work: &Path, payloads: &Arc<Payloads>) -> Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("dcb-read-")
        .tempdir_in(work)?;
    let engine = Engine::open(dir.path().join("store"), EngineOptions::default())?;
    let filling = bar(READ_EVENTS, "dcb-read: writing".into());
    let mut position = 0u64;
    while position < READ_EVENTS {
        let batch: Vec<RecordedEvent> = (position..(position + 10_000).min(READ_EVENTS))
            .map(|p| {
                let event = json_event("Noted", payloads.get(p))
                    .with_tags([format!("t:{}", p % READ_TAGS)]);
                RecordedEvent {
                    stream: StreamName::new(format!("s-{}", p % 10_000))
                        .unwrap_or_else(|_| unreachable!("a valid name")),
                    revision: p / 10_000,
                    position: p,
                    id: event.id,
                    event_type: event.event_type,
                    content_type: event.content_type,
                    data: event.data,
                    metadata: event.metadata,
                    recorded_at_us: factum::now_micros(),
                    tags: event.tags,
                }
            })
            .collect();
        position += batch.len() as u64;
        engine.import(batch).await?;
        filling.set_position(position);
    }
    filling.finish_and_clear();
    let query = Query::item(Vec::<String>::new(), ["t:7"]);
    let mut latencies = Vec::with_capacity(200);
    let started = Instant::now();
    for _ in 0..200 {
        let t = Instant::now();
        let read = engine
            .read_query(&query, None, Direction::Forwards, 1000)
            .await?;
        latencies.push(t.elapsed().as_micros() as u64);
        ensure!(
            read.events.len() as u64 == READ_EVENTS / READ_TAGS,
            "read {} events of the tag",
            read.events.len()
        );
    }
    let elapsed = started.elapsed();
    engine.close()?;
    Ok(row(
        "dcb-read",
        "factum",
        200 * (READ_EVENTS / READ_TAGS),
        elapsed,
        latencies,
    ))
}
