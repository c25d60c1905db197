//! `factum bench --scenarios scavenge`: reclaiming the space of hidden events.
//!
//! A store of `--scavenge-events` events (written before any clock starts) in streams of 1,000
//! events whose max count is 100, so 90% of the events are hidden, written 100 events per
//! append in turns over the streams. Then, on the embedded store and on Factum's PostgreSQL
//! store (a tenth of the events: its writes are slower):
//! - `scav-base`: 32 writers append one event at a time for five seconds, with no scavenge;
//! - `scavenge`: a scavenge of the whole store, timed (events/s is events examined per second);
//! - `scav-apps`: the same 32 writers appending while that scavenge runs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use factum::{
    Engine, EngineOptions, EventStore, ExpectedState, PgOptions, PgStore, ScavengeOptions,
    StreamMetadata, StreamName,
};

use crate::kit::{Payloads, Row, bar, json_event, pg_client, row};

/// Events per stream, and how many of them its max count leaves visible.
const STREAM_EVENTS: u64 = 1_000;
const MAX_COUNT: u64 = 100;
/// Events per append while the store is filled.
const FILL_APPEND: u64 = 100;
/// Writers appending during the scavenge and without it.
const WRITERS: u64 = 32;

pub async fn run(
    work: &Path,
    postgres: &str,
    events: u64,
    payloads: &Arc<Payloads>,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix("scavenge-")
        .tempdir_in(work)?;
    let engine = Engine::open(dir.path().join("store"), EngineOptions::default())?;
    rows.extend(measure("factum", Arc::new(engine.clone()), events, payloads).await?);
    engine.close()?;
    match pg_client(postgres).await {
        Ok(admin) => {
            admin
                .batch_execute("DROP SCHEMA IF EXISTS factum_bench_scavenge CASCADE")
                .await?;
            let options = PgOptions {
                schema: "factum_bench_scavenge".into(),
                ..PgOptions::default()
            };
            let store = PgStore::connect(postgres, options).await?;
            rows.extend(measure("factum-pg", Arc::new(store), events / 10, payloads).await?);
            admin
                .batch_execute("DROP SCHEMA IF EXISTS factum_bench_scavenge CASCADE")
                .await?;
        }
        Err(e) => eprintln!("skipping PostgreSQL in the scavenge scenario: {e:#}"),
    }
    Ok(rows)
}

async fn measure(
    name: &str,
    store: Arc<dyn EventStore>,
    events: u64,
    payloads: &Arc<Payloads>,
) -> Result<Vec<Row>> {
    fill(name, &store, events, payloads).await?;
    let base = appending(name, &store, payloads, "scav-base", |started| {
        started.elapsed() >= Duration::from_secs(5)
    })
    .await?;

    let done = Arc::new(AtomicBool::new(false));
    let during = {
        let store = store.clone();
        let payloads = payloads.clone();
        let done = done.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            appending(&name, &store, &payloads, "scav-apps", move |_| {
                done.load(Ordering::Relaxed)
            })
            .await
        })
    };
    let progress = bar(0, format!("scavenge on {name}"));
    let shown = progress.clone();
    let started = Instant::now();
    let report = store
        .scavenge(ScavengeOptions::default(), &move |done, total| {
            shown.set_length(total);
            shown.set_position(done);
        })
        .await;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    progress.finish_and_clear();
    let report = report?;
    let during = during.await??;
    eprintln!(
        "scavenge on {name}: {} of {} events removed, {} MiB reclaimed ({} MiB before)",
        report.events_removed,
        report.events_examined,
        report.bytes_reclaimed() >> 20,
        report.bytes_before >> 20
    );
    Ok(vec![
        base,
        row(
            "scavenge",
            name,
            report.events_examined,
            elapsed,
            Vec::new(),
        ),
        during,
    ])
}

/// Fills `store` with `events` events of which 90% are hidden, with a progress bar.
async fn fill(
    name: &str,
    store: &Arc<dyn EventStore>,
    events: u64,
    payloads: &Arc<Payloads>,
) -> Result<()> {
    let streams = (events / STREAM_EVENTS).max(1);
    let stream = |s: u64| StreamName::new(format!("scav-{s}"));
    // The metadata, 64 streams at a time.
    let mut s = 0;
    while s < streams {
        let batch: Vec<_> = (s..(s + 64).min(streams))
            .map(|s| {
                let store = store.clone();
                let stream = stream(s);
                tokio::spawn(async move {
                    let metadata = StreamMetadata {
                        max_count: Some(MAX_COUNT),
                        ..StreamMetadata::default()
                    };
                    store.set_metadata(&stream?, metadata).await?;
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in batch {
            task.await??;
        }
        s += 64;
    }
    let bar = bar(
        streams * STREAM_EVENTS,
        format!("filling {name} for the scavenge"),
    );
    for round in 0..STREAM_EVENTS / FILL_APPEND {
        // Eight writers, each over its share of the streams.
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let store = store.clone();
                let payloads = payloads.clone();
                let bar = bar.clone();
                tokio::spawn(async move {
                    let mut s = w;
                    while s < streams {
                        let events = (0..FILL_APPEND)
                            .map(|k| json_event("Recorded", payloads.get(s * 7 + round * 101 + k)))
                            .collect();
                        store
                            .append(&stream(s)?, ExpectedState::Any, events)
                            .await?;
                        bar.inc(FILL_APPEND);
                        s += 8;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for writer in writers {
            writer.await??;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// [`WRITERS`] writers appending one event at a time, each to its own stream, until `stop`
/// says so (it is given when they started): their rate and latencies.
async fn appending(
    name: &str,
    store: &Arc<dyn EventStore>,
    payloads: &Arc<Payloads>,
    scenario: &str,
    stop: impl Fn(Instant) -> bool + Send + Sync + 'static,
) -> Result<Row> {
    let stop = Arc::new(stop);
    let appended = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let payloads = payloads.clone();
            let stop = stop.clone();
            let appended = appended.clone();
            let scenario = scenario.to_owned();
            tokio::spawn(async move {
                let stream = StreamName::new(format!("{scenario}-writer-{w}"))?;
                let mut latencies = Vec::new();
                while !stop(started) {
                    let event =
                        json_event("Appended", payloads.get(w * 13 + latencies.len() as u64));
                    let t = Instant::now();
                    store
                        .append(&stream, ExpectedState::Any, vec![event])
                        .await?;
                    latencies.push(t.elapsed().as_micros() as u64);
                    appended.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for writer in writers {
        latencies.extend(writer.await??);
    }
    Ok(row(
        scenario,
        name,
        appended.load(Ordering::Relaxed),
        started.elapsed(),
        latencies,
    ))
}
