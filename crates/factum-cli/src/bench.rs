//! `factum bench`: the same workloads on the embedded engine, PostgreSQL (a plain events table)
//! and SQLite (WAL, synchronous=FULL), in one run, durable everywhere. Prints events/s and
//! latency percentiles per scenario, the ratios, and the cost of one `fdatasync` on the same disk.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use factum_core::{Direction, EventStore, ExpectedState, NewEvent, StreamName};
use factum_engine::{Engine, Options};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

/// Options of `factum bench`.
#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// One JSON object a line instead of a table.
    #[arg(long)]
    json: bool,
    /// Scenarios to run (bulk, concurrent, single, read-all; also open, load, load-snapshot,
    /// bus, processor, saga, project, project-e2e, http, http-sse, relay-nats, relay-rabbitmq).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bulk,concurrent,single,read-all"
    )]
    scenarios: Vec<String>,
    /// Stores to compare (factum, postgres, sqlite). `factum` is the embedded store, or
    /// Factum's PostgreSQL store (`factum-pg`) with `factum --store postgres://… bench`.
    #[arg(long, value_delimiter = ',', default_value = "factum,postgres,sqlite")]
    stores: Vec<String>,
    /// Events appended by the bulk scenario (1000 per append).
    #[arg(long, default_value_t = 1_000_000)]
    bulk_events: u64,
    /// Events appended by the concurrent scenario (1 per append).
    #[arg(long, default_value_t = 100_000)]
    concurrent_events: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    writers: u64,
    /// Events appended by the single scenario (1 per append, one writer).
    #[arg(long, default_value_t = 3_000)]
    single_events: u64,
    /// Events in the store of the open scenario.
    #[arg(long, default_value_t = 10_000_000)]
    open_events: u64,
    /// Streams in the store of the open scenario.
    #[arg(long, default_value_t = 1_000_000)]
    open_streams: u64,
    /// PostgreSQL connection string.
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    postgres: String,
    /// Where the stores are created (default: a fresh directory beside the data directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// The engine of a store that is the embedded one.
fn store_engine(store: &Store) -> Result<Engine> {
    match store {
        Store::Factum(engine) => Ok(engine.clone()),
        _ => bail!("this scenario runs on the embedded store only"),
    }
}

/// Runs `work` with a progress bar fed by `progress` (events done so far); returns the time it
/// took and the time per 10,000 events, sampled as it went.
pub(crate) async fn timed(
    label: &str,
    events: u64,
    work: impl std::future::Future<Output = Result<()>>,
    progress: impl Fn() -> u64,
) -> Result<(Duration, Vec<u64>)> {
    timed_every(label, events, 10_000, work, progress).await
}

/// As [`timed`], with the time per `every` events.
pub(crate) async fn timed_every(
    label: &str,
    events: u64,
    every: u64,
    work: impl std::future::Future<Output = Result<()>>,
    progress: impl Fn() -> u64,
) -> Result<(Duration, Vec<u64>)> {
    let bar = bar(events, label.to_owned());
    let started = Instant::now();
    tokio::pin!(work);
    let mut latencies = Vec::new();
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            done = &mut work => { done?; break; }
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                let now = progress();
                bar.set_position(now);
                if now >= last.1 + every {
                    latencies.push(last.0.elapsed().as_micros() as u64 * every / (now - last.1));
                    last = (Instant::now(), now);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok((elapsed, latencies))
}

/// One measured row.
#[derive(serde::Serialize, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) store: String,
    pub(crate) events: u64,
    pub(crate) seconds: f64,
    pub(crate) events_per_sec: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
}

pub(crate) fn row(
    scenario: &str,
    store: &str,
    events: u64,
    elapsed: Duration,
    mut latencies_us: Vec<u64>,
) -> Row {
    latencies_us.sort_unstable();
    let pick = |q: f64| -> u64 {
        if latencies_us.is_empty() {
            return 0;
        }
        let i = ((latencies_us.len() as f64 * q).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        latencies_us[i]
    };
    let seconds = elapsed.as_secs_f64();
    Row {
        scenario: scenario.into(),
        store: store.into(),
        events,
        seconds,
        events_per_sec: events as f64 / seconds.max(1e-9),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        p999_us: pick(0.999),
    }
}

/// Payloads prepared before any clock starts, so the benchmark measures the stores, not the
/// formatting of test data.
pub(crate) struct Payloads(Vec<String>);

impl Payloads {
    fn new() -> Self {
        Payloads((0..4096).map(payload).collect())
    }
    pub(crate) fn get(&self, n: u64) -> String {
        self.0[(n % 4096) as usize].clone()
    }
}

/// An event of `payload`, JSON already, taken as it is.
pub(crate) fn json_event(event_type: &str, payload: String) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event_type.into(),
        content_type: factum_core::ContentType::Json,
        data: Bytes::from(payload),
        metadata: Bytes::new(),
    }
}

/// About 250 bytes of JSON, like an order line.
fn payload(n: u64) -> String {
    let text = format!(
        r#"{{"order_id":"ord-{n:012}","customer_id":"cus-{:08}","sku":"SKU-{:06}","quantity":{},"unit_price_cents":{},"currency":"EUR","warehouse":"eu-west-{}","note":"{}"}}"#,
        n % 100_000,
        n % 9_973,
        1 + n % 7,
        100 + n % 9_000,
        n % 4,
        "x".repeat(64)
    );
    debug_assert!((230..=280).contains(&text.len()));
    text
}

enum Store {
    Factum(Engine),
    /// Factum's PostgreSQL store (with `factum --store postgres://… bench`).
    FactumPg(factum_postgres::PgStore),
    Postgres(Vec<Arc<tokio_postgres::Client>>),
    Sqlite(Arc<std::sync::Mutex<rusqlite::Connection>>),
}

const PG_TABLE: &str = "factum_bench_events";

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Factum(_) => "factum",
            Store::FactumPg(_) => "factum-pg",
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    async fn open(
        name: &str,
        dir: &Path,
        args: &BenchArgs,
        location: &crate::store::Location,
    ) -> Result<Store> {
        let postgres = location.postgres.as_deref().unwrap_or(&args.postgres);
        match name {
            "factum" if location.postgres.is_some() => {
                // A fresh schema of its own, beside the baseline's table.
                pg_client(postgres)
                    .await?
                    .batch_execute("DROP SCHEMA IF EXISTS factum_bench CASCADE")
                    .await?;
                let options = factum_postgres::PgOptions {
                    schema: "factum_bench".into(),
                    ..factum_postgres::PgOptions::default()
                };
                Ok(Store::FactumPg(
                    factum_postgres::PgStore::connect(postgres, options).await?,
                ))
            }
            "factum" => Ok(Store::Factum(Engine::open(
                dir.join("factum"),
                Options::default(),
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
                                factum_core::now_micros() as i64
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

pub(crate) fn bar(total: u64, message: String) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>22} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

async fn bulk(store: &Store, events: u64, payloads: &Payloads) -> Result<Row> {
    const PER_APPEND: u64 = 1000;
    const STREAMS: u64 = 10_000;
    let appends = events.div_ceil(PER_APPEND);
    let progress = bar(appends * PER_APPEND, format!("bulk {}", store.name()));
    let mut next_revision = vec![0u64; STREAMS as usize];
    let mut latencies = Vec::with_capacity(appends as usize);
    let started = Instant::now();
    for a in 0..appends {
        let stream = (a % STREAMS) as usize;
        let batch: Vec<String> = (0..PER_APPEND)
            .map(|i| payloads.get(a * PER_APPEND + i))
            .collect();
        let t = Instant::now();
        store
            .append(0, &format!("bulk-{stream}"), next_revision[stream], batch)
            .await?;
        latencies.push(t.elapsed().as_micros() as u64);
        next_revision[stream] += PER_APPEND;
        progress.inc(PER_APPEND);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row(
        "bulk",
        store.name(),
        appends * PER_APPEND,
        elapsed,
        latencies,
    ))
}

async fn concurrent(
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

async fn single(store: &Store, events: u64, payloads: &Payloads) -> Result<Row> {
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

async fn read_all(store: &Store, expected_events: u64) -> Result<Row> {
    const PAGE: usize = 4096;
    let progress = bar(expected_events, format!("read-all {}", store.name()));
    let mut latencies = Vec::new();
    let mut next = store.first_position();
    let mut total = 0u64;
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let (count, after) = store.read_page(next, PAGE).await?;
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

/// The cost of one durable 4 KiB append on the disk of `dir`: write + `fdatasync`, p50 of 200.
fn fdatasync_reference(dir: &Path) -> Result<u64> {
    let path = dir.join("fdatasync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5a_u8; 4096];
    let mut latencies = Vec::with_capacity(200);
    for i in 0..200u64 {
        let t = Instant::now();
        file.write_all_at(&block, i * 4096)?;
        file.sync_data()?;
        latencies.push(t.elapsed().as_micros() as u64);
    }
    std::fs::remove_file(&path)?;
    latencies.sort_unstable();
    Ok(latencies[100])
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {memory_gib} GiB")
}

pub async fn run(location: &crate::store::Location, args: BenchArgs) -> Result<()> {
    let data_dir = location.data_dir.as_path();
    let base = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => data_dir
            .canonicalize()
            .ok()
            .and_then(|d| d.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    std::fs::create_dir_all(&base)?;
    let work = tempfile::Builder::new()
        .prefix("factum-bench-")
        .tempdir_in(&base)?;
    let fsync_us = fdatasync_reference(work.path())?;
    if !args.json {
        println!("machine: {}", machine());
        println!("one fdatasync of a 4 KiB append on this disk: {fsync_us} µs (p50 of 200)");
    } else {
        println!(
            "{}",
            serde_json::json!({"reference": "fdatasync_4k", "p50_us": fsync_us, "machine": machine()})
        );
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut stores = Vec::new();
    for name in &args.stores {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir)?;
        match Store::open(name, &dir, &args, location).await {
            Ok(store) => stores.push(Arc::new(store)),
            Err(e) if name != "factum" && location.postgres.is_none() => {
                eprintln!("skipping {name}: {e:#}")
            }
            Err(e) => return Err(e),
        }
    }
    let mut written = vec![0u64; stores.len()];
    let payloads = Arc::new(Payloads::new());
    for scenario in &args.scenarios {
        // Scenarios with a store of their own, run once.
        let own = match scenario.as_str() {
            "http" | "http-sse" => Some(
                crate::bench_http::run(
                    scenario,
                    work.path(),
                    args.concurrent_events,
                    usize::try_from(args.writers)?,
                    &payloads,
                )
                .await,
            ),
            "relay-nats" | "relay-rabbitmq" => {
                Some(crate::bench_relay::run(scenario, work.path(), &payloads).await)
            }
            // On the first store, which is Factum's (embedded or PostgreSQL).
            "saga" => Some(match stores.first().map(|s| s.as_ref()) {
                Some(Store::Factum(engine)) => {
                    crate::bench_toolkit::saga(Arc::new(engine.clone()), "factum").await
                }
                Some(Store::FactumPg(store)) => {
                    crate::bench_toolkit::saga(Arc::new(store.clone()), "factum-pg").await
                }
                _ => Err(anyhow::anyhow!(
                    "the saga scenario runs on Factum's store: put factum first in --stores"
                )),
            }),
            "project" | "project-e2e" => Some(
                crate::bench_projections::run(scenario, work.path(), &args.postgres, &payloads)
                    .await,
            ),
            _ => None,
        };
        if let Some(measured) = own {
            for r in measured.with_context(|| scenario.clone())? {
                print_row(&args, &r);
                rows.push(r);
            }
            continue;
        }
        for (i, store) in stores.iter().enumerate() {
            let result = match scenario.as_str() {
                "bulk" => bulk(store, args.bulk_events, &payloads).await,
                "concurrent" => {
                    concurrent(
                        store.clone(),
                        args.concurrent_events,
                        args.writers,
                        payloads.clone(),
                    )
                    .await
                }
                "single" => single(store, args.single_events, &payloads).await,
                "read-all" => read_all(store, written[i]).await,
                "open" => continue,
                "load" if i == 0 => {
                    crate::bench_toolkit::load(store_engine(store)?, &payloads).await
                }
                "load-snapshot" if i == 0 => {
                    crate::bench_toolkit::load_snapshot(store_engine(store)?, &payloads).await
                }
                "processor" if i == 0 => {
                    crate::bench_toolkit::processor(store_engine(store)?, &payloads).await
                }
                "bus" if i == 0 => crate::bench_toolkit::bus().await,
                "load" | "load-snapshot" | "bus" | "processor" => continue,
                other => {
                    bail!(
                        "unknown scenario '{other}' (bulk, concurrent, single, read-all, open, \
                         load, load-snapshot, bus, processor, saga, project, project-e2e, http, http-sse, \
                         relay-nats, relay-rabbitmq)"
                    )
                }
            };
            let r = result.with_context(|| format!("{scenario} on {}", store.name()))?;
            if !matches!(
                scenario.as_str(),
                "read-all" | "open" | "bus" | "load-snapshot"
            ) {
                written[i] += r.events;
            }
            print_row(&args, &r);
            rows.push(r);
        }
    }
    if !args.json {
        println!();
        print_ratios(&rows, fsync_us);
    }
    if args.scenarios.iter().any(|s| s == "open") {
        open_scenario(work.path(), &args).await?;
    }
    if let Some(Store::Factum(engine)) = stores.first().map(|s| s.as_ref()) {
        engine.close()?;
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn print_row(args: &BenchArgs, r: &Row) {
    if args.json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        println!(
            "{:<11} {:<9} {:>10} events {:>8.2} s {:>12.0} events/s   p50 {:>7} µs  p99 {:>7} µs  p99.9 {:>7} µs",
            r.scenario,
            r.store,
            r.events,
            r.seconds,
            r.events_per_sec,
            r.p50_us,
            r.p99_us,
            r.p999_us
        );
    }
}

/// Factum's rows against the others of the same scenario.
fn print_ratios(rows: &[Row], fsync_us: u64) {
    let ours = |store: &str| store == "factum" || store == "factum-pg";
    for r in rows.iter().filter(|r| ours(&r.store)) {
        if !rows
            .iter()
            .any(|o| o.scenario == r.scenario && !ours(&o.store))
            && r.scenario != "single"
        {
            continue;
        }
        let mut line = format!("{:<11} {}", r.scenario, r.store);
        for other in rows
            .iter()
            .filter(|o| o.scenario == r.scenario && !ours(&o.store))
        {
            line.push_str(&format!(
                "  {:.1}× {} in events/s",
                r.events_per_sec / other.events_per_sec.max(1e-9),
                other.store
            ));
        }
        if r.scenario == "single" {
            line.push_str(&format!(
                "  p50 = {:.2}× one fdatasync",
                r.p50_us as f64 / fsync_us.max(1) as f64
            ));
        }
        println!("{line}");
    }
}

/// Builds a store of `open_events` events over `open_streams` streams, then measures, each in a
/// fresh process, opening it after a clean shutdown and after losing the saved index (the worst
/// a SIGKILL can leave: the whole log is replayed), and the resident memory while serving it.
async fn open_scenario(work: &Path, args: &BenchArgs) -> Result<()> {
    let dir = work.join("open");
    {
        let engine = Engine::open(&dir, Options::default())?;
        let progress = bar(args.open_events, "open: building".into());
        let streams = args.open_streams.max(1);
        let mut position = 0u64;
        // Import writes many streams per atomic batch, which builds the store quickly.
        while position < args.open_events {
            let count = 10_000.min(args.open_events - position);
            let batch = (position..position + count)
                .map(|p| -> Result<factum_core::RecordedEvent> {
                    Ok(factum_core::RecordedEvent {
                        stream: StreamName::user(format!("open-{}", p % streams))?,
                        revision: p / streams,
                        position: p,
                        id: Uuid::now_v7(),
                        event_type: "OrderLineAdded".into(),
                        content_type: factum_core::ContentType::Json,
                        data: Bytes::from(payload(p)),
                        metadata: Bytes::new(),
                        recorded_at_us: factum_core::now_micros(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            engine.import(batch).await?;
            position += count;
            progress.inc(count);
        }
        progress.finish_and_clear();
        engine.close()?;
    }
    let clean = open_in_child(&dir)?;
    std::fs::remove_file(dir.join("index.fidx"))?;
    let rebuilt = open_in_child(&dir)?;
    for (state, measured) in [("clean", clean), ("no-saved-index", rebuilt)] {
        let line = serde_json::json!({
            "scenario": "open",
            "store": "factum",
            "state": state,
            "events": measured["events"],
            "streams": args.open_streams,
            "seconds": measured["seconds"],
            "rss_mb": measured["rss_mb"],
            "replayed_events": measured["replayed_events"],
        });
        if args.json {
            println!("{line}");
        } else {
            println!(
                "open ({state}): {} events over {} streams in {:.2} s, {} MB resident while serving, {} events replayed",
                measured["events"],
                args.open_streams,
                measured["seconds"].as_f64().unwrap_or(0.0),
                measured["rss_mb"],
                measured["replayed_events"]
            );
        }
    }
    Ok(())
}

fn open_in_child(dir: &Path) -> Result<serde_json::Value> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["bench-open", "--data-dir"])
        .arg(dir)
        .output()?;
    if !output.status.success() {
        bail!(
            "measuring open failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The child side of the open scenario: open, serve some reads, report time and memory.
pub async fn open_child(dir: &Path) -> Result<()> {
    let started = Instant::now();
    let engine = Engine::open(dir, Options::default())?;
    let seconds = started.elapsed().as_secs_f64();
    let head = engine.head();
    // Serve: read streams spread over the store and a page of the log.
    for i in 0..1000u64 {
        let stream = StreamName::user(format!("open-{}", i * 997 % 1_000_000))?;
        let _ = engine
            .read_stream(&stream, 0, Direction::Forwards, 100)
            .await;
    }
    engine.read_all(head / 2, Direction::Forwards, 4096).await?;
    let rss_mb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    println!(
        "{}",
        serde_json::json!({
            "events": head,
            "seconds": seconds,
            "rss_mb": rss_mb,
            "replayed_events": engine.open_report().replayed_events,
        })
    );
    engine.close()?;
    Ok(())
}

/// A connection to PostgreSQL with the TLS its connection string asks for (`sslmode`, …).
pub async fn pg_client(connection: &str) -> Result<tokio_postgres::Client> {
    let (client, driver) = factum_postgres::tls::PgConnect::parse(connection)?
        .connect()
        .await
        .with_context(|| format!("connecting to PostgreSQL at '{connection}'"))?;
    tokio::spawn(driver);
    Ok(client)
}
