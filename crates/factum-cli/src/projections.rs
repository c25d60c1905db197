//! `factum projections`: the lag of the projections in a read model, and rebuilds.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use factum::{ProjectionState, ReadModel, StoreError, open_read_model, sqlite_path};
use indicatif::{ProgressBar, ProgressStyle};

use crate::bad;

/// Where the read model is.
#[derive(Args)]
pub struct ReadModelArgs {
    /// The read model: a SQLite file (`sqlite:PATH` or a path) or a PostgreSQL URL.
    #[arg(
        long,
        env = "FACTUM_READ_MODEL",
        default_value = "./factum-read-model.db"
    )]
    read_model: String,
    /// The PostgreSQL schema the read model's tables live in.
    #[arg(long, env = "FACTUM_READ_MODEL_SCHEMA", default_value = "public")]
    schema: String,
}

#[derive(Subcommand)]
pub enum Projections {
    /// Print each projection with its checkpoint and how far behind the store's head it is
    /// (events and seconds), one JSON object a line.
    Status {
        #[command(flatten)]
        read_model: ReadModelArgs,
    },
    /// Rebuild a projection from position 0 into shadow tables and swap them in. The
    /// application that runs the projection does the work (it has the projection's code);
    /// this asks it to and follows the progress.
    Rebuild {
        /// The projection's name.
        name: String,
        #[command(flatten)]
        read_model: ReadModelArgs,
        /// Ask, and do not wait for the rebuild to finish.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long (e.g. `10m`); the rebuild goes on.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

async fn open(args: &ReadModelArgs) -> Result<Arc<dyn ReadModel>> {
    open_url(&args.read_model, &args.schema).await
}

/// Opens a read model by URL (a SQLite file that must exist, or PostgreSQL).
pub async fn open_url(url: &str, schema: &str) -> Result<Arc<dyn ReadModel>> {
    if sqlite_path(url).is_some_and(|path| !Path::new(path).exists()) {
        return Err(bad(format!(
            "no read model at '{url}' (set --read-model or FACTUM_READ_MODEL)"
        )));
    }
    Ok(open_read_model(url, schema).await?)
}

pub async fn run(dir: &crate::store::Location, action: Projections) -> Result<()> {
    match action {
        Projections::Status { read_model } => status(dir, &*open(&read_model).await?).await,
        Projections::Rebuild {
            name,
            read_model,
            no_wait,
            timeout,
        } => rebuild(&*open(&read_model).await?, &name, no_wait, timeout).await,
    }
}

/// The head and the time of the newest event, from the store when the command can open it;
/// `None` when an application holds it open.
async fn head(dir: &crate::store::Location) -> Result<Option<(u64, u64)>> {
    if dir.postgres.is_none() && !dir.data_dir.exists() {
        return Ok(None);
    }
    let store = match crate::store::Store::open(dir).await {
        Ok(store) => store,
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::Locked { .. })) => return Ok(None),
        Err(e) => return Err(e),
    };
    let head = factum::log_head(&*store).await;
    store.close()?;
    Ok(Some(head?))
}

async fn status(dir: &crate::store::Location, read_model: &dyn ReadModel) -> Result<()> {
    let states = read_model.states().await?;
    let head = head(dir).await?;
    if head.is_none() {
        eprintln!(
            "the store ({}) is open in another process (or missing): lag is measured against \
             the head each projector last saw",
            dir.describe()
        );
    }
    let mut out = crate::stdout();
    for state in &states {
        let (head, recorded) = head.unwrap_or((state.head, state.recorded_at_us));
        let status = state.status(head, recorded);
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
    }
    out.flush()?;
    if states.is_empty() {
        eprintln!("no projections in this read model");
    }
    Ok(())
}

async fn rebuild(
    read_model: &dyn ReadModel,
    name: &str,
    no_wait: bool,
    timeout: Option<Duration>,
) -> Result<()> {
    let before = read_model.state(name).await?;
    read_model.request_rebuild(name).await?;
    if no_wait {
        eprintln!("asked the projector of '{name}' for a rebuild");
        return Ok(());
    }
    let started = Instant::now();
    let bar = ProgressBar::new(before.head.max(1)).with_style(ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} events, {per_sec}, ETA {eta}",
    )?);
    bar.set_message(format!("waiting for the projector of '{name}' to start"));
    let done: ProjectionState = loop {
        let state = read_model.state(name).await?;
        if state.rebuilt_at_us > before.rebuilt_at_us && !state.rebuild_requested {
            break state;
        }
        if state.rebuilding {
            bar.set_message(format!("rebuilding '{name}'"));
            bar.set_length(state.rebuild_target.max(1));
            bar.set_position(state.rebuild_position.map_or(0, |p| p + 1));
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            bar.abandon();
            bail!(
                "the rebuild of '{name}' has not finished after {}; it goes on",
                humantime::format_duration(timeout.unwrap_or_default())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    eprintln!(
        "rebuilt '{name}' in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({"projection": name, "rebuilt": true, "position": done.position})
    );
    Ok(())
}
