//! The store comparison: the same appends and reads on Factum's store (embedded, or on
//! PostgreSQL), a plain PostgreSQL events table and SQLite (WAL, `synchronous=FULL`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use factum::{
    Direction, Engine, EngineOptions, EventStore, ExpectedState, PgOptions, PgStore, StreamName,
};
use uuid::Uuid;

use crate::BenchArgs;
use crate::kit::{Payloads, Row, bar, json_event, pg_client, row};

/// One of the stores compared.
pub enum Store {
    Factum(Engine),
    /// Factum's PostgreSQL store (with `factum --store postgres://… bench`).
    FactumPg(PgStore),
    Postgres(Vec<Arc<tokio_postgres::Client>>),
    Sqlite(Arc<std::sync::Mutex<rusqlite::Connection>>),
}

const PG_TABLE: &str = "factum_bench_events";

impl Store {
    /// Its name in the rows.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Factum(_) => "factum",
            Store::FactumPg(_) => "factum-pg",
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Opens the store `name` in `dir`; `factum` is Factum's PostgreSQL store when
    /// `factum_pg` names one.
    pub async fn open(
        name: &str,
        dir: &Path,
        args: &BenchArgs,
        factum_pg: Option<&str>,
    ) -> Result<Store> {
        let postgres = factum_pg.unwrap_or(&args.postgres);
        match name {
            "factum" if factum_pg.is_some() => {
                // A fresh schema of its own, beside the baseline's table.
                pg_client(postgres)
                    .await?
                    .batch_execute("DROP SCHEMA IF EXISTS factum_bench CASCADE")
                    .await?;
                let options = PgOptions {
                    schema: "factum_bench".into(),
                    ..PgOptions::default()
                };
                Ok(Store::FactumPg(PgStore::connect(postgres, options).await?))
            }
            "factum" => Ok(Store::Factum(Engine::open(
                dir.join("factum"),
                EngineOptions::default(),
            )?)),
            "postgres" => {
                let mut clients = Vec::new();
                for _ in 0..args.writers.clamp(1, 64) {
                    clients.push(Arc::new(pg_client(postgres).await?));
                }
                clients[0]
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS {PG_TABLE};
                         CREATE TABLE {PG_TABLE} (
                           position bigserial NOT NULL UNIQUE,
                           stream text NOT NULL,
                           revision bigint NOT NULL,
                           id uuid NOT NULL,
                           type text NOT NULL,
                           data jsonb NOT NULL,
                           metadata jsonb,
                           recorded_at timestamptz NOT NULL DEFAULT now(),
                           PRIMARY KEY (stream, revision));"
                    ))
                    .await?;
                Ok(Store::Postgres(clients))
            }
            "sqlite" => {
                let path = dir.join("sqlite.db");
                let connection = rusqlite::Connection::open(path)?;
                connection.execute_batch(
                    "PRAGMA journal_mode=WAL;
                     PRAGMA synchronous=FULL;
                     CREATE TABLE IF NOT EXISTS events (
                       position INTEGER PRIMARY KEY AUTOINCREMENT,
                       stream TEXT NOT NULL,
                       revision INTEGER NOT NULL,
                       id TEXT NOT NULL,
                       type TEXT NOT NULL,
                       data TEXT NOT NULL,
                       metadata TEXT,
                       recorded_at INTEGER NOT NULL,
                       UNIQUE (stream, revision));",
                )?;
                Ok(Store::Sqlite(Arc::new(std::sync::Mutex::new(connection))))
            }
            other => bail!("unknown store '{other}' (factum, postgres, sqlite)"),
        }
    }

    /// Appends events to a stream whose next revision is `next_revision`, with the exact
    /// expected revision (or "no stream").
    async fn append(
        &self,
        writer: usize,
        stream: &str,
        next_revision: u64,
        payloads: Vec<String>,
    ) -> Result<()> {
        match self {
            Store::Factum(_) | Store::FactumPg(_) => {
                let expected = match next_revision {
                    0 => ExpectedState::NoStream,
                    n => ExpectedState::Exact(n - 1),
                };
                let events = payloads
                    .into_iter()
                    .map(|p| json_event("OrderLineAdded", p))
                    .collect();
                self.event_store()?
                    .append(&StreamName::user(stream)?, expected, events)
                    .await?;
            }
            Store::Postgres(clients) => {
                let client = &clients[writer % clients.len()];
                let n = payloads.len();
                let streams = vec![stream.to_owned(); n];
                let revisions: Vec<i64> = (0..n as i64).map(|i| next_revision as i64 + i).collect();
                let ids: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
                let types = vec!["OrderLineAdded".to_owned(); n];
                client
                    .execute(
                        &format!(
                            "INSERT INTO {PG_TABLE} (stream, revision, id, type, data)
                             SELECT s, r, i::uuid, t, d::jsonb
                             FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[]) AS u(s, r, i, t, d)"
                        ),
                        &[&streams, &revisions, &ids, &types, &payloads],
                    )
                    .await?;
            }
            Store::Sqlite(connection) => {
                let connection = connection.clone();
                let stream = stream.to_owned();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let mut connection = connection.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let tx = connection.transaction()?;
                    {
                        let mut insert = tx.prepare_cached(
                            "INSERT INTO events (stream, revision, id, type, data, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?;
                        for (i, payload) in payloads.iter().enumerate() {
                            insert.execute(rusqlite::params![
                                stream,
                                next_revision + i as u64,
                                Uuid::now_v7().to_string(),
                                "OrderLineAdded",
                                payload,
                                factum::now_micros() as i64
                            ])?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await??;
            }
        }
        Ok(())
    }

    /// Reads one page of the log from a position; returns how many events and the next position.
    async fn read_page(&self, from: u64, limit: usize) -> Result<(usize, u64)> {
        match self {
            Store::Factum(_) | Store::FactumPg(_) => {
                let events = self
                    .event_store()?
                    .read_all(from, Direction::Forwards, limit)
                    .await?;
                Ok((events.len(), events.last().map_or(from, |e| e.position + 1)))
            }
            Store::Postgres(clients) => {
                let rows = clients[0]
                    .query(
                        &format!(
                            "SELECT position, stream, revision, id::text, type, data::text, metadata::text, recorded_at::text
                             FROM {PG_TABLE} WHERE position >= $1 ORDER BY position LIMIT $2"
                        ),
                        &[&(from as i64), &(limit as i64)],
                    )
                    .await?;
                let mut next = from;
                for row in &rows {
                    let position: i64 = row.get(0);
                    let _: (String, i64, String, String, String) =
                        (row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
                    next = position as u64 + 1;
                }
                Ok((rows.len(), next))
            }
            Store::Sqlite(connection) => {
                let connection = connection.clone();
                tokio::task::spawn_blocking(move || -> Result<(usize, u64)> {
                    let connection = connection.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let mut query = connection.prepare_cached(
                        "SELECT position, stream, revision, id, type, data, metadata, recorded_at
                         FROM events WHERE position >= ?1 ORDER BY position LIMIT ?2",
                    )?;
                    let mut rows = query.query(rusqlite::params![from as i64, limit as i64])?;
                    let (mut count, mut next) = (0, from);
                    while let Some(row) = rows.next()? {
                        let position: i64 = row.get(0)?;
                        let _: (String, i64, String, String, String) = (
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                        );
                        count += 1;
                        next = position as u64 + 1;
                    }
                    Ok((count, next))
                })
                .await?
            }
        }
    }

    fn first_position(&self) -> u64 {
        // PostgreSQL's and SQLite's sequences start at 1.
        match self {
            Store::Factum(_) | Store::FactumPg(_) => 0,
            _ => 1,
        }
    }

    /// Factum's store of either kind.
    fn event_store(&self) -> Result<&dyn EventStore> {
        match self {
            Store::FactumPg(store) => Ok(store),
            Store::Factum(engine) => Ok(engine),
            Store::Postgres(_) | Store::Sqlite(_) => bail!("{} is a baseline", self.name()),
        }
    }
}

/// The engine of a store that is the embedded one.
pub fn store_engine(store: &Store) -> Result<Engine> {
    match store {
        Store::Factum(engine) => Ok(engine.clone()),
        _ => bail!("this scenario runs on the embedded store only"),
    }
}

/// `bulk`: one writer, 1,000 events an append over 10,000 streams.
pub async fn bulk(store: &Store, events: u64, payloads: &Payloads) -> Result<Row> {
    const EVENTS_PER_APPEND: u64 = 1000;
    const STREAMS: u64 = 10_000;
    let appends = events.div_ceil(EVENTS_PER_APPEND);
    let progress = bar(
        appends * EVENTS_PER_APPEND,
        format!("bulk {}", store.name()),
    );
    let mut next_revision = vec![0u64; STREAMS as usize];
    let mut latencies = Vec::with_capacity(appends as usize);
    let started = Instant::now();
    for a in 0..appends {
        let stream = (a % STREAMS) as usize;
        let batch: Vec<String> = (0..EVENTS_PER_APPEND)
            .map(|i| payloads.get(a * EVENTS_PER_APPEND + i))
            .collect();
        let t = Instant::now();
        store
            .append(0, &format!("bulk-{stream}"), next_revision[stream], batch)
            .await?;
        latencies.push(t.elapsed().as_micros() as u64);
        next_revision[stream] += EVENTS_PER_APPEND;
        progress.inc(EVENTS_PER_APPEND);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row(
        "bulk",
        store.name(),
        appends * EVENTS_PER_APPEND,
        elapsed,
        latencies,
    ))
}

/// `concurrent`: writers each appending one event at a time to a stream of its own.
pub async fn concurrent(
    store: Arc<Store>,
    events: u64,
    writers: u64,
    payloads: Arc<Payloads>,
) -> Result<Row> {
    let per_writer = events / writers;
    let progress = bar(per_writer * writers, format!("concurrent {}", store.name()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let progress = progress.clone();
        let payloads = payloads.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_writer as usize);
            for i in 0..per_writer {
                let t = Instant::now();
                store
                    .append(
                        w as usize,
                        &format!("concurrent-{w}"),
                        i,
                        vec![payloads.get(w * per_writer + i)],
                    )
                    .await?;
                latencies.push(t.elapsed().as_micros() as u64);
                progress.inc(1);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row(
        "concurrent",
        store.name(),
        per_writer * writers,
        elapsed,
        latencies,
    ))
}

/// `single`: one writer, one event an append (the cost of one durable append).
pub async fn single(store: &Store, events: u64, payloads: &Payloads) -> Result<Row> {
    let progress = bar(events, format!("single {}", store.name()));
    let mut latencies = Vec::with_capacity(events as usize);
    let started = Instant::now();
    for i in 0..events {
        let t = Instant::now();
        store
            .append(0, "single-0", i, vec![payloads.get(i)])
            .await?;
        latencies.push(t.elapsed().as_micros() as u64);
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row("single", store.name(), events, elapsed, latencies))
}

/// `read-all`: the whole log read back, a page at a time.
pub async fn read_all(store: &Store, expected_events: u64) -> Result<Row> {
    const PAGE_EVENTS: usize = 4096;
    let progress = bar(expected_events, format!("read-all {}", store.name()));
    let mut latencies = Vec::new();
    let mut next = store.first_position();
    let mut total = 0u64;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let (count, after) = store.read_page(next, PAGE_EVENTS).await?;
        latencies.push(t.elapsed().as_micros() as u64);
        if count == 0 {
            break;
        }
        total += count as u64;
        next = after;
        progress.inc(count as u64);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row("read-all", store.name(), total, elapsed, latencies))
}
