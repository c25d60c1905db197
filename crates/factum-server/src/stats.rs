//! The dashboard's stats stream: once a second, a snapshot of the counters the server already
//! keeps (appends, events, bytes, reads, subscription deliveries, subscribers), the append
//! latency of the last second, the head, the store's size on disk and every consumer's lag —
//! made once by one ticker and sent to every dashboard as the same bytes, so that a dashboard
//! more costs one write a second and nothing on the append path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde::Serialize;
use tokio::sync::watch;

use crate::AppState;

/// How often a snapshot is taken.
const TICK: Duration = Duration::from_secs(1);
/// How many snapshots a dashboard that opens gets at once: five minutes.
const HISTORY: usize = 300;
/// Consumers' lag is looked up every this many ticks (it reads the store).
const CONSUMERS_EVERY: u64 = 2;
/// The store's size on disk is looked up every this many ticks.
const DISK_EVERY: u64 = 5;
/// The ticker stops this many ticks after the last dashboard went away.
const IDLE_TICKS: u64 = 10;

/// Quarter-octave buckets of microseconds: bucket `4·k + f` holds `[(4 + f)·2^k / 4, (5 + f)·2^k / 4)`.
const BUCKETS: usize = 4 * 40;

/// Append latencies by bucket, counted since the server started.
pub(crate) struct Latencies([AtomicU64; BUCKETS]);

impl Latencies {
    fn new() -> Self {
        Latencies(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Counts one acknowledged append that took `took`: one atomic add.
    pub(crate) fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

fn bucket(us: u64) -> usize {
    let us = us.max(1);
    let octave = 63 - us.leading_zeros() as usize;
    let quarter = if octave >= 2 {
        ((us >> (octave - 2)) & 3) as usize
    } else {
        ((us << (2 - octave)) & 3) as usize
    };
    (octave * 4 + quarter).min(BUCKETS - 1)
}

/// The middle of a bucket, in microseconds.
fn bucket_middle(index: usize) -> f64 {
    let (octave, quarter) = (index / 4, index % 4);
    let low = (4 + quarter) as f64 * 2f64.powi(octave as i32) / 4.0;
    low * (1.0 + 1.0 / (8.0 + 2.0 * quarter as f64))
}

/// The `q` quantile (0…1) of the latencies counted in `delta`; `None` when it holds none.
fn quantile(delta: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in delta.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_middle(i));
        }
    }
    None
}

/// Counters the stats stream reads besides the Prometheus ones.
pub(crate) struct Stats {
    started: Instant,
    /// Read requests answered (HTTP stream, `$all` and DCB reads; gRPC reads).
    pub(crate) reads: AtomicU64,
    /// Events sent to subscribers (server-sent events, gRPC subscriptions, group consumers).
    pub(crate) deliveries: AtomicU64,
    /// How long acknowledged appends took.
    pub(crate) append_latency: Latencies,
    /// The latest snapshot (as a server-sent event), `None` before the first.
    latest: watch::Sender<Option<Bytes>>,
    /// The snapshots of the last minutes, oldest first, as JSON.
    history: Mutex<VecDeque<Bytes>>,
    /// Whether the ticker runs.
    ticking: Mutex<bool>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            started: Instant::now(),
            reads: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            append_latency: Latencies::new(),
            latest: watch::channel(None).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            ticking: Mutex::new(false),
        }
    }

    pub(crate) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delivered(&self, events: u64) {
        if events > 0 {
            self.deliveries.fetch_add(events, Ordering::Relaxed);
        }
    }
}

/// One consumer's place, as the dashboard charts it.
#[derive(Serialize, Clone)]
pub(crate) struct ConsumerLag {
    /// `checkpoint` (an event processor, relay, saga manager or consumer keeping a checkpoint
    /// in the store), `projection` or `group` (a persistent subscription group).
    kind: &'static str,
    name: String,
    /// Where it is: the last position it finished with (a checkpoint's, a projection's), or a
    /// group's checkpoint in its source; `null` before its first.
    checkpoint: Option<u64>,
    /// Events it has not handled yet.
    behind: u64,
    /// Seconds between the newest event and the last one it handled, when known.
    behind_seconds: Option<f64>,
    /// Dead letters (checkpoints) or parked messages (groups) not resolved.
    parked: u64,
}

/// One snapshot.
#[derive(Serialize)]
struct Snapshot<'a> {
    /// Milliseconds since the Unix epoch.
    t: u64,
    uptime_seconds: f64,
    store: &'static str,
    /// Why the store refuses writes, while it does (`null` while it takes them).
    refusing_writes: Option<String>,
    head: u64,
    disk_bytes: Option<u64>,
    appends: u64,
    events: u64,
    bytes: u64,
    reads: u64,
    deliveries: u64,
    subscribers: i64,
    /// Append latency over the last tick, in microseconds (`null` without appends).
    append_p50_us: Option<f64>,
    append_p99_us: Option<f64>,
    consumers: &'a [ConsumerLag],
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The consumers' lag as it is now; what cannot be read is left out (and logged).
async fn consumers(state: &AppState) -> Vec<ConsumerLag> {
    let mut out = Vec::new();
    let store = &*state.store;
    let head_time = factum_projections::log_head(store).await.ok();
    match factum_toolkit::processor_statuses(store).await {
        Ok(processors) => {
            for p in processors {
                let behind_seconds = match (p.checkpoint, head_time) {
                    (_, None) | (_, Some((0, _))) => None,
                    (_, Some(_)) if p.behind == 0 => Some(0.0),
                    (None, Some(_)) => None,
                    (Some(at), Some((_, head_us))) => store
                        .read_all(at, factum_core::Direction::Forwards, 1)
                        .await
                        .ok()
                        .and_then(|e| e.first().map(|e| e.recorded_at_us))
                        .map(|us| (head_us.saturating_sub(us)) as f64 / 1e6),
                };
                out.push(ConsumerLag {
                    kind: "checkpoint",
                    checkpoint: p.checkpoint,
                    name: p.name,
                    behind: p.behind,
                    behind_seconds,
                    parked: p.dead_letters as u64,
                });
            }
        }
        Err(e) => tracing::debug!(error = %e, "stats: processors"),
    }
    match crate::consumers::projections(state).await {
        Ok(projections) => {
            for p in projections.unwrap_or_default() {
                out.push(ConsumerLag {
                    kind: "projection",
                    checkpoint: p.state.position,
                    name: p.state.name.clone(),
                    behind: p.behind,
                    behind_seconds: p.behind_seconds,
                    parked: 0,
                });
            }
        }
        Err(e) => tracing::debug!(error = %e.json(), "stats: projections"),
    }
    if let Some(groups) = state.groups.get() {
        match groups.list(None).await {
            Ok(list) => {
                for g in list {
                    out.push(ConsumerLag {
                        kind: "group",
                        checkpoint: g.checkpoint,
                        name: format!("{}::{}", g.source, g.group),
                        behind: g.lag,
                        behind_seconds: None,
                        parked: g.parked,
                    });
                }
            }
            Err(e) => tracing::debug!(error = %e, "stats: groups"),
        }
    }
    out
}

/// Takes a snapshot a second while someone listens; stops when no one has for a while.
async fn tick(state: AppState) {
    let stats = state.stats.clone();
    let metrics = state.metrics.clone();
    let mut closing = state.closing.clone();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = stats.append_latency.counts();
    let (mut lags, mut disk) = (Vec::new(), None);
    let mut idle = 0;
    for n in 0u64.. {
        tokio::select! {
            _ = interval.tick() => {}
            _ = closing.changed() => break,
        }
        if *closing.borrow() {
            break;
        }
        if stats.latest.receiver_count() == 0 {
            idle += 1;
            if idle >= IDLE_TICKS {
                let mut ticking = lock(&stats.ticking);
                // A dashboard may have come in the meantime; it found the ticker running.
                if stats.latest.receiver_count() == 0 {
                    *ticking = false;
                    return;
                }
            }
        } else {
            idle = 0;
        }
        if n % CONSUMERS_EVERY == 0 {
            lags = consumers(&state).await;
        }
        if n % DISK_EVERY == 0 {
            disk = match state.store.disk_usage().await {
                Ok(size) => size,
                Err(e) => {
                    tracing::debug!(error = %e, "stats: disk usage");
                    disk
                }
            };
        }
        let counts = stats.append_latency.counts();
        let delta: [u64; BUCKETS] = std::array::from_fn(|i| counts[i] - previous[i]);
        previous = counts;
        let snapshot = Snapshot {
            t: now_ms(),
            uptime_seconds: stats.started.elapsed().as_secs_f64(),
            store: state.store.kind(),
            refusing_writes: state.store.write_refusal(),
            head: state.store.head(),
            disk_bytes: disk,
            appends: metrics.appends.get(),
            events: metrics.events.get(),
            bytes: metrics.bytes.get(),
            reads: stats.reads.load(Ordering::Relaxed),
            deliveries: stats.deliveries.load(Ordering::Relaxed),
            subscribers: metrics.subscribers.get(),
            append_p50_us: quantile(&delta, 0.50),
            append_p99_us: quantile(&delta, 0.99),
            consumers: &lags,
        };
        let Ok(json) = serde_json::to_vec(&snapshot) else {
            continue;
        };
        let json = Bytes::from(json);
        {
            let mut history = lock(&stats.history);
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(json.clone());
        }
        let mut frame = Vec::with_capacity(json.len() + 24);
        frame.extend_from_slice(b"event: stats\ndata: ");
        frame.extend_from_slice(&json);
        frame.extend_from_slice(b"\n\n");
        stats.latest.send_replace(Some(Bytes::from(frame)));
    }
    *lock(&stats.ticking) = false;
}

/// `GET /stats/subscribe`: the snapshots of the last minutes as one `history` event (a JSON
/// array), then each new snapshot as a `stats` event.
pub(crate) fn respond(state: &AppState) -> Response {
    let stats = state.stats.clone();
    let mut latest = stats.latest.subscribe();
    latest.mark_unchanged();
    {
        let mut ticking = lock(&stats.ticking);
        if !*ticking {
            *ticking = true;
            tokio::spawn(tick(state.clone()));
        }
    }
    let history = {
        let history = lock(&stats.history);
        let mut frame = b"event: history\ndata: [".to_vec();
        for (i, json) in history.iter().enumerate() {
            if i > 0 {
                frame.push(b',');
            }
            frame.extend_from_slice(json);
        }
        frame.extend_from_slice(b"]\n\n");
        Bytes::from(frame)
    };
    let closing = state.closing.clone();
    let first = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(history) });
    let rest = futures::stream::unfold((latest, closing), |(mut latest, mut closing)| async move {
        loop {
            tokio::select! {
                changed = latest.changed() => {
                    changed.ok()?;
                    let frame = latest.borrow_and_update().clone();
                    if let Some(frame) = frame {
                        return Some((Ok(frame), (latest, closing)));
                    }
                }
                _ = closing.changed() => return None,
            }
        }
    });
    crate::sse::event_stream(Body::from_stream(futures::StreamExt::chain(first, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_microseconds_in_quarter_octaves() {
        assert_eq!(bucket(0), bucket(1));
        let mut last = 0;
        for us in 1..100_000u64 {
            let b = bucket(us);
            assert!(b >= last, "buckets grow with the value");
            last = b;
            let middle = bucket_middle(b);
            let (ratio_low, ratio_high) = (middle / us as f64, us as f64 / middle);
            assert!(
                ratio_low < 1.3 && ratio_high < 1.3,
                "{us} µs is in bucket {b} around {middle}"
            );
        }
    }

    #[test]
    fn quantiles_come_from_the_counts() {
        let mut delta = [0u64; BUCKETS];
        assert_eq!(quantile(&delta, 0.5), None);
        delta[bucket(100)] = 98;
        delta[bucket(10_000)] = 2;
        let p50 = quantile(&delta, 0.5).expect("appends were counted");
        let p99 = quantile(&delta, 0.99).expect("appends were counted");
        assert!((80.0..125.0).contains(&p50), "{p50}");
        assert!((8_000.0..12_500.0).contains(&p99), "{p99}");
    }
}
