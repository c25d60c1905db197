//! Fills a store with `N` events (once) and reads the whole log back, printing events/s.
//!
//! `cargo run --release -p factum-engine --example read_all_throughput -- DIR [N]`
use std::time::Instant;

use bytes::Bytes;
use factum_core::{ContentType, EventStore, RecordedEvent, StreamName, now_micros};
use factum_engine::{Engine, EngineOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: read_all_throughput DIR [EVENTS]")?;
    let events: u64 = args.next().map_or(Ok(1_000_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let engine = Engine::open(&dir, EngineOptions::default())?;
        let data = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(240)));
        while engine.head() < events {
            let from = engine.head();
            let batch: Vec<RecordedEvent> = (from..(from + 10_000).min(events))
                .map(|p| RecordedEvent {
                    stream: StreamName::user(format!("s-{}", p % 10_000)).expect("valid"),
                    revision: p / 10_000,
                    position: p,
                    id: uuid::Uuid::now_v7(),
                    event_type: "Happened".into(),
                    content_type: ContentType::Json,
                    data: data.clone(),
                    metadata: Bytes::new(),
                    recorded_at_us: now_micros(),
                    tags: Vec::new(),
                })
                .collect();
            engine.import(batch).await?;
        }
        for round in 0..3 {
            let started = Instant::now();
            let mut next = 0;
            let mut read = 0u64;
            loop {
                let page = engine.read_all_blocking(next, 4096)?;
                let Some(last) = page.last() else { break };
                next = last.position + 1;
                read += page.len() as u64;
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "round {round}: {read} events in {seconds:.3} s = {:.0} events/s",
                read as f64 / seconds
            );
        }
        engine.close()?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
