//! `open`: a store of 10 M events over 1 M streams, opened in a fresh process after a clean
//! shutdown and after losing its saved index, with the memory it holds while serving.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use bytes::Bytes;
use factum::{
    ContentType, Direction, Engine, EngineOptions, EventStore, RecordedEvent, StreamName,
};
use uuid::Uuid;

use crate::BenchArgs;
use crate::kit::{bar, payload};

/// Builds a store of `open_events` events over `open_streams` streams, then measures, each in a
/// fresh process, opening it after a clean shutdown and after losing the saved index (the worst
/// a SIGKILL can leave: the whole log is replayed), and the resident memory while serving it.
pub async fn open_scenario(work: &Path, args: &BenchArgs) -> Result<()> {
    let dir = work.join("open");
    {
        let engine = Engine::open(&dir, EngineOptions::default())?;
        let progress = bar(args.open_events, "open: building".into());
        let streams = args.open_streams.max(1);
        let mut position = 0u64;
        // Import writes many streams per atomic batch, which builds the store quickly.
        while position < args.open_events {
            let count = 10_000.min(args.open_events - position);
            let batch = (position..position + count)
                .map(|p| -> Result<RecordedEvent> {
                    Ok(RecordedEvent {
                        stream: StreamName::user(format!("open-{}", p % streams))?,
                        revision: p / streams,
                        position: p,
                        id: Uuid::now_v7(),
                        event_type: "OrderLineAdded".into(),
                        content_type: ContentType::Json,
                        data: Bytes::from(payload(p)),
                        metadata: Bytes::new(),
                        recorded_at_us: factum::now_micros(),
                        tags: Vec::new(),
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

/// Runs [`open_child`] in a fresh process: the `factum` binary's hidden `bench-open`
/// subcommand, which calls it.
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
    let engine = Engine::open(dir, EngineOptions::default())?;
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
