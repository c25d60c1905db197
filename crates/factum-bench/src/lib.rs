//! `factum bench`: the same workloads on the embedded engine, PostgreSQL (a plain events table)
//! and SQLite (WAL, synchronous=FULL), in one run, durable everywhere. Prints events/s and
//! latency percentiles per scenario, the ratios, and the cost of one `fdatasync` on the same disk.
//!
//! The `factum` binary's `bench` subcommand calls [`run`]. The scenarios share the `kit` module; each
//! family of scenarios is a module of its own.

mod dcb;
mod grpc;
mod http;
mod kit;
mod open;
mod persistent;
mod projections;
mod relay;
mod scavenge;
mod stores;
mod toolkit;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use kit::{Payloads, Row};
pub use open::open_child;
use stores::{Store, store_engine};

/// Options of `factum bench`.
#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// One JSON object a line instead of a table.
    #[arg(long)]
    json: bool,
    /// Scenarios to run (bulk, concurrent, single, read-all; also open, load, load-snapshot,
    /// load-personal,
    /// bus, processor, saga, project, project-e2e, http, http-sse, http-dashboards, grpc, grpc-catch-up,
    /// persistent-grpc, persistent-http, relay-nats, relay-rabbitmq, relay-kafka, dcb,
    /// dcb-read, scavenge).
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
    /// Events in the store of the scavenge scenario (90% of them hidden; a tenth of them on
    /// PostgreSQL).
    #[arg(long, default_value_t = 10_000_000)]
    scavenge_events: u64,
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

/// Runs the benchmarks `args` asks for, in a fresh directory beside `data_dir` (or in
/// `--work-dir`); `factum_pg` names Factum's PostgreSQL store when the command line has
/// `--store postgres://…`.
pub async fn run(data_dir: &Path, factum_pg: Option<&str>, args: BenchArgs) -> Result<()> {
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
        match Store::open(name, &dir, &args, factum_pg).await {
            Ok(store) => stores.push(Arc::new(store)),
            Err(e) if name != "factum" && factum_pg.is_none() => {
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
            "http" | "http-sse" | "http-dashboards" => Some(
                http::run(
                    scenario,
                    work.path(),
                    args.concurrent_events,
                    usize::try_from(args.writers)?,
                    &payloads,
                )
                .await,
            ),
            "grpc" | "grpc-catch-up" => Some(
                grpc::run(
                    scenario,
                    work.path(),
                    args.concurrent_events,
                    usize::try_from(args.writers)?,
                    &payloads,
                )
                .await,
            ),
            "dcb" | "dcb-read" => Some(
                dcb::run(
                    scenario,
                    work.path(),
                    &args.postgres,
                    args.concurrent_events,
                    &payloads,
                )
                .await,
            ),
            "scavenge" => Some(
                scavenge::run(work.path(), &args.postgres, args.scavenge_events, &payloads).await,
            ),
            "persistent-grpc" | "persistent-http" => {
                Some(persistent::run(scenario, work.path(), &payloads).await)
            }
            "relay-nats" | "relay-rabbitmq" | "relay-kafka" => {
                Some(relay::run(scenario, work.path(), &payloads).await)
            }
            // On the first store, which is Factum's (embedded or PostgreSQL).
            "saga" => Some(match stores.first().map(|s| s.as_ref()) {
                Some(Store::Factum(engine)) => {
                    toolkit::saga(Arc::new(engine.clone()), "factum").await
                }
                Some(Store::FactumPg(store)) => {
                    toolkit::saga(Arc::new(store.clone()), "factum-pg").await
                }
                _ => Err(anyhow::anyhow!(
                    "the saga scenario runs on Factum's store: put factum first in --stores"
                )),
            }),
            "project" | "project-e2e" => {
                Some(projections::run(scenario, work.path(), &args.postgres, &payloads).await)
            }
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
                "bulk" => stores::bulk(store, args.bulk_events, &payloads).await,
                "concurrent" => {
                    stores::concurrent(
                        store.clone(),
                        args.concurrent_events,
                        args.writers,
                        payloads.clone(),
                    )
                    .await
                }
                "single" => stores::single(store, args.single_events, &payloads).await,
                "read-all" => stores::read_all(store, written[i]).await,
                "open" => continue,
                "load" if i == 0 => toolkit::load(store_engine(store)?, &payloads).await,
                "load-snapshot" if i == 0 => {
                    toolkit::load_snapshot(store_engine(store)?, &payloads).await
                }
                "processor" if i == 0 => toolkit::processor(store_engine(store)?, &payloads).await,
                "load-personal" if i == 0 => {
                    for r in toolkit::load_personal(store_engine(store)?).await? {
                        print_row(&args, &r);
                        rows.push(r);
                    }
                    continue;
                }
                "bus" if i == 0 => toolkit::bus().await,
                "load" | "load-snapshot" | "load-personal" | "bus" | "processor" => continue,
                other => {
                    bail!(
                        "unknown scenario '{other}' (bulk, concurrent, single, read-all, open, \
                         load, load-snapshot, load-personal, bus, processor, saga, project, project-e2e, http, http-sse, http-dashboards, \
                         grpc, grpc-catch-up, persistent-grpc, persistent-http, relay-nats, \
                         relay-rabbitmq, relay-kafka, dcb, dcb-read, scavenge)"
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
        open::open_scenario(work.path(), &args).await?;
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
