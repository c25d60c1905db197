//! `factum`: the command line over the embedded store. JSON lines in and out.

mod args;
mod demo;
mod local;
mod otel;
mod progress;
mod projections;
mod relays;
mod remote;
mod store;

use std::io::BufWriter;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Parser;
use factum::{ProjectionError, StoreError};

use args::Cli;

// Reads and appends allocate many small objects; mimalloc keeps that fast and keeps freed
// memory for reuse instead of returning it to the system between pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes a script can act on.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const INVALID_INPUT: u8 = 2;
    pub const WRONG_EXPECTED_REVISION: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const DELETED: u8 = 5;
    pub const CORRUPTED: u8 = 6;
    pub const LOCKED: u8 = 7;
}

/// Bad input found by the command line itself (before the store saw it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<BadInput>().is_some() {
        return exit::INVALID_INPUT;
    }
    if let Some(answer) = error.downcast_ref::<remote::ServerError>() {
        return answer.exit_code();
    }
    match error.downcast_ref::<ProjectionError>() {
        Some(ProjectionError::Invalid(_)) => return exit::INVALID_INPUT,
        Some(ProjectionError::UnknownProjection(_)) => return exit::NOT_FOUND,
        Some(ProjectionError::Store(e)) => return store_exit_code(e),
        _ => {}
    }
    error
        .downcast_ref::<StoreError>()
        .map_or(exit::FAILURE, store_exit_code)
}

fn store_exit_code(error: &StoreError) -> u8 {
    match error {
        StoreError::InvalidInput(_) => exit::INVALID_INPUT,
        StoreError::WrongExpectedRevision { .. }
        | StoreError::CheckpointBehind { .. }
        | StoreError::ConditionFailed { .. } => exit::WRONG_EXPECTED_REVISION,
        StoreError::NotFound(_) | StoreError::UnknownSubject(_) => exit::NOT_FOUND,
        StoreError::StreamDeleted(_) => exit::DELETED,
        StoreError::Corrupted { .. } => exit::CORRUPTED,
        StoreError::Locked { .. } | StoreError::Claimed(_) | StoreError::Busy(_) => exit::LOCKED,
        _ => exit::FAILURE,
    }
}

fn main() -> ExitCode {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let provider = match otel::provider_from_env() {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let export = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // Spans at info level and above go out, whatever RUST_LOG says about the logs.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("factum"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                ),
        )
        .with(export)
        .init();
    let code = run_cli();
    if let Some(provider) = provider
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: spans not all exported: {e}");
    }
    code
}

fn run_cli() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(StoreError::Locked { .. }) = error.downcast_ref::<StoreError>() {
                eprintln!(
                    "hint: while `factum serve` runs on this directory, send the command to it: \
                     factum --server http://127.0.0.1:2113 …"
                );
            }
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Runs a command on a server (`--server`) or where the store is.
async fn run(cli: Cli) -> Result<()> {
    if let Some(server) = &cli.server {
        let remote = remote::Remote::new(server, cli.token.as_deref(), cli.server_ca.as_deref())?;
        return remote::run(&remote, cli.command).await;
    }
    let location = store::Location::new(cli.data_dir, cli.store, cli.store_schema)?;
    local::run(&location, cli.command).await
}

fn bad(message: impl Into<String>) -> anyhow::Error {
    anyhow!(BadInput(message.into()))
}

fn stdout() -> BufWriter<std::io::StdoutLock<'static>> {
    BufWriter::with_capacity(1 << 16, std::io::stdout().lock())
}
