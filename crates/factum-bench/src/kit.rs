//! What every scenario shares: payloads made before any clock starts, a progress bar, timing,
//! the measured row and its percentiles, and a PostgreSQL connection.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use factum::{ContentType, NewEvent};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

/// Runs `work` with a progress bar fed by `progress` (events done so far); returns the time it
/// took and the time per 10,000 events, sampled as it went.
pub async fn timed(
    label: &str,
    events: u64,
    work: impl std::future::Future<Output = Result<()>>,
    progress: impl Fn() -> u64,
) -> Result<(Duration, Vec<u64>)> {
    timed_every(label, events, 10_000, work, progress).await
}

/// As [`timed`], with the time per `every` events.
pub async fn timed_every(
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
pub struct Row {
    pub scenario: String,
    pub store: String,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

pub fn row(
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
pub struct Payloads(Vec<String>);

impl Payloads {
    /// 4,096 payloads of about 250 bytes.
    pub fn new() -> Self {
        Payloads((0..4096).map(payload).collect())
    }
    pub fn get(&self, n: u64) -> String {
        self.0[(n % 4096) as usize].clone()
    }
}

/// An event of `payload`, JSON already, taken as it is.
pub fn json_event(event_type: &str, payload: String) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event_type.into(),
        content_type: ContentType::Json,
        data: Bytes::from(payload),
        metadata: Bytes::new(),
        tags: Vec::new(),
    }
}

/// About 250 bytes of JSON, like an order line.
pub fn payload(n: u64) -> String {
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

pub fn bar(total: u64, message: String) -> ProgressBar {
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

/// A connection to PostgreSQL with the TLS its connection string asks for (`sslmode`, …).
pub async fn pg_client(connection: &str) -> Result<tokio_postgres::Client> {
    let (client, driver) = factum_pgconnect::PgConnect::parse(connection)?
        .connect()
        .await
        .with_context(|| format!("connecting to PostgreSQL at '{connection}'"))?;
    tokio::spawn(driver);
    Ok(client)
}
